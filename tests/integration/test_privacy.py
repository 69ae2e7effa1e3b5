"""Differential privacy end to end over mTLS: each site charges its own ledger, shows the spend in
the job result, and refuses a job its budget cannot pay — whatever the researcher asked for."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.support import Cluster, Federation, job_toml, start_cluster, wait_job
from medfed.core.records import PrivacySpec
from medfed.node.ledger import PrivacyLedger
from medfed.node.privacy import dp_sgd_epsilon

SITES = ("alpha", "beta", "gamma")


@pytest.fixture
def cluster(fed: Federation, tmp_path: Path) -> Iterator[Cluster]:
    """As the shared fixture, with a 2 s heartbeat: three in-process nodes each spend ~0.5 s of
    GIL in the PLD accountant per task, which would starve a 0.3 s heartbeat (separate node
    processes, as deployed, do not share a GIL)."""
    c = start_cluster(fed, tmp_path / "state", heartbeat_s=2.0)
    try:
        yield c
    finally:
        c.close()


def _dp_job(noise: float, *, rounds: int = 2, name: str = "dp") -> str:
    options = {"input_dim": 13, "local_steps": 5, "batch_size": 8, "lr": 0.05}
    spec = job_toml(name=name, rounds=rounds, task_options=options, min_nodes=3, retries=2)
    return spec + f"\n[privacy]\nnoise_multiplier = {noise}\nclip_norm = 1.0\ndelta = 1e-6\n"


def _start(cluster: Cluster, tmp_path: Path, epsilon_budget: float) -> None:
    for site in SITES:
        ds = dataclasses.replace(cluster.fed.dataset(site), epsilon_budget=epsilon_budget, delta_budget=1e-5)
        cluster.node(site, datasets={"heart": ds}, state_dir=tmp_path / "nodes" / site)
    cluster.wait_online(SITES)


@pytest.mark.slow
def test_dp_job_charges_each_site_and_reports_the_spend(cluster: Cluster, tmp_path: Path) -> None:
    _start(cluster, tmp_path, epsilon_budget=10.0)
    client = cluster.client()

    view = wait_job(client, client.submit_job(_dp_job(1.0), "dp.toml")["job_id"], timeout_s=120)

    assert view["state"] == "completed", view["error"]
    final = max(r["round"] for r in view["round_metrics"])
    spent = {s["site"]: s["metrics"]["privacy_epsilon_spent"] for s in view["site_metrics"] if s["round"] == final}
    assert set(spent) == set(SITES)
    for site in SITES:
        n_train = len(cluster.fed.dataset(site).path.joinpath("train.csv").read_text().splitlines()) - 1
        spec = PrivacySpec(noise_multiplier=1.0, delta=1e-6)
        # DP-SGD over both rounds, plus three noised accuracies (two fit rounds and the final model)
        expected = dp_sgd_epsilon(spec, sampling_rate=8 / n_train, steps=10) + 3 * spec.eval_epsilon
        assert spent[site] == pytest.approx(expected)
        ledger = PrivacyLedger(tmp_path / "nodes" / site / "ledger.sqlite")
        status = ledger.status("heart")
        assert status is not None and status.epsilon_used == pytest.approx(expected)  # closed: nothing held
        ledger.close()


@pytest.mark.slow
def test_a_job_the_budget_cannot_pay_is_refused_at_the_nodes(cluster: Cluster, tmp_path: Path) -> None:
    _start(cluster, tmp_path, epsilon_budget=1.0)
    client = cluster.client()

    view = wait_job(client, client.submit_job(_dp_job(0.4, rounds=3), "greedy.toml")["job_id"], timeout_s=60)

    assert view["state"] == "failed"
    assert "budget" in view["error"] and "needs ε=" in view["error"]
    for site in SITES:
        ledger = PrivacyLedger(tmp_path / "nodes" / site / "ledger.sqlite")
        assert ledger.status("heart").epsilon_used == 0.0  # type: ignore[union-attr]
        ledger.close()


@pytest.mark.slow
def test_a_job_without_dp_is_refused_on_a_budgeted_dataset(cluster: Cluster, tmp_path: Path) -> None:
    _start(cluster, tmp_path, epsilon_budget=5.0)
    client = cluster.client()

    view = wait_job(client, client.submit_job(job_toml(retries=0), "plain.toml")["job_id"], timeout_s=60)

    assert view["state"] == "failed"
    assert "only under differential privacy" in view["error"]
