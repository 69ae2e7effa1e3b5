"""Tests for parsing federation plans."""

from __future__ import annotations

import pytest

from medfed.core.errors import ConfigError
from medfed.core.records import Role
from medfed.security import FederationPlan, UserPlan, parse_plan

MINIMAL = """
[federation]
name = "demo"
coordinator_host = "127.0.0.1"
coordinator_port = 50443
"""


def test_minimal_plan_has_defaults() -> None:
    plan = parse_plan(MINIMAL)

    assert plan == FederationPlan(name="demo", coordinator_host="127.0.0.1", coordinator_port=50443)
    assert plan.validity_days == 365 and plan.ca_validity_days == 3650
    assert plan.coordinator_address == "127.0.0.1:50443"


def test_full_plan() -> None:
    text = (
        MINIMAL
        + 'validity_days = 30\nextra_hosts = ["fl.example.org"]\n'
        + '[[sites]]\nname = "cleveland"\n[[users]]\nname = "alice"\nrole = "researcher"\n'
    )

    plan = parse_plan(text)

    assert plan.sites == ("cleveland",)
    assert plan.users == (UserPlan(name="alice", role=Role.RESEARCHER),)
    assert plan.extra_hosts == ("fl.example.org",)
    assert plan.validity_days == 30


def test_ipv6_address_is_bracketed() -> None:
    plan = FederationPlan(name="demo", coordinator_host="::1", coordinator_port=1)

    assert plan.coordinator_address == "[::1]:1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not toml [", "not valid TOML"),
        ("[sites]\n", "missing \\[federation\\]"),
        (MINIMAL.replace("50443", "70000"), "coordinator_port must be 1..65535"),
        (MINIMAL.replace("50443", '"50443"'), "coordinator_port must be int"),
        (MINIMAL.replace('"127.0.0.1"', '"bad host!"'), "neither an IP address"),
        (MINIMAL + "colour = 1\n", "unknown key 'colour'"),
        (MINIMAL + "validity_days = 0\n", "validity_days must be"),
        (MINIMAL + "validity_days = true\n", "validity_days must be int"),
        (MINIMAL + '[[users]]\nname = "eve"\nrole = "node"\n', "role must be one of"),
        (MINIMAL + '[[sites]]\nname = "coordinator"\n', "reserved for the coordinator"),
        (
            MINIMAL + '[[sites]]\nname = "a"\n[[users]]\nname = "a"\nrole = "admin"\n',
            "unique",
        ),
        (MINIMAL + '[[sites]]\nname = "a"\nregion = "eu"\n', "unknown key 'region'"),
    ],
)
def test_bad_plans_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_plan(text, source_name="federation.toml")


def test_errors_name_the_source_and_collect_problems() -> None:
    text = MINIMAL.replace("50443", "0") + "validity_days = 0\n"

    with pytest.raises(ConfigError) as err:
        parse_plan(text, source_name="federation.toml")

    message = str(err.value)
    assert message.startswith("federation.toml: ")
    assert "coordinator_port" in message and "validity_days" in message


def test_missing_keys_are_listed() -> None:
    with pytest.raises(ConfigError) as err:
        parse_plan("[federation]\n")

    for key in ("name", "coordinator_host", "coordinator_port"):
        assert f"federation.{key} is required" in str(err.value)
