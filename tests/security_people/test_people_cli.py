"""``medfed users|login|approvals|alerts`` end to end on real SQLite files, real Argon2id and TOTP."""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import stat
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from people_access_sim import simulate

from medfed.cli.people_cmds import dispatch, register
from medfed.core.config import parse_job_spec
from medfed.core.errors import ConfigError, PermissionDenied, ValidationError
from medfed.crypto.aead import generate_key
from medfed.security.approvals import ApprovalStore
from medfed.security.node_policy import JobFacts
from medfed.security.users import totp_code

PW = "a long enough password"
SPEC = '[job]\nname = "heart-lr"\ntask = "logistic_regression"\ndataset = "heart"\nrounds = 5\n'


class Cli:
    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        self.db, self.mp, self.capsys = tmp / "users.db", monkeypatch, capsys
        self.token_file = tmp / "home" / "token"
        monkeypatch.setenv("MEDFED_TOKEN_FILE", str(self.token_file))
        monkeypatch.delenv("MEDFED_TOKEN", raising=False)
        key = generate_key("k1")
        monkeypatch.setenv("MEDFED_DATA_KEY", f"k1:{base64.b64encode(key.secret).decode()}")
        parser = argparse.ArgumentParser(prog="medfed")
        register(parser.add_subparsers(dest="command", required=True))
        self.parser = parser

    def __call__(self, *argv: str, stdin: str = "") -> str:
        self.mp.setattr("sys.stdin", io.StringIO(stdin))
        self.capsys.readouterr()
        assert dispatch(self.parser.parse_args(list(argv))) == 0
        return self.capsys.readouterr().out

    def enrol_and_login(self, user: str) -> None:
        uri = self("users", "enrol-totp", user, "--users-db", str(self.db), "--password-stdin", stdin=PW)
        b32 = parse_qs(urlparse(uri.splitlines()[0]).query)["secret"][0]
        secret = base64.b32decode(b32 + "=" * (-len(b32) % 8))
        self("users", "enrol-totp", user, "--confirm", totp_code(secret, at=time.time()), "--users-db", str(self.db))
        code = totp_code(secret, at=time.time() + 30)  # the next step: the enrolment code is spent
        self("login", "--user", user, "--users-db", str(self.db), "--password-stdin", stdin=f"{PW}\n{code}\n")


