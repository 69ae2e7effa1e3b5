"""The federated answers equal the pooled ones: lifelines and statsmodels on the pooled rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test

from medfed.analytics import (
    Criterion,
    DescribeResult,
    DisclosurePolicy,
    Family,
    QueryKind,
    QuerySpec,
    TableResult,
    combine,
    fit_cox,
    fit_glm,
    histogram_quantiles,
    kaplan_meier,
)
from medfed.data.heart import FEATURES

COX_COVARIATES = ("age", "sex", "ph.ecog", "ph.karno")


def test_cox_stratified_by_site_equals_lifelines_on_pooled_lung(lung, lung_sites, federation) -> None:
    fed = federation(lung_sites)
    result = fit_cox(fed.ask, QuerySpec.cox("time", "status", COX_COVARIATES))

    pooled = lung[["inst", "time", "status", *COX_COVARIATES]].dropna()
    ref = CoxPHFitter().fit(pooled, "time", "status", strata=["inst"], fit_options={"precision": 1e-12})
    assert len(result.sites) == 18 and result.n == len(pooled) and result.events == int(pooled["status"].sum())
    np.testing.assert_allclose(result.coef, ref.params_[list(COX_COVARIATES)].to_numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.se, ref.standard_errors_[list(COX_COVARIATES)].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(result.p_values, ref.summary["p"].to_numpy(), rtol=1e-6, atol=1e-12)
    assert result.loglik == pytest.approx(ref.log_likelihood_, abs=1e-8)
    table = result.summary()
    np.testing.assert_allclose(table["HR"], ref.summary["exp(coef)"].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(table["[0.025"], ref.summary["coef lower 95%"].to_numpy(), atol=1e-6)


def test_cox_without_tied_times_needs_no_efron_correction(lung_sites, federation) -> None:
    # Break every tie: Efron and Breslow then agree with the untied partial likelihood, and the
    # fit still matches lifelines, so the tie handling is not what makes the first test pass.
    rng = np.random.default_rng(7)
    jittered = {s: t.assign(time=t["time"] + rng.uniform(0, 0.5, len(t))) for s, t in lung_sites.items()}
    pooled = pd.concat([t.assign(site=s) for s, t in jittered.items()])[["site", "time", "status", "age", "sex"]]
    result = fit_cox(federation(jittered).ask, QuerySpec.cox("time", "status", ("age", "sex")))
    ref = CoxPHFitter().fit(pooled, "time", "status", strata=["site"], fit_options={"precision": 1e-12})
    np.testing.assert_allclose(result.coef, ref.params_[["age", "sex"]].to_numpy(), atol=1e-6)


@pytest.mark.parametrize(
    ("family", "outcome", "sm_family"),
    [
        (Family.LOGISTIC, "label", sm.families.Binomial()),
        (Family.POISSON, "label", sm.families.Poisson()),
        (Family.LINEAR, "age", sm.families.Gaussian()),
    ],
)
def test_glm_equals_statsmodels_on_pooled_heart(heart_sites, federation, family, outcome, sm_family) -> None:
    covariates = tuple(f for f in FEATURES if f != outcome)
    fed = federation(heart_sites, DisclosurePolicy())  # the default policy: every site has >= 10 patients
    result = fit_glm(fed.ask, QuerySpec.glm(family, outcome, covariates))

    pooled = pd.concat(heart_sites.values(), ignore_index=True)
    ref = sm.GLM(pooled[outcome], sm.add_constant(pooled[list(covariates)]), family=sm_family).fit(tol=1e-12)
    assert result.n == len(pooled) == 740 and result.names == ("Intercept", *covariates)
    np.testing.assert_allclose(result.coef, ref.params.to_numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.se, ref.bse.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(result.p_values, ref.pvalues.to_numpy(), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(result.conf_int(), ref.conf_int().to_numpy(), atol=1e-6)
    assert result.loglik == pytest.approx(ref.llf, rel=1e-9)
    assert result.scale == pytest.approx(ref.scale, rel=1e-9)
    assert not fed.refusals


def test_kaplan_meier_and_logrank_equal_the_pooled_ones(lung, lung_sites, federation) -> None:
    spec = QuerySpec(kind=QueryKind.KAPLAN_MEIER, time="time", event="status", group="sex", levels=((1.0, 2.0),))
    result = kaplan_meier(federation(lung_sites).ask, spec)

    for curve, sex in zip(result.curves, (1, 2), strict=True):
        rows = lung[lung["sex"] == sex]
        ref = KaplanMeierFitter().fit(rows["time"], rows["status"])
        table = ref.event_table
        np.testing.assert_array_equal(curve.timeline, table.index.to_numpy())
        np.testing.assert_array_equal(curve.at_risk, table["at_risk"].to_numpy())
        np.testing.assert_array_equal(curve.events, table["observed"].to_numpy())
        np.testing.assert_allclose(curve.survival, ref.survival_function_.iloc[:, 0].to_numpy(), rtol=1e-12)
        np.testing.assert_allclose(curve.ci_lower, ref.confidence_interval_.iloc[:, 0].to_numpy(), rtol=1e-10)
        np.testing.assert_allclose(curve.ci_upper, ref.confidence_interval_.iloc[:, 1].to_numpy(), rtol=1e-10)
        assert curve.median() == ref.median_survival_time_
    test = multivariate_logrank_test(lung["time"], lung["sex"], lung["status"])
    assert result.logrank is not None
    assert result.logrank.statistic == pytest.approx(test.test_statistic, rel=1e-10)
    assert result.logrank.p_value == pytest.approx(test.p_value, rel=1e-9)


def test_describe_pools_mean_and_variance_exactly(lung, lung_sites, federation) -> None:
    spec = QuerySpec(kind=QueryKind.DESCRIBE, columns=("age", "meal.cal"), where=(Criterion.parse("sex==2"),))
    result = combine(spec, federation(lung_sites).ask(spec))

    assert isinstance(result, DescribeResult)
    rows = lung[lung["sex"] == 2][["age", "meal.cal"]].dropna()
    assert result.combined.loc["age", "n"] == len(rows)
    np.testing.assert_allclose(result.combined["mean"], rows.mean().to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(result.combined["variance"], rows.var(ddof=1).to_numpy(), rtol=1e-12)


def test_histogram_and_crosstab_add_up_to_the_pooled_counts(lung, lung_sites, federation) -> None:
    fed = federation(lung_sites)
    edges = (30.0, 50.0, 60.0, 70.0, 90.0)
    hist = combine(q := QuerySpec(kind=QueryKind.HISTOGRAM, columns=("age",), bins=edges), fed.ask(q))
    tab_spec = QuerySpec(kind=QueryKind.CROSSTAB, columns=("sex", "ph.ecog"), levels=((1.0, 2.0), (0.0, 1.0, 2.0, 3.0)))
    tab = combine(tab_spec, fed.ask(tab_spec))

    assert isinstance(hist, TableResult) and isinstance(tab, TableResult)
    inner = np.histogram(lung["age"], bins=np.array(edges))[0]
    np.testing.assert_array_equal(hist.combined.ravel(), [0, *inner, 0])
    ref = pd.crosstab(lung["sex"], lung["ph.ecog"]).reindex(columns=[0.0, 1.0, 2.0, 3.0], fill_value=0)
    np.testing.assert_array_equal(tab.combined, ref.to_numpy())
    q50 = histogram_quantiles(hist, edges, (0.5,))[0]
    assert abs(q50 - lung["age"].median()) < 10  # within one bin width (approximate by design)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(2, 6), st.integers(0, 2**32 - 1))
def test_any_split_of_the_rows_gives_the_pooled_answer(lung, federation, n_sites, seed) -> None:
    # The one-site federation is the pooled computation; every partition must agree with it.
    table = lung.drop(columns="inst")
    owner = np.random.default_rng(seed).integers(0, n_sites, len(table))
    sites = {f"s{k}": table[owner == k] for k in range(n_sites) if np.any(owner == k)}
    km = QuerySpec(kind=QueryKind.KAPLAN_MEIER, time="time", event="status")
    desc = QuerySpec(kind=QueryKind.DESCRIBE, columns=("age", "wt.loss"))
    split, pooled = federation(sites), federation({"all": table})
    a, b = kaplan_meier(split.ask, km).curves[0], kaplan_meier(pooled.ask, km).curves[0]
    np.testing.assert_array_equal(
        a.summary()[["at_risk", "events", "censored"]], b.summary()[["at_risk", "events", "censored"]]
    )
    np.testing.assert_allclose(a.survival, b.survival, rtol=1e-13)
    da, db = combine(desc, split.ask(desc)), combine(desc, pooled.ask(desc))
    assert isinstance(da, DescribeResult) and isinstance(db, DescribeResult)
    np.testing.assert_allclose(da.combined.to_numpy(), db.combined.to_numpy(), rtol=1e-11)
