"""Schema inference, DP bins, encoding and decoding of mixed-type tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medfed.core.errors import ValidationError
from medfed.synth.domain import ColumnKind, ColumnSpec, Schema, decode, encode, fit_domain, infer_schema


def test_infer_schema_kinds_and_nullability(table: pd.DataFrame) -> None:
    schema = infer_schema(table)
    kinds = {c.name: c.kind for c in schema.columns}
    assert kinds == {
        "age": ColumnKind.NUMERIC,
        "sex": ColumnKind.CATEGORICAL,
        "bp": ColumnKind.NUMERIC,
        "lab": ColumnKind.NUMERIC,
        "admitted": ColumnKind.DATE,
        "label": ColumnKind.CATEGORICAL,
    }
    assert [c.name for c in schema.columns if c.nullable] == ["lab"]
    assert next(c for c in schema.columns if c.name == "age").integer


def test_round_trip_keeps_categories_missingness_and_bins(table: pd.DataFrame) -> None:
    rng = np.random.default_rng(0)
    domain = fit_domain(table, infer_schema(table), bins=6, rho=0.0, rng=rng)
    codes = encode(table, domain)
    back = decode(codes, domain, rng)
    assert (back["sex"] == table["sex"]).all()
    assert (back["label"] == table["label"]).all()
    assert back["lab"].isna().sum() == table["lab"].isna().sum()
    np.testing.assert_array_equal(encode(back, domain), codes)  # decoded values stay in their bins
    assert back["admitted"].dtype.kind == "M"


def test_dp_bins_are_sorted_and_inside_the_bounds(table: pd.DataFrame) -> None:
    schema = infer_schema(table)
    domain = fit_domain(table, schema, bins=8, rho=0.05, rng=np.random.default_rng(1))
    for spec, edges in zip(schema.columns, domain.edges, strict=True):
        if spec.kind is ColumnKind.CATEGORICAL:
            continue
        assert np.all(np.diff(edges) > 0)
        assert edges[0] == spec.lower and edges[-1] == spec.upper
        assert 2 <= len(edges) - 1 <= 8


def test_dp_bins_follow_the_data_quantiles() -> None:
    skewed = pd.DataFrame({"x": np.random.default_rng(0).exponential(1.0, 5000)})
    schema = Schema(columns=(ColumnSpec(name="x", kind=ColumnKind.NUMERIC, lower=0.0, upper=20.0),))
    edges = fit_domain(skewed, schema, bins=4, rho=10.0, rng=np.random.default_rng(0)).edges[0]
    assert edges[1] < 1.0  # equal-width bins would put the first edge at 5


def test_bad_frames_list_every_problem_with_column_and_row(table: pd.DataFrame) -> None:
    schema = infer_schema(table)
    bad = table.drop(columns=["bp"]).copy()
    bad.loc[3, "sex"] = "X"
    bad.loc[5, "age"] = np.nan
    with pytest.raises(ValidationError) as info:
        encode(bad, fit_domain(table, schema, bins=4, rho=0.0, rng=np.random.default_rng(0)))
    text = str(info.value)
    assert len(info.value.problems) == 3
    assert "'bp' is missing" in text and "'X' at row 3" in text and "row 5" in text


def test_column_spec_validation() -> None:
    with pytest.raises(ValidationError, match="categories"):
        ColumnSpec(name="c", kind=ColumnKind.CATEGORICAL)
    with pytest.raises(ValidationError, match="bounds"):
        ColumnSpec(name="x", kind=ColumnKind.NUMERIC, lower=1.0, upper=1.0)
