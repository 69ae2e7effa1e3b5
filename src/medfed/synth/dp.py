"""Privacy primitives of the marginal synthesizers: zCDP budget, Gaussian and exponential mechanisms.

MST and AIM (McKenna et al. 2021, 2022) account in ρ-zero-concentrated DP (Bun & Steinke 2016):
a Gaussian measurement of a count vector (L2 sensitivity 1 under add/remove-one-row) with noise
σ costs ρ = 1 / (2σ²); an exponential-mechanism selection with parameter ε₀ costs ε₀² / 8
(bounded range, Cesar & Rogers 2021); costs add up.

ρ-zCDP is Rényi DP of every order α with ε(α) = αρ, which is exactly the RDP curve of a Gaussian
mechanism with noise multiplier 1 / √(2ρ). So the conversion to (ε, δ) goes through
``dp-accounting``'s RDP accountant (the one :mod:`medfed.privacy.accounting` cross-checks with),
using its tight conversion, never a hand-rolled bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import dp_accounting
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant

from medfed.core.errors import ValidationError


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacyCost:
    """What a fit spent: ρ-zCDP and the (ε, δ) it implies; what a node charges to its ledger."""

    rho: float
    epsilon: float
    delta: float


def epsilon_from_rho(rho: float, delta: float) -> float:
    """ε at ``delta`` of a ρ-zCDP mechanism, by ``dp-accounting``'s RDP accountant."""
    _check(rho=rho, delta=delta)
    if rho == 0:
        return 0.0
    engine = rdp_privacy_accountant.RdpAccountant()
    engine.compose(dp_accounting.GaussianDpEvent(1.0 / math.sqrt(2.0 * rho)))
    return float(engine.get_epsilon(delta))


def rho_for_epsilon(epsilon: float, delta: float, *, tolerance: float = 1e-4) -> float:
    """The largest ρ (to relative ``tolerance``) whose ε at ``delta`` is at most ``epsilon``."""
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValidationError(f"epsilon must be a finite number > 0, got {epsilon!r}", where="synth budget")
    _check(rho=0.0, delta=delta)
    lo, hi = 1e-12, 1.0
    while epsilon_from_rho(hi, delta) <= epsilon:
        lo, hi = hi, hi * 4.0
    while hi / lo > 1 + tolerance:
        mid = math.sqrt(lo * hi)
        if epsilon_from_rho(mid, delta) <= epsilon:
            lo = mid
        else:
            hi = mid
    return lo


def gaussian_measure(counts: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Counts plus N(0, σ²) noise per cell (sensitivity 1: one row moves one cell by one)."""
    return counts.astype(np.float64) + rng.normal(0.0, sigma, size=counts.shape)


def exponential_mechanism(scores: np.ndarray, epsilon: float, sensitivity: float, rng: np.random.Generator) -> int:
    """Index drawn with probability ∝ exp(ε · score / (2 · sensitivity)) (McSherry & Talwar 2007).

    Sampled with the Gumbel-max trick, which draws exactly from that distribution.
    """
    if scores.size == 0:
        raise ValidationError("the exponential mechanism needs at least one candidate", where="synth selection")
    logits = epsilon * (scores - scores.max()) / (2.0 * sensitivity)
    return int(np.argmax(logits + rng.gumbel(size=scores.shape)))


def _check(*, rho: float, delta: float) -> None:
    problems: list[str] = []
    if not (math.isfinite(rho) and rho >= 0):
        problems.append(f"rho must be a finite number >= 0, got {rho!r}")
    if not 0 < delta < 1:
        problems.append(f"delta must be in (0, 1), got {delta!r}")
    if problems:
        raise ValidationError(problems, where="synth budget")
