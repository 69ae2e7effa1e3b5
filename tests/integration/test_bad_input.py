"""Bad input over real gRPC + mutual TLS: malformed job files, unknown plug-ins, a dataset missing
at a node, a node that sends NaNs or wrong shapes. Each is a clear error naming what and where,
and the coordinator's record of the job stays consistent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from integration.support import SITE_DATA, Cluster, Federation, job_toml, wait_job
from medfed.core.errors import ConfigError, JobError, RegistryError
from medfed.core.params import Parameters
from medfed.core.records import Scalar
from medfed.learn.base import FitOutput, TabularData
from medfed.learn.tasks import LogisticRegressionTask
from medfed.node.middleware import errors_as_values

SITES = tuple(SITE_DATA)
pytestmark = pytest.mark.timeout(120)


def _no_job_written(cluster: Cluster) -> None:
    assert cluster.coordinator.store.jobs() == []
    assert not (cluster.state_dir / "checkpoints").exists()


# --- refused at submission: nothing is written ---------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("[job\nname = 'x'\n", ["bad.toml", "not valid TOML", "line 1"]),
        (
            '[job]\nname = "x"\ntask = "logistic_regression"\nrounds = "three"\ncolour = 1\n[rounds]\nmin_nodes = 0\n',
            [
                "bad.toml",
                "missing job.dataset",
                "job.rounds must be int",
                "unknown key job.colour",
                "min_nodes must be >= 1",
            ],
        ),
        ("[strategy]\nname = 'fedavg'\n", ["bad.toml", "missing [job] table"]),
    ],
    ids=["toml-syntax", "bad-values", "no-job-table"],
)
def test_malformed_job_file_is_refused_naming_every_problem(cluster: Cluster, spec: str, expected: list[str]) -> None:
    client = cluster.client()

    with pytest.raises(ConfigError) as err:
        client.submit_job(spec, "bad.toml")

    for text in expected:
        assert text in str(err.value)
    _no_job_written(cluster)


def test_unknown_task_is_refused_listing_the_installed_ones(cluster: Cluster) -> None:
    with pytest.raises(RegistryError) as err:
        cluster.client().submit_job(job_toml(task="random_forest"), "job.toml")

    assert "unknown task 'random_forest'" in str(err.value)
    assert "logistic_regression" in str(err.value) and "mlp" in str(err.value)
    _no_job_written(cluster)


def test_unknown_strategy_is_refused_listing_the_allowed_ones(cluster: Cluster) -> None:
    with pytest.raises(RegistryError) as err:
        cluster.client().submit_job(job_toml(strategy="fedmagic"), "job.toml")

    assert "unknown strategy 'fedmagic'" in str(err.value)
    for name in ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad"):
        assert name in str(err.value)
    _no_job_written(cluster)


# --- a dataset missing at a node -----------------------------------------------------------


def _assert_failed_consistently(cluster: Cluster, view: dict) -> None:
    """FAILED, no round recorded, only the initial checkpoint, no model, nothing to download."""
    job_id = view["job_id"]
    assert view["state"] == "failed"
    assert view["completed_round"] == 0
    assert view["round_metrics"] == []
    store = cluster.coordinator.store
    assert store.latest_checkpoint(job_id)[0] == 0
    assert not (cluster.state_dir / "models" / f"{job_id}.npz").exists()
    with pytest.raises(JobError, match="is failed"):
        cluster.client().fetch_model(job_id)


def test_dataset_not_configured_at_the_asked_sites_fails_the_job_naming_site_and_dataset(cluster: Cluster) -> None:
    for site in SITES:
        cluster.node(site)
    cluster.wait_online(SITES)
    client = cluster.client()

    job = client.submit_job(job_toml(dataset="ghost", sites=("alpha", "beta"), min_nodes=2), "job.toml")
    view = wait_job(client, job["job_id"], timeout_s=30)

    _assert_failed_consistently(cluster, view)
    assert "dataset 'ghost' is not configured at site 'alpha'" in view["error"]
    assert "dataset 'ghost' is not configured at site 'beta'" in view["error"]


def test_dataset_offered_by_no_site_fails_naming_the_dataset(cluster: Cluster) -> None:
    for site in SITES:
        cluster.node(site)
    cluster.wait_online(SITES)
    client = cluster.client()

    job = client.submit_job(job_toml(dataset="ghost", min_nodes=1, deadline_s=1.0, retries=0), "job.toml")
    view = wait_job(client, job["job_id"], timeout_s=30)

    _assert_failed_consistently(cluster, view)
    assert "no online site offers dataset 'ghost'" in view["error"]
    assert "alpha offers ['heart']" in view["error"]


def test_dataset_files_missing_at_a_node_fail_the_job_naming_site_and_file(cluster: Cluster, fed: Federation) -> None:
    missing = fed.dataset("gamma").path / "train.csv"
    missing.unlink()
    for site in SITES:
        cluster.node(site)
    cluster.wait_online(SITES)
    client = cluster.client()

    job = client.submit_job(job_toml(min_nodes=3), "job.toml")
    view = wait_job(client, job["job_id"], timeout_s=30)

    _assert_failed_consistently(cluster, view)
    assert "gamma: data: site 'gamma', round 1" in view["error"]
    assert f"{missing}: file not found" in view["error"]


# --- a node that sends NaNs or wrong shapes ------------------------------------------------


class NaNTask(LogisticRegressionTask):
    """Trains, then returns NaN weights (a diverged or buggy task)."""

    def fit(self, params: Parameters, data: TabularData, config: dict[str, Scalar], seed: int) -> FitOutput:
        out = super().fit(params, data, config, seed)
        bad = out.parameters.map(lambda a: np.where(np.arange(a.size).reshape(a.shape) % 2 == 0, np.nan, a))
        return FitOutput(parameters=bad, num_examples=out.num_examples, metrics=out.metrics)


class WrongShapeTask(LogisticRegressionTask):
    """Returns a weight of the wrong shape (a task built for another feature set)."""

    def fit(self, params: Parameters, data: TabularData, config: dict[str, Scalar], seed: int) -> FitOutput:
        out = super().fit(params, data, config, seed)
        arrays = {n: (a[:, :12] if n == "weight" else a) for n, a in out.parameters}
        return FitOutput(parameters=Parameters.from_numpy(arrays), num_examples=out.num_examples, metrics=out.metrics)


@pytest.mark.parametrize(
    ("task", "node_checks", "expected"),
    [
        # the node's own check_output middleware refuses to send it: the error travels as a value
        (NaNTask, True, ["site 'gamma', round {r}", "output at site 'gamma'", "'weight' has 7 non-finite values"]),
        # a node without that check (buggy or hostile): the coordinator refuses the result
        (NaNTask, False, ["site 'gamma', job {job}, round {r}", "'weight' has 7 non-finite values"]),
        (WrongShapeTask, False, ["site 'gamma', job {job}, round {r}", "'weight' has shape (1, 12), expected (1, 13)"]),
    ],
    ids=["nan-refused-by-node", "nan-refused-by-coordinator", "shape-refused-by-coordinator"],
)
def test_a_bad_result_is_refused_and_the_others_complete_the_job(
    cluster: Cluster, task: type, node_checks: bool, expected: list[str]
) -> None:
    # Arrange: alpha and beta are sound; gamma's task misbehaves; two results suffice per round
    cluster.node("alpha")
    cluster.node("beta")
    extra = {} if node_checks else {"middleware": [errors_as_values]}
    cluster.node("gamma", task_loader=lambda name: task(), **extra)
    cluster.wait_online(SITES)
    client = cluster.client()

    # Act
    job = client.submit_job(job_toml(rounds=2, min_nodes=2), "job.toml")
    view = wait_job(client, job["job_id"], timeout_s=60)

    # Assert: completed on the sound sites, gamma's refusal recorded per fit round with site,
    # round and parameter named; the model is finite and of the right shape
    assert view["state"] == "completed", view["error"]
    for r in (1, 2):
        fit = {s["site"]: s for s in view["site_metrics"] if s["round"] == r and s["kind"] == "fit"}
        assert fit["alpha"]["error"] == fit["beta"]["error"] == ""
        assert fit["gamma"]["error"].startswith("validation: ")
        for text in expected:
            assert text.format(job=view["job_id"], r=r) in fit["gamma"]["error"], fit["gamma"]["error"]
        agg = next(x["aggregated"] for x in view["round_metrics"] if x["round"] == r)
        assert (agg["sites_ok"], agg["sites_failed"]) == (2, 1)
    model = client.fetch_model(view["job_id"])
    assert model["weight"].shape == (1, 13) and np.all(np.isfinite(model["weight"]))


def test_an_unknown_task_option_is_refused_at_submission(cluster: Cluster) -> None:
    client = cluster.client()
    options = {"input_dim": 13, "learning_rate": 0.1}

    with pytest.raises(ConfigError, match="unknown option 'learning_rate'"):
        client.submit_job(job_toml(min_nodes=1, task_options=options), "job.toml")

    assert client.list_jobs()["jobs"] == []


def test_state_dir_holds_no_partial_files(cluster: Cluster, tmp_path: Path) -> None:
    """After a refused submission and a failed job, no temporary file is left behind."""
    cluster.node("alpha")
    cluster.wait_online(["alpha"])
    client = cluster.client()
    with pytest.raises(RegistryError):
        client.submit_job(job_toml(task="nope"), "job.toml")
    job = client.submit_job(job_toml(dataset="ghost", sites=("alpha",), min_nodes=1), "job.toml")
    wait_job(client, job["job_id"], timeout_s=30)

    leftovers = [p for p in cluster.state_dir.rglob("*") if ".tmp" in p.name]
    assert leftovers == []
