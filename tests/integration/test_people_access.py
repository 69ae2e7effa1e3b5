"""People at the coordinator's API over real gRPC + mutual TLS on loopback, with a user store.

Two factors: the person's certificate (mTLS) and a password + TOTP login whose session travels in
gRPC metadata; the certificate's name must be the session's user. Each people call is then
authorised by the role matrix (medfed.security.authz). Without a user store the coordinator
behaves as before: the certificate's role alone decides.
"""

from __future__ import annotations

import base64
import io
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from integration.support import RESEARCHER, Cluster, Federation, Processes, job_toml, wait_job
from medfed.cli.config import session_path
from medfed.cli.main import main
from medfed.coordinator.app import start_coordinator
from medfed.coordinator.audit_hooks import CoordinatorAudit
from medfed.coordinator.people import open_user_store
from medfed.coordinator.service import CoordinatorSettings
from medfed.core.errors import AuthenticationError, ConfigError, PermissionDenied
from medfed.core.records import Role
from medfed.crypto.aead import Keyring, generate_key
from medfed.security.authz import UserRole
from medfed.security.provision import add_user
from medfed.security.users import AuthPolicy, Credentials, UserStore, totp_code
from medfed.transport.grpc_client import ClientTls, ResearcherClient

pytestmark = pytest.mark.timeout(120)

AUDITOR = "auditor"
PASSWORD = "correct horse battery staple"
#: Cheap Argon2 (tests only) and a small lockout threshold.
POLICY = AuthPolicy(
    argon2_time_cost=1, argon2_memory_kib=8 * 1024, argon2_parallelism=1, max_failures=3, session_idle_s=600.0
)


