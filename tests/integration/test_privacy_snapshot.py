"""The coordinator keeps each site's privacy-ledger figures (total, used, held) and the Privacy page
shows them: after a failed DP job's holds are released, nothing is left "not explained here".

Over real mTLS with real ledgers: the node sends its ledger's figures when it asks which of its
jobs ended, and once more right after it released the holds of ended ones.
"""

from __future__ import annotations

import functools
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.support import Cluster, Federation, start_cluster, wait_job, wait_until
from integration.test_privacy_release import _account, _accountant, _dp_job, _node
from medfed.coordinator.store import MIGRATIONS, SCHEMA, SCHEMA_VERSION, Store
from medfed.coordinator.store_budgets import BudgetSnapshot
from medfed.core.errors import ValidationError
from medfed.dashboard.pages.privacy import budget_gauges
from medfed.transport.api import BudgetFigures, Hello

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def cluster(fed: Federation, tmp_path: Path) -> Iterator[Cluster]:
    c = start_cluster(fed, tmp_path / "state", heartbeat_s=2.0)
    try:
        yield c
    finally:
        c.close()


def _snapshot(cluster: Cluster, site: str) -> BudgetSnapshot | None:
    found = [s for s in cluster.coordinator.store.budget_snapshots() if s.site == site and s.figures.dataset == "heart"]
    return found[0] if found else None


def _released(cluster: Cluster, site: str) -> BudgetSnapshot | None:
    """The site's snapshot once it shows a spend and no hold."""
    snap = _snapshot(cluster, site)
    return snap if snap is not None and snap.figures.epsilon_used > 0 and snap.figures.epsilon_held == 0 else None


def test_after_a_failed_jobs_release_the_coordinator_and_the_privacy_page_show_the_ledger(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Arrange: alpha and beta run the job; gamma's admin approved nothing, so the job fails in round 1
    state = tmp_path / "nodes"
    _node(cluster, "alpha", state)
    _node(cluster, "beta", state)
    _node(cluster, "gamma", state, approval_required=True)
    cluster.wait_online(("alpha", "beta", "gamma"))
    client = cluster.client()

    # Act
    job_id = client.submit_job(_dp_job(rounds=4, min_nodes=3, name="refused"), "dp.toml")["job_id"]
    assert wait_job(client, job_id, timeout_s=150)["state"] == "failed"

    # Assert: each site's snapshot, once its hold is released, shows the rounds' ε used and nothing held
    # (the one sent at registration has nothing used; one sent while the job ran has its hold)
    for site in ("alpha", "beta"):
        snap = wait_until(
            functools.partial(_released, cluster, site), timeout_s=60, what=f"site {site}'s snapshot without holds",
            interval_s=0.2,
        )  # fmt: skip
        assert isinstance(snap, BudgetSnapshot)
        job, used, _ = _account(state, site, job_id)
        assert job is not None and not job.open
        assert snap.figures.epsilon_used == pytest.approx(_accountant(cluster, site, job.steps))
        assert snap.figures.epsilon_used == pytest.approx(used)
        assert snap.figures.epsilon_total == 100.0 and snap.figures.delta_total == 1e-5
    gauges = {g.site: g for g in budget_gauges(cluster.coordinator) if g.dataset == "heart"}
    for site in ("alpha", "beta"):
        g = gauges[site]
        job = _account(state, site, job_id)[0]
        assert job is not None
        assert g.epsilon_held == 0.0 and g.epsilon_unexplained == pytest.approx(0.0, abs=1e-9)
        assert g.epsilon_used == pytest.approx(job.epsilon_spent)  # no hold counted any more
        assert g.epsilon_left == pytest.approx(100.0 - job.epsilon_spent)
        # the failed round's result was not kept: the ledger's committed figure says what it spent
        assert g.epsilon_unreported == pytest.approx(job.epsilon_spent - g.epsilon_spent_by_jobs)
        assert "ledger" in g.left_source and g.left_at is not None
    assert gauges["gamma"].epsilon_used == pytest.approx(0.0)  # registered, never reserved


def test_a_malformed_budget_report_is_refused_and_nothing_is_stored(cluster: Cluster) -> None:
    node = cluster.link("alpha")
    node.register(Hello(version="t", datasets=("heart",)))
    good = BudgetFigures(
        dataset="heart", epsilon_total=4.0, delta_total=1e-5, epsilon_used=1.0, delta_used=1e-6,
        epsilon_held=0.5, delta_held=0.0,
    )  # fmt: skip
    bad = BudgetFigures(
        dataset="", epsilon_total=math.nan, delta_total=1e-5, epsilon_used=-1.0, delta_used=0.0,
        epsilon_held=0.0, delta_held=0.0,
    )  # fmt: skip

    with pytest.raises(ValidationError) as caught:
        node.jobs_ended((), (good, bad))

    assert "names no dataset" in str(caught.value) and "epsilon_total, epsilon_used" in str(caught.value)
    assert cluster.coordinator.store.budget_snapshots() == []
    assert node.jobs_ended((), (good,)) == {}
    (kept,) = cluster.coordinator.store.budget_snapshots()
    assert kept.site == "alpha" and kept.figures == good


def test_a_store_opened_at_version_2_gains_the_snapshot_table(tmp_path: Path) -> None:
    # a store as the release with schema version 2 left it
    conn = sqlite3.connect(tmp_path / "c.sqlite")
    conn.executescript(SCHEMA)
    for statement in dict(MIGRATIONS)[2]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()

    again = Store(tmp_path / "c.sqlite")

    assert again.schema_version == SCHEMA_VERSION and again.budget_snapshots() == []
