"""Fitting MST and AIM: budget, fidelity that improves with ε, reproducibility, saved models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfed.core.errors import ConfigError, ValidationError
from medfed.synth import FittedSynthesizer, Method, SynthConfig, fit, infer_schema, planned_cost, workload_error


@pytest.mark.parametrize("method", list(Method))
def test_the_fit_spends_exactly_its_budget(table: pd.DataFrame, method: Method) -> None:
    fitted = fit(
        table, infer_schema(table), SynthConfig(method=method, epsilon=1.0, delta=1e-6), np.random.default_rng(0)
    )
    assert fitted.cost.epsilon <= 1.0
    assert fitted.cost.epsilon == pytest.approx(1.0, rel=1e-3)
    assert fitted.cost.delta == 1e-6
    assert planned_cost(SynthConfig(method=method, epsilon=1.0, delta=1e-6)) == fitted.cost  # what to reserve
    assert all(a in table.columns and b in table.columns for a, b in fitted.edges)


@pytest.mark.parametrize("method", list(Method))
def test_error_falls_as_epsilon_grows(table: pd.DataFrame, method: Method) -> None:
    schema = infer_schema(table)

    def error(epsilon: float) -> float:
        runs = []
        for seed in range(3):
            rng = np.random.default_rng(seed)
            fitted = fit(table, schema, SynthConfig(method=method, epsilon=epsilon, delta=1e-6, bins=6), rng)
            runs.append(workload_error(table, fitted.sample(len(table), rng)))
        return float(np.mean(runs))

    low, high = error(0.05), error(50.0)
    assert high < low
    assert high < 0.2  # near the sampling-noise floor of a 600-row table (a fresh sample scores ~0.15)


def test_synthetic_rows_keep_types_missingness_and_associations(table: pd.DataFrame) -> None:
    rng = np.random.default_rng(0)
    fitted = fit(table, infer_schema(table), SynthConfig(method=Method.MST, epsilon=20.0), rng)
    synth = fitted.sample(2_000, rng)
    assert list(synth.columns) == list(table.columns)
    assert set(synth["sex"]) <= {"F", "M"}
    assert synth["label"].dtype == np.int64 and synth["admitted"].dtype.kind == "M"
    assert synth["lab"].isna().mean() == pytest.approx(table["lab"].isna().mean(), abs=0.05)
    assert synth["age"].corr(synth["bp"]) > 0.5  # real: ~0.77


def test_same_seed_same_rows_and_saved_models_sample_the_same(table: pd.DataFrame, tmp_path: Path) -> None:
    schema, config = infer_schema(table), SynthConfig(method=Method.AIM, epsilon=1.0)
    a = fit(table, schema, config, np.random.default_rng(7))
    b = fit(table, schema, config, np.random.default_rng(7))
    pd.testing.assert_frame_equal(a.sample(50, np.random.default_rng(1)), b.sample(50, np.random.default_rng(1)))
    a.save(tmp_path / "synth.json")
    loaded = FittedSynthesizer.load(tmp_path / "synth.json")
    assert loaded.cost == a.cost and loaded.edges == a.edges and loaded.method is Method.AIM
    pd.testing.assert_frame_equal(loaded.sample(50, np.random.default_rng(1)), a.sample(50, np.random.default_rng(1)))


def test_bad_config_and_bad_input_are_refused(table: pd.DataFrame) -> None:
    with pytest.raises(ConfigError) as info:
        SynthConfig(epsilon=-1.0, delta=2.0, bins=1)
    assert "epsilon" in str(info.value) and "delta" in str(info.value) and "bins" in str(info.value)
    with pytest.raises(ValidationError, match="'sex' is missing"):
        fit(table.drop(columns=["sex"]), infer_schema(table), SynthConfig(), np.random.default_rng(0))


def test_a_star_around_the_target_links_every_column_to_it(table: pd.DataFrame) -> None:
    config = SynthConfig(method=Method.MST, epsilon=1.0, target="label")
    fitted = fit(table, infer_schema(table), config, np.random.default_rng(0))
    assert sorted(fitted.edges) == sorted(("label", c) for c in table.columns if c != "label")
    assert fitted.cost.epsilon == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ConfigError, match="only method 'mst'"):
        SynthConfig(method=Method.AIM, target="label")
    with pytest.raises(ConfigError, match="not a column"):
        fit(table, infer_schema(table), SynthConfig(method=Method.MST, target="outcome"), np.random.default_rng(0))
