"""Metrics against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from medfed.learn.metrics import accuracy, average_ranks, log_loss, roc_auc


@settings(max_examples=80, deadline=None)
@given(
    labels=st.lists(st.integers(0, 1), min_size=2, max_size=40),
    scores=st.lists(st.integers(-3, 3), min_size=40, max_size=40),  # small ints: many ties
)
def test_auc_equals_scikit_learn_with_ties(labels: list[int], scores: list[int]) -> None:
    y = np.array(labels, dtype=np.float64)
    s = np.array(scores[: len(labels)], dtype=np.float64)

    ours = roc_auc(y, s)

    if 0 < y.sum() < len(y):
        assert math.isclose(ours, roc_auc_score(y, s), abs_tol=1e-12)
    else:
        assert math.isnan(ours)


def test_average_ranks_share_ties() -> None:
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])


def test_accuracy_and_log_loss() -> None:
    y = np.array([0.0, 1.0, 1.0, 0.0])
    logits = np.array([-2.0, 0.5, -0.1, 3.0])
    prob = 1 / (1 + np.exp(-logits))

    assert accuracy(y, prob) == 0.5
    assert math.isclose(log_loss(y, logits), sk_log_loss(y, prob), rel_tol=1e-9)
    assert math.isnan(accuracy(np.array([]), np.array([])))
