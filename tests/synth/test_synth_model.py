"""The tree model: projection, estimation from noisy marginals, sampling, files without pickle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medfed.core.errors import StoreError, ValidationError
from medfed.synth.model import Measurement, TreeModel, _project, estimate


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 40), elements=st.floats(-1e3, 1e3)), st.floats(1.0, 1e4))
def test_projection_lands_on_the_scaled_simplex(y: np.ndarray, total: float) -> None:
    x = _project(y, total)
    assert np.all(x >= 0)
    assert x.sum() == pytest.approx(total, rel=1e-9)


def _chain(rows: int, rng: np.random.Generator) -> np.ndarray:
    """a -> b -> c, each with 3 values; b copies a 80 % of the time, c copies b 70 %."""
    a = rng.integers(0, 3, rows)
    b = np.where(rng.uniform(size=rows) < 0.8, a, rng.integers(0, 3, rows))
    c = np.where(rng.uniform(size=rows) < 0.7, b, rng.integers(0, 3, rows))
    return np.column_stack([a, b, c])


def _measure_exact(codes: np.ndarray, sizes: tuple[int, ...], cols: tuple[int, ...]) -> Measurement:
    flat = np.ravel_multi_index(tuple(codes[:, c] for c in cols), tuple(sizes[c] for c in cols))
    counts = np.bincount(flat, minlength=int(np.prod([sizes[c] for c in cols]))).astype(float)
    return Measurement(columns=cols, values=counts, sigma=1e-3)


def test_noise_free_measurements_reproduce_a_tree_distribution() -> None:
    rng = np.random.default_rng(0)
    codes, sizes = _chain(20_000, rng), (3, 3, 3)
    ms = [_measure_exact(codes, sizes, (j,)) for j in range(3)]
    ms += [_measure_exact(codes, sizes, (0, 1)), _measure_exact(codes, sizes, (1, 2))]
    model = estimate(sizes, ms, [(0, 1), (1, 2)], (False, False, False))
    assert model.total == pytest.approx(20_000, rel=1e-6)
    sample = model.sample(20_000, rng)
    for i, j in ((0, 1), (1, 2), (0, 2)):  # (0, 2) is never measured: it follows from the tree
        real = np.histogram2d(codes[:, i], codes[:, j], bins=3)[0] / 20_000
        synth = np.histogram2d(sample[:, i], sample[:, j], bins=3)[0] / 20_000
        assert np.abs(real - synth).sum() < 0.05


def test_sampling_allocates_counts_by_rounding() -> None:
    rng = np.random.default_rng(0)
    ms = [Measurement(columns=(0,), values=np.array([300.0, 100.0]), sigma=1.0)]
    model = estimate((2,), ms, [], (False,))
    assert np.bincount(model.sample(400, rng)[:, 0]).tolist() == [300, 100]
    with pytest.raises(ValidationError):
        model.sample(-1, rng)


def test_a_cycle_is_refused() -> None:
    ms = [Measurement(columns=(j,), values=np.ones(2), sigma=1.0) for j in range(3)]
    ms += [Measurement(columns=e, values=np.ones(4), sigma=1.0) for e in ((0, 1), (1, 2), (0, 2))]
    with pytest.raises(ValidationError, match="cycle"):
        estimate((2, 2, 2), ms, [(0, 1), (1, 2), (0, 2)], (False,) * 3)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    codes, sizes = _chain(2_000, rng), (3, 3, 3)
    ms = [_measure_exact(codes, sizes, (j,)) for j in range(3)] + [_measure_exact(codes, sizes, (0, 1))]
    model = estimate(sizes, ms, [(0, 1)], (True, True, True))
    model.save(tmp_path / "m.json")
    loaded = TreeModel.load(tmp_path / "m.json")
    assert loaded.edges == model.edges and loaded.sizes == model.sizes
    np.testing.assert_array_equal(loaded.tables[0], model.tables[0])
    np.testing.assert_array_equal(
        loaded.sample(100, np.random.default_rng(5)), model.sample(100, np.random.default_rng(5))
    )


def test_a_pickled_array_file_is_refused(tmp_path: Path) -> None:
    model = estimate((2,), [Measurement(columns=(0,), values=np.array([5.0, 5.0]), sigma=1.0)], [], (False,))
    model.save(tmp_path / "m.json")
    with (tmp_path / "m.npz").open("wb") as fh:
        np.savez(fh, one_way_0=np.array([{"evil": 1}], dtype=object))  # needs pickle to load
    with pytest.raises(StoreError, match="unreadable"):
        TreeModel.load(tmp_path / "m.json")
    (tmp_path / "m.json").write_text('{"format": "other"}')
    with pytest.raises(StoreError, match="not a medfed tree model"):
        TreeModel.load(tmp_path / "m.json")
