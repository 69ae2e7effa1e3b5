"""The evaluation: anchors that must hold for a copy, a fresh sample and a biased table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import make_table
from medfed.core.errors import ValidationError
from medfed.synth import Binning, Subgroup, exact_copies, workload_error
from medfed.synth.evaluate import evaluate

GROUPS = (Subgroup(name="sex", column="sex"), Subgroup(name="age band", column="age", edges=(50.0, 70.0)))


def test_a_copy_of_the_training_rows_is_caught(table: pd.DataFrame, holdout: pd.DataFrame) -> None:
    e = evaluate(train=table, holdout=holdout, synthetic=table, target="label", subgroups=GROUPS)
    assert e.exact_copies == len(table) and e.exact_copy_rate == 1.0
    assert e.mia_auc > 0.95 and e.closer_to_train_share > 0.6 and e.dcr_train_median < e.dcr_holdout_median
    assert e.workload_error == 0.0
    assert all(score == pytest.approx(1.0) for score in e.column_scores.values())


def test_a_fresh_sample_of_the_same_population_looks_private_and_useful(
    table: pd.DataFrame, holdout: pd.DataFrame
) -> None:
    e = evaluate(train=table, holdout=holdout, synthetic=make_table(600, seed=3), target="label", subgroups=GROUPS)
    assert e.exact_copies == 0
    assert abs(e.mia_auc - 0.5) < 0.07 and abs(e.closer_to_train_share - 0.5) < 0.08
    assert e.detection_auc < 0.65
    lr = e.utility["logistic_regression"]
    assert abs(lr["tstr_auc"] - lr["trtr_auc"]) < 0.05
    assert e.erased_subgroups == ()


def test_an_erased_subgroup_is_flagged(table: pd.DataFrame, holdout: pd.DataFrame) -> None:
    biased = make_table(900, seed=4)
    biased = biased[biased["sex"] == "M"].head(600)
    e = evaluate(train=table, holdout=holdout, synthetic=biased, target="label", subgroups=GROUPS)
    assert e.erased_subgroups == ("sex=F",)
    row = next(r for r in e.subgroups if r.value == "F")
    assert row.real_share == pytest.approx((table["sex"] == "F").mean()) and row.synthetic_share == 0.0


def test_workload_error_anchors(table: pd.DataFrame) -> None:
    rng = np.random.default_rng(0)
    uniform = pd.DataFrame({c: rng.choice(table[c].dropna().unique(), len(table)) for c in table.columns})
    fresh = make_table(600, seed=5)
    for binning in Binning:
        assert workload_error(table, table, binning=binning) == 0.0
        assert workload_error(table, uniform, binning=binning) > 2 * workload_error(table, fresh, binning=binning)


def test_exact_copies_matches_whole_rows_only(table: pd.DataFrame) -> None:
    near = table.head(3).copy()
    near.loc[near.index[0], "bp"] += 1e-6
    assert exact_copies(table, near).tolist() == [False, True, True]


def test_mismatched_tables_are_refused_with_every_problem(table: pd.DataFrame, holdout: pd.DataFrame) -> None:
    with pytest.raises(ValidationError) as info:
        evaluate(train=table, holdout=holdout.drop(columns=["bp"]), synthetic=table.head(1), target="outcome")
    assert len(info.value.problems) == 3
