"""Integrity wired into the running federation (real mTLS on loopback): the coordinator and every
node keep a tamper-evident audit log of a job, a site can check the coordinator's record of its
participation against its own, and the final model ships signed with its provenance."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from integration.support import SITE_DATA, Cluster, job_toml, wait_job
from medfed.core.config import parse_job_spec
from medfed.core.errors import StoreError
from medfed.core.params import Parameters
from medfed.crypto.signing import ModelSignature, verify_model
from medfed.security.audit import read_log, verify_chain
from medfed.security.audit_chain import compare_participation

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
