"""Tests for fixed-point quantisation: error bounds, headroom, clipping and dequantised sums."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from medfed.core.errors import ValidationError
from medfed.core.params import Parameters
from medfed.crypto.secagg_primitives import RandomBytes
from medfed.secagg import (
    QuantizationConfig,
    Rounding,
    dequantize_parameters,
    dequantize_sum,
    quantize,
    quantize_parameters,
)


def seeded(seed: int = 0) -> RandomBytes:
    return np.random.default_rng(seed).bytes


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 20),
    bits=st.integers(12, 32),
    rounding=st.sampled_from(list(Rounding)),
    values=hnp.arrays(np.float64, st.integers(1, 50), elements=st.floats(-1.0, 1.0)),
    seed=st.integers(0, 2**32),
)
def test_dequantised_sum_is_within_the_bound(
    n: int, bits: int, rounding: Rounding, values: np.ndarray, seed: int
) -> None:
    config = QuantizationConfig(clip=1.0, max_summands=n, bits=bits, rounding=rounding)
    rows = [np.roll(values, k) * (-1) ** k for k in range(n)]
    rng = seeded(seed)

    total = sum((quantize(r, config, rng=rng).astype(np.uint64) for r in rows), np.zeros(values.size, np.uint64))
    assert int(total.max()) < 2**bits  # the headroom: no wrap-around
    got = dequantize_sum(total % 2**bits, config, count=n)

    assert np.max(np.abs(got - np.sum(rows, axis=0))) <= config.sum_error_bound(n)


def test_nearest_rounding_error_is_at_most_half_a_step() -> None:
    config = QuantizationConfig(clip=2.0, max_summands=1, bits=16, rounding=Rounding.NEAREST)
    x = np.linspace(-2, 2, 10_001)

    err = dequantize_sum(quantize(x, config), config, count=1) - x

    assert np.max(np.abs(err)) <= 0.5 / config.scale + 1e-12
    assert np.max(np.abs(err)) > 0.4 / config.scale  # the bound is tight, the test can fail


def test_stochastic_rounding_is_unbiased() -> None:
    config = QuantizationConfig(clip=1.0, max_summands=1, bits=8)
    x = np.full(200_000, 0.3 / config.scale + 0.1)  # between two levels

    back = dequantize_sum(quantize(x, config, rng=seeded(1)), config, count=1)

    assert np.max(np.abs(back - x)) < 1 / config.scale
    assert abs(float(back.mean()) - float(x[0])) < 0.01 / config.scale


def test_values_beyond_clip_come_back_clipped() -> None:
    config = QuantizationConfig(clip=0.5, max_summands=3, rounding=Rounding.NEAREST)
    q = quantize(np.array([-9.0, 9.0]), config)

    assert list(q) == [0, config.levels]
    assert np.allclose(dequantize_sum(q * 3, config, count=3), [-1.5, 1.5])


def test_the_sum_of_max_summands_extremes_does_not_wrap() -> None:
    config = QuantizationConfig(clip=1.0, max_summands=7, bits=32, rounding=Rounding.NEAREST)
    q = quantize(np.ones(4), config)

    total = (q.astype(np.uint64) * 7).astype(np.uint32)  # what the protocol's mod-2^32 sum gives

    assert np.allclose(dequantize_sum(total, config, count=7), 7.0)


def test_parameters_round_trip_through_a_flat_vector() -> None:
    params = Parameters.from_numpy({"w": np.arange(6.0).reshape(2, 3) / 10, "b": np.array([-0.25], np.float32)})
    config = QuantizationConfig(clip=1.0, max_summands=2, rounding=Rounding.NEAREST)

    flat = quantize_parameters(params, config)
    back = dequantize_parameters(flat + flat, config, like=params, count=2)

    assert flat.shape == (7,) and back.names == ("w", "b")
    assert back["b"].dtype == np.float32
    assert back.allclose(params.map(lambda a: 2 * a), atol=config.sum_error_bound(2))


def test_bad_inputs_are_refused() -> None:
    config = QuantizationConfig(clip=1.0, max_summands=2)
    with pytest.raises(ValidationError, match="non-finite"):
        quantize(np.array([np.nan]), config)
    with pytest.raises(ValidationError, match="count"):
        dequantize_sum(np.zeros(1, np.uint32), config, count=3)
    with pytest.raises(ValidationError) as info:
        QuantizationConfig(clip=-1.0, max_summands=0, bits=40)
    assert len(info.value.problems) == 3
    with pytest.raises(ValidationError, match="headroom"):
        QuantizationConfig(clip=1.0, max_summands=10, bits=2)
