"""Secure aggregation (SecAgg+) and client-level DP-FedAvg in the round loop, over real mutual TLS.

A job with ``[secure_aggregation]`` trains to the same model as plain FedAvg (up to quantisation),
while the coordinator receives only masked integer vectors; a site that vanishes after masking is
unmasked from its neighbours' shares and the round equals FedAvg over the survivors; client-level
DP (central or distributed noise) charges each site's ledger the accountant's ε; combinations that
cannot work are refused at submission.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from integration.support import Cluster, Federation, job_toml, start_cluster, wait_job
from medfed.coordinator.rounds import RoundInProgress
from medfed.core.config import parse_job_spec
from medfed.core.errors import ConfigError, TransportError
from medfed.core.records import ResultMessage, TaskKind, TaskMessage
from medfed.node.ledger import PrivacyLedger
from medfed.node.middleware import Handler, NodeContext, audit_log, check_output, errors_as_values
from medfed.node.privacy import client_dp_epsilon, privacy_budget
from medfed.node.secure import secure_aggregation
from medfed.secagg.wire import MASKED_NAME

SITES = ("alpha", "beta", "gamma")
pytestmark = pytest.mark.timeout(150)


@pytest.fixture
def cluster(fed: Federation, tmp_path: Path) -> Iterator[Cluster]:
    c = start_cluster(fed, tmp_path / "state", heartbeat_s=1.0)
    try:
        yield c
    finally:
        c.close()


def _job(name: str, *, sites: tuple[str, ...] = (), min_nodes: int = 3, extra: str = "") -> str:
    return job_toml(name=name, rounds=3, sites=sites, min_nodes=min_nodes, retries=1) + extra


def _recorded_fit_rounds(monkeypatch: pytest.MonkeyPatch) -> list[RoundInProgress]:
    """Every secure fit round the coordinator opens, captured as it is created (what it received)."""
    seen: list[RoundInProgress] = []
    original = RoundInProgress.__init__

    def spy(self: RoundInProgress, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if self.keep_raw and self.key.kind is TaskKind.FIT:
            seen.append(self)

    monkeypatch.setattr(RoundInProgress, "__init__", spy)
    return seen


def test_secure_job_trains_the_fedavg_model_and_the_coordinator_sees_only_masked_vectors(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    for site in SITES:
        cluster.node(site)
    cluster.wait_online(SITES)
    client = cluster.client()
    seen = _recorded_fit_rounds(monkeypatch)

    plain_id = client.submit_job(_job("plain"), "plain.toml")["job_id"]
    plain = wait_job(client, plain_id, timeout_s=90)
    secure_id = client.submit_job(_job("secure", extra="\n[secure_aggregation]\n"), "secure.toml")["job_id"]
    secure = wait_job(client, secure_id, timeout_s=90)

    assert plain["state"] == "completed", plain["error"]
    assert secure["state"] == "completed", secure["error"]
    # Same seed, same local training: the securely summed model is FedAvg's up to quantisation
    assert client.fetch_model(secure_id).allclose(client.fetch_model(plain_id), atol=1e-4, rtol=1e-4)
    fit_rounds = [r for r in secure["round_metrics"] if r["kind"] == "fit"]
    assert [r["aggregated"]["secagg_survivors"] for r in fit_rounds] == [3.0, 3.0, 3.0]
    # What the coordinator received in each secure fit: one uint32 vector per site, no model. The
    # unmasked inputs lie in [0, 2^32 / 3] (headroom for 3 summands); masked ones fill the range.
    assert len(seen) == 3
    received = []
    for round_ in seen:
        assert set(round_.raw) == set(SITES)
        for msg in round_.raw.values():
            assert msg.parameters is not None and msg.parameters.names == (MASKED_NAME,)
            assert msg.parameters.arrays[0].dtype == np.uint32
            received.append(msg.parameters.arrays[0])
    above_headroom = float(np.mean(np.concatenate(received) > (2**32 - 1) // 3))
    assert 0.5 < above_headroom < 0.83  # 2/3 expected (135 values); 0 if they were not masked


def _drop_after_masking(task: TaskMessage, ctx: NodeContext, nxt: Handler) -> ResultMessage:
    """Masks like any node, then loses its masked input (the node vanishes before sending it)."""
    result = nxt(task, ctx)
    if task.kind is TaskKind.FIT and task.payload:
        raise TransportError("connection lost after masking")
    return result


def test_a_site_that_vanishes_after_masking_is_unmasked_and_the_sum_is_the_survivors(cluster: Cluster) -> None:
    cluster.node("alpha")
    cluster.node("beta")
    chain = [errors_as_values, audit_log, privacy_budget, _drop_after_masking, secure_aggregation, check_output]
    cluster.node("gamma", middleware=chain)
    cluster.wait_online(SITES)
    client = cluster.client()

    survivors_id = client.submit_job(_job("two", sites=("alpha", "beta"), min_nodes=2), "two.toml")["job_id"]
    survivors = wait_job(client, survivors_id, timeout_s=90)
    secure_id = client.submit_job(_job("drop", min_nodes=2, extra="\n[secure_aggregation]\n"), "drop.toml")["job_id"]
    secure = wait_job(client, secure_id, timeout_s=90)

    assert survivors["state"] == "completed", survivors["error"]
    assert secure["state"] == "completed", secure["error"]
    for r in (r for r in secure["round_metrics"] if r["kind"] == "fit"):
        assert r["aggregated"]["secagg_survivors"] == 2.0 and r["aggregated"]["secagg_dropped"] == 1.0
    # gamma's masks were removed with alpha's and beta's shares: the sum is exactly theirs
    assert client.fetch_model(secure_id).allclose(client.fetch_model(survivors_id), atol=1e-4, rtol=1e-4)


def _budgeted(cluster: Cluster, tmp_path: Path, epsilon_budget: float) -> None:
    for site in SITES:
        ds = dataclasses.replace(cluster.fed.dataset(site), epsilon_budget=epsilon_budget, delta_budget=1e-5)
        cluster.node(site, datasets={"heart": ds}, state_dir=tmp_path / "nodes" / site)
    cluster.wait_online(SITES)


@pytest.mark.parametrize("noise", ["central", "distributed"])
def test_client_level_dp_charges_each_site_the_accountants_epsilon(
    cluster: Cluster, tmp_path: Path, noise: str
) -> None:
    _budgeted(cluster, tmp_path, epsilon_budget=50.0)
    client = cluster.client()
    secure = "\n[secure_aggregation]\n" if noise == "distributed" else ""
    extra = (
        f'\n[client_dp]\nnoise_multiplier = 1.5\nclip_norm = 0.5\nexpected_nodes = 3\nnoise = "{noise}"\n'
        f"delta = 1e-6\n{secure}"
    )

    view = wait_job(client, client.submit_job(_job(f"cdp-{noise}", extra=extra), "cdp.toml")["job_id"], timeout_s=90)

    assert view["state"] == "completed", view["error"]
    expected = client_dp_epsilon(1.5, rounds=3, delta=1e-6)
    final = max(r["round"] for r in view["round_metrics"])
    spent = {s["site"]: s["metrics"]["privacy_epsilon_spent"] for s in view["site_metrics"] if s["round"] == final}
    assert spent == {site: pytest.approx(expected) for site in SITES}
    # what a site computed on its data stays there (eval_epsilon = 0: no accuracy either), also the
    # share of its update that secure aggregation's quantiser clipped
    for s in view["site_metrics"]:
        assert not {"secagg_clipped_fraction", "eval_accuracy", "eval_loss", "train_loss"} & set(s["metrics"])
        assert s["metrics"]["metrics_withheld"] > 0
    for site in SITES:
        ledger = PrivacyLedger(tmp_path / "nodes" / site / "ledger.sqlite")
        status = ledger.status("heart")
        assert status is not None and status.epsilon_used == pytest.approx(expected)
        ledger.close()


def test_a_client_dp_job_the_budget_cannot_pay_is_refused_with_nothing_charged(
    cluster: Cluster, tmp_path: Path
) -> None:
    _budgeted(cluster, tmp_path, epsilon_budget=0.5)
    client = cluster.client()
    extra = "\n[client_dp]\nnoise_multiplier = 1.0\nexpected_nodes = 3\n"

    view = wait_job(client, client.submit_job(_job("greedy", extra=extra), "greedy.toml")["job_id"], timeout_s=60)

    assert view["state"] == "failed" and "budget" in view["error"]
    for site in SITES:
        ledger = PrivacyLedger(tmp_path / "nodes" / site / "ledger.sqlite")
        assert ledger.status("heart").epsilon_used == 0.0  # type: ignore[union-attr]
        ledger.close()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('\n[secure_aggregation]\n[robust]\nrule = "median"\n', "cannot combine with secure aggregation"),
        ("\n[secure_aggregation]\n[robust]\ndetect_anomalies = true\n", "detect_anomalies"),
        ('\n[client_dp]\nnoise_multiplier = 1.0\nnoise = "distributed"\n', "needs \\[secure_aggregation\\]"),
        ("\n[client_dp]\nnoise_multiplier = 1.0\n[privacy]\nnoise_multiplier = 1.0\n", "pick one privacy unit"),
        ("\n[secure_aggregation]\nneighbours = 3\n", "even number"),
        ("\n[secure_aggregation]\nclip_range = 0.5\n", "clip_range must be >= 1"),
        ("\n[secure_aggregation]\nthreshhold = 2\n", "unknown key secure_aggregation.threshhold"),
    ],
)
def test_combinations_that_cannot_work_are_refused_at_submission(cluster: Cluster, extra: str, message: str) -> None:
    client = cluster.client()
    with pytest.raises(ConfigError, match=message):
        parse_and_submit(client, _job("bad", extra=extra))


def parse_and_submit(client: Any, text: str) -> None:
    """Parse locally first (what the CLI does), then submit; either refuses."""
    parse_job_spec(text, source_name="bad.toml")
    client.submit_job(text, "bad.toml")
