"""Stragglers and dropouts with in-process nodes over real gRPC + mutual TLS: a node that hangs
or restarts mid-round must not hold the round until its deadline when the others are done."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.support import SITE_DATA, Cluster, Federation, job_toml, start_cluster, wait_job, wait_until
from medfed.core.params import Parameters
from medfed.core.records import Scalar
from medfed.learn.base import FitOutput, TabularData
from medfed.learn.tasks import LogisticRegressionTask

SITES = tuple(SITE_DATA)
DEADLINE_S = 40.0
pytestmark = pytest.mark.timeout(120)


class HangingTask(LogisticRegressionTask):
    """Blocks in fit until released: a node process that froze, then was killed."""

    def __init__(self, started: threading.Event, release: threading.Event) -> None:
        self.started, self.release = started, release

    def fit(self, params: Parameters, data: TabularData, config: dict[str, Scalar], seed: int) -> FitOutput:
        self.started.set()
        self.release.wait(60)
        return super().fit(params, data, config, seed)


@pytest.fixture
def calm_cluster(fed: Federation, tmp_path: Path) -> Iterator[Cluster]:
    """Heartbeats every second: this test is about re-registration, not staleness, and must not
    see a live node as stale on a loaded machine."""
    c = start_cluster(fed, tmp_path / "state", heartbeat_s=1.0)
    try:
        yield c
    finally:
        c.close()


def test_a_node_restarted_mid_round_does_not_hold_the_round_until_its_deadline(calm_cluster: Cluster) -> None:
    # Arrange: gamma's first incarnation hangs in its first fit task
    cluster = calm_cluster
    started, release = threading.Event(), threading.Event()
    cluster.node("alpha")
    cluster.node("beta")
    frozen = cluster.node("gamma", task_loader=lambda name: HangingTask(started, release))
    cluster.wait_online(SITES)
    client = cluster.client()
    job = client.submit_job(job_toml(rounds=3, min_nodes=2, deadline_s=DEADLINE_S, retries=0), "job.toml")
    wait_until(started.is_set, timeout_s=20, what="gamma to start its task")

    try:
        # Act: gamma "dies" (its runtime stops heartbeating; the thread stays stuck in fit) and a
        # new gamma starts at once, before the coordinator could notice the silence
        frozen.runtime.stop()
        t0 = time.monotonic()
        cluster.node("gamma")
        view = wait_job(client, job["job_id"], timeout_s=DEADLINE_S + 20)
        elapsed = time.monotonic() - t0
    finally:
        release.set()

    # Assert: round 1 closed without gamma long before its deadline, and gamma took part again
    assert view["state"] == "completed", view["error"]
    assert elapsed < DEADLINE_S / 2, f"the job waited {elapsed:.1f}s for a task nobody was running"
    by_round = {(s["round"], s["site"]): s["error"] for s in view["site_metrics"]}
    assert "reconnected" in by_round[(1, "gamma")]
    assert any(by_round.get((r, "gamma")) == "" for r in (2, 3, 4)), by_round