def test_people_cli_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cli, db = Cli(tmp_path, monkeypatch, capsys), str(tmp_path / "users.db")
    with pytest.raises(PermissionDenied, match="first user"):
        cli("users", "add", "rita", "--role", "researcher", "--users-db", db, "--password-stdin", stdin=PW)
    cli("users", "add", "root", "--role", "federation_admin", "--users-db", db, "--password-stdin", stdin=PW)
    with pytest.raises(PermissionDenied, match="not logged in"):
        cli("users", "add", "sam", "--role", "site_admin", "--site", "cleveland", "--users-db", db,
            "--password-stdin", stdin=PW)  # fmt: skip
    with pytest.raises(PermissionDenied, match="enrol TOTP"):
        cli("login", "--user", "root", "--users-db", db, "--password-stdin", stdin=PW)
    cli.enrol_and_login("root")
    assert stat.S_IMODE(cli.token_file.stat().st_mode) == 0o600
    cli("users", "add", "sam", "--role", "site_admin", "--site", "cleveland", "--users-db", db,
        "--password-stdin", stdin=PW)  # fmt: skip
    listing = cli("users", "list", "--users-db", db)
    assert "sam" in listing and "site_admin" in listing and "totp=yes" in listing

    node_db = tmp_path / "node" / "approvals.db"
    node = ApprovalStore(node_db, site="cleveland", audit=lambda n, f: None)
    facts = JobFacts.from_spec(parse_job_spec(SPEC), job_id="j1", researcher="rita", purpose="cardiology")
    node.submit(facts)
    common = ["--approvals-db", str(node_db), "--site", "cleveland", "--users-db", db]
    with pytest.raises(PermissionDenied):  # the federation admin cannot approve at a site
        cli("approvals", "approve", facts.spec_hash[:12], "--reason", "ok", *common)
    cli.enrol_and_login("sam")
    assert facts.spec_hash[:16] in cli("approvals", "list", *common)
    assert "rounds = 5" in cli("approvals", "show", facts.spec_hash[:12], *common)
    cli("approvals", "approve", facts.spec_hash[:12], "--reason", "IRB 17", "--expires-days", "30", *common)
    assert node.check(facts).approved_by == "sam"
    with pytest.raises(ValidationError, match="give more digits"):
        cli("approvals", "approve", "00000000", *common)
    with pytest.raises(PermissionDenied):
        cli("approvals", "list", "--approvals-db", str(node_db), "--site", "hungary", "--users-db", db)
    cli("approvals", "reject", facts.spec_hash[:12], "--reason", "withdrawn", *common)
    with pytest.raises(PermissionDenied, match="withdrawn"):
        node.check(facts)
    rule = ["--task", "logistic_regression", "--dataset", "heart", "--purpose", "cardiology", "--researcher", "rita"]
    out = cli("approvals", "rule", "add", *rule, "--reason", "programme grant", "--expires-days", "90", *common)
    rule_id = out.split()[2].rstrip(":")
    changed = JobFacts.from_spec(
        parse_job_spec(SPEC.replace("5", "9")), job_id="j2", researcher="rita", purpose="cardiology"
    )
    assert node.check(changed).rule_id == rule_id
    assert f"rule {rule_id}" in cli("approvals", "list", "--state", "all", *common)
    cli("approvals", "rule", "revoke", rule_id, *common)
    with pytest.raises(PermissionDenied, match="awaits"):
        node.check(changed)

    events = tmp_path / "events.jsonl"
    with events.open("w") as f:
        for e in simulate(9, days=9):
            f.write(json.dumps({"user": e.user, "role": e.role, "action": e.action.value, "resource": e.resource,
                                "at": e.at, "source": e.source, "outcome": e.outcome.value, "bytes": e.bytes,
                                "department": e.department}) + "\n")  # fmt: skip
        f.write(json.dumps({"user": "card-nurse0", "role": "nurse", "action": "login", "at": e.at + 60,
                            "source": "203.0.113.9", "outcome": "failure"}) + "\n")  # fmt: skip
    out = cli(
        "alerts", "list", "--events", str(events), "--baseline-days", "7", "--site", "cleveland", "--users-db", db
    )
    assert "card-nurse0" in out and "new_source" in out
    assert re.fullmatch(r"\d+ alerts in \d+ events after a baseline of \d+", out.strip().splitlines()[-1])

    issued = cli("users", "token", "issue", "--scope", "alert.read", "--ttl-days", "1", "--label", "siem",
                 "--users-db", db).splitlines()  # fmt: skip
    token_id, secret = issued[0].split()[1], issued[1]
    monkeypatch.setenv("MEDFED_TOKEN", secret)  # the script's token: alerts only
    with pytest.raises(PermissionDenied, match="token's scopes"):
        cli("approvals", "list", *common)
    cli("users", "token", "revoke", token_id, "--users-db", db)  # a token may revoke itself
    with pytest.raises(PermissionDenied, match="authentication failed"):
        cli("approvals", "list", *common)


def test_wrong_password_on_login_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cli, db = Cli(tmp_path, monkeypatch, capsys), str(tmp_path / "users.db")
    cli("users", "add", "root", "--role", "federation_admin", "--users-db", db, "--password-stdin", stdin=PW)
    with pytest.raises(PermissionDenied, match="authentication failed"):
        cli("login", "--user", "root", "--users-db", db, "--password-stdin", stdin="wrong\n123456\n")
    assert not cli.token_file.exists()


def test_the_user_store_needs_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = Cli(tmp_path, monkeypatch, capsys)
    monkeypatch.delenv("MEDFED_DATA_KEY")
    with pytest.raises(ConfigError, match="no data key"):
        cli("users", "list", "--users-db", str(tmp_path / "users.db"))


def test_a_login_over_a_token_file_others_could_read_makes_it_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cli, db = Cli(tmp_path, monkeypatch, capsys), str(tmp_path / "users.db")
    cli("users", "add", "root", "--role", "federation_admin", "--users-db", db, "--password-stdin", stdin=PW)
    cli.token_file.parent.mkdir(parents=True)
    cli.token_file.write_text("an old session\n")
    cli.token_file.chmod(0o644)

    cli.enrol_and_login("root")

    assert stat.S_IMODE(cli.token_file.stat().st_mode) == 0o600
    assert cli.token_file.read_text().strip() != "an old session"
