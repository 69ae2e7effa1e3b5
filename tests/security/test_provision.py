"""Tests for startup kits: layout, permissions, add/revoke, refusal to overwrite, TLS material."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import stat
import tomllib
from pathlib import Path

import pytest

import medfed.security
from medfed.core.errors import ConfigError
from medfed.core.records import Role
from medfed.crypto import describe_certificate, load_crl
from medfed.security import (
    ProvisionResult,
    add_site,
    add_user,
    load_tls_material,
    parse_plan,
    preflight,
    provision,
    revoke,
)
from medfed.security.fsio import atomic_write
from medfed.security.provision import COORDINATOR_PUB

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
PLAN = """
[federation]
name = "demo"
coordinator_host = "127.0.0.1"
coordinator_port = 50443
validity_days = 365

[[sites]]
name = "cleveland"

[[sites]]
name = "hungary"

[[users]]
name = "alice"
role = "researcher"

[[users]]
name = "bob"
role = "admin"
"""

KIT_FILES = ("ca.pem", "cert.pem", "key.pem")
# ``medfed.security.provision`` the attribute is the function; fetch the module itself.
provision_module = importlib.import_module("medfed.security.provision")


@pytest.fixture
def fed(tmp_path: Path) -> ProvisionResult:
    return provision(parse_plan(PLAN), tmp_path / "fed", now=NOW)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"
    }


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_public_api_is_exported() -> None:
    for name in medfed.security.__all__:
        assert hasattr(medfed.security, name)
    assert {"provision", "add_site", "add_user", "revoke", "load_tls_material"} <= set(medfed.security.__all__)


def test_layout(fed: ProvisionResult) -> None:
    root = fed.root
    expected = [
        "ca/ca.pem",
        "ca/ca.key",
        "ca/crl.pem",
        "ca/serials.json",
        *(f"coordinator/{f}" for f in (*KIT_FILES, "crl.pem", "signing.key", "signing.key.pub", "data.keys")),
        *(f"sites/{s}/{f}" for s in ("cleveland", "hungary") for f in (*KIT_FILES, "site.toml", COORDINATOR_PUB)),
        *(f"users/{u}/{f}" for u in ("alice", "bob") for f in (*KIT_FILES, "client.toml", COORDINATOR_PUB)),
    ]

    assert sorted(_snapshot(root)) == sorted(expected)
    assert [i.name for i in fed.identities] == [
        "coordinator",
        "cleveland",
        "hungary",
        "alice",
        "bob",
    ]
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".fed.")]  # no staging left


def test_private_keys_are_0600_and_ca_dir_0700(fed: ProvisionResult) -> None:
    keys = [fed.root / "ca" / "ca.key", *fed.root.rglob("key.pem"), fed.root / "coordinator" / "data.keys"]

    assert len(keys) == 7
    assert all(_mode(k) == 0o600 for k in keys)
    assert _mode(fed.root / "ca") == 0o700
    assert _mode(fed.root / "sites" / "cleveland" / "cert.pem") & 0o044  # certificates readable


def test_every_kit_passes_preflight(fed: ProvisionResult) -> None:
    for identity in fed.identities:
        material = load_tls_material(fed.root / identity.kit)
        host = "127.0.0.1" if identity.role is Role.COORDINATOR else None

        assert preflight(material, now=NOW, expected_host=host) == []
        assert material.ca_pem == (fed.root / "ca" / "ca.pem").read_bytes()


def test_identities_carry_name_and_role(fed: ProvisionResult) -> None:
    roles = {}
    for identity in fed.identities:
        info = describe_certificate((fed.root / identity.kit / "cert.pem").read_bytes())
        roles[info.common_name] = info.role
        assert info.serial == identity.serial
        assert info.not_after == identity.not_after

    assert roles == {
        "coordinator": Role.COORDINATOR,
        "cleveland": Role.NODE,
        "hungary": Role.NODE,
        "alice": Role.RESEARCHER,
        "bob": Role.ADMIN,
    }


def test_coordinator_san_has_host_and_localhost(fed: ProvisionResult) -> None:
    info = describe_certificate((fed.root / "coordinator" / "cert.pem").read_bytes())

    assert "127.0.0.1" in info.san and "localhost" in info.san


def test_site_and_client_templates(fed: ProvisionResult) -> None:
    site = tomllib.loads((fed.root / "sites/cleveland/site.toml").read_text())
    client = tomllib.loads((fed.root / "users/alice/client.toml").read_text())

    assert site["site"] == {"name": "cleveland", "coordinator": "127.0.0.1:50443"}
    assert site["tls"] == {"ca": "ca.pem", "cert": "cert.pem", "key": "key.pem"}
    assert "datasets" not in site  # declared by the site admin, see the commented example
    assert "# [datasets.heart]" in (fed.root / "sites/cleveland/site.toml").read_text()
    assert client["client"]["role"] == "researcher"
    assert client["client"]["coordinator"] == "127.0.0.1:50443"


def test_serials_json_lists_identities(fed: ProvisionResult) -> None:
    doc = json.loads((fed.root / "ca" / "serials.json").read_text())

    assert doc["federation"] == "demo"
    entries = {e["name"]: e for e in doc["identities"]}
    assert set(entries) == {"coordinator", "cleveland", "hungary", "alice", "bob"}
    assert entries["alice"]["role"] == "researcher"
    assert int(entries["alice"]["serial"], 16) == fed.identities[3].serial
    assert entries["alice"]["not_after"].startswith("2027-03-01")


def test_initial_crl_is_empty_and_signed(fed: ProvisionResult) -> None:
    ca_pem = (fed.root / "ca" / "ca.pem").read_bytes()

    assert load_crl((fed.root / "ca" / "crl.pem").read_bytes(), ca_pem) == frozenset()


# --- refusing to overwrite -------------------------------------------------------------------


def test_refuses_to_overwrite_a_federation(fed: ProvisionResult) -> None:
    before = _snapshot(fed.root)

    with pytest.raises(ConfigError, match="refusing to overwrite"):
        provision(parse_plan(PLAN), fed.root, now=NOW)

    assert _snapshot(fed.root) == before


def test_an_empty_directory_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "fed").mkdir()

    result = provision(parse_plan(PLAN), tmp_path / "fed", now=NOW)

    assert (result.root / "ca" / "ca.pem").is_file()


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "fed").write_text("x")

    with pytest.raises(ConfigError, match="not a directory"):
        provision(parse_plan(PLAN), tmp_path / "fed", now=NOW)


def test_a_failed_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(provision_module, "issue_certificate", boom)

    with pytest.raises(RuntimeError):
        provision(parse_plan(PLAN), tmp_path / "fed", now=NOW)

    assert list(tmp_path.iterdir()) == []


# --- add_site / add_user ---------------------------------------------------------------------


def test_add_site_leaves_other_files_unchanged(fed: ProvisionResult) -> None:
    before = _snapshot(fed.root)

    issued = add_site(fed.root, "switzerland", now=NOW)

    after = _snapshot(fed.root)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"ca/serials.json"}
    assert set(after) - set(before) == {f"sites/switzerland/{f}" for f in (*KIT_FILES, "site.toml", COORDINATOR_PUB)}
    assert issued.kit == "sites/switzerland" and issued.role is Role.NODE
    assert preflight(load_tls_material(fed.root / "sites" / "switzerland"), now=NOW) == []
    assert _mode(fed.root / "sites" / "switzerland" / "key.pem") == 0o600


def test_add_user(fed: ProvisionResult) -> None:
    issued = add_user(fed.root, "carol", "admin", now=NOW)

    info = describe_certificate((fed.root / "users/carol/cert.pem").read_bytes())
    assert info.role is Role.ADMIN and issued.serial == info.serial
    assert (fed.root / "users/carol/client.toml").is_file()


@pytest.mark.parametrize("role", ["node", "coordinator", "owner"])
def test_add_user_refuses_machine_roles(fed: ProvisionResult, role: str) -> None:
    with pytest.raises(ConfigError, match="role must be one of"):
        add_user(fed.root, "mallory", role, now=NOW)


@pytest.mark.parametrize("name", ["cleveland", "alice", "coordinator"])
def test_add_refuses_names_in_use(fed: ProvisionResult, name: str) -> None:
    before = _snapshot(fed.root)

    with pytest.raises(ConfigError):
        add_site(fed.root, name, now=NOW)

    assert _snapshot(fed.root) == before


def test_add_site_needs_a_federation_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a medfed federation directory"):
        add_site(tmp_path, "x")


# --- revoke ----------------------------------------------------------------------------------


def test_revoke_updates_both_crls(fed: ProvisionResult) -> None:
    ca_pem = (fed.root / "ca" / "ca.pem").read_bytes()
    serial = next(i.serial for i in fed.identities if i.name == "hungary")

    revoked = revoke(fed.root, "hungary", now=NOW + dt.timedelta(hours=1))

    assert revoked.serial == serial and revoked.revoked_at == NOW + dt.timedelta(hours=1)
    for crl in (fed.root / "ca" / "crl.pem", fed.root / "coordinator" / "crl.pem"):
        assert load_crl(crl.read_bytes(), ca_pem) == frozenset({serial})
    doc = json.loads((fed.root / "ca" / "serials.json").read_text())
    assert [e["name"] for e in doc["identities"] if e["revoked_at"]] == ["hungary"]


def test_revoked_site_fails_preflight_at_the_coordinator(fed: ProvisionResult) -> None:
    revoke(fed.root, "cleveland", now=NOW)
    site = load_tls_material(fed.root / "sites" / "cleveland")
    coordinator = load_tls_material(fed.root / "coordinator")

    assert coordinator.crl_pem is not None
    revoked = load_crl(coordinator.crl_pem, coordinator.ca_pem)
    assert describe_certificate(site.cert_pem).serial in revoked
    assert preflight(coordinator, now=NOW, expected_host="localhost") == []


def test_revoke_is_idempotent_and_reissue_works(fed: ProvisionResult) -> None:
    first = revoke(fed.root, "alice", now=NOW)
    again = revoke(fed.root, "alice", now=NOW + dt.timedelta(days=1))

    reissued = add_user(fed.root, "alice", Role.RESEARCHER, now=NOW)

    assert again.revoked_at == first.revoked_at
    revoked = load_crl((fed.root / "ca/crl.pem").read_bytes(), (fed.root / "ca/ca.pem").read_bytes())
    assert revoked == frozenset({first.serial})
    assert reissued.serial != first.serial
    assert describe_certificate((fed.root / "users/alice/cert.pem").read_bytes()).serial == reissued.serial


def test_revoke_unknown_or_coordinator_is_refused(fed: ProvisionResult) -> None:
    with pytest.raises(ConfigError, match="no identity called 'zed'"):
        revoke(fed.root, "zed")
    with pytest.raises(ConfigError, match="cannot be revoked"):
        revoke(fed.root, "coordinator")


# --- names -----------------------------------------------------------------------------------

BAD_NAMES = [
    "Cleveland",
    "st mary",
    "-lead",
    "_x",
    "",
    "x" * 64,
    "café",
    "../etc",
    "a.b",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused(fed: ProvisionResult, name: str) -> None:
    with pytest.raises(ConfigError, match="lowercase letters, digits"):
        add_site(fed.root, name)
    with pytest.raises(ConfigError, match="lowercase letters, digits"):
        parse_plan(PLAN.replace('name = "cleveland"', f"name = {json.dumps(name)}"))


@pytest.mark.parametrize("name", ["a", "st-mary_2", "x" * 63, "0site"])
def test_good_names_are_accepted(fed: ProvisionResult, name: str) -> None:
    assert add_site(fed.root, name, now=NOW).name == name


# --- TLS material ----------------------------------------------------------------------------


def test_load_tls_material_names_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing \['ca.pem', 'cert.pem', 'key.pem'\]"):
        load_tls_material(tmp_path)


def test_load_tls_material_refuses_a_foreign_key(fed: ProvisionResult, tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    kit.mkdir()
    for name in KIT_FILES:
        (kit / name).write_bytes((fed.root / "sites/cleveland" / name).read_bytes())
    (kit / "key.pem").write_bytes((fed.root / "sites/hungary/key.pem").read_bytes())

    with pytest.raises(ConfigError, match="does not belong"):
        load_tls_material(kit)


def test_preflight_reports_expiry_and_host(fed: ProvisionResult) -> None:
    material = load_tls_material(fed.root / "coordinator")

    problems = preflight(material, now=NOW + dt.timedelta(days=400), expected_host="10.1.1.1")

    assert len(problems) == 2
    assert "expired on 2027-03-01" in problems[0]
    assert "host name mismatch" in problems[1]


def test_tls_material_repr_hides_the_key(fed: ProvisionResult) -> None:
    assert "PRIVATE KEY" not in repr(load_tls_material(fed.root / "coordinator"))


# --- atomic writes ---------------------------------------------------------------------------


def test_atomic_write_replaces_and_sets_mode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")

    atomic_write(target, b"new", mode=0o600)

    assert target.read_bytes() == b"new" and _mode(target) == 0o600
    assert os.listdir(tmp_path) == ["f"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")

    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]  # the failure under test

    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]
