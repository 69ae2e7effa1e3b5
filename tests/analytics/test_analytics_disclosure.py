"""Disclosure control at the site: suppression, minimum cohort, differencing, DP noise and its cost."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kstest, norm

from medfed.analytics import (
    AnswerHistory,
    DisclosurePolicy,
    DPRequest,
    Family,
    Mechanism,
    QueryKind,
    QuerySpec,
    TableResult,
    answer,
    combine,
    epsilon_cost,
    fit_glm,
    gaussian_sigma,
)
from medfed.analytics.policy import suppress
from medfed.core.errors import ConfigError, JobError, PermissionDenied, ValidationError

RNG = np.random.default_rng(0)


def _site(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {"id": np.arange(n, dtype=float), "age": rng.integers(30, 90, n).astype(float), "sex": np.arange(n) % 2}
    )


def test_small_cells_are_withheld_and_shown_as_below_threshold() -> None:
    table = _site().assign(age=[65.0] * 3 + [40.0] * 37)  # exactly 3 patients over 60
    released, _ = answer(QuerySpec.count(("age>60",)), table, DisclosurePolicy(), AnswerHistory(), rng=RNG)
    assert np.isnan(released["counts"][0])
    result = combine(QuerySpec.count(("age>60",)), {"a": released, "b": released})
    assert isinstance(result, TableResult)
    assert result.frame("a").iloc[0, 0] == "<5" and result.hidden[0, 0] == 2 and result.combined[0, 0] == 0
    # The same cohort at a site whose threshold is 3 is released as is.
    shown, _ = answer(QuerySpec.count(("age>60",)), table, DisclosurePolicy(min_cell=3), AnswerHistory(), rng=RNG)
    assert shown["counts"][0] == 3


def test_one_withheld_cell_takes_its_smallest_neighbour_with_it() -> None:
    # With one cell hidden, margin minus the others would reveal it: secondary suppression.
    out = suppress(np.array([2.0, 9.0, 7.0, 0.0]), min_cell=5)
    np.testing.assert_array_equal(np.isnan(out), [True, False, True, False])
    assert out[1] == 9 and out[3] == 0
    both = suppress(np.array([[1.0, 3.0], [8.0, 6.0]]), min_cell=5)
    np.testing.assert_array_equal(np.isnan(both), [[True, True], [False, False]])


def test_a_cohort_under_the_minimum_is_refused_and_history_is_unchanged() -> None:
    spec = QuerySpec(kind=QueryKind.DESCRIBE, columns=("age",), where=QuerySpec.count(("id<8",)).where)
    history = AnswerHistory()
    with pytest.raises(PermissionDenied, match="minimum of 10"):
        answer(spec, _site(), DisclosurePolicy(), history, rng=RNG)
    assert history.cohorts == ()


def test_differencing_attack_is_refused() -> None:
    table = _site()
    policy = DisclosurePolicy(min_cohort=5)
    spec_all = QuerySpec(kind=QueryKind.DESCRIBE, columns=("age",), where=QuerySpec.count(("sex==1",)).where)
    spec_but_one = spec_all.replace(where=QuerySpec.count(("sex==1", "id!=7")).where)
    first, history = answer(spec_all, table, policy, AnswerHistory(), rng=RNG)

    with pytest.raises(PermissionDenied, match="differs from one answered earlier by 1 patient"):
        answer(spec_but_one, table, policy, history, rng=RNG)

    # Without the protection (threshold 1) the attack works: two sums reveal patient 7's age.
    lax = DisclosurePolicy(min_cohort=5, differencing_threshold=1)
    second, _ = answer(spec_but_one, table, lax, history, rng=RNG)
    n1, n2 = first["n"][0], second["n"][0]
    revealed = n1 * first["mean"][0] - n2 * second["mean"][0]
    assert revealed == pytest.approx(table.loc[7, "age"])


def test_differencing_compares_patients_not_just_sizes() -> None:
    # Swap one patient for another: same size, but two patients differ; still refused.
    table = _site()
    policy = DisclosurePolicy(min_cohort=5)
    _, history = answer(QuerySpec.count(("id<20",)), table, policy, AnswerHistory(), rng=RNG)
    with pytest.raises(PermissionDenied, match="by 2 patient"):
        answer(QuerySpec.count(("id>0", "id<21")), table, policy, history, rng=RNG)
    # A cohort far from every earlier one, and the same cohort again, are answered.
    _, history = answer(QuerySpec.count(("id>=20",)), table, policy, history, rng=RNG)
    _, history = answer(QuerySpec.count(("id<20",)), table, policy, history, rng=RNG)
    assert [c.answers for c in history.cohorts] == [1, 2]


def test_missing_values_define_the_cohort_too() -> None:
    # Adding a covariate that is missing for one patient drops that patient: also a difference.
    table = _site().assign(bmi=[np.nan] + [25.0] * 39)
    policy = DisclosurePolicy(min_cohort=5)
    _, history = answer(QuerySpec(kind=QueryKind.DESCRIBE, columns=("age",)), table, policy, AnswerHistory(), rng=RNG)
    with pytest.raises(PermissionDenied, match="by 1 patient"):
        answer(QuerySpec(kind=QueryKind.DESCRIBE, columns=("age", "bmi")), table, policy, history, rng=RNG)


def test_history_round_trips_as_json_and_detects_tampering() -> None:
    _, history = answer(QuerySpec.count(("age>60", "sex==1")), _site(), DisclosurePolicy(), AnswerHistory(), rng=RNG)
    text = history.to_json()
    assert AnswerHistory.from_json(text) == history
    with pytest.raises(ValidationError, match="does not match"):
        AnswerHistory.from_json(text.replace("age", "agf"))
    with pytest.raises(ValidationError, match="answer history"):
        AnswerHistory.from_json(b"\x80\x04not json")


def test_laplace_counts_are_noised_with_scale_one_over_epsilon() -> None:
    spec = QuerySpec.count(dp=DPRequest(mechanism=Mechanism.LAPLACE, epsilon=0.5))
    rng = np.random.default_rng(3)
    history = AnswerHistory()
    draws = []
    for _ in range(2000):
        released, history = answer(spec, _site(), DisclosurePolicy(), history, rng=rng)
        draws.append(released["counts"][0] - 40)
    assert kstest(draws, "laplace", args=(0, 1 / 0.5)).pvalue > 0.01
    assert epsilon_cost(spec) == (0.5, 0.0) and epsilon_cost(QuerySpec.count()) == (0.0, 0.0)
    assert released.meta["noised"] == 1.0


def test_gaussian_noise_uses_the_analytic_calibration() -> None:
    sigma = gaussian_sigma(1.0, 1e-5)
    # Balle & Wang 2018, Thm. 8: delta(sigma) equals the target at the calibrated sigma.
    delta = norm.cdf(1 / (2 * sigma) - sigma) - math.e * norm.cdf(-1 / (2 * sigma) - sigma)
    assert delta == pytest.approx(1e-5, rel=1e-6)
    assert sigma == pytest.approx(3.7306, abs=1e-4) and sigma < math.sqrt(2 * math.log(1.25 / 1e-5))
    spec = QuerySpec(
        kind=QueryKind.HISTOGRAM, columns=("age",), bins=(30.0, 60.0, 90.0),
        dp=DPRequest(mechanism=Mechanism.GAUSSIAN, epsilon=1.0, delta=1e-5),
    )  # fmt: skip
    released, _ = answer(spec, _site(), DisclosurePolicy(), AnswerHistory(), rng=np.random.default_rng(4))
    exact, _ = answer(spec.replace(dp=None), _site(), DisclosurePolicy(), AnswerHistory(), rng=RNG)
    assert not np.array_equal(released["counts"], exact["counts"]) and epsilon_cost(spec) == (1.0, 1e-5)


def test_site_policy_rules_over_the_researchers_dp_request() -> None:
    dp = DPRequest(mechanism=Mechanism.LAPLACE, epsilon=2.0)
    with pytest.raises(PermissionDenied, match="over this site's cap"):
        answer(QuerySpec.count(dp=dp), _site(), DisclosurePolicy(), AnswerHistory(), rng=RNG)
    with pytest.raises(PermissionDenied, match="does not offer"):
        answer(QuerySpec.count(dp=dp), _site(), DisclosurePolicy(allow_dp=False), AnswerHistory(), rng=RNG)
    with pytest.raises(PermissionDenied, match="only with DP noise"):
        answer(QuerySpec.count(), _site(), DisclosurePolicy(require_dp=True), AnswerHistory(), rng=RNG)
    with pytest.raises(ConfigError, match="min_cell"):
        DisclosurePolicy(min_cell=0)


def test_a_fit_stops_when_the_answering_sites_change(heart_sites, federation) -> None:
    fed = federation(heart_sites)
    spec = QuerySpec.glm(Family.LOGISTIC, "label", ("age", "sex"))
    calls = {"n": 0}

    def flaky(q: QuerySpec) -> dict:
        calls["n"] += 1
        answers = fed.ask(q)
        return answers if calls["n"] == 1 else {k: v for k, v in answers.items() if k != "hungary"}

    with pytest.raises(JobError, match="sites changed"):
        fit_glm(flaky, spec)
    with pytest.raises(JobError, match="no site answered"):
        fit_glm(lambda q: {}, spec)


def test_small_lung_institutions_refuse_under_the_default_policy(lung_sites, federation) -> None:
    fed = federation(lung_sites, DisclosurePolicy())
    fed.ask(QuerySpec(kind=QueryKind.KAPLAN_MEIER, time="time", event="status"))
    small = {s for s, t in lung_sites.items() if len(t) < 10}
    assert set(fed.refusals) == small and small


def test_a_site_can_coarsen_survival_times(lung, lung_sites, federation) -> None:
    policy = DisclosurePolicy(min_cell=1, min_cohort=1, differencing_threshold=1, km_time_grain=30.0)
    spec = QuerySpec(kind=QueryKind.KAPLAN_MEIER, time="time", event="status")
    answers = federation(lung_sites, policy).ask(spec)
    assert all(np.all(a["time/0"] % 30 == 0) for a in answers.values())
    curve = combine(spec, answers).curves[0]  # type: ignore[union-attr]
    months = np.ceil(lung["time"] / 30) * 30
    np.testing.assert_array_equal(curve.timeline[1:], np.unique(months))
    assert curve.events.sum() == lung["status"].sum()
