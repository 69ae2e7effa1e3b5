"""Each people/security module's ``__all__`` is exactly its public classes and functions."""

import importlib
import inspect

import pytest

MODULES = ["users", "authz", "approvals", "node_policy", "access_anomaly"]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_every_public_definition(name: str) -> None:
    module = importlib.import_module(f"medfed.security.{name}")
    defined = {
        attr
        for attr, obj in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module.__name__
    }
    assert defined <= set(module.__all__), defined - set(module.__all__)
    for attr in module.__all__:
        assert hasattr(module, attr) and not attr.startswith("_"), attr
