"""The dashboard's pages: one module per page, listed in :data:`PAGE_MODULES`.

Each page module defines

* ``NAV: tuple[str, str] | None`` — the (path, label) of its link in the navigation bar, or ``None``;
* optionally ``NAV_ACTIONS: frozenset[Action]`` — show the link only to roles holding one of them;
* ``def routes() -> list[starlette.routing.Route]`` — its routes (handlers call
  :func:`medfed.dashboard.web.require` first).

Its templates live in ``medfed/dashboard/templates/`` and extend ``base.html`` (blocks ``title``
and ``content``). :func:`load_pages` imports them in order; the app mounts every route and builds
the navigation bar from the ``NAV`` entries.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from starlette.routing import BaseRoute

from medfed.core.errors import ConfigError
from medfed.dashboard.web import NavEntry

__all__ = ["PAGE_MODULES", "load_pages"]

#: Page modules under ``medfed.dashboard.pages``, in navigation order.
PAGE_MODULES: tuple[str, ...] = (
    "federation",
    "jobs",
    "catalog",
    "privacy",
    "approvals",
    "audit",
    "alerts",
)


def _page(name: str) -> ModuleType:
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ImportError as exc:
        raise ConfigError(f"dashboard page module {name!r} cannot be imported: {exc}") from None
    problems = []
    if not callable(getattr(module, "routes", None)):
        problems.append("no routes() function")
    if not hasattr(module, "NAV"):
        problems.append("no NAV attribute (a (path, label) pair or None)")
    if problems:
        raise ConfigError(f"dashboard page module {module.__name__}: " + "; ".join(problems))
    return module


def load_pages(names: tuple[str, ...] = PAGE_MODULES) -> tuple[list[BaseRoute], list[NavEntry]]:
    """The routes and navigation entries of the page modules ``names``."""
    routes: list[BaseRoute] = []
    nav: list[NavEntry] = []
    for name in names:
        module = _page(name)
        routes.extend(module.routes())
        if module.NAV is not None:
            path, label = module.NAV
            nav.append(NavEntry(path=path, label=label, actions=frozenset(getattr(module, "NAV_ACTIONS", ()))))
    return routes, nav
