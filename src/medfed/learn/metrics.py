"""Binary-classification metrics on numpy arrays: accuracy, ROC AUC and log-loss."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from medfed.core.errors import ValidationError

ArrayF = npt.NDArray[np.floating]


def _check(y_true: ArrayF, scores: ArrayF) -> None:
    if y_true.shape != scores.shape or y_true.ndim != 1:
        raise ValidationError(f"labels have shape {y_true.shape}, scores {scores.shape}: need equal 1-d shapes")


def accuracy(y_true: ArrayF, prob: ArrayF, *, threshold: float = 0.5) -> float:
    """Share of examples whose ``prob >= threshold`` matches the {0, 1} label (NaN when empty)."""
    _check(y_true, prob)
    if y_true.size == 0:
        return float("nan")
    return float(np.mean((prob >= threshold) == (y_true > 0.5)))


def average_ranks(values: ArrayF) -> npt.NDArray[np.float64]:
    """1-based ranks of ``values``, ties sharing their average rank (like ``rankdata``)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # rank of the last member of each group of ties
    group_rank = ends - (counts - 1) / 2.0
    return group_rank[inverse].astype(np.float64)


def roc_auc(y_true: ArrayF, scores: ArrayF) -> float:
    """ROC AUC via the Mann-Whitney U statistic, ties counted as one half.

    ``AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` where ``R_pos`` is the sum of the
    positives' average ranks (Hanley & McNeil 1982). Undefined with a single class: NaN, as
    scikit-learn's FLamby metric returns.
    """
    _check(y_true, scores)
    positive = y_true > 0.5
    n_pos = int(np.count_nonzero(positive))
    n_neg = y_true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = float(np.sum(average_ranks(scores)[positive]))
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def log_loss(y_true: ArrayF, logits: ArrayF) -> float:
    """Mean binary cross-entropy computed from logits (numerically stable; NaN when empty)."""
    _check(y_true, logits)
    if y_true.size == 0:
        return float("nan")
    z = logits.astype(np.float64)
    y = y_true.astype(np.float64)
    # log(1 + exp(-|z|)) + max(z, 0) - y z  ==  -[y log s(z) + (1 - y) log(1 - s(z))]
    return float(np.mean(np.logaddexp(0.0, -np.abs(z)) + np.maximum(z, 0.0) - y * z))