class Clock:
    """The user store's clock: sessions, lockouts and TOTP steps advance only when a test says so."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class People:
    cluster: Cluster
    users: UserStore
    clock: Clock
    totp_secret: bytes  # the researcher's

    def code(self) -> str:
        return totp_code(self.totp_secret, at=self.clock())

    def client(self, user: str) -> ResearcherClient:
        if user == RESEARCHER:
            return self.cluster.client(RESEARCHER)
        kit = self.cluster.fed.root / "users" / user
        tls = ClientTls(
            ca_pem=(kit / "ca.pem").read_bytes(),
            cert_pem=(kit / "cert.pem").read_bytes(),
            key_pem=(kit / "key.pem").read_bytes(),
        )
        c = ResearcherClient(self.cluster.target, tls, timeout_s=15.0)
        self.cluster.clients.append(c)
        return c

    def audit_actions(self) -> list[tuple[str, str, dict[str, object]]]:
        return [(e.action, e.actor, dict(e.fields)) for e in self.cluster.coordinator.audit.log.entries()]


def _enrol_totp(users: UserStore, clock: Clock, user_id: str) -> bytes:
    uri = users.begin_totp(Credentials(user_id=user_id, password=PASSWORD))
    b32 = parse_qs(urlparse(uri).query)["secret"][0]
    secret = base64.b32decode(b32 + "=" * (-len(b32) % 8))
    users.confirm_totp(user_id, totp_code(secret, at=clock()))
    clock.t += 30  # the enrolment code's step is spent
    return secret


@pytest.fixture
def people(fed: Federation, tmp_path: Path) -> Iterator[People]:
    """A coordinator with a user store: researcher (TOTP enrolled) and auditor (a certificate of its own)."""
    add_user(fed.root, AUDITOR, Role.RESEARCHER)
    keyring = Keyring.single(generate_key("k1"))
    clock = Clock()

    def users(audit: CoordinatorAudit) -> UserStore:
        return open_user_store(tmp_path / "users.db", keyring=keyring, audit=audit, policy=POLICY, clock=clock)

    settings = CoordinatorSettings(state_dir=tmp_path / "state", heartbeat_interval_s=0.3)
    proc = start_coordinator(
        settings,
        address=f"127.0.0.1:{fed.port}",  # the port the kits' client.toml names (for the CLI test)
        tls=fed.server_tls(),
        crl_path=fed.kit("coordinator") / "crl.pem",
        users=users,
    )
    cluster = Cluster(fed=fed, proc=proc, state_dir=tmp_path / "state")
    try:
        assert proc.users is not None
        proc.users.add_user(RESEARCHER, UserRole.RESEARCHER, PASSWORD)
        proc.users.add_user(AUDITOR, UserRole.AUDITOR, PASSWORD)
        secret = _enrol_totp(proc.users, clock, RESEARCHER)
        yield People(cluster=cluster, users=proc.users, clock=clock, totp_secret=secret)
    finally:
        cluster.close()


def test_researcher_logs_in_with_totp_submits_reads_and_downloads_its_job(people: People) -> None:
    # Arrange
    people.cluster.node("alpha")
    people.cluster.wait_online(["alpha"])
    client = people.client(RESEARCHER)

    # Act
    grant = client.login(RESEARCHER, PASSWORD, people.code())
    view = client.submit_job(job_toml(rounds=1, min_nodes=1, sites=("alpha",)))
    done = wait_job(client, view["job_id"], timeout_s=60.0)
    params, signature = client.fetch_signed_model(view["job_id"])

    # Assert
    assert grant.role == "researcher" and grant.session and grant.expires_at > people.clock()
    assert done["state"] == "completed" and done["owner"] == RESEARCHER
    assert [j["job_id"] for j in client.list_jobs()["jobs"]] == [view["job_id"]]
    assert len(params) > 0 and signature
    logins = [e for e in people.audit_actions() if e[0] == "login.succeeded"]
    assert logins and logins[0][1] == RESEARCHER


def test_calls_without_a_login_are_refused(people: People) -> None:
    client = people.client(RESEARCHER)

    with pytest.raises(AuthenticationError, match="requires a login"):
        client.submit_job(job_toml())
    with pytest.raises(AuthenticationError, match="requires a login"):
        client.list_jobs()
    denied = [e for e in people.audit_actions() if e[0] == "access.denied"]
    assert [(e[1], e[2]["reason"]) for e in denied] == [(RESEARCHER, "no login session")] * 2


def test_auditor_reads_every_job_but_cannot_submit_cancel_or_download(people: People) -> None:
    # Arrange: the researcher's job, and an auditor logged in (password only: TOTP is optional for auditors)
    researcher = people.client(RESEARCHER)
    researcher.login(RESEARCHER, PASSWORD, people.code())
    job_id = researcher.submit_job(job_toml(name="theirs"))["job_id"]
    auditor = people.client(AUDITOR)
    auditor.login(AUDITOR, PASSWORD)

    # Act / Assert: reads are allowed on any job
    assert auditor.get_job(job_id)["owner"] == RESEARCHER
    assert [j["job_id"] for j in auditor.list_jobs()["jobs"]] == [job_id]
    # writes and results are not
    with pytest.raises(PermissionDenied, match=r"auditor 'auditor' may not job\.submit"):
        auditor.submit_job(job_toml(name="mine"))
    with pytest.raises(PermissionDenied, match=r"no job\.cancel right"):
        auditor.cancel_job(job_id)
    with pytest.raises(PermissionDenied, match=r"no result\.read right"):
        auditor.fetch_model(job_id)
    denied = [e for e in people.audit_actions() if e[0] == "access.denied"]
    assert [e[2]["method"] for e in denied] == ["job.submit", "job.cancel", "result.read"]
    assert all(e[1] == AUDITOR for e in denied)
    assert researcher.get_job(job_id)["state"] != "cancelled"


def test_researcher_sees_only_its_own_jobs(people: People) -> None:
    # Arrange: a second researcher (own certificate, own login) with a job of their own
    add_user(people.cluster.fed.root, "carol", Role.RESEARCHER)
    people.users.add_user("carol", UserRole.RESEARCHER, PASSWORD)
    carol = people.client("carol")
    carol.login("carol", PASSWORD)
    theirs = carol.submit_job(job_toml(name="carols"))["job_id"]
    researcher = people.client(RESEARCHER)
    researcher.login(RESEARCHER, PASSWORD, people.code())
    mine = researcher.submit_job(job_toml(name="mine"))["job_id"]

    # Act / Assert
    assert [j["job_id"] for j in researcher.list_jobs()["jobs"]] == [mine]
    with pytest.raises(PermissionDenied, match="only on their own jobs"):
        researcher.get_job(theirs)
    with pytest.raises(PermissionDenied, match="only on their own jobs"):
        researcher.cancel_job(theirs)


def test_wrong_totp_is_refused_and_locks_the_account_after_n_tries(people: People) -> None:
    client = people.client(RESEARCHER)
    right = people.code()
    wrong = "000000" if right != "000000" else "111111"

    # Act: max_failures wrong codes (with the right password)
    for _ in range(POLICY.max_failures):
        with pytest.raises(PermissionDenied, match="authentication failed"):
            client.login(RESEARCHER, PASSWORD, wrong)

    # Assert: locked, so even the right code is refused now ...
    with pytest.raises(PermissionDenied, match="authentication failed"):
        client.login(RESEARCHER, PASSWORD, right)
    failed = [e[2].get("reason") for e in people.audit_actions() if e[0] == "login.failed"]
    assert failed == ["wrong or reused code"] * POLICY.max_failures + ["locked"]
    # ... until the lockout ends
    people.clock.t += POLICY.lockout_s + 1
    assert client.login(RESEARCHER, PASSWORD, people.code()).role == "researcher"


def test_idle_and_expired_sessions_are_refused(people: People) -> None:
    client = people.client(RESEARCHER)
    client.login(RESEARCHER, PASSWORD, people.code())
    client.list_jobs()  # live

    # Act: idle past the timeout
    people.clock.t += POLICY.session_idle_s + 1
    with pytest.raises(PermissionDenied, match="authentication failed"):
        client.list_jobs()

    # a fresh login, kept busy, still ends at the session's absolute lifetime
    people.clock.t += 30
    client.login(RESEARCHER, PASSWORD, people.code())
    steps = int(POLICY.session_max_s // (POLICY.session_idle_s / 2)) + 1
    with pytest.raises(PermissionDenied, match="authentication failed"):
        for _ in range(steps):
            people.clock.t += POLICY.session_idle_s / 2
            client.list_jobs()
    ended = [e[2].get("reason") for e in people.audit_actions() if e[0] == "logout"]
    assert ended == ["idle", "expired"]


def test_a_session_works_only_with_its_own_users_certificate(people: People) -> None:
    # Arrange: the researcher's session, stolen by the auditor's certificate
    researcher = people.client(RESEARCHER)
    grant = researcher.login(RESEARCHER, PASSWORD, people.code())
    auditor = people.client(AUDITOR)
    auditor.session = grant.session

    # Act / Assert
    with pytest.raises(PermissionDenied, match="authentication failed"):
        auditor.list_jobs()
    # and a certificate cannot log in as someone else, even with their password
    with pytest.raises(PermissionDenied, match="authentication failed"):
        auditor.login(RESEARCHER, PASSWORD, people.code())
    reasons = [e[2].get("reason", "") for e in people.audit_actions() if e[0] in ("access.denied", "login.failed")]
    assert reasons == ["the session belongs to another user than the certificate", "certificate of another user"]
    researcher.list_jobs()  # the rightful owner is unaffected


def test_without_a_user_store_the_certificate_alone_decides_as_before(cluster: Cluster) -> None:
    client = cluster.client(RESEARCHER)

    job_id = client.submit_job(job_toml())["job_id"]

    assert [j["job_id"] for j in client.list_jobs()["jobs"]] == [job_id]
    with pytest.raises(ConfigError, match="no user store"):
        client.login(RESEARCHER, PASSWORD, "123456")


def test_cli_login_writes_a_private_session_that_job_commands_use(
    people: People, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange
    config = people.cluster.fed.client_toml(RESEARCHER)
    assert main(["job", "list", "--config", str(config)]) == 1  # no session yet
    assert "requires a login" in capsys.readouterr().err

    # Act
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{PASSWORD}\n{people.code()}\n"))
    code = main(["login", "--config", str(config), "--password-stdin"])

    # Assert
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"as researcher {RESEARCHER!r}" in out
    path = session_path(config)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert main(["job", "list", "--config", str(config)]) == 0
    people.clock.t += POLICY.session_idle_s + 1  # automatic logoff
    assert main(["job", "list", "--config", str(config)]) == 1
    assert "authentication failed" in capsys.readouterr().err


def test_coordinator_process_opens_the_user_store_in_its_state_dir(
    fed: Federation, processes: Processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: <state>/users.db made by the operator, its TOTP secrets sealed under $MEDFED_DATA_KEY
    key = generate_key("k1")
    monkeypatch.setenv("MEDFED_DATA_KEY", f"k1:{base64.b64encode(key.secret).decode()}")
    state = tmp_path / "state"
    users = UserStore(state / "users.db", audit=lambda e, f: None, keyring=Keyring.single(key), policy=POLICY)
    users.add_user(RESEARCHER, UserRole.RESEARCHER, PASSWORD)
    users.close()
    coordinator = processes.coordinator(state)
    config = str(fed.client_toml(RESEARCHER))

    def medfed(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "medfed", *argv], input=stdin, capture_output=True, text=True, timeout=60
        )

    # Act / Assert: refused before the login, served after it
    before = medfed("job", "list", "--config", config)
    assert before.returncode == 1 and "requires a login" in before.stderr
    login = medfed("login", "--config", config, "--password-stdin", stdin=f"{PASSWORD}\n\n")
    assert login.returncode == 0, login.stderr
    after = medfed("job", "list", "--config", config)
    assert after.returncode == 0, after.stderr
    assert f"people log in against {state / 'users.db'}" in coordinator.text()
