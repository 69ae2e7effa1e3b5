"""Federated analytics end to end over mutual TLS: query jobs fan out one QUERY task per site per
step, each in-process node answers under its own disclosure policy (history persisted in its state
directory, DP charged to its ledger), and the coordinator's combined answer equals the pooled one."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.datasets import load_lung
from lifelines.statistics import multivariate_logrank_test

from integration.support import Cluster, Federation, NodeThread, make_federation, start_cluster, wait_job
from medfed.analytics import (
    DescribeResult,
    DisclosurePolicy,
    KMResult,
    QueryKind,
    QuerySpec,
    RegressionResult,
    TableResult,
)
from medfed.coordinator.queries import ask_federation, result_from_json
from medfed.coordinator.store import Store
from medfed.core.errors import DataError
from medfed.core.params import Parameters
from medfed.core.records import JobState, ResultMessage, TaskKind, TaskMessage
from medfed.learn.base import TabularData
from medfed.node.analytics import answer_queries, history_path, load_history
from medfed.node.ledger import PrivacyLedger
from medfed.node.middleware import NodeContext
from medfed.node.runtime import DatasetConfig, NodeRuntime, NodeSettings
from medfed.security.audit import AuditLog
from medfed.security.audit_chain import AuditEntry

SITES = ("alpha", "beta", "gamma")
#: Lets every site answer every query (for exactness checks; the default policy is tested too).
OPEN = DisclosurePolicy(min_cell=1, min_cohort=1, differencing_threshold=1)
COX_COVARIATES = ("age", "sex", "ph.ecog")


@pytest.fixture
def cluster(fed: Federation, tmp_path: Path) -> Iterator[Cluster]:
    """As the shared fixture, with a 2 s heartbeat: in-process nodes share one GIL, and on a loaded
    machine a 0.3 s heartbeat can mark a busy node stale mid-query (as in test_privacy.py)."""
    c = start_cluster(fed, tmp_path / "state", heartbeat_s=2.0)
    try:
        yield c
    finally:
        c.close()


def _start(
    cluster: Cluster,
    tmp_path: Path,
    datasets: dict[str, dict[str, DatasetConfig]],
    policy: DisclosurePolicy = DisclosurePolicy(),  # noqa: B008 - frozen value
) -> None:
    for site in SITES:
        settings = NodeSettings(
            site=site,
            datasets=datasets[site],
            poll_wait_s=1.0,
            backoff_initial_s=0.05,
            backoff_max_s=0.5,
            state_dir=tmp_path / "nodes" / site,
            disclosure=policy,
        )
        node = NodeThread(NodeRuntime(settings, cluster.link(site)))
        cluster.nodes.append(node)
        node.start()
    cluster.wait_online(SITES)


def _heart(cluster: Cluster, **budget: float) -> dict[str, dict[str, DatasetConfig]]:
    return {s: {"heart": dataclasses.replace(cluster.fed.dataset(s), **budget)} for s in SITES}  # type: ignore[arg-type]


def _query_job(query: str, *, name: str = "q", dataset: str = "heart", min_nodes: int = 3) -> str:
    return (
        f'[job]\nname = "{name}"\ndataset = "{dataset}"\n\n'
        f"[rounds]\nmin_nodes = {min_nodes}\ndeadline_s = 30\n\n[query]\n{query}\n"
    )


def _run(cluster: Cluster, query: str, **job: Any) -> dict[str, Any]:
    client = cluster.client()
    view = client.submit_job(_query_job(query, **job), "query.toml")
    return wait_job(client, view["job_id"], timeout_s=120)


def _site_rows(cluster: Cluster, site: str) -> pd.DataFrame:
    return _site_rows_of(cluster.fed, site)


def _site_rows_of(fed: Federation, site: str) -> pd.DataFrame:
    path = fed.dataset(site).path
    return pd.concat([pd.read_csv(path / "train.csv"), pd.read_csv(path / "test.csv")], ignore_index=True)


def test_logistic_glm_over_mtls_equals_statsmodels_on_the_pooled_rows(cluster: Cluster, tmp_path: Path) -> None:
    _start(cluster, tmp_path, _heart(cluster))
    covariates = ("age", "sex", "trestbps", "chol", "thalch", "exang", "oldpeak")
    covs = ", ".join(f'"{c}"' for c in covariates)

    view = _run(cluster, f'kind = "glm_stats"\nfamily = "logistic"\noutcome = "label"\ncovariates = [{covs}]')

    assert view["state"] == "completed", view["error"]
    outcome = result_from_json(view["query_result"])
    result = outcome.result
    assert isinstance(result, RegressionResult) and not outcome.refusals
    pooled = pd.concat([_site_rows(cluster, s) for s in SITES], ignore_index=True)
    ref = sm.GLM(pooled["label"], sm.add_constant(pooled[list(covariates)]), family=sm.families.Binomial()).fit(
        tol=1e-12
    )
    assert result.n == len(pooled) and result.sites == SITES
    np.testing.assert_allclose(result.coef, ref.params.to_numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.se, ref.bse.to_numpy(), rtol=1e-6)
    # one QUERY round per Newton step, each recorded with every site's answer
    query_rounds = [r for r in view["round_metrics"] if r["kind"] == "query"]
    assert len(query_rounds) == outcome.rounds >= 3
    assert all(r["aggregated"]["sites_ok"] == 3 for r in query_rounds)
    report = cluster.state_dir / "reports" / f"query-{view['job_id']}.html"
    assert "<table" in report.read_text()

    # the Python API: a QuerySpec in, the combined result out (pooled mean and variance, exactly)
    spec = QuerySpec(kind=QueryKind.DESCRIBE, columns=("chol", "age"))
    described = ask_federation(cluster.client(), spec, dataset="heart", min_nodes=3, timeout_s=120).result
    assert isinstance(described, DescribeResult)
    np.testing.assert_allclose(described.combined["mean"], pooled[["chol", "age"]].mean().to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(described.combined["variance"], pooled[["chol", "age"]].var().to_numpy(), rtol=1e-10)


def _lung_sites(root: Path) -> tuple[dict[str, dict[str, DatasetConfig]], pd.DataFrame]:
    """NCCTG lung split by institution: each site holds every third institution's patients."""
    lung = load_lung().dropna(subset=["inst"]).reset_index(drop=True)
    lung["site"] = [SITES[int(i) % 3] for i in lung["inst"]]
    out = {}
    for site, rows in lung.groupby("site"):
        directory = root / "lung" / str(site)
        directory.mkdir(parents=True)
        rows.drop(columns=["site"]).to_csv(directory / "train.csv", index=False)
        out[str(site)] = {"lung": DatasetConfig(name="lung", path=directory, label="status")}
    return out, lung


