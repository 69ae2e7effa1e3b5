"""Crashes with real processes (``python -m medfed ...``) over mutual TLS on loopback: a node
killed mid-round, and a coordinator killed mid-job and restarted on the same state."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from integration.support import SITE_DATA, Processes, job_toml, sites_online, wait_job, wait_until
from medfed.core.errors import TransportError
from medfed.crypto.aead import is_envelope
from medfed.transport.grpc_client import ResearcherClient

SITES = tuple(SITE_DATA)
#: Local steps per round: long enough (about a second per round here) to act mid-round.
SLOW_ROUND = {"input_dim": 13, "local_steps": 1500, "batch_size": 8, "lr": 0.02}
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _progress(client: ResearcherClient, job_id: str) -> int:
    return int(client.get_job(job_id)["completed_round"])


def _up(processes: Processes, client: ResearcherClient, sites: tuple[str, ...]) -> None:
    wait_until(lambda: sites_online(client, set(sites)), timeout_s=60, what=f"{sites} online", interval_s=0.2)


def _fit_sites(view: dict, rnd: int) -> set[str]:
    return {s["site"] for s in view["site_metrics"] if s["round"] == rnd and not s["error"]}


def test_node_killed_mid_round_job_completes_and_the_node_rejoins(processes: Processes, tmp_path: Path) -> None:
    # Arrange: a coordinator and three node processes; two results suffice per round
    processes.coordinator(tmp_path / "state", heartbeat_s=1.0)
    nodes = {site: processes.node(site) for site in SITES}
    client = processes.client()
    try:
        _up(processes, client, SITES)
        # 10 rounds of ~1 s or more: a restarted node needs seconds to start (torch) and must still
        # find rounds left to join, on a quiet machine (fast rounds) as on a loaded one
        slower = SLOW_ROUND | {"local_steps": 3000}
        spec = job_toml(rounds=10, min_nodes=2, deadline_s=60, retries=2, task_options=slower)
        job_id = client.submit_job(spec, "job.toml")["job_id"]

        # Act: SIGKILL gamma while round 2 trains, bring it back once round 2 closed without it
        wait_until(lambda: _progress(client, job_id) >= 1, timeout_s=60, what="round 1 to complete")
        time.sleep(0.2)
        nodes["gamma"].kill()
        killed_at = time.monotonic()
        wait_until(lambda: _progress(client, job_id) >= 2, timeout_s=30, what="round 2 to close without gamma")
        round2_s = time.monotonic() - killed_at
        processes.node("gamma")
        view = wait_job(client, job_id, timeout_s=120)
    finally:
        client.close()

    # Assert: completed; round 2 went on without gamma; gamma took part again later
    assert view["state"] == "completed", view["error"]
    assert _fit_sites(view, 1) == set(SITES)
    assert _fit_sites(view, 2) == {"alpha", "beta"}
    assert round2_s < 30, f"round 2 took {round2_s:.1f}s after the kill"
    later = [r for r in range(3, 11) if "gamma" in _fit_sites(view, r)]
    assert later, f"gamma never rejoined: {[(r, sorted(_fit_sites(view, r))) for r in range(1, 11)]}"


def _rounds_table(state: Path, job_id: str) -> dict[int, float]:
    with sqlite3.connect(f"file:{state / 'coordinator.sqlite'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT round, finished FROM rounds WHERE job_id=? AND kind='fit'", (job_id,)).fetchall()
    db.close()
    return {int(r): float(f) for r, f in rows}


def _checkpoints_table(state: Path, job_id: str) -> dict[int, tuple[str, float]]:
    with sqlite3.connect(f"file:{state / 'coordinator.sqlite'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT round, sha256, created FROM checkpoints WHERE job_id=?", (job_id,)).fetchall()
    db.close()
    return {int(r): (str(h), float(c)) for r, h, c in rows}


def test_coordinator_killed_mid_job_resumes_from_its_last_completed_round(processes: Processes, tmp_path: Path) -> None:
    # Arrange
    state = tmp_path / "state"
    coordinator = processes.coordinator(state, heartbeat_s=1.0)
    for site in SITES:
        processes.node(site)
    client = processes.client()
    try:
        _up(processes, client, SITES)
        spec = job_toml(rounds=6, min_nodes=3, deadline_s=60, retries=2, task_options=SLOW_ROUND)
        job_id = client.submit_job(spec, "job.toml")["job_id"]

        # Act: SIGKILL the coordinator once round 2 is recorded, restart it on the same state/port
        wait_until(lambda: _progress(client, job_id) >= 2, timeout_s=90, what="round 2 to complete")
        coordinator.kill()
        before_rounds, before_ckpts = _rounds_table(state, job_id), _checkpoints_table(state, job_id)
        done = max(before_rounds)
        restarted_at = time.time()
        processes.coordinator(state, heartbeat_s=1.0)
        view = wait_until(
            lambda: _view_when_done(client, job_id), timeout_s=120, what="the resumed job", interval_s=0.2
        )
    finally:
        client.close()

    # Assert: it finished, and nothing up to the last completed round was run or written again
    assert 2 <= done < 6, f"the kill came too late to test a resume (round {done} done)"
    assert view["state"] == "completed", view["error"]
    after_rounds, after_ckpts = _rounds_table(state, job_id), _checkpoints_table(state, job_id)
    assert sorted(after_rounds) == [1, 2, 3, 4, 5, 6]
    for rnd in range(1, done + 1):
        assert after_rounds[rnd] == before_rounds[rnd] < restarted_at
        assert after_ckpts[rnd] == before_ckpts[rnd]
    for rnd in range(done + 1, 7):
        assert after_rounds[rnd] > restarted_at
    assert sorted(after_ckpts) == list(range(0, 7))
    # sealed at rest by default: the kit's data.keys, no --key-file needed
    stored = [p for p in (state / "checkpoints").rglob("*") if p.is_file()] + list((state / "models").glob("*.npz"))
    assert stored and all(is_envelope(p.read_bytes()) for p in stored), stored


def _view_when_done(client: ResearcherClient, job_id: str) -> dict | None:
    try:
        view = client.get_job(job_id)
    except TransportError:  # the restarted coordinator is not listening yet
        return None
    return view if view["state"] in ("completed", "failed", "cancelled") else None
