"""Federated synthesis end to end over mutual TLS: a ``[synthesis]`` job sends one SYNTHESIZE task per
site; each in-process node fits MST under its own privacy ledger, evaluates against its own test
split, and releases only what its gate lets go; the coordinator joins the released rows with a
site column. A site whose gate blocks is left out with its reason; the real federated job then
runs unchanged on the same sites."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from integration.support import Cluster, Federation, NodeThread, job_toml, make_federation, wait_job
from medfed.cli.main import main as cli_main
from medfed.coordinator.app import start_coordinator
from medfed.coordinator.service import CoordinatorSettings
from medfed.coordinator.synthesis import result_from_json
from medfed.core.config import parse_job_spec
from medfed.core.errors import BudgetExhausted, ConfigError, ValidationError
from medfed.core.params import Parameters
from medfed.core.records import TaskKind, TaskMessage
from medfed.learn.base import TabularData
from medfed.node.ledger import PrivacyLedger
from medfed.node.middleware import NodeContext, run_task
from medfed.node.runtime import DatasetConfig, NodeRuntime, NodeSettings
from medfed.node.synthesis import capped_csv, report_path, synthesize
from medfed.synth.job import SynthesisSpec
from medfed.synth.release import ReleasePolicy
from medfed.synth.synthesizer import planned_cost

SITES = ("alpha", "beta", "gamma")
EPSILON, DELTA, ROWS = 1.0, 1e-6, 200
SYNTHESIS = {
    "method": "mst", "epsilon": EPSILON, "delta": DELTA, "rows": ROWS, "target": "label", "public_bounds": True,
    "subgroups": ["sex"],
}  # fmt: skip


#: alpha and beta accept any membership-inference AUC (80 training rows make it noisy); gamma keeps
#: the defaults, and its gate blocks whatever the scores: every synthetic row copies a real one.
POLICIES = {"alpha": ReleasePolicy(max_mia_auc=1.0), "beta": ReleasePolicy(max_mia_auc=1.0), "gamma": None}


def _constant(d: TabularData) -> TabularData:
    """Every feature one value, the label alternating: every synthetic row is a copy of a real one,
    so this site's gate must block (``prepare_release``: all rows are exact copies)."""
    x_train, x_test = np.zeros_like(d.x_train) + 1, np.zeros_like(d.x_test) + 1
    y_train, y_test = (
        (np.arange(len(d.y_train)) % 2).astype(np.float32),
        (np.arange(len(d.y_test)) % 2).astype(np.float32),
    )
    return TabularData(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, feature_names=d.feature_names)


