"""Integrity wired into the running federation (real mTLS on loopback): the coordinator and every
node keep a tamper-evident audit log of a job, a site can check the coordinator's record of its
participation against its own, and the final model ships signed with its provenance."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from integration.support import (
    RESEARCHER,
    SITE_DATA,
    Cluster,
    Federation,
    NodeThread,
    Process,
    Processes,
    job_toml,
    sites_online,
    wait_job,
    wait_until,
)
from medfed.cli.main import main as cli_main
from medfed.coordinator.app import start_coordinator
from medfed.coordinator.audit_hooks import CoordinatorAudit
from medfed.coordinator.checkpoints import load_checkpoint
from medfed.coordinator.service import CoordinatorSettings
from medfed.core.config import parse_job_spec
from medfed.core.errors import StoreError
from medfed.core.params import Parameters
from medfed.core.records import TaskKind, TaskMessage
from medfed.crypto.aead import is_envelope
from medfed.crypto.signing import ModelSignature, generate_signing_key, verify_model
from medfed.node.governance import NodeGovernance
from medfed.node.ledger import PrivacyLedger
from medfed.node.runtime import NodeRuntime, NodeSettings
from medfed.security.audit import read_log, verify_chain
from medfed.security.audit_chain import compare_participation
from medfed.security.keys import generate_keyring_file
from medfed.transport.grpc_client import GrpcCoordinatorLink

SITES = tuple(SITE_DATA)
ROUNDS = 2
pytestmark = pytest.mark.timeout(150)


def _run_job(cluster: Cluster, nodes: Path) -> tuple[str, str, Parameters]:
    for site in SITES:
        cluster.node(site, state_dir=nodes / site)
    cluster.wait_online(SITES)
    client = cluster.client()
    spec = job_toml(name="audited", rounds=ROUNDS, min_nodes=3)
    job_id = client.submit_job(spec, "audited.toml")["job_id"]
    view = wait_job(client, job_id, timeout_s=60)
    assert view["state"] == "completed", view["error"]
    return job_id, spec, client.fetch_model(job_id)


def _tamper(path: Path, statement: str) -> None:
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER audit_no_update")
    db.execute(statement)
    db.commit()
    db.close()


def test_both_sides_audit_a_job_and_agree_on_every_update(cluster: Cluster, tmp_path: Path) -> None:
    # Arrange / Act
    nodes = tmp_path / "nodes"
    job_id, spec, _ = _run_job(cluster, nodes)
    cluster.coordinator.audit.log.checkpoint()
    coordinator_pub = (cluster.state_dir / "signing.key.pub").read_bytes()

    # Assert: the coordinator's log verifies and records the job's life
    theirs, checkpoints = read_log(cluster.state_dir / "audit.sqlite")
    assert verify_chain(theirs, checkpoints, coordinator_pub).ok
    actions = [e.action for e in theirs if e.fields.get("job_id") == job_id]
    downloads = [i for i, a in enumerate(actions) if a == "data.exported"]  # the researcher fetched the model
    assert downloads and downloads[0] > actions.index("job.finished")
    actions = [a for a in actions if a != "data.exported"]
    assert actions[0] == "job.submitted" and "model.signed" in actions and actions[-1] == "job.finished"
    submitted = next(e for e in theirs if e.action == "job.submitted")
    assert submitted.fields["spec_hash"] == parse_job_spec(spec).spec_hash and submitted.actor == "researcher"
    received = [e for e in theirs if e.action == "result.received"]
    assert len(received) == len(SITES) * (ROUNDS + 1)  # fit rounds and the final evaluation
    assert all(len(str(e.fields["update_sha256"])) == 64 for e in received if e.fields["round"] <= ROUNDS)

    # every site's own log verifies, and matches the coordinator's record of its participation
    for site in SITES:
        mine, site_checkpoints = read_log(nodes / site / "audit.sqlite")
        assert verify_chain(mine, site_checkpoints, (nodes / site / "audit-signing.key.pub").read_bytes()).ok
        assert {e.action for e in mine} >= {"data.accessed", "result.sent"}
        report = compare_participation(theirs, mine, site=site)
        assert report.ok, report.problems
        assert report.matched == ROUNDS + 1


def test_a_tampered_entry_is_named_and_breaks_the_participation_match(cluster: Cluster, tmp_path: Path) -> None:
    # Arrange
    nodes = tmp_path / "nodes"
    _run_job(cluster, nodes)
    site_log = nodes / "alpha" / "audit.sqlite"
    mine, _ = read_log(site_log)
    sent = next(e for e in mine if e.action == "result.sent" and e.fields.get("update_sha256"))

    # Act: rewrite the digest the site recorded for one update
    forged = "0" * 64
    _tamper(site_log, f"UPDATE audit SET fields=replace(fields, '{sent.fields['update_sha256']}', '{forged}')")

    # Assert: verification names the edited entry; the participation check names the round
    entries, checkpoints = read_log(site_log)
    report = verify_chain(entries, checkpoints, (nodes / "alpha" / "audit-signing.key.pub").read_bytes())
    assert report.first_bad is not None and report.first_bad[0] == sent.seq, report
    theirs, _ = read_log(cluster.state_dir / "audit.sqlite")
    problems = compare_participation(theirs, entries, site="alpha").problems
    assert any(f"round {sent.fields['round']}: update digest differs" in p for p in problems), problems


def test_the_final_model_is_signed_with_its_provenance(cluster: Cluster, tmp_path: Path) -> None:
    # Arrange
    job_id, spec, model = _run_job(cluster, tmp_path / "nodes")
    public = (cluster.state_dir / "signing.key.pub").read_bytes()
    signature = ModelSignature.from_json_bytes((cluster.state_dir / "models" / f"{job_id}.sig.json").read_bytes())

    # Act
    provenance = verify_model(model, signature, public)

    # Assert: provenance names the spec, the rounds and the sites; an altered model is refused
    assert provenance.job_id == job_id and provenance.job_hash == parse_job_spec(spec).spec_hash
    assert provenance.rounds == ROUNDS and provenance.sites == tuple(sorted(SITES))
    altered = Parameters.from_numpy({n: a + np.float32(1e-3) for n, a in model})
    with pytest.raises(StoreError):
        verify_model(altered, signature, public)
    with pytest.raises(StoreError):
        verify_model(model, None, public)


def _sealed_coordinator(processes: Processes, state: Path, key_file: Path, log_name: str) -> Process:
    """``medfed coordinator start --key-file``: a real process, so it can be killed (no clean stop)."""
    fed = processes.fed
    args = ["coordinator", "start", "--kit", str(fed.kit("coordinator")), "--state", str(state),
            "--listen", f"127.0.0.1:{fed.port}", "--heartbeat", "0.5", "--key-file", str(key_file)]  # fmt: skip
    proc = processes.run(args, log_name)
    wait_until(
        lambda: "coordinator ready on port" in proc.text() or proc.popen.poll() is not None,
        timeout_s=60, what="the coordinator process to listen",
    )  # fmt: skip
    assert proc.popen.poll() is None, proc.text()
    return proc


def _node_threads(fed: Federation) -> list[NodeThread]:
    nodes = []
    for site in SITES:
        settings = NodeSettings(
            site=site, datasets={"heart": fed.dataset(site)}, poll_wait_s=1.0, backoff_initial_s=0.05,
            backoff_max_s=0.5,
        )  # fmt: skip
        link = GrpcCoordinatorLink(f"127.0.0.1:{fed.port}", fed.tls(site), timeout_s=10.0)
        nodes.append(NodeThread(NodeRuntime(settings, link)))
        nodes[-1].start()
    return nodes


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_checkpoints_and_models_are_sealed_at_rest_and_a_killed_coordinator_resumes_from_them(
    processes: Processes, tmp_path: Path
) -> None:
    # Arrange: a coordinator process with a keyring kept outside its state directory, three nodes
    key_file, state = tmp_path / "keyring.json", tmp_path / "state"
    generate_keyring_file(key_file, "k1")
    coordinator = _sealed_coordinator(processes, state, key_file, "coordinator-1")
    nodes = _node_threads(processes.fed)
    client = processes.client()
    try:
        wait_until(lambda: sites_online(client, set(SITES)), timeout_s=60, what="sites online", interval_s=0.2)
        slow = {"input_dim": 13, "local_steps": 400, "batch_size": 8, "lr": 0.02}
        spec = job_toml(name="sealed", rounds=5, min_nodes=3, deadline_s=60, retries=2, task_options=slow)
        job_id = client.submit_job(spec, "sealed.toml")["job_id"]
        wait_until(lambda: client.get_job(job_id)["completed_round"] >= 2, timeout_s=90, what="round 2")

        # Act: SIGKILL the coordinator mid-job; start it again with the same state and key
        coordinator.kill()
        coordinator = _sealed_coordinator(processes, state, key_file, "coordinator-2")
        view = wait_job(client, job_id, timeout_s=150)
        model = client.fetch_model(job_id)
    finally:
        client.close()
        for node in nodes:
            node.runtime.stop()
        for node in nodes:
            node.join(15.0)

    # Assert: resumed from a sealed checkpoint (not round 0) to the end
    assert view["state"] == "completed", view["error"]
    resumed = re.search(rf"resuming job {job_id} \(sealed\) after round (\d+)", coordinator.text())
    assert resumed is not None and int(resumed.group(1)) >= 2, coordinator.text()[-2000:]
    # every checkpoint and the final model on disk are envelopes, not a plaintext .npz (a zip: "PK")
    files = [*sorted((state / "checkpoints" / job_id).glob("*.npz")), state / "models" / f"{job_id}.npz"]
    assert len(files) >= 6
    for path in files:
        blob = path.read_bytes()
        assert is_envelope(blob) and not blob.startswith(b"PK"), path
    # the model served from the sealed checkpoint is the signed one; without the key nothing opens
    signature = ModelSignature.from_json_bytes((state / "models" / f"{job_id}.sig.json").read_bytes())
    verify_model(model, signature, (processes.fed.kit(RESEARCHER) / "coordinator-signing.pub").read_bytes())
    final = max(files[:-1])
    with pytest.raises(StoreError, match="encrypted at rest"):
        load_checkpoint(final, "0" * 64)


def _coordinator_on_the_kits_port(cluster: Cluster, *, signing_key: Path | None) -> None:
    """Swap the fixture's coordinator for one on the port the kits name (so ``client.toml`` works)."""
    old = cluster.coordinator
    cluster.proc.stop(grace_s=1.0)
    old.store.close()
    fed = cluster.fed
    settings = CoordinatorSettings(state_dir=cluster.state_dir, heartbeat_interval_s=0.3, signing_key=signing_key)
    cluster.proc = start_coordinator(settings, address=f"127.0.0.1:{fed.port}", tls=fed.server_tls(), crl_path=None)


