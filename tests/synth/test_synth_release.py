"""The release gate and federated combination."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import make_table
from medfed.core.errors import ValidationError
from medfed.synth import (
    Method,
    ReleasePolicy,
    SynthConfig,
    combine_sites,
    fit,
    fit_copula,
    gate,
    infer_schema,
    prepare_release,
)
from medfed.synth.evaluate import evaluate


def test_copies_are_dropped_and_counted_then_the_release_passes(table: pd.DataFrame, holdout: pd.DataFrame) -> None:
    rng = np.random.default_rng(0)
    synthetic = fit(table, infer_schema(table), SynthConfig(method=Method.MST, epsilon=1.0), rng).sample(400, rng)
    leaked = pd.concat([synthetic, table.head(5)], ignore_index=True)
    e = evaluate(train=table, holdout=holdout, synthetic=leaked, target="label")
    assert e.exact_copies == 5
    assert any("exact copies" in r for r in gate(e, ReleasePolicy(), differentially_private=True))
    decision = prepare_release(
        train=table, synthetic=leaked, evaluation=e, policy=ReleasePolicy(), differentially_private=True
    )
    assert decision.released and decision.dropped_copies == 5 and len(decision.rows) == 400


def test_membership_risk_and_missing_dp_block_with_reasons(table: pd.DataFrame, holdout: pd.DataFrame) -> None:
    near_copies = table.assign(bp=table["bp"] + 1e-3)  # no exact copy, but every row sits on a real one
    e = evaluate(train=table, holdout=holdout, synthetic=near_copies, target="label")
    assert e.exact_copies == 0
    strict = prepare_release(
        train=table, synthetic=near_copies, evaluation=e, policy=ReleasePolicy(), differentially_private=False
    )
    assert not strict.released and strict.rows.empty
    assert any("membership-inference AUC" in r for r in strict.reasons)
    assert any("not differentially private" in r for r in strict.reasons)
    rng = np.random.default_rng(0)
    copula = fit_copula(table, infer_schema(table), bins=16, rng=rng).sample(600, rng)
    e = evaluate(train=table, holdout=holdout, synthetic=copula, target="label")
    waived = prepare_release(
        train=table,
        synthetic=copula,
        evaluation=e,
        policy=ReleasePolicy(max_mia_auc=1.0, require_dp=False),
        differentially_private=False,
    )
    assert waived.released
    with pytest.raises(ValidationError):
        ReleasePolicy(max_mia_auc=0.2)


def test_combine_sites_adds_a_site_column() -> None:
    frames = {"b_site": make_table(5, seed=1), "a_site": make_table(3, seed=2)}
    combined = combine_sites(frames)
    assert combined["site"].tolist() == ["a_site"] * 3 + ["b_site"] * 5
    assert list(combined.columns[:-1]) == list(frames["b_site"].columns)


def test_combine_sites_refuses_a_different_schema() -> None:
    good = make_table(3, seed=1)
    with pytest.raises(ValidationError) as info:
        combine_sites({"a": good, "b": good.drop(columns=["bp"]), "c": good.assign(site="x")})
    assert len(info.value.problems) == 3
    with pytest.raises(ValidationError):
        combine_sites({})