def _synthesis_toml(*, min_nodes: int = 2, **overrides: object) -> str:
    table = SYNTHESIS | overrides
    lines = [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return (
        '[job]\nname = "synth"\ndataset = "heart"\n\n'
        f"[rounds]\nmin_nodes = {min_nodes}\ndeadline_s = 120.0\n\n[synthesis]\n" + "\n".join(lines) + "\n"
    )


@pytest.fixture
def synth_fed(tmp_path: Path, heart: dict[str, TabularData]) -> Federation:
    # beta gets VA Long Beach rows: the first rows of Hungary's training split hold one class only
    return make_federation(tmp_path / "fed", heart | {"beta": heart["gamma"], "gamma": _constant(heart["gamma"])})


@pytest.fixture
def synth_cluster(synth_fed: Federation, tmp_path: Path) -> Iterator[Cluster]:
    """A coordinator on the port the kits name (so the researcher's ``client.toml`` reaches it), a
    2 s heartbeat (in-process nodes share one GIL while fitting), and one node per site whose
    dataset has an ε budget and whose state directory keeps its ledger."""
    settings = CoordinatorSettings(state_dir=tmp_path / "state", heartbeat_interval_s=2.0)
    proc = start_coordinator(settings, address=f"127.0.0.1:{synth_fed.port}", tls=synth_fed.server_tls(), crl_path=None)
    cluster = Cluster(fed=synth_fed, proc=proc, state_dir=tmp_path / "state")
    try:
        for site in SITES:
            ds = DatasetConfig(
                name="heart", path=synth_fed.kit(site) / "data" / site, epsilon_budget=5.0, delta_budget=1e-5
            )
            node_settings = NodeSettings(
                site=site, datasets={"heart": ds}, poll_wait_s=1.0, backoff_initial_s=0.05, backoff_max_s=0.5,
                state_dir=tmp_path / "nodes" / site, synthetic=POLICIES[site],
            )  # fmt: skip
            node = NodeThread(NodeRuntime(node_settings, cluster.link(site)))
            cluster.nodes.append(node)
            node.start()
        cluster.wait_online(SITES)
        yield cluster
    finally:
        cluster.close()


def _spent(tmp_path: Path, site: str) -> float:
    ledger = PrivacyLedger(tmp_path / "nodes" / site / "ledger.sqlite")
    try:
        status = ledger.status("heart")
        assert status is not None
        return status.epsilon_used
    finally:
        ledger.close()


def test_synthesis_job_combines_released_sites_leaves_the_blocked_one_out_then_training_runs_unchanged(
    synth_cluster: Cluster, tmp_path: Path, heart: dict[str, TabularData], capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange
    client = synth_cluster.client()
    cost = planned_cost(SynthesisSpec.from_json(json.dumps(SYNTHESIS)).config())

    # Act: the synthesis job, then its result through the CLI
    job_id = client.submit_job(_synthesis_toml(), "synth.toml")["job_id"]
    view = wait_job(client, job_id, timeout_s=240)
    out = tmp_path / "out" / "combined.csv"
    code = cli_main(["job", "result", job_id, "--config", str(synth_cluster.fed.client_toml()), "--out", str(out)])

    # Assert: alpha and beta released, gamma's gate blocked (every row a copy) and it is left out
    assert view["state"] == "completed", view["error"]
    outcome = result_from_json(view["synthesis_result"])
    combined = outcome.combined
    names = [*heart["alpha"].feature_names, "label"]
    assert list(combined.columns) == [*names, "site"]
    assert set(combined["site"]) == {"alpha", "beta"}
    for site in ("alpha", "beta"):
        released = int(outcome.sites[site]["synth_rows"])
        assert released == (combined["site"] == site).sum() > 0
        assert released + int(outcome.sites[site]["synth_dropped_copies"]) == ROWS
        assert outcome.sites[site]["privacy_epsilon_spent"] == pytest.approx(cost.epsilon)
    assert set(outcome.refusals) == {"gamma"}
    assert "exact copies" in outcome.refusals["gamma"] and "release blocked" in outcome.refusals["gamma"]
    # every site's ledger is charged exactly the fit's cost: gamma's fit read its data too; each keeps its report
    for site in SITES:
        assert _spent(tmp_path, site) == pytest.approx(cost.epsilon, rel=1e-9)
        assert report_path(tmp_path / "nodes" / site, job_id).is_file()
    # the CLI wrote the same table; the coordinator kept it under reports/
    assert code == 0, capsys.readouterr().err
    assert "gamma: left out" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(out), combined)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "state" / "reports" / f"synthesis-{job_id}.csv"), combined)

    # Act: the real federated job on the same sites (their budgets admit only DP jobs: DP-SGD)
    spec = (
        job_toml(name="real", rounds=1, min_nodes=3)
        + "\n[privacy]\nnoise_multiplier = 1.5\nclip_norm = 1.0\ndelta = 1e-6\n"
    )
    real = client.submit_job(spec, "real.toml")["job_id"]

    # Assert: it trains on all three sites' real rows, each charging its own spend on top of the fit's
    done = wait_job(client, real, timeout_s=120)
    assert done["state"] == "completed", done["error"]
    assert {m["site"] for m in done["site_metrics"]} == set(SITES)
    for site in SITES:
        assert _spent(tmp_path, site) > cost.epsilon


def test_synthesis_job_fails_naming_every_site_when_too_few_release(synth_cluster: Cluster, tmp_path: Path) -> None:
    # Arrange: gamma's gate blocks, and the budget of 5 cannot pay ε = 6 anywhere
    client = synth_cluster.client()

    # Act
    job_id = client.submit_job(_synthesis_toml(min_nodes=1, epsilon=6.0), "synth.toml")["job_id"]
    view = wait_job(client, job_id, timeout_s=120)

    # Assert: the job failed naming each site's reason; no ledger was charged
    assert view["state"] == "failed"
    assert "0 of min_nodes=1 sites released rows" in view["error"]
    assert all(site in view["error"] for site in SITES) and "budget" in view["error"].lower()
    for site in SITES:
        assert _spent(tmp_path, site) == 0.0


def test_a_malformed_synthesis_table_is_refused_at_submission(synth_cluster: Cluster) -> None:
    client = synth_cluster.client()
    with pytest.raises(Exception, match="public_bounds") as info:
        client.submit_job(_synthesis_toml(public_bounds=False, rows=10**6), "bad.toml")
    assert "rows must be in [1, 5000]" in str(info.value)
    assert client.list_jobs()["jobs"] == []


# --- the parts, without the network ----------------------------------------------------------


def test_synthesis_spec_names_every_problem_and_round_trips() -> None:
    with pytest.raises(ValidationError) as info:
        SynthesisSpec.from_json(json.dumps({"method": "gan", "rows": "many", "colour": 1}))
    text = str(info.value)
    assert "unknown key 'colour'" in text and "rows must be int" in text
    with pytest.raises(ValidationError, match="allowed"):
        SynthesisSpec.from_json(json.dumps({"method": "gan", "public_bounds": True}))
    spec = SynthesisSpec.from_json(json.dumps(SYNTHESIS))
    assert SynthesisSpec.from_json(spec.to_json()) == spec


