"""Every CLI command that talks to the coordinator goes as the person: their login session
(``medfed login --config``) or an API token (``--token-file``, ``$MEDFED_TOKEN``), over real mutual
TLS to a coordinator with a user store. Without either it is refused with the login to run; a
token outside its scopes is refused naming the missing right; nothing is stored for a refused call.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from integration.support import RESEARCHER, Cluster, Federation, NodeThread
from integration.test_people_access import PASSWORD, POLICY, Clock, _enrol_totp
from medfed.cli.client import open_client
from medfed.cli.config import session_path
from medfed.cli.main import main
from medfed.coordinator.app import start_coordinator
from medfed.coordinator.audit_hooks import CoordinatorAudit
from medfed.coordinator.people import open_user_store
from medfed.coordinator.service import CoordinatorSettings
from medfed.crypto.aead import Keyring, generate_key
from medfed.node.runtime import NodeRuntime, NodeSettings
from medfed.security.authz import Action, Principal, UserRole
from medfed.security.users import UserStore, totp_code
from medfed.synth.release import ReleasePolicy

pytestmark = pytest.mark.timeout(180)

#: A query one site answers: the cholesterol column of alpha's 80 training rows.
QUERY = """
[job]
name = "chol"
dataset = "heart"
sites = ["alpha"]

[rounds]
min_nodes = 1
deadline_s = 60

[query]
kind = "describe"
columns = ["chol"]
"""

#: A synthesis job at alpha (its ledger pays ε = 1).
SYNTHESIS = """
[job]
name = "synthetic-heart"
dataset = "heart"
sites = ["alpha"]

[rounds]
min_nodes = 1
deadline_s = 60

