"""Clipping, norms and Gaussian noise on Parameters."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from medfed.core.errors import ValidationError
from medfed.core.params import Parameters
from medfed.privacy.mechanisms import add_noise, clip_update, gaussian_noise, l2_norm, secure_rng

_finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=16)


@st.composite
def updates(draw: st.DrawFn) -> Parameters:
    """Parameters of one to three arrays of mixed float dtypes and shapes (0-d included)."""
    n = draw(st.integers(1, 3))
    arrays = {}
    for i in range(n):
        dtype = draw(st.sampled_from(["float16", "float32", "float64"]))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=5))
        arrays[f"p{i}"] = draw(hnp.arrays(dtype, shape, elements=_finite))
    return Parameters.from_numpy(arrays)


def _copy(params: Parameters) -> Parameters:
    return Parameters.from_numpy(params.to_dict())


@settings(max_examples=60, deadline=None)
@given(update=updates(), clip_norm=st.floats(1e-3, 1e3))
def test_clipping_bounds_the_norm_and_keeps_the_direction(update: Parameters, clip_norm: float) -> None:
    before = _copy(update)

    clipped, was_clipped = clip_update(update, clip_norm)

    assert l2_norm(clipped) <= clip_norm
    assert was_clipped == (l2_norm(update) > clip_norm)
    assert update.allclose(before, atol=0, rtol=0)  # input untouched
    if not was_clipped:
        assert clipped is update
    else:
        factor = l2_norm(clipped) / l2_norm(update)
        assert clipped.allclose(update.map(lambda a: a.astype(np.float64) * factor), rtol=2e-3, atol=1e-6)
        assert clipped.spec() == update.spec()


def test_clipping_scales_to_exactly_the_bound() -> None:
    update = Parameters.from_numpy({"w": [3.0, 0.0], "b": [4.0]})
    clipped, was_clipped = clip_update(update, 1.0)
    assert was_clipped
    assert l2_norm(clipped) == pytest.approx(1.0, rel=1e-9)
    assert clipped["w"][0] == pytest.approx(0.6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_clipping_refuses_non_finite_updates(bad: float) -> None:
    # A NaN norm compares False with the bound: unchecked, it would bypass clipping.
    update = Parameters.from_numpy({"w": [1.0, bad]})
    with pytest.raises(ValidationError, match="non-finite"):
        clip_update(update, 1.0)


@pytest.mark.parametrize("clip_norm", [0.0, -1.0, np.nan, np.inf])
def test_clipping_refuses_a_bad_bound(clip_norm: float) -> None:
    with pytest.raises(ValidationError):
        clip_update(Parameters.from_numpy({"w": [1.0]}), clip_norm)


def test_noise_has_the_requested_std_and_layout() -> None:
    like = Parameters.from_numpy({"w": np.zeros((200, 250)), "b": np.zeros(3)}, dtype="float32")

    noise = gaussian_noise(like, 0.7, np.random.default_rng(0))

    assert noise.spec() == like.spec()
    assert float(np.std(noise["w"])) == pytest.approx(0.7, rel=0.01)
    assert abs(float(np.mean(noise["w"]))) < 0.01


def test_noise_is_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    like = Parameters.from_numpy({"w": np.zeros(10)})
    a = gaussian_noise(like, 1.0, np.random.default_rng(1))
    b = gaussian_noise(like, 1.0, np.random.default_rng(1))
    c = gaussian_noise(like, 1.0, np.random.default_rng(2))
    assert a.allclose(b, atol=0, rtol=0)
    assert not a.allclose(c)


def test_add_noise_leaves_its_input_and_zero_std_is_identity() -> None:
    params = Parameters.from_numpy({"w": np.ones(1000)})
    noised = add_noise(params, 0.5, np.random.default_rng(3))
    assert np.all(params["w"] == 1.0)
    assert float(np.std(noised["w"] - 1.0)) == pytest.approx(0.5, rel=0.1)
    assert add_noise(params, 0.0, np.random.default_rng(3)) is params


def test_negative_std_is_refused() -> None:
    with pytest.raises(ValidationError):
        gaussian_noise(Parameters.from_numpy({"w": [0.0]}), -1.0, np.random.default_rng(0))


def test_secure_rng_is_fresh_each_time() -> None:
    a, b = secure_rng(), secure_rng()
    assert isinstance(a.bit_generator, np.random.PCG64DXSM)
    assert not np.array_equal(a.integers(0, 2**62, 4), b.integers(0, 2**62, 4))
