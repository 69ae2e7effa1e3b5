"""API tokens and break glass at the coordinator's API, over real gRPC + mutual TLS on loopback.

A script sends an API token (``medfed-token``) instead of a login session, still over its user's
certificate; the token's scopes narrow the role. An admin may break glass with a reason: a short
emergency session whose every call is written to the coordinator's audit log.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from integration.support import ADMIN, RESEARCHER, Cluster, Federation, job_toml
from integration.test_people_access import PASSWORD, POLICY, Clock, _enrol_totp
from medfed.cli.main import main
from medfed.coordinator.app import start_coordinator
from medfed.coordinator.audit_hooks import CoordinatorAudit
from medfed.coordinator.people import open_user_store
from medfed.coordinator.service import CoordinatorSettings
from medfed.core.errors import AuthenticationError, PermissionDenied, ValidationError
from medfed.crypto.aead import Keyring, generate_key
from medfed.security.authz import Action, Principal, UserRole
from medfed.security.users import IssuedToken, UserStore, totp_code
from medfed.transport.grpc_client import ResearcherClient

pytestmark = pytest.mark.timeout(120)


@dataclass
class People:
    cluster: Cluster
    users: UserStore
    clock: Clock
    secrets: dict[str, bytes]  # TOTP secrets

    def code(self, user: str) -> str:
        self.clock.t += 30  # a code works once: each login moves to the next step
        return totp_code(self.secrets[user], at=self.clock())

    def client(self, user: str, *, token: str = "") -> ResearcherClient:
        c = self.cluster.client(user)
        c.token = token
        return c

    def token(self, user: str, role: UserRole, *scopes: Action, ttl_s: float = 3600.0) -> IssuedToken:
        principal = Principal(user_id=user, role=role)
        return self.users.issue_token(principal, scopes=frozenset(scopes), ttl_s=ttl_s, label="script")

    def audit(self, action: str) -> list[tuple[str, dict[str, object]]]:
        log = self.cluster.coordinator.audit.log
        return [(e.actor, dict(e.fields)) for e in log.entries() if e.action == action]


@pytest.fixture
def people(fed: Federation, tmp_path: Path) -> Iterator[People]:
    """A coordinator with a user store: the researcher and a federation admin (both with TOTP)."""
    keyring = Keyring.single(generate_key("k1"))
    clock = Clock()

    def users(audit: CoordinatorAudit) -> UserStore:
        return open_user_store(tmp_path / "users.db", keyring=keyring, audit=audit, policy=POLICY, clock=clock)

    settings = CoordinatorSettings(state_dir=tmp_path / "state", heartbeat_interval_s=0.3)
    proc = start_coordinator(
        settings, address=f"127.0.0.1:{fed.port}", tls=fed.server_tls(), crl_path=None, users=users
    )  # the port the kits' client.toml names (for the CLI tests)
    cluster = Cluster(fed=fed, proc=proc, state_dir=tmp_path / "state")
    try:
        assert proc.users is not None
        proc.users.add_user(RESEARCHER, UserRole.RESEARCHER, PASSWORD)
        proc.users.add_user(ADMIN, UserRole.FEDERATION_ADMIN, PASSWORD)
        secrets = {u: _enrol_totp(proc.users, clock, u) for u in (RESEARCHER, ADMIN)}
        yield People(cluster=cluster, users=proc.users, clock=clock, secrets=secrets)
    finally:
        cluster.close()


# --- API tokens ------------------------------------------------------------------------------


def test_a_token_works_without_a_login_within_its_scopes(people: People) -> None:
    # Arrange: a token that may submit and read, not cancel
    tok = people.token(RESEARCHER, UserRole.RESEARCHER, Action.JOB_SUBMIT, Action.JOB_READ)
    script = people.client(RESEARCHER, token=tok.secret)

    # Act
    job_id = script.submit_job(job_toml(name="scripted"))["job_id"]

    # Assert
    assert script.get_job(job_id)["owner"] == RESEARCHER
    assert [j["job_id"] for j in script.list_jobs()["jobs"]] == [job_id]
    with pytest.raises(PermissionDenied, match=r"API token's scopes are \['job.read', 'job.submit'\]"):
        script.cancel_job(job_id)
    with pytest.raises(PermissionDenied, match="scopes"):
        script.fetch_model(job_id)
    denied = [f["method"] for _, f in people.audit("access.denied")]
    assert denied == ["job.cancel", "result.read"]


def test_a_token_without_job_read_cannot_list_jobs(people: People) -> None:
    script = people.client(RESEARCHER, token=people.token(RESEARCHER, UserRole.RESEARCHER, Action.JOB_SUBMIT).secret)
    script.submit_job(job_toml())
    with pytest.raises(PermissionDenied, match=r"do not include job\.read"):
        script.list_jobs()


def test_revoked_and_expired_tokens_are_refused_and_audited(people: People) -> None:
    revoked = people.token(RESEARCHER, UserRole.RESEARCHER, Action.JOB_READ)
    expiring = people.token(RESEARCHER, UserRole.RESEARCHER, Action.JOB_READ, ttl_s=60.0)
    a, b = people.client(RESEARCHER, token=revoked.secret), people.client(RESEARCHER, token=expiring.secret)
    assert a.list_jobs()["jobs"] == [] and b.list_jobs()["jobs"] == []

    # Act
    people.users.revoke_token(revoked.token_id, by=Principal(user_id=RESEARCHER, role=UserRole.RESEARCHER))
    people.clock.t += 61

    # Assert
    for client in (a, b):
        with pytest.raises(PermissionDenied, match="authentication failed"):
            client.list_jobs()
    failed = [(f.get("token_id"), f.get("reason")) for _, f in people.audit("login.failed")]
    assert failed == [(revoked.token_id, "revoked"), (expiring.token_id, "expired")]
    denied = [(actor, f["reason"]) for actor, f in people.audit("access.denied")]
    assert denied == [(RESEARCHER, "the token was refused (unknown, expired or revoked)")] * 2


def test_a_token_works_only_over_its_own_users_certificate(people: People) -> None:
    # the admin's token, sent over the researcher's certificate
    stolen = people.token(ADMIN, UserRole.FEDERATION_ADMIN, Action.JOB_READ)
    with pytest.raises(PermissionDenied, match="authentication failed"):
        people.client(RESEARCHER, token=stolen.secret).list_jobs()
    assert [f["reason"] for _, f in people.audit("access.denied")] == [
        "the token belongs to another user than the certificate"
    ]


def test_a_session_and_a_token_together_are_refused(people: People) -> None:
    client = people.client(RESEARCHER, token=people.token(RESEARCHER, UserRole.RESEARCHER, Action.JOB_READ).secret)
    client.login(RESEARCHER, PASSWORD, people.code(RESEARCHER))
    # the client sends only its session when it has one: put both on the wire by hand
    meta = client._meta

    def both(method: str, request: object) -> tuple[tuple[str, str], ...]:
        return (("medfed-token", client.token), *meta(method, request))

    client._meta = both  # type: ignore[method-assign]  # test: a hand-made pair of credentials
    with pytest.raises(AuthenticationError, match="not both"):
        client.list_jobs()


def test_cli_job_commands_take_a_token_file_or_the_environment(
    people: People, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = people.cluster.fed.client_toml(RESEARCHER)
    tok = people.token(RESEARCHER, UserRole.RESEARCHER, Action.JOB_READ)
    token_file = tmp_path / "token"
    token_file.write_text(tok.secret + "\n")
    token_file.chmod(0o600)  # a bearer secret: the CLI refuses one others can read

    assert main(["job", "list", "--config", str(config), "--token-file", str(token_file)]) == 0
    monkeypatch.setenv("MEDFED_TOKEN", tok.secret)
    assert main(["job", "list", "--config", str(config)]) == 0
    people.users.revoke_token(tok.token_id, by=Principal(user_id=RESEARCHER, role=UserRole.RESEARCHER))
    assert main(["job", "list", "--config", str(config)]) == 1
    assert "authentication failed" in capsys.readouterr().err
    assert main(["job", "list", "--config", str(config), "--token-file", str(tmp_path / "absent")]) == 1
    assert "--token-file" in capsys.readouterr().err


# --- break glass -----------------------------------------------------------------------------


def test_break_glass_gives_an_admin_a_short_loudly_audited_session(people: People) -> None:
    # Arrange: a researcher's job
    researcher = people.client(RESEARCHER)
    researcher.login(RESEARCHER, PASSWORD, people.code(RESEARCHER))
    job_id = researcher.submit_job(job_toml(name="runaway"))["job_id"]
    admin = people.client(ADMIN)

    # Act
    grant = admin.login(ADMIN, PASSWORD, people.code(ADMIN), break_glass_reason="runaway job on the cardiology data")
    view = admin.cancel_job(job_id)

    # Assert: a short session, flagged, and every step in the coordinator's audit log
    assert grant.emergency and grant.role == "federation_admin"
    assert grant.expires_at - people.clock() == pytest.approx(POLICY.break_glass_s)
    assert view["state"] == "cancelled"
    glass = people.audit("access.break_glass")
    reason_sha256 = hashlib.sha256(b"runaway job on the cardiology data").hexdigest()
    assert glass[0] == (
        ADMIN, {"user": ADMIN, "role": "federation_admin", "source": "127.0.0.1", "fingerprint": reason_sha256}
    )  # fmt: skip
    assert glass[1][1] == {
        "user": ADMIN, "method": "job.cancel", "source": "127.0.0.1", "resource": "job", "kind": "emergency_call",
        "outcome": "role_grant", "job_id": job_id,
    }  # fmt: skip
    assert [r for _, r in people.users.break_glass_reasons(ADMIN)] == ["runaway job on the cardiology data"]
    audit = people.cluster.coordinator.audit
    assert audit.log.verify(audit.key.public_pem).ok


def test_break_glass_is_refused_to_a_researcher_and_without_a_real_reason(people: People) -> None:
    researcher, admin = people.client(RESEARCHER), people.client(ADMIN)
    with pytest.raises(PermissionDenied, match="may not break glass"):
        researcher.login(RESEARCHER, PASSWORD, people.code(RESEARCHER), break_glass_reason="I want to see all jobs")
    with pytest.raises(ValidationError, match="at least 10 characters"):
        admin.login(ADMIN, PASSWORD, people.code(ADMIN), break_glass_reason="because")
    assert [f.get("role") for _, f in people.audit("access.denied")] == ["researcher"]
    assert people.audit("access.break_glass") == []


def test_cli_login_break_glass(
    people: People, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = people.cluster.fed.client_toml(ADMIN)
    assert main(["login", "--config", str(config), "--break-glass"]) == 1
    assert "--break-glass needs --reason" in capsys.readouterr().err

    monkeypatch.setattr("sys.stdin", io.StringIO(f"{PASSWORD}\n{people.code(ADMIN)}\n"))
    args = ["login", "--config", str(config), "--password-stdin", "--break-glass", "--reason", "ransomware response"]
    assert main(args) == 0
    assert "BREAK GLASS" in capsys.readouterr().out
    assert main(["job", "list", "--config", str(config)]) == 0  # the emergency session, from client.session
    assert [f.get("kind") for _, f in people.audit("access.break_glass")] == [None, "emergency_call"]