[synthesis]
method = "mst"
epsilon = 1.0
delta = 1e-6
rows = 100
target = "label"
public_bounds = true
"""


@dataclass
class Desk:
    """A researcher's desk: the coordinator (with a user store), their client.toml and job files."""

    cluster: Cluster
    users: UserStore
    clock: Clock
    secret: bytes  # the researcher's TOTP secret
    config: Path
    query: Path
    synthesis: Path

    def login(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.clock.t += 30  # a TOTP code works once
        code = totp_code(self.secret, at=self.clock())
        monkeypatch.setattr("sys.stdin", io.StringIO(f"{PASSWORD}\n{code}\n"))
        assert main(["login", "--config", str(self.config), "--password-stdin"]) == 0

    def token(self, *scopes: Action) -> str:
        principal = Principal(user_id=RESEARCHER, role=UserRole.RESEARCHER)
        return self.users.issue_token(principal, scopes=frozenset(scopes), ttl_s=3600.0, label="script").secret

    def commands(self) -> dict[str, list[str]]:
        """The three commands under test, each with this desk's client.toml."""
        config = ["--config", str(self.config)]
        return {
            "query submit": ["query", "submit", str(self.query), *config],
            "catalog search": ["catalog", "search", "heart", "--federation", *config],
            "synth submit": ["synth", "submit", str(self.synthesis), *config],
        }


@pytest.fixture
def desk(fed: Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Desk]:
    monkeypatch.delenv("MEDFED_TOKEN", raising=False)
    keyring = Keyring.single(generate_key("k1"))
    clock = Clock()

    def users(audit: CoordinatorAudit) -> UserStore:
        return open_user_store(tmp_path / "users.db", keyring=keyring, audit=audit, policy=POLICY, clock=clock)

    # a 2 s heartbeat: an in-process node fitting a synthesizer holds the GIL for a while
    settings = CoordinatorSettings(state_dir=tmp_path / "state", heartbeat_interval_s=2.0)
    proc = start_coordinator(
        settings, address=f"127.0.0.1:{fed.port}", tls=fed.server_tls(), crl_path=None, users=users
    )  # the port the kits' client.toml names
    cluster = Cluster(fed=fed, proc=proc, state_dir=tmp_path / "state")
    try:
        assert proc.users is not None
        proc.users.add_user(RESEARCHER, UserRole.RESEARCHER, PASSWORD)
        secret = _enrol_totp(proc.users, clock, RESEARCHER)
        (tmp_path / "query.toml").write_text(QUERY)
        (tmp_path / "synthesis.toml").write_text(SYNTHESIS)
        yield Desk(
            cluster=cluster, users=proc.users, clock=clock, secret=secret, config=fed.client_toml(RESEARCHER),
            query=tmp_path / "query.toml", synthesis=tmp_path / "synthesis.toml",
        )  # fmt: skip
    finally:
        cluster.close()


def test_without_a_login_each_command_is_refused_naming_the_login_to_run(
    desk: Desk, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, argv in desk.commands().items():
        # Act
        code = main(argv)

        # Assert
        err = capsys.readouterr().err
        assert code == 1, name
        assert "requires a login" in err and f"medfed login --config {desk.config}" in err, (name, err)
        assert str(session_path(desk.config)) in err and "--token-file" in err, (name, err)
    assert desk.cluster.coordinator.store.jobs() == []  # nothing was submitted


def test_a_login_session_carries_query_catalog_and_synth(
    desk: Desk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange: a node answers the query (it records what it answered); the researcher logs in through the CLI
    desk.cluster.node("alpha", state_dir=tmp_path / "nodes" / "alpha")
    desk.cluster.wait_online(["alpha"])
    desk.login(monkeypatch)
    capsys.readouterr()
    commands = desk.commands()

    # Act / Assert: the query runs to its result
    assert main([*commands["query submit"], "--wait", "--timeout", "120"]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "query job" in out and "chol" in out
    query_id = out.split("query job ", 1)[1].split()[0]
    assert main(["query", "result", query_id, "--config", str(desk.config)]) == 0
    assert "chol" in capsys.readouterr().out

    assert main(commands["catalog search"]) == 0
    assert "no dataset matches" in capsys.readouterr().out  # alpha's legacy CSV publishes no catalog entry

    assert main(commands["synth submit"]) == 0
    out = capsys.readouterr().out
    synth_id = out.split("synthesis job ", 1)[1].split()[0]

    # the coordinator stored both jobs as the researcher's
    jobs = {j.job_id: j.owner for j in desk.cluster.coordinator.store.jobs()}
    assert jobs == {query_id: RESEARCHER, synth_id: RESEARCHER}


def test_a_login_session_runs_a_synthesis_job_to_its_combined_table(
    desk: Desk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange: alpha with an ε budget and a release policy that lets its (noisy, 80-row) scores pass
    heart = dataclasses.replace(desk.cluster.fed.dataset("alpha"), epsilon_budget=5.0, delta_budget=1e-5)
    policy = ReleasePolicy(max_mia_auc=1.0)
    node = NodeSettings(
        site="alpha", datasets={"heart": heart}, poll_wait_s=1.0, backoff_initial_s=0.05, backoff_max_s=0.5,
        state_dir=tmp_path / "nodes" / "alpha", synthetic=policy,
    )  # fmt: skip
    thread = NodeThread(NodeRuntime(node, desk.cluster.link("alpha")))
    desk.cluster.nodes.append(thread)  # stopped with the cluster
    thread.start()
    desk.cluster.wait_online(["alpha"])
    desk.login(monkeypatch)
    capsys.readouterr()
    out, again = tmp_path / "combined.csv", tmp_path / "again.csv"

    # Act
    submit = [*desk.commands()["synth submit"], "--wait", "--timeout", "180", "--out", str(out)]
    code = main(submit)
    printed = capsys.readouterr()
    job_id = printed.out.split("synthesis job ", 1)[1].split()[0]
    result = main(["synth", "result", job_id, "--config", str(desk.config), "--out", str(again)])

    # Assert: alpha's released rows, with the site column, the same table both times
    assert code == 0, printed
    assert result == 0, capsys.readouterr()
    combined = pd.read_csv(out)
    assert len(combined) > 0 and set(combined["site"]) == {"alpha"}
    pd.testing.assert_frame_equal(pd.read_csv(again), combined)


def test_a_token_works_within_its_scopes_and_is_refused_outside_them(
    desk: Desk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange: a script's token in a file, and a narrower one in the environment
    token_file = tmp_path / "token"
    token_file.write_text(desk.token(Action.JOB_SUBMIT, Action.JOB_READ, Action.CATALOG_READ) + "\n")
    token_file.chmod(0o600)  # a bearer secret: the CLI refuses one others can read
    commands = desk.commands()

    # Act / Assert: the file's token may submit and search
    for name, argv in commands.items():
        assert main([*argv, "--token-file", str(token_file)]) == 0, (name, capsys.readouterr().err)
    capsys.readouterr()
    assert len(desk.cluster.coordinator.store.jobs()) == 2

    # a read-only token may do none of the three, and each refusal names the right it lacks
    monkeypatch.setenv("MEDFED_TOKEN", desk.token(Action.JOB_READ))
    missing = {"query submit": "job.submit", "catalog search": "catalog.read", "synth submit": "job.submit"}
    for name, argv in commands.items():
        assert main(argv) == 1, name
        err = capsys.readouterr().err
        assert missing[name] in err and "scope" in err, (name, err)
    assert len(desk.cluster.coordinator.store.jobs()) == 2  # nothing more was stored


def test_a_refused_session_or_token_says_what_was_sent_and_what_to_do(
    desk: Desk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    search = desk.commands()["catalog search"]
    # Arrange: a session that the coordinator logs off when idle
    desk.login(monkeypatch)
    assert main(search) == 0
    desk.clock.t += POLICY.session_idle_s + 1
    capsys.readouterr()

    # Act / Assert: the opaque refusal, then which session it was and the login to run
    assert main(search) == 1
    err = capsys.readouterr().err
    assert "authentication failed" in err and f"the login session in {session_path(desk.config)} was refused" in err
    assert f"medfed login --config {desk.config}" in err

    # Arrange: a revoked token in a file
    session_path(desk.config).unlink()
    secret = desk.token(Action.CATALOG_READ)
    token_file = tmp_path / "token"
    token_file.write_text(secret)
    token_file.chmod(0o600)  # a bearer secret: the CLI refuses one others can read
    assert main([*search, "--token-file", str(token_file)]) == 0
    for tok in desk.users.tokens(RESEARCHER):
        desk.users.revoke_token(tok.token_id, by=Principal(user_id=RESEARCHER, role=UserRole.RESEARCHER))
    capsys.readouterr()

    # Act / Assert
    assert main([*search, "--token-file", str(token_file)]) == 1
    err = capsys.readouterr().err
    assert "authentication failed" in err and f"the API token from --token-file {token_file} was refused" in err


def test_the_client_takes_the_token_file_then_the_session_then_the_environment(
    fed: Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: a client.toml of its own (its session file is this test's), a session, a token file
    config = fed.client_toml(RESEARCHER)
    mine = config.with_name("client-precedence.toml")
    mine.write_text(config.read_text())
    token_file = tmp_path / "token"
    token_file.write_text("medfed-token-from-file\n")
    token_file.chmod(0o600)  # a bearer secret: the CLI refuses one others can read
    monkeypatch.setenv("MEDFED_TOKEN", "medfed-token-from-env")

    def who(**given: object) -> tuple[str, str]:
        client = open_client(argparse.Namespace(config=mine, token_file=None) if not given else
                             argparse.Namespace(config=mine, **given))  # fmt: skip
        try:
            return client.session, client.token
        finally:
            client.close()

    # Act / Assert
    assert who() == ("", "medfed-token-from-env")  # no session yet: the environment's token
    session_path(mine).write_text("session-secret\n")
    assert who() == ("session-secret", "")  # a session wins over the environment
    assert who(token_file=token_file) == ("", "medfed-token-from-file")  # an explicit file wins over both
    monkeypatch.delenv("MEDFED_TOKEN")
    session_path(mine).unlink()
    assert who() == ("", "")  # nothing: the certificate alone


def test_synth_submit_refuses_a_file_without_a_synthesis_table(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "query.toml"
    spec.write_text(QUERY)

    code = main(["synth", "submit", str(spec), "--config", str(fed.client_toml(RESEARCHER))])

    assert code == 1
    err = capsys.readouterr().err
    assert "query.toml" in err and "no [synthesis] table" in err
