"""medfed.privacy: pure differential-privacy algorithms: accounting, budgets, DP-FedAvg.

No I/O and no global randomness: every mechanism takes an ``rng``; :func:`secure_rng` is the
default source (read its notes on what "secure" means here). The persistent per-site ledger, the
node middleware and Opacus-based DP-SGD build on these values in the layers above.
"""

from medfed.privacy.accounting import Accountant, calibrate_noise, epsilon
from medfed.privacy.budget import PrivacyBudget, PrivacySpend
from medfed.privacy.dpfedavg import (
    AdaptiveClipping,
    DPAggregator,
    DPContribution,
    DPFedAvg,
    NoiseMode,
)
from medfed.privacy.mechanisms import add_noise, clip_update, gaussian_noise, l2_norm, secure_rng

__all__ = [
    "Accountant",
    "AdaptiveClipping",
    "DPAggregator",
    "DPContribution",
    "DPFedAvg",
    "NoiseMode",
    "PrivacyBudget",
    "PrivacySpend",
    "add_noise",
    "calibrate_noise",
    "clip_update",
    "epsilon",
    "gaussian_noise",
    "l2_norm",
    "secure_rng",
]
