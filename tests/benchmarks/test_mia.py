"""The membership-inference attack code of ``benchmarks/privacy_attack.py`` on tiny synthetic data.

``benchmarks/`` is a folder of scripts, not a package, and pytest does not put the repository root
on ``sys.path`` (``tests/`` has no ``__init__.py``; this folder has none either, on purpose: a
``tests/benchmarks`` package would shadow the ``benchmarks`` folder). So the folder is added to
``sys.path`` here, as running a benchmark script does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import _mia  # found through the sys.path entry above
from medfed.learn.metrics import log_loss


def _overfit(rng: np.random.Generator, n: int = 20, d: int = 60) -> tuple[np.ndarray, ...]:
    """An almost unregularised logistic regression on n < d rows with weak signal: it memorises them."""
    w = rng.normal(size=d) / np.sqrt(d)
    x_in, x_out = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    y_in = (x_in @ w + 2 * rng.normal(size=n) > 0).astype(float)
    y_out = (x_out @ w + 2 * rng.normal(size=n) > 0).astype(float)
    model = LogisticRegression(C=1e4, max_iter=5000).fit(x_in, y_in)
    return model.decision_function(x_in), y_in, model.decision_function(x_out), y_out


def test_advantage_on_a_hand_example() -> None:
    # Arrange: members score 0.9 and 0.4, non-members 0.6 and 0.1.
    membership, scores = np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.6, 0.1])

    # Act
    result = _mia.evaluate_attack(membership, scores, threshold=0.5)

    # Assert: ">= 0.9" gives TPR 1/2, FPR 0; ">= 0.4" gives 1 and 1/2; ">= 0.5" gives 1/2 and 1/2.
    assert result.advantage == pytest.approx(0.5)
    assert result.advantage_at_threshold == pytest.approx(0.0)
    assert result.auc == pytest.approx(0.75)  # 3 of the 4 member/non-member pairs are ordered right
    assert result.advantage_se == pytest.approx(np.sqrt(0.25 / 2 + 0.25 / 2))
    assert (result.n_members, result.n_nonmembers) == (2, 2)


def test_tied_scores_give_no_advantage() -> None:
    assert _mia.best_advantage(np.array([1, 0, 1, 0]), np.full(4, 0.3)) == 0.0
    assert _mia.advantage_at(np.array([1, 0, 1, 0]), np.full(4, 0.3), 0.3) == 0.0


def test_best_advantage_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="member"):
        _mia.best_advantage(np.ones(3), np.arange(3.0))


def test_per_example_loss_matches_the_log_loss() -> None:
    rng = np.random.default_rng(0)
    z, y = rng.normal(scale=30, size=50), (rng.random(50) < 0.5).astype(float)

    losses = _mia.per_example_loss(z, y)

    assert np.all(np.isfinite(losses)) and np.all(losses >= 0)
    assert losses.mean() == pytest.approx(log_loss(y, z))


def test_loss_attack_finds_the_members_of_an_overfit_model() -> None:
    z_in, y_in, z_out, y_out = _overfit(np.random.default_rng(1))
    loss_in, loss_out = _mia.per_example_loss(z_in, y_in), _mia.per_example_loss(z_out, y_out)

    result = _mia.loss_attack(loss_in, loss_out, train_loss=float(loss_in.mean()))

    assert result.auc > 0.8
    assert result.advantage_at_threshold > 0.5


def test_loss_attack_is_at_chance_when_members_look_like_non_members() -> None:
    rng = np.random.default_rng(2)
    loss_in, loss_out = rng.exponential(size=4000), rng.exponential(size=4000)

    result = _mia.loss_attack(loss_in, loss_out, train_loss=float(loss_in.mean()))

    assert result.auc == pytest.approx(0.5, abs=0.03)
    assert abs(result.advantage_at_threshold) < 3 * result.advantage_se + 1e-9
    assert result.advantage < 0.06  # the best threshold's chance level at n = 4000 is ~0.02


def test_shadow_attack_transfers_from_shadow_models_to_the_target() -> None:
    # Arrange: shadow models and the target are trained the same (overfitting) way on fresh data.
    rng = np.random.default_rng(3)
    shadows = [_overfit(rng) for _ in range(4)]
    inside = np.vstack([_mia.attack_features(z, y) for z, y, _, _ in shadows])
    outside = np.vstack([_mia.attack_features(z, y) for _, _, z, y in shadows])
    attack = _mia.fit_attack_model(np.vstack([inside, outside]), np.r_[np.ones(len(inside)), np.zeros(len(outside))])
    z_in, y_in, z_out, y_out = _overfit(rng)

    # Act
    result = _mia.shadow_attack(attack, _mia.attack_features(z_in, y_in), _mia.attack_features(z_out, y_out))

    # Assert
    assert result.auc > 0.75
    assert result.advantage_at_threshold > 0.3


def test_attack_features_give_the_true_label_log_odds() -> None:
    features = _mia.attack_features(np.array([2.0, 2.0]), np.array([1.0, 0.0]))

    np.testing.assert_allclose(features, [[2.0, 1.0, 2.0], [-2.0, 0.0, -0.0]])


def test_balanced_members_match_the_non_members_per_site() -> None:
    rng = np.random.default_rng(4)
    member_site, nonmember_site = np.repeat([0, 1, 2], [10, 6, 3]), np.repeat([0, 1, 2], [4, 2, 3])

    picked = _mia.balanced_members(member_site, nonmember_site, rng)

    assert len(set(picked.tolist())) == len(picked) == 9
    np.testing.assert_array_equal(np.bincount(member_site[picked]), [4, 2, 3])
    with pytest.raises(ValueError, match="only 3 members"):
        _mia.balanced_members(member_site, np.repeat([2], 4), rng)


def test_chance_advantage_shrinks_with_the_sample() -> None:
    rng = np.random.default_rng(5)

    small, large = _mia.null_advantage(20, 20, rng, draws=100), _mia.null_advantage(500, 500, rng, draws=100)

    assert 0 < large < small < 0.5


def test_dp_bound_on_the_advantage() -> None:
    # (e^ε − 1 + 2δ) / (e^ε + 1): 0.4621 at ε = 1, δ = 0.
    assert _mia.dp_advantage_bound(1.0, 0.0) == pytest.approx((np.e - 1) / (np.e + 1))
    assert _mia.dp_advantage_bound(0.0, 1e-5) == pytest.approx(1e-5)
    assert _mia.dp_advantage_bound(float("inf"), 1e-5) == 1.0
    bounds = [_mia.dp_advantage_bound(e, 1e-5) for e in (0.5, 1, 2, 4, 8)]
    assert bounds == sorted(bounds)
