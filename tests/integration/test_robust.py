"""Robust aggregation and anomaly detection over real mutual TLS: five in-process sites, one of
which (mallory) poisons its update. The coordinator-wide median keeps the model near the one the
honest sites train alone while plain FedAvg is wrecked; anomaly detection flags mallory in every
fit round and no honest site; jobs whose ``[robust]`` table cannot work are refused at submission."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from integration.support import Cluster, job_toml, make_federation, start_cluster, wait_job
from medfed.cli.views import console, print_job
from medfed.coordinator.robustness import RobustPlan, robust_plan
from medfed.core.config import parse_job_spec
from medfed.core.errors import ConfigError
from medfed.core.params import Parameters
from medfed.core.records import Scalar
from medfed.learn.base import FitOutput, TabularData
from medfed.learn.tasks import LogisticRegressionTask

HONEST = ("alpha", "beta", "gamma", "delta")
ATTACKER = "mallory"
SITES = (*HONEST, ATTACKER)
ROUNDS, SEED = 3, 7
OPTIONS: dict[str, Scalar] = {"input_dim": 13, "local_steps": 5, "batch_size": 8, "lr": 0.05}
#: The attacker sends ``reference − BOOST · update``: a boosted sign flip, and claims CLAIM× its examples.
BOOST, CLAIM = 20.0, 100
pytestmark = pytest.mark.timeout(120)


class PoisonTask(LogisticRegressionTask):
    """Trains honestly, then reverses and boosts its update and inflates its example count.

    A scaling plus sign-flip attack (the issue's "sign-flip, scaling"): FedAvg moves the model
    BOOST × CLAIM times against the honest direction; a coordinate-wise median ignores both the
    outlier values and the claimed weight.
    """

    def fit(self, params: Parameters, data: TabularData, config: dict[str, Scalar], seed: int) -> FitOutput:
        out = super().fit(params, data, config, seed)
        poisoned = {n: r - BOOST * (out.parameters[n] - r) for n, r in params}
        return FitOutput(
            parameters=Parameters.from_numpy(poisoned), num_examples=out.num_examples * CLAIM, metrics=out.metrics
        )


def _slice(d: TabularData, start: int, rows: int, test_rows: int) -> TabularData:
    return TabularData(
        x_train=d.x_train[start : start + rows], y_train=d.y_train[start : start + rows],
        x_test=d.x_test[: test_rows], y_test=d.y_test[: test_rows], feature_names=d.feature_names,
    )  # fmt: skip


@pytest.fixture
def five_sites(tmp_path: Path, heart: dict[str, TabularData]) -> Iterator[Cluster]:
    """Five sites: alpha, beta, gamma as in the shared fixture; delta and mallory hold other
    Cleveland and Hungary rows. The attacker trains on real data so that its update has the
    honest shape before it is poisoned."""
    data = dict(heart)
    data["delta"] = _slice(heart["alpha"], 40, 40, 40)
    data["mallory"] = _slice(heart["beta"], 40, 40, 40)
    fed = make_federation(tmp_path / "fed", data, sites=SITES)
    c = start_cluster(fed, tmp_path / "state", heartbeat_s=1.0)
    try:
        yield c
    finally:
        c.close()


def _job(name: str, *, sites: tuple[str, ...] = (), robust: str = "") -> str:
    spec = job_toml(
        name=name, rounds=ROUNDS, seed=SEED, task_options=OPTIONS, min_nodes=len(sites or SITES), sites=sites, retries=1
    )
    return spec + (f"\n[robust]\n{robust}\n" if robust else "")


def _final_accuracy(view: dict[str, Any]) -> float:
    final = max(r["round"] for r in view["round_metrics"])
    accs = [
        s["metrics"]["eval_accuracy"]
        for s in view["site_metrics"]
        if s["round"] == final and s["kind"] == "evaluate" and s["site"] in HONEST
    ]
    return float(np.mean(accs))


def _distance(a: Parameters, b: Parameters) -> float:
    return float(np.sqrt(sum(np.sum((x - y) ** 2) for (_, x), (_, y) in zip(a, b, strict=True))))


def test_median_resists_a_poisoning_site_that_wrecks_fedavg_and_detection_flags_it(five_sites: Cluster) -> None:
    cluster = five_sites
    # Arrange: four honest sites and mallory, whose task poisons every update it sends
    for site in HONEST:
        cluster.node(site)
    cluster.node(ATTACKER, task_loader=lambda name: PoisonTask())
    cluster.wait_online(SITES)
    client = cluster.client()
    specs = {
        "honest": _job("honest", sites=HONEST),
        "fedavg": _job("fedavg"),
        "detect": _job("detect", robust="detect_anomalies = true"),
        "median": _job("median", robust='rule = "median"\nbyzantine = 1'),
    }

    # Act: the four jobs run side by side on the same sites (same seed, so the same local training)
    ids = {name: client.submit_job(spec, f"{name}.toml")["job_id"] for name, spec in specs.items()}
    views = {name: wait_job(client, job_id, timeout_s=90) for name, job_id in ids.items()}
    models = {name: client.fetch_model(job_id) for name, job_id in ids.items()}

    # Assert: every job completed with every site in every round
    for name, view in views.items():
        assert view["state"] == "completed", (name, view["error"])
    honest = models["honest"]
    moved = _distance(honest, LogisticRegressionTask().init_parameters(dict(OPTIONS), SEED))
    # The median stays near the honest-only model (well within what the honest sites moved it in
    # ROUNDS rounds); FedAvg is thrown far away against the honest direction
    assert _distance(models["median"], honest) < 0.5 * moved
    assert _distance(models["fedavg"], honest) > 10 * moved
    assert _final_accuracy(views["median"]) >= _final_accuracy(views["honest"]) - 0.05
    assert _final_accuracy(views["fedavg"]) < _final_accuracy(views["honest"]) - 0.2
    # Detection alone reports but changes nothing: the model is FedAvg's
    assert models["detect"].allclose(models["fedavg"], rtol=1e-4, atol=1e-6)
    # No [robust] table: no reports (jobs without it behave as before)
    assert views["fedavg"]["anomalies"] == [] and views["honest"]["anomalies"] == []
    for name in ("detect", "median"):
        reports = views[name]["anomalies"]
        assert {(a["round"], a["site"]) for a in reports} == {(r, s) for r in range(1, ROUNDS + 1) for s in SITES}
        flagged = {(a["round"], a["site"]) for a in reports if a["flags"]}
        assert flagged == {(r, ATTACKER) for r in range(1, ROUNDS + 1)}, (name, reports)
        for a in reports:
            if a["site"] == ATTACKER:
                assert set(a["flags"]) == {"norm_outlier", "low_cosine"} and a["cosine"] < 0 and a["robust_z"] > 3.5
                assert "robust SDs above" in a["reason"]
    # `medfed job result` shows the flagged updates in an "Anomalies" table
    with console.capture() as shown:
        print_job(views["median"], detail=True)
    table = shown.get().split("Anomalies: 3 of 15 updates flagged in 3 fit round(s)")[1]
    assert table.count(ATTACKER) == table.count("norm_outlier") == table.count("low_cosine") == ROUNDS
    assert not any(site in table for site in HONEST)


# --- refused at submission: nothing is written ---------------------------------------------


@pytest.mark.parametrize(
    ("robust", "expected"),
    [
        ('rule = "bulyan"', ["unknown robust rule 'bulyan'", "'median'", "'trimmed_mean'", "'multi_krum'"]),
        ('rule = "krum"\nbyzantine = 1', ["krum with byzantine=1 needs n >= 2f + 3 = 5 nodes, got n=4"]),
        ('rule = "median"\nbyzantine = 2', ["median with byzantine=2 needs an honest majority", "got n=4"]),
        ('rule = "trimmed_mean"\nbyzantine = 1', ["trim_fraction=0.1 and n=4, fewer than byzantine=1"]),
        ('rule = "norm_bounded"', ["norm_bounded needs norm_bound"]),
        (
            'rule = "bulyan"\nbyzantine = -1\nnorm_bond = 2.0',
            ["unknown robust rule 'bulyan'", "byzantine must be an integer >= 0", "'norm_bond'"],
        ),
    ],
    ids=["unknown-rule", "krum-intolerable", "median-no-majority", "trim-too-small", "no-norm-bound", "all-listed"],
)
def test_a_robust_table_that_cannot_work_is_refused_at_submission(
    cluster: Cluster, robust: str, expected: list[str]
) -> None:
    spec = job_toml(min_nodes=4) + f"\n[robust]\n{robust}\n"

    with pytest.raises(ConfigError) as err:
        cluster.client().submit_job(spec, "robust.toml")

    message = str(err.value)
    assert message.startswith("robust.toml: the job's [robust] table cannot be used:")
    for text in expected:
        assert text in message, message
    assert cluster.coordinator.store.jobs() == []


def test_rules_that_need_individual_updates_are_refused_with_secure_aggregation() -> None:
    def plan(robust: str) -> RobustPlan | None:
        spec = parse_job_spec(job_toml(min_nodes=4) + f"\n[robust]\n{robust}\n")
        return robust_plan(spec, secure_aggregation=True)

    with pytest.raises(ConfigError) as err:
        plan('rule = "median"')
    assert "robust rule 'median' cannot combine with secure aggregation" in str(err.value)
    assert "detect_anomalies needs every node's individual update" in str(err.value)
    bounded = plan('rule = "norm_bounded"\nnorm_bound = 1.0\ndetect_anomalies = false')
    assert bounded is not None and bounded.rule == "norm_bounded" and not bounded.detect