def _one_round_job(cluster: Cluster) -> str:
    for site in SITES:
        cluster.node(site)
    cluster.wait_online(SITES)
    client = cluster.client()
    job_id = client.submit_job(job_toml(name="signed", rounds=1, min_nodes=3), "signed.toml")["job_id"]
    assert wait_job(client, job_id, timeout_s=60)["state"] == "completed"
    return str(job_id)


def test_job_result_out_verifies_the_signature_with_the_kits_key_and_writes_it_beside_the_model(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange: the coordinator signs with the key provisioned in its kit (public half in every kit)
    _coordinator_on_the_kits_port(cluster, signing_key=cluster.fed.kit("coordinator") / "signing.key")
    job_id = _one_round_job(cluster)
    out = tmp_path / "out" / "model.npz"

    # Act
    code = cli_main(["job", "result", job_id, "--config", str(cluster.fed.client_toml()), "--out", str(out)])

    # Assert: the model and its signature are on disk and verify against the researcher's kit
    assert code == 0, capsys.readouterr().err
    assert "signature verified" in capsys.readouterr().out
    with np.load(out, allow_pickle=False) as npz:
        model = Parameters.from_numpy({k: npz[k] for k in npz.files})
    signature = ModelSignature.from_json_bytes((tmp_path / "out" / "model.sig.json").read_bytes())
    kit_pub = (cluster.fed.kit(RESEARCHER) / "coordinator-signing.pub").read_bytes()
    assert kit_pub == (cluster.fed.kit("alpha") / "coordinator-signing.pub").read_bytes()
    assert verify_model(model, signature, kit_pub).job_id == job_id


def test_job_result_out_refuses_a_model_signed_by_another_key(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange: this coordinator signs with a key of its own (state_dir), not the one the kits trust
    _coordinator_on_the_kits_port(cluster, signing_key=None)
    job_id = _one_round_job(cluster)
    out = tmp_path / "model.npz"

    # Act
    code = cli_main(["job", "result", job_id, "--config", str(cluster.fed.client_toml()), "--out", str(out)])

    # Assert: refused with the one opaque signature error; nothing written
    assert code == 1
    assert "signature" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "model.sig.json").exists()


def _verifying_node(cluster: Cluster, site: str, key: bytes, state: Path) -> NodeThread:
    settings = NodeSettings(
        site=site, datasets={"heart": cluster.fed.dataset(site)}, poll_wait_s=1.0, backoff_initial_s=0.05,
        backoff_max_s=0.5, state_dir=state / site, coordinator_key=key,
    )  # fmt: skip
    node = NodeThread(NodeRuntime(settings, cluster.link(site)))
    cluster.nodes.append(node)
    node.start()
    return node


@pytest.mark.parametrize("trusted", [True, False], ids=["coordinators-key", "another-key"])
def test_nodes_train_only_on_models_the_coordinator_signed(cluster: Cluster, tmp_path: Path, trusted: bool) -> None:
    # Arrange: nodes that hold the coordinator's public key, or some other key
    key = (cluster.state_dir / "signing.key.pub").read_bytes() if trusted else generate_signing_key().public_pem
    for site in SITES:
        _verifying_node(cluster, site, key, tmp_path / "nodes")
    cluster.wait_online(SITES)
    client = cluster.client()

    # Act
    job_id = client.submit_job(job_toml(name="verified", rounds=2, min_nodes=3, retries=0), "v.toml")["job_id"]
    view = wait_job(client, job_id, timeout_s=60)

    # Assert: every round's model verified at every site, or none did and the refusals are audited
    if trusted:
        assert view["state"] == "completed", view["error"]
        return
    assert view["state"] == "failed" and "signature check failed" in view["error"], view["error"]
    for site in SITES:
        entries, _ = read_log(tmp_path / "nodes" / site / "audit.sqlite")
        assert [e.action for e in entries] == ["model.refused"]


def test_a_signed_model_is_refused_when_altered_or_replayed_into_another_round(tmp_path: Path) -> None:
    # Arrange: a round-2 model signed by the coordinator's audit key
    coordinator = CoordinatorAudit(tmp_path / "coordinator")
    spec = parse_job_spec(job_toml(name="replay", rounds=3))
    params = Parameters.from_numpy({"w": np.arange(4, dtype=np.float32)})
    signed = coordinator.sign_round_model(job_id="j1", spec=spec, aggregated=1, params=params)
    task = TaskMessage(
        task_id="t", job_id="j1", round=2, kind=TaskKind.FIT, task="logistic_regression", dataset="heart", seed=0,
        config={}, parameters=params, job_rounds=3, spec_toml=spec.source, model_signature=signed,
    )  # fmt: skip
    node = NodeGovernance(site="alpha", coordinator_key=coordinator.key.public_pem)

    # Act / Assert: the genuine task passes; each forgery is refused with one opaque reason
    node.check_model(task)
    altered = replace(task, parameters=Parameters.from_numpy({"w": np.arange(4, dtype=np.float32) + 1}))
    for forged in (altered, replace(task, round=3), replace(task, job_id="j2"), replace(task, model_signature=b"")):
        with pytest.raises(StoreError, match="signature check failed"):
            node.check_model(forged)
    coordinator.close()


def test_each_sites_log_records_the_privacy_budget_its_ledger_charged(cluster: Cluster, tmp_path: Path) -> None:
    # Arrange: DP-SGD job, each site with a budget and a state directory
    for site in SITES:
        ds = replace(cluster.fed.dataset(site), epsilon_budget=10.0, delta_budget=1e-5)
        cluster.node(site, datasets={"heart": ds}, state_dir=tmp_path / "nodes" / site)
    cluster.wait_online(SITES)
    client = cluster.client()
    options = {"input_dim": 13, "local_steps": 5, "batch_size": 8, "lr": 0.05}
    spec = job_toml(name="dp", rounds=2, task_options=options, min_nodes=3, retries=2)
    spec += "\n[privacy]\nnoise_multiplier = 1.0\nclip_norm = 1.0\ndelta = 1e-6\n"

    # Act
    job_id = client.submit_job(spec, "dp.toml")["job_id"]
    view = wait_job(client, job_id, timeout_s=120)

    # Assert: the ε each site's audit log says it spent adds up to what its ledger charged
    assert view["state"] == "completed", view["error"]
    for site in SITES:
        entries, _ = read_log(tmp_path / "nodes" / site / "audit.sqlite")
        spent = [e for e in entries if e.action == "budget.spent" and e.fields["job_id"] == job_id]
        ledger = PrivacyLedger(tmp_path / "nodes" / site / "ledger.sqlite")
        charged = ledger.job("heart", job_id)
        ledger.close()
        # two fit rounds and the final evaluation, plus any fit a round retry re-ran under load
        assert charged is not None and len(spent) == 3 + (charged.steps - 10) // 5
        assert sum(float(e.fields["epsilon"]) for e in spent) == pytest.approx(charged.epsilon_spent)
