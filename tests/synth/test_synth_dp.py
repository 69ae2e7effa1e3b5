"""The privacy maths of the synthesizers: zCDP conversion (golden values), mechanisms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medfed.core.errors import ValidationError
from medfed.synth.dp import epsilon_from_rho, exponential_mechanism, gaussian_measure, rho_for_epsilon


def test_rho_for_epsilon_golden_values() -> None:
    # Measured with dp-accounting 0.6.0's RDP accountant; the classic bound rho + 2 sqrt(rho log 1/delta)
    # (Bun & Steinke 2016, Prop. 1.3) is looser, so it must give a larger epsilon for the same rho.
    rho = rho_for_epsilon(3.0, 1e-9)
    assert rho == pytest.approx(0.12052, rel=1e-3)
    assert rho + 2 * math.sqrt(rho * math.log(1e9)) > 3.0


@pytest.mark.parametrize(("epsilon", "delta"), [(0.3, 1e-6), (1.0, 1e-6), (3.0, 1e-9), (10.0, 1e-5)])
def test_rho_for_epsilon_meets_the_target_tightly(epsilon: float, delta: float) -> None:
    rho = rho_for_epsilon(epsilon, delta)
    assert epsilon_from_rho(rho, delta) <= epsilon
    assert epsilon_from_rho(rho * 1.01, delta) > epsilon


def test_epsilon_grows_with_rho_and_is_zero_at_zero() -> None:
    values = [epsilon_from_rho(r, 1e-6) for r in (0.0, 0.01, 0.1, 1.0)]
    assert values[0] == 0.0
    assert values == sorted(values)


def test_bad_budget_arguments_are_listed() -> None:
    with pytest.raises(ValidationError) as info:
        epsilon_from_rho(-1.0, 2.0)
    assert len(info.value.problems) == 2
    with pytest.raises(ValidationError, match="epsilon"):
        rho_for_epsilon(0.0, 1e-6)


def test_gaussian_noise_has_the_requested_scale() -> None:
    noisy = gaussian_measure(np.zeros(20_000), 3.0, np.random.default_rng(0))
    assert noisy.std() == pytest.approx(3.0, rel=0.03)


def test_exponential_mechanism_prefers_high_scores_and_is_uniform_at_zero_epsilon() -> None:
    rng = np.random.default_rng(0)
    scores = np.array([0.0, 0.0, 100.0])
    picks = [exponential_mechanism(scores, 1.0, 1.0, rng) for _ in range(200)]
    assert picks.count(2) == 200
    flat = np.bincount([exponential_mechanism(scores, 0.0, 1.0, rng) for _ in range(3000)], minlength=3)
    assert np.all(np.abs(flat / 3000 - 1 / 3) < 0.05)
    with pytest.raises(ValidationError):
        exponential_mechanism(np.array([]), 1.0, 1.0, rng)