def test_kaplan_meier_and_cox_over_mtls_equal_lifelines_on_pooled_lung(cluster: Cluster, tmp_path: Path) -> None:
    datasets, lung = _lung_sites(tmp_path)
    _start(cluster, tmp_path, datasets, OPEN)

    km_view = _run(cluster, 'kind = "kaplan_meier"\ntime = "time"\nevent = "status"', dataset="lung")
    covs = ", ".join(f'"{c}"' for c in COX_COVARIATES)
    cox_view = _run(
        cluster, f'kind = "cox_stats"\ntime = "time"\nevent = "status"\ncovariates = [{covs}]', dataset="lung"
    )

    assert km_view["state"] == "completed", km_view["error"]
    km = result_from_json(km_view["query_result"]).result
    assert isinstance(km, KMResult) and len(km.curves) == 1
    ref = KaplanMeierFitter().fit(lung["time"], lung["status"])
    curve = km.curves[0]
    np.testing.assert_array_equal(curve.timeline, ref.event_table.index.to_numpy())
    np.testing.assert_array_equal(curve.at_risk, ref.event_table["at_risk"].to_numpy())
    np.testing.assert_allclose(curve.survival, ref.survival_function_.iloc[:, 0].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(curve.ci_lower, ref.confidence_interval_.iloc[:, 0].to_numpy(), rtol=1e-10)
    report = (cluster.state_dir / "reports" / f"query-{km_view['job_id']}.html").read_text()
    assert "<svg" in report  # the KM plot with its CI band

    assert cox_view["state"] == "completed", cox_view["error"]
    cox = result_from_json(cox_view["query_result"]).result
    assert isinstance(cox, RegressionResult) and cox.model == "cox"
    pooled = lung[["site", "time", "status", *COX_COVARIATES]].dropna()
    fitted = CoxPHFitter().fit(pooled, "time", "status", strata=["site"], fit_options={"precision": 1e-12})
    np.testing.assert_allclose(cox.coef, fitted.params_[list(COX_COVARIATES)].to_numpy(), rtol=0, atol=1e-6)


def _audit_entries(state_dir: Path) -> list[AuditEntry]:
    log = AuditLog(state_dir / "audit.sqlite")
    try:
        return log.entries()
    finally:
        log.close()


def _near_cut(ages: np.ndarray, base: float) -> float:
    """An age cut whose cohort differs from ``age >= base`` by 1..4 patients at this site."""
    for cut in ages[ages > base]:
        if 1 <= int(((ages >= base) != (ages >= cut)).sum()) < 5:
            return float(cut)
    raise AssertionError(f"no age cut within 4 patients of {base}")


def test_small_counts_are_suppressed_and_a_differencing_query_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    _start(cluster, tmp_path, _heart(cluster))  # the default policy: min_cell 5, differencing threshold 5
    alpha = _site_rows(cluster, "alpha")
    ages = np.sort(alpha["age"].to_numpy())
    # an age cut that leaves 1..4 patients at alpha: their count is withheld
    small_cut = float(ages[-3])
    view = _run(cluster, f'kind = "count"\nwhere = ["age >= {small_cut!r}"]')
    assert view["state"] == "completed", view["error"]
    table = result_from_json(view["query_result"]).result
    assert isinstance(table, TableResult)
    n_alpha = int((alpha["age"] >= small_cut).sum())
    assert 1 <= n_alpha < 5 and np.isnan(table.per_site["alpha"][0])
    assert table.frame("alpha").iloc[0, 0] == "<5"

    # a cohort answered, then one that differs from it by 1..4 patients at alpha: refused there
    base = float(ages[len(ages) // 2])
    near = _near_cut(ages, base)
    first = _run(cluster, f'kind = "count"\nwhere = ["age >= {base!r}"]', min_nodes=1)
    assert first["state"] == "completed", first["error"]
    second = _run(cluster, f'kind = "count"\nwhere = ["age >= {near!r}"]', min_nodes=1)
    text = (
        second["error"]
        if second["state"] == "failed"
        else json.dumps(result_from_json(second["query_result"]).refusals)
    )
    assert "differencing threshold" in text and "alpha" in text
    refused = [e for e in _audit_entries(tmp_path / "nodes" / "alpha") if e.action == "task.refused"]
    assert len(refused) == 1 and "differencing threshold" in str(refused[0].fields["reason"])
    # what alpha answered is persisted in its state directory (it survives a restart)
    history = load_history(history_path(tmp_path / "nodes" / "alpha", "heart"))
    assert len(history.cohorts) == 2  # the small cut and the base cohort; the refused one is not recorded


def test_a_dp_count_is_charged_to_each_sites_ledger(cluster: Cluster, tmp_path: Path) -> None:
    _start(cluster, tmp_path, _heart(cluster, epsilon_budget=0.8, delta_budget=1e-5))

    dp = 'kind = "count"\nwhere = ["age >= 50"]\ndp = { mechanism = "laplace", epsilon = 0.5 }'
    view = _run(cluster, dp)
    plain = _run(cluster, 'kind = "count"\nwhere = ["age >= 50"]')
    over = _run(cluster, dp)  # another 0.5 would exceed the 0.8 each site set

    assert view["state"] == "completed", view["error"]
    table = result_from_json(view["query_result"]).result
    assert isinstance(table, TableResult) and table.noised
    spent = {s["site"]: s["metrics"]["privacy_epsilon_spent"] for s in view["site_metrics"]}
    assert spent == {s: 0.5 for s in SITES}
    for site in SITES:
        ledger = PrivacyLedger(tmp_path / "nodes" / site / "ledger.sqlite")
        try:
            status = ledger.status("heart")
            assert status is not None and status.epsilon_used == pytest.approx(0.5)  # refusals cost nothing
        finally:
            ledger.close()
    # a dataset with a budget is released only under DP
    assert plain["state"] == "failed" and "only under differential privacy" in plain["error"]
    assert over["state"] == "failed" and "are left of the site's budget" in over["error"]
    # the site's hash-chained audit log: the spend, and both refusals with their reasons
    entries = _audit_entries(tmp_path / "nodes" / "alpha")
    spent = [e.fields for e in entries if e.action == "budget.spent"]
    assert spent == [spent[0]] and spent[0]["epsilon"] == 0.5 and spent[0]["kind"] == "query"
    reasons = [str(e.fields["reason"]) for e in entries if e.action == "task.refused"]
    assert any("only under differential privacy" in r for r in reasons)
    assert any("are left of the site's budget" in r for r in reasons)


def test_differencing_protection_survives_a_node_restart(cluster: Cluster, tmp_path: Path) -> None:
    _start(cluster, tmp_path, _heart(cluster))
    ages = np.sort(_site_rows(cluster, "alpha")["age"].to_numpy())
    base = float(ages[10])
    near = _near_cut(ages, base)
    assert _run(cluster, f'kind = "count"\nwhere = ["age >= {base!r}"]')["state"] == "completed"

    old = next(n for n in cluster.nodes if n.runtime.settings.site == "alpha")
    old.runtime.stop()
    old.join(15.0)
    restarted = NodeThread(NodeRuntime(old.runtime.settings, cluster.link("alpha")))  # same state_dir
    cluster.nodes.append(restarted)
    restarted.start()
    cluster.wait_online(SITES)

    view = _run(cluster, f'kind = "count"\nwhere = ["age >= {near!r}"]', min_nodes=1)
    refusals = result_from_json(view["query_result"]).refusals if view["state"] == "completed" else {}
    assert "differencing threshold" in (refusals.get("alpha") or view["error"])


def test_a_declared_dataset_is_queried_without_the_patients_who_opted_out(cluster: Cluster, tmp_path: Path) -> None:
    import datetime as dt

    from medfed.data.consent import ConsentRecord, ConsentStatus, ConsentStore
    from medfed.data.sources import parse_dataset

    columns = [{"name": "patient_id", "type": "string"}, {"name": "age", "type": "float", "min": 0, "max": 120}]
    datasets = {}
    for i, site in enumerate(SITES):
        directory = tmp_path / "declared" / site
        directory.mkdir(parents=True)
        pd.DataFrame({"patient_id": [f"{site}-{k}" for k in range(20)], "age": np.arange(20) + 40.0 + i}).to_csv(
            directory / "cohort.csv", index=False
        )
        table = {"format": "csv", "path": "cohort.csv", "patient_id": "patient_id", "columns": columns}
        decl = parse_dataset("cohort", table, base=directory, where=f"{site} site.toml")
        datasets[site] = {"cohort": DatasetConfig(name="cohort", path=directory, decl=decl)}
    (tmp_path / "nodes" / "alpha").mkdir(parents=True)
    store = ConsentStore(tmp_path / "nodes" / "alpha" / "consent.sqlite")
    opt_out = ConsentRecord(patient_id="alpha-3", purpose="*", status=ConsentStatus.DENY, date=dt.date(2020, 1, 1))
    store.add([opt_out], source="test", at=dt.datetime.now(dt.UTC))
    store.close()
    _start(cluster, tmp_path, datasets, OPEN)

    view = _run(cluster, 'kind = "count"\nwhere = ["age >= 0"]', dataset="cohort")

    assert view["state"] == "completed", view["error"]
    table = result_from_json(view["query_result"]).result
    assert isinstance(table, TableResult)
    assert {s: float(np.ravel(v)[0]) for s, v in table.per_site.items()} == {"alpha": 19.0, "beta": 20.0, "gamma": 20.0}


def test_a_query_job_left_running_resumes_when_the_coordinator_restarts(fed: Federation, tmp_path: Path) -> None:
    state = tmp_path / "restarted"
    text = _query_job('kind = "describe"\ncolumns = ["chol"]')
    store = Store(state / "coordinator.sqlite")  # what a coordinator killed before running it left behind
    store.add_job(job_id="q0", name="q", owner="researcher", spec_toml=text, spec_hash="0" * 64, rounds=1)
    store.set_job_state("q0", JobState.RUNNING)
    store.close()

    restarted = start_cluster(fed, state, heartbeat_s=2.0)
    try:
        _start(restarted, tmp_path, _heart(restarted))
        view = wait_job(restarted.client(), "q0", timeout_s=60)
    finally:
        restarted.close()

    assert view["state"] == "completed", view["error"]
    assert isinstance(result_from_json(view["query_result"]).result, DescribeResult)


def test_cox_and_km_with_each_lung_institution_as_its_own_node_equal_lifelines(
    heart: dict[str, TabularData], tmp_path: Path
) -> None:
    """The issue's bar over the wire: 18 institutions, 18 nodes; Cox stratified by institution, KM and log-rank."""
    lung = load_lung().dropna(subset=["inst"]).reset_index(drop=True)
    sites = tuple(f"inst{int(i):02d}" for i in sorted(lung["inst"].unique()))
    fed = make_federation(tmp_path / "fed18", heart, sites=sites)
    cluster = start_cluster(fed, tmp_path / "state18", heartbeat_s=2.0)
    try:
        for site in sites:
            directory = tmp_path / "lung18" / site
            directory.mkdir(parents=True)
            lung[lung["inst"] == int(site[4:])].to_csv(directory / "train.csv", index=False)
            settings = NodeSettings(
                site=site, datasets={"lung": DatasetConfig(name="lung", path=directory)}, poll_wait_s=1.0,
                backoff_initial_s=0.05, backoff_max_s=0.5, state_dir=tmp_path / "nodes18" / site, disclosure=OPEN,
            )  # fmt: skip
            node = NodeThread(NodeRuntime(settings, cluster.link(site)))
            cluster.nodes.append(node)
            node.start()
        cluster.wait_online(sites, timeout_s=60)
        covs = ", ".join(f'"{c}"' for c in (*COX_COVARIATES, "ph.karno"))
        query = f'kind = "cox_stats"\ntime = "time"\nevent = "status"\ncovariates = [{covs}]'
        view = _run(cluster, query, dataset="lung", min_nodes=len(sites))
        km_query = 'kind = "kaplan_meier"\ntime = "time"\nevent = "status"\ngroup = "sex"\nlevels = [[1, 2]]'
        km_view = _run(cluster, km_query, dataset="lung", min_nodes=len(sites))
    finally:
        cluster.close()

    assert view["state"] == "completed", view["error"]
    cox = result_from_json(view["query_result"]).result
    assert isinstance(cox, RegressionResult) and len(cox.sites) == 18
    covariates = [*COX_COVARIATES, "ph.karno"]
    pooled = lung[["inst", "time", "status", *covariates]].dropna()
    ref = CoxPHFitter().fit(pooled, "time", "status", strata=["inst"], fit_options={"precision": 1e-12})
    np.testing.assert_allclose(cox.coef, ref.params_[covariates].to_numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(cox.se, ref.standard_errors_[covariates].to_numpy(), rtol=1e-6)

    assert km_view["state"] == "completed", km_view["error"]
    km = result_from_json(km_view["query_result"]).result
    assert isinstance(km, KMResult) and len(km.sites) == 18 and km.logrank is not None
    for curve, sex in zip(km.curves, (1, 2), strict=True):
        rows = lung[lung["sex"] == sex]
        fitted = KaplanMeierFitter().fit(rows["time"], rows["status"])
        np.testing.assert_array_equal(curve.timeline, fitted.event_table.index.to_numpy())
        np.testing.assert_allclose(curve.survival, fitted.survival_function_.iloc[:, 0].to_numpy(), rtol=1e-12)
    logrank = multivariate_logrank_test(lung["time"], lung["sex"], lung["status"])
    assert km.logrank.statistic == pytest.approx(logrank.test_statistic, rel=1e-10)


def test_a_node_reads_a_jobs_rows_once_and_afresh_for_the_next_job(fed: Federation, tmp_path: Path) -> None:
    """Handler level (no network): the steps of one fit share one read of the rows."""
    directory = tmp_path / "rows"
    directory.mkdir()
    _site_rows_of(fed, "alpha").to_csv(directory / "train.csv", index=False)
    ctx = NodeContext(
        site="alpha-handler",
        datasets={"heart": DatasetConfig(name="heart", path=directory)},
        task_loader=lambda name: pytest.fail(f"a query loads no task ({name})"),
        state_dir=tmp_path / "node",
        disclosure=OPEN,
    )
    spec = QuerySpec(kind=QueryKind.DESCRIBE, columns=("chol",)).to_json().encode()

    def task(job: str, rnd: int) -> TaskMessage:
        return TaskMessage(
            task_id=f"{job}-{rnd}", job_id=job, round=rnd, kind=TaskKind.QUERY, task="query", dataset="heart",
            seed=0, config={}, parameters=Parameters.from_arrays((), ()), payload=spec,
        )  # fmt: skip

    def unreachable(t: TaskMessage, c: NodeContext) -> ResultMessage:
        raise AssertionError("a query task must not reach the training handler")

    first = answer_queries(task("job1", 1), ctx, unreachable)
    (directory / "train.csv").unlink()
    again = answer_queries(task("job1", 2), ctx, unreachable)  # the same job: its rows are held
    assert first.ok and again.ok and first.parameters is not None and again.parameters is not None
    assert first.parameters.allclose(again.parameters, atol=0, rtol=0)
    with pytest.raises(DataError, match=re.escape("no ['train.csv', 'test.csv']")):
        answer_queries(task("job2", 1), ctx, unreachable)  # the next job reads afresh
