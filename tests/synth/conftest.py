"""A small mixed-type health table with known structure, shared by the synth tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def make_table(rows: int, seed: int) -> pd.DataFrame:
    """age -> blood pressure -> label, sex -> label; a date, and a lab value missing for 20 %."""
    rng = np.random.default_rng(seed)
    age = np.clip(rng.normal(60, 12, rows), 20, 95).round()
    sex = rng.choice(["F", "M"], rows, p=[0.4, 0.6])
    bp = np.clip(90 + 0.8 * age + rng.normal(0, 8, rows), 80, 220)
    risk = 0.08 * (age - 60) + 0.04 * (bp - 138) + np.where(sex == "M", 0.7, -0.7)
    label = (rng.uniform(size=rows) < 1 / (1 + np.exp(-risk))).astype(int)
    lab = np.where(rng.uniform(size=rows) < 0.2, np.nan, rng.gamma(2.0, 2.0, rows))
    admitted = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 1000, rows), unit="D")
    return pd.DataFrame({"age": age, "sex": sex, "bp": bp, "lab": lab, "admitted": admitted, "label": label})


@pytest.fixture(scope="session")
def table() -> pd.DataFrame:
    return make_table(600, seed=1)


@pytest.fixture(scope="session")
def holdout() -> pd.DataFrame:
    return make_table(300, seed=2)