def test_a_job_with_both_query_and_synthesis_is_refused() -> None:
    text = _synthesis_toml() + '\n[query]\nkind = "count"\n'
    with pytest.raises(ConfigError, match="not both"):
        parse_job_spec(text, source_name="both.toml")
    assert parse_job_spec(_synthesis_toml(), source_name="s.toml").synthesis is not None


def test_a_site_without_a_budget_refuses_before_reading_a_row(tmp_path: Path, heart: dict[str, TabularData]) -> None:
    # Arrange: no ledger at all, and a data loader that records any read
    reads: list[str] = []

    def loader(cfg: DatasetConfig) -> TabularData:
        reads.append(cfg.name)
        return heart["alpha"]

    ctx = NodeContext(
        site="alpha",
        datasets={"heart": DatasetConfig(name="heart", path=tmp_path)},
        task_loader=lambda name: (_ for _ in ()).throw(AssertionError(name)),
        data_loader=loader,
    )
    task = TaskMessage(
        task_id="t1", job_id="j1", round=1, kind=TaskKind.SYNTHESIZE, task="synthesis", dataset="heart",
        job_rounds=1, seed=0, config={}, parameters=Parameters.from_arrays((), ()),
        payload=json.dumps(SYNTHESIS).encode(),
    )  # fmt: skip

    # Act / Assert
    with pytest.raises(BudgetExhausted, match="no privacy budget"):
        synthesize(task, ctx, run_task)
    assert reads == []


def test_capped_csv_keeps_whole_rows_within_the_limit() -> None:
    rows = pd.DataFrame({"a": np.arange(1000), "b": np.arange(1000) * 0.5})
    data, kept = capped_csv(rows, 2000)
    assert len(data) <= 2000 and 0 < kept < 1000
    back = pd.read_csv(io.BytesIO(data))
    pd.testing.assert_frame_equal(back, rows.iloc[:kept])
    assert capped_csv(rows, 10**6) == (rows.to_csv(index=False).encode(), 1000)


def test_a_sites_synthetic_table_reaches_its_node_settings(synth_fed: Federation) -> None:
    from medfed.cli.config import load_node_config

    path = synth_fed.site_toml("alpha")
    assert load_node_config(path).settings.synthetic is None  # no [synthetic]: the node uses the defaults
    base = path.read_text()
    path.write_text(base + "\n[synthetic]\nmax_mia_auc = 0.7\nblock_erased_subgroups = true\n")
    assert load_node_config(path).settings.synthetic == ReleasePolicy(max_mia_auc=0.7, block_erased_subgroups=True)
    path.write_text(base + "\n[synthetic]\nmax_mia_auc = 0.2\n")
    with pytest.raises(ConfigError, match=r"site\.toml: \[synthetic\]: .*max_mia_auc"):
        load_node_config(path)


def test_an_aim_synthesis_task_returns_released_rows_and_charges_its_ledger_job(
    tmp_path: Path, heart: dict[str, TabularData]
) -> None:
    # Arrange: a site with a budget, a policy that releases whatever the (noisy) MIA score
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("heart", epsilon=3.0, delta=1e-5)
    ctx = NodeContext(
        site="alpha",
        datasets={"heart": DatasetConfig(name="heart", path=tmp_path)},
        task_loader=lambda name: (_ for _ in ()).throw(AssertionError(name)),
        data_loader=lambda cfg: heart["alpha"],
        ledger=ledger,
        synthetic=ReleasePolicy(max_mia_auc=1.0),
        state_dir=tmp_path / "node",
    )
    table = SYNTHESIS | {"method": "aim", "rows": 150}
    table.pop("subgroups")
    task = TaskMessage(
        task_id="t2", job_id="j2", round=1, kind=TaskKind.SYNTHESIZE, task="synthesis", dataset="heart",
        job_rounds=1, seed=0, config={}, parameters=Parameters.from_arrays((), ()),
        payload=json.dumps(table).encode(),
    )  # fmt: skip
    cost = planned_cost(SynthesisSpec.from_json(json.dumps(table)).config())

    # Act
    try:
        result = synthesize(task, ctx, run_task)
        spend = ledger.job("heart", "synth-t2")
    finally:
        ledger.close()

    # Assert: only the released rows travel, in the dataset's columns; the ledger job is closed at the fit's cost
    assert result.ok and result.parameters is None and result.num_examples == 0
    rows = pd.read_csv(io.BytesIO(result.payload))
    assert list(rows.columns) == [*heart["alpha"].feature_names, "label"]
    assert len(rows) == result.metrics["synth_rows"] == 150 - result.metrics["synth_dropped_copies"]
    assert set(rows["label"]) <= {0, 1}
    assert spend is not None and not spend.open
    assert spend.epsilon_spent == pytest.approx(cost.epsilon) == result.metrics["privacy_epsilon_spent"]
    # the evaluation's report stays at the site, readable by its owner only
    report = report_path(tmp_path / "node", "j2")
    assert "<html" in report.read_text().lower() and report.stat().st_mode & 0o077 == 0
