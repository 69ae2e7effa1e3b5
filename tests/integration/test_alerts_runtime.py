"""Security alerts at a running coordinator over real mutual TLS: failed logins through the Login
RPC and a node sending poisoned updates each become an alert in ``state_dir/alerts.sqlite`` and an
``alert.raised`` event in the coordinator's tamper-evident audit log, whose chain still verifies."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.support import (
    RESEARCHER,
    Cluster,
    Federation,
    Processes,
    job_toml,
    make_federation,
    start_cluster,
    wait_job,
    wait_until,
)
from medfed.cli.main import main
from medfed.coordinator.alerting import access_event
from medfed.coordinator.app import start_coordinator
from medfed.coordinator.audit_hooks import CoordinatorAudit
from medfed.coordinator.people import open_user_store
from medfed.coordinator.service import CoordinatorSettings
from medfed.core.errors import PermissionDenied
from medfed.core.params import Parameters
from medfed.core.records import Scalar
from medfed.crypto.aead import Keyring, generate_key
from medfed.learn.base import FitOutput, TabularData
from medfed.learn.tasks import LogisticRegressionTask
from medfed.security.access_anomaly import AccessAction
from medfed.security.alerts import AlertSource, AlertStore
from medfed.security.authz import UserRole
from medfed.security.users import AuthPolicy, UserStore

pytestmark = pytest.mark.timeout(180)

PASSWORD = "correct horse battery staple"
POLICY = AuthPolicy(argon2_time_cost=1, argon2_memory_kib=8 * 1024, argon2_parallelism=1, max_failures=20,
                    max_attempts_per_user=20)  # fmt: skip
OPTIONS: dict[str, Scalar] = {"input_dim": 13, "local_steps": 5, "batch_size": 8, "lr": 0.05}


def alert_events(cluster: Cluster) -> list[dict[str, object]]:
    log = cluster.coordinator.audit.log
    return [dict(e.fields) | {"actor": e.actor} for e in log.entries() if e.action == "alert.raised"]


@pytest.fixture
def with_users(fed: Federation, tmp_path: Path) -> Iterator[Cluster]:
    keyring = Keyring.single(generate_key("k1"))

    def users(audit: CoordinatorAudit) -> UserStore:
        return open_user_store(tmp_path / "users.db", keyring=keyring, audit=audit, policy=POLICY)

    proc = start_coordinator(
        CoordinatorSettings(state_dir=tmp_path / "state", heartbeat_interval_s=0.3),
        address="127.0.0.1:0", tls=fed.server_tls(), crl_path=fed.kit("coordinator") / "crl.pem", users=users,
    )  # fmt: skip
    cluster = Cluster(fed=fed, proc=proc, state_dir=tmp_path / "state")
    try:
        assert proc.users is not None
        proc.users.add_user(RESEARCHER, UserRole.RESEARCHER, PASSWORD)
        yield cluster
    finally:
        cluster.close()


def test_failed_logins_over_mtls_raise_one_audited_alert(with_users: Cluster) -> None:
    # Arrange: a person (the researcher's certificate) guessing passwords through the Login RPC
    cluster, client = with_users, with_users.client(RESEARCHER)
    for k in range(7):
        with pytest.raises(PermissionDenied, match="authentication failed"):
            client.login(RESEARCHER, f"guess number {k} of many")

    # Act: scan; then scan once more
    first = cluster.coordinator.alerting.scan_now()
    again = cluster.coordinator.alerting.scan_now()

    # Assert: one failed-logins alert about the researcher, in the store and in the audit log
    stored = AlertStore(cluster.state_dir / "alerts.sqlite").list(kind="failed_logins")
    assert len(stored) == 1 and [a.alert_id for a in first] == [stored[0].alert_id] and again == []
    alert = stored[0]
    assert alert.subject == RESEARCHER and alert.source is AlertSource.ACCESS
    assert alert.reason.startswith("7 failed logins in one window")
    events = alert_events(cluster)
    assert len(events) == 1
    assert events[0]["alert_id"] == alert.alert_id and events[0]["user"] == RESEARCHER
    assert events[0]["reason"] == alert.reason and events[0]["actor"] == "coordinator"
    audit = cluster.coordinator.audit
    assert audit.log.verify(audit.key.public_pem).ok


def test_a_few_failed_logins_raise_nothing(with_users: Cluster) -> None:
    client = with_users.client(RESEARCHER)
    for k in range(3):
        with pytest.raises(PermissionDenied):
            client.login(RESEARCHER, f"typo number {k}")
    assert client.login(RESEARCHER, PASSWORD).role == "researcher"

    assert with_users.coordinator.alerting.scan_now() == []
    assert alert_events(with_users) == []


class PoisonTask(LogisticRegressionTask):
    """Trains honestly, then sends ``reference - 20 * update``: a boosted sign flip."""

    def fit(self, params: Parameters, data: TabularData, config: dict[str, Scalar], seed: int) -> FitOutput:
        out = super().fit(params, data, config, seed)
        poisoned = {n: r - 20.0 * (out.parameters[n] - r) for n, r in params}
        return FitOutput(parameters=Parameters.from_numpy(poisoned), num_examples=out.num_examples,
                         metrics=out.metrics)  # fmt: skip


def test_a_poisoning_node_becomes_an_updates_alert(tmp_path: Path, heart: dict[str, TabularData]) -> None:
    # Arrange: three honest sites and mallory, a job with anomaly detection
    sites = ("alpha", "beta", "gamma", "mallory")
    fed = make_federation(tmp_path / "fed", dict(heart) | {"mallory": heart["beta"]}, sites=sites)
    cluster = start_cluster(fed, tmp_path / "state", heartbeat_s=1.0)
    try:
        for site in sites[:3]:
            cluster.node(site)
        cluster.node("mallory", task_loader=lambda name: PoisonTask())
        cluster.wait_online(sites)
        client = cluster.client()
        spec = job_toml(name="detect", rounds=2, seed=7, task_options=OPTIONS, min_nodes=4, retries=1)
        job_id = client.submit_job(spec + "\n[robust]\ndetect_anomalies = true\n", "detect.toml")["job_id"]
        assert wait_job(client, job_id, timeout_s=90)["state"] == "completed"

        # Act
        new = cluster.coordinator.alerting.scan_now()

        # Assert: mallory, once per fit round; no honest site; audited with the job and round
        assert sorted((a.subject, a.round) for a in new) == [("mallory", 1), ("mallory", 2)]
        assert all(a.source is AlertSource.UPDATES and a.job_id == job_id for a in new)
        assert all("norm_outlier" in a.kind.split(",") and "robust SDs above" in a.reason for a in new)
        events = alert_events(cluster)
        assert sorted((e["site"], e["round"], e["job_id"]) for e in events) == [
            ("mallory", 1, job_id), ("mallory", 2, job_id)
        ]  # fmt: skip
        assert cluster.coordinator.alerting.scan_now() == []
        # a model download is an export in the audit log: who, which job, how many bytes
        model = client.fetch_model(job_id)
        exported = [e for e in cluster.coordinator.audit.log.entries() if e.action == "data.exported"]
        assert [(e.actor, e.fields["job_id"], e.fields["bytes"]) for e in exported] == [
            (RESEARCHER, job_id, model.nbytes)
        ]
        event = access_event(exported[0], lambda job: "heart")
        assert event is not None and event.action is AccessAction.EXPORT and event.bytes == model.nbytes
        audit = cluster.coordinator.audit
        assert audit.log.verify(audit.key.public_pem).ok
    finally:
        cluster.close()


def test_a_coordinator_process_scans_by_itself_and_the_cli_lists_its_alerts(
    fed: Federation, processes: Processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    # Arrange: a coordinator process with a user store and alert scans every 0.3 s
    key = generate_key("k1")
    monkeypatch.setenv("MEDFED_DATA_KEY", f"k1:{base64.b64encode(key.secret).decode()}")
    state = tmp_path / "state"
    users = UserStore(state / "users.db", audit=lambda e, f: None, keyring=Keyring.single(key), policy=POLICY)
    users.add_user(RESEARCHER, UserRole.RESEARCHER, PASSWORD)
    users.close()
    args = ["coordinator", "start", "--kit", str(fed.kit("coordinator")), "--state", str(state),
            "--listen", f"127.0.0.1:{fed.port}", "--alert-scan", "0.3"]  # fmt: skip
    coordinator = processes.run(args, "coordinator")
    wait_until(lambda: "coordinator ready on port" in coordinator.text() or coordinator.popen.poll() is not None,
               timeout_s=60.0, what="the coordinator process to listen")  # fmt: skip
    assert coordinator.popen.poll() is None, coordinator.text()
    client = processes.client()

    # Act: guesses over mTLS; the process's own scanner raises the alert
    for k in range(6):
        with pytest.raises(PermissionDenied):
            client.login(RESEARCHER, f"guess number {k} of many")
    client.close()
    store = AlertStore(state / "alerts.sqlite")
    try:
        alerts = wait_until(lambda: store.list(kind="failed_logins"), timeout_s=30.0, what="the alert scan")
    finally:
        store.close()
    capsys.readouterr()
    code = main(["alerts", "list", "--state", str(state), "--json"])

    # Assert
    assert alerts[0].subject == RESEARCHER
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and [(r["subject"], r["kind"]) for r in rows] == [(RESEARCHER, "failed_logins")]
