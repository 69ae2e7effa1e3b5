"""The restore drill (issue 5): back up a running coordinator's state, destroy it, restore it,
and the job resumes from the backed-up round and completes. Real coordinator over mTLS, real
nodes in threads, the real SQLite store; the backup is taken while rounds are being written."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from integration.support import SITE_DATA, Federation, job_toml, start_cluster, wait_job, wait_until
from medfed.crypto.aead import Keyring, generate_key
from medfed.security.backup import backup, restore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
ROUNDS = 15
#: long enough to act between rounds, short enough that nodes stop promptly on a loaded machine
SLOW_ROUND = {"input_dim": 13, "local_steps": 100, "batch_size": 8, "lr": 0.02}


def _finished_rounds(state: Path, job_id: str) -> dict[int, float]:
    db = sqlite3.connect(f"{(state / 'coordinator.sqlite').as_uri()}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT round, finished FROM rounds WHERE job_id=? AND kind='fit'", (job_id,)).fetchall()
    finally:
        db.close()
    return {int(r): float(f) for r, f in rows}


def test_backup_destroy_restore_resume(fed: Federation, tmp_path: Path) -> None:
    # Arrange: a running job on three sites
    state, archive = tmp_path / "state", tmp_path / "backups" / "coordinator.mfbk"
    archive.parent.mkdir()
    ring = Keyring.single(generate_key("drill"))
    cluster = start_cluster(fed, state)
    try:
        for site in SITE_DATA:
            cluster.node(site)
        cluster.wait_online(tuple(SITE_DATA), timeout_s=60)
        client = cluster.client()
        spec = job_toml(rounds=ROUNDS, min_nodes=3, deadline_s=60, retries=2, task_options=SLOW_ROUND)
        job_id = client.submit_job(spec, "job.toml")["job_id"]
        wait_until(lambda: client.get_job(job_id)["completed_round"] >= 2, timeout_s=90, what="round 2")

        # Act 1: an online backup while the job runs
        backup(state, archive, ring)
    finally:
        cluster.proc.stop(grace_s=1.0)  # the coordinator first: nodes then fail fast and stop promptly
        cluster.close()

    # Act 2: disaster, then restore into the same place and start a fresh coordinator on it
    shutil.rmtree(state)
    restore(archive, state, ring)
    backed_up = _finished_rounds(state, job_id)
    done = max(backed_up)
    assert 2 <= done < ROUNDS, f"the backup came too late to test a resume (round {done} done)"
    restarted_at = time.time()
    cluster = start_cluster(fed, state)
    try:
        for site in SITE_DATA:
            cluster.node(site)
        view = wait_job(cluster.client(), job_id, timeout_s=200)
    finally:
        cluster.close()

    # Assert: completed; rounds from the backup kept as they were, the rest run after the restore
    assert view["state"] == "completed", view.get("error")
    after = _finished_rounds(state, job_id)
    assert sorted(after) == list(range(1, ROUNDS + 1)), (done, sorted(after))
    for rnd in range(1, done + 1):
        assert after[rnd] == backed_up[rnd] < restarted_at
    assert all(after[rnd] > restarted_at for rnd in range(done + 1, ROUNDS + 1))
