"""Query specs as schema-checked JSON, and site answers over the transport's real wire codec."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import medfed.analytics as analytics
from medfed.analytics import (
    AnswerHistory,
    Criterion,
    DisclosurePolicy,
    DPRequest,
    Family,
    Mechanism,
    Op,
    QueryKind,
    QuerySpec,
    SiteAnswer,
    answer,
)
from medfed.core.errors import ValidationError
from medfed.core.records import ResultMessage, ResultStatus
from medfed.transport.codec import read_result, result_frames

names = st.from_regex(r"[a-z][a-z0-9_.]{0,8}", fullmatch=True)
values = st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.from_regex(r"[A-Za-z ]{1,6}", fullmatch=True))
criteria = st.builds(Criterion, column=names, op=st.sampled_from(Op), value=values)


@st.composite
def specs(draw: st.DrawFn) -> QuerySpec:
    where = tuple(draw(st.lists(criteria, max_size=3)))
    kind = draw(st.sampled_from([QueryKind.COUNT, QueryKind.HISTOGRAM, QueryKind.GLM_STATS, QueryKind.CROSSTAB]))
    if kind is QueryKind.COUNT:
        eps = draw(st.floats(0.01, 5))
        dp = draw(st.sampled_from([None, DPRequest(mechanism=Mechanism.LAPLACE, epsilon=eps)]))
        return QuerySpec(kind=kind, where=where, dp=dp)
    if kind is QueryKind.HISTOGRAM:
        edges = sorted(set(draw(st.lists(st.integers(-100, 100), min_size=2, max_size=6, unique=True))))
        return QuerySpec(kind=kind, where=where, columns=(draw(names),), bins=tuple(float(e) for e in edges))
    if kind is QueryKind.CROSSTAB:
        levels = tuple(tuple(draw(st.lists(values, min_size=1, max_size=3))) for _ in range(2))
        return QuerySpec(kind=kind, where=where, columns=(draw(names), draw(names)), levels=levels)
    covs = tuple(draw(st.lists(names, max_size=3)))
    intercept = draw(st.booleans())
    beta = tuple(draw(st.lists(st.floats(-5, 5), min_size=len(covs) + intercept, max_size=len(covs) + intercept)))
    family = draw(st.sampled_from(Family))
    return QuerySpec(
        kind=kind, where=where, family=family, outcome=draw(names), covariates=covs, intercept=intercept, beta=beta
    )


@settings(max_examples=150, deadline=None)
@given(specs())
def test_every_spec_round_trips_through_json(spec: QuerySpec) -> None:
    again = QuerySpec.from_json(spec.to_json())
    assert again == spec and again.cohort_key() == spec.cohort_key()


def test_from_json_lists_every_problem_at_once() -> None:
    bad = {"kind": "glm_stats", "family": "probit", "where": [{"column": "age", "op": "~", "value": 3}], "x": 1}
    with pytest.raises(ValidationError) as info:
        QuerySpec.from_json(json.dumps(bad))
    text = str(info.value)
    assert "unknown field 'x'" in text and "'probit'" in text and "where[0].op" in text
    with pytest.raises(ValidationError, match="outcome is required"):
        QuerySpec.from_json(json.dumps({"kind": "glm_stats", "family": "logistic"}))
    with pytest.raises(ValidationError, match="not JSON"):
        QuerySpec.from_json("{")
    with pytest.raises(ValidationError, match="differential privacy is offered"):
        QuerySpec(kind=QueryKind.DESCRIBE, columns=("a",), dp=DPRequest(mechanism=Mechanism.LAPLACE, epsilon=1.0))
    with pytest.raises(ValidationError, match="strictly increasing"):
        QuerySpec(kind=QueryKind.HISTOGRAM, columns=("a",), bins=(1.0, 1.0))


def test_criteria_parse_and_select_rows() -> None:
    table = pd.DataFrame({"age": [50.0, 61.0, np.nan, 70.0], "sex": ["M", "F", "F", "M"]})
    assert list(Criterion.parse("age > 60").mask(table)) == [False, True, False, True]
    assert list(Criterion.parse("sex=='F'").mask(table)) == [False, True, True, False]
    assert list(Criterion.parse("age!=50").mask(table)) == [False, True, False, True]  # missing never matches
    with pytest.raises(ValidationError, match="not 'column op value'"):
        Criterion.parse("age ~ 3")


def test_bad_columns_are_named() -> None:
    table = pd.DataFrame({"age": ["61", "x", "70"] * 5, "label": [0.0, 1.0, 2.0] * 5})
    with pytest.raises(ValidationError, match=r"no column\(s\) \['bmi'\]"):
        answer(QuerySpec.count(("bmi>3",)), table, DisclosurePolicy(), AnswerHistory(), rng=np.random.default_rng())
    with pytest.raises(ValidationError, match=r"column 'age'.*'x' at row 1"):
        answer(QuerySpec(kind=QueryKind.DESCRIBE, columns=("age",)), table, DisclosurePolicy(), AnswerHistory(),
               rng=np.random.default_rng())  # fmt: skip
    with pytest.raises(ValidationError, match=r"column 'label'.*not 0 or 1"):
        spec = QuerySpec.glm(Family.LOGISTIC, "label", ())
        answer(spec, table.assign(age=1.0), DisclosurePolicy(), AnswerHistory(), rng=np.random.default_rng())


def test_site_answer_crosses_the_real_wire_codec_with_suppressed_cells() -> None:
    original = SiteAnswer(
        arrays={"counts": np.array([[np.nan, 7.0], [12.0, np.nan]]), "n": np.array([40.0])},
        meta={"min_cell": 5.0, "noised": 0.0},
    )
    params, metrics = original.to_wire()
    result = ResultMessage(
        task_id="t", job_id="j", round=1, site="a", status=ResultStatus.OK, metrics=metrics, parameters=params
    )
    back = read_result(list(result_frames(result)), site="a")
    assert back.parameters is not None
    decoded = SiteAnswer.from_wire(back.parameters, back.metrics)
    np.testing.assert_array_equal(decoded["counts"], original["counts"])  # NaN == NaN here
    assert decoded.meta == original.meta
    with pytest.raises(ValidationError, match="float64"):
        SiteAnswer(arrays={"x": np.array([1], dtype=np.int64)})


def test_public_api_is_what_init_exports() -> None:
    assert sorted(analytics.__all__) == analytics.__all__
    assert all(hasattr(analytics, name) for name in analytics.__all__)


def test_cohorts_that_differ_only_in_a_decimal_have_different_keys() -> None:
    a, b = QuerySpec.count(("age>60.0000001",)), QuerySpec.count(("age>60.0000002",))
    assert a.cohort_key() != b.cohort_key()
    assert QuerySpec.count(("sex==1", "age>60")).cohort_key() == QuerySpec.count(("age>60", "sex==1")).cohort_key()


def test_answer_arrays_are_read_only_and_digest_tracks_values() -> None:
    a = SiteAnswer(arrays={"counts": np.array([3.0, np.nan])}, meta={"min_cell": 5.0})
    with pytest.raises(ValueError, match="read-only"):
        a["counts"][0] = 4.0
    same = SiteAnswer(arrays={"counts": np.array([3.0, np.nan])}, meta={"min_cell": 5.0})
    other = SiteAnswer(arrays={"counts": np.array([4.0, np.nan])}, meta={"min_cell": 5.0})
    assert a.digest() == same.digest() != other.digest()
