"""Membership-inference attacks on a binary classifier's logits: pure numpy (+ scikit-learn's
logistic regression as the shadow attack's classifier), no medfed training code.

Used by ``benchmarks/privacy_attack.py``; unit-tested on synthetic data by
``tests/benchmarks/test_mia.py`` (which puts this folder on ``sys.path``: ``benchmarks/`` is not a
package and is not on pytest's import path).

Two attacks, scored the same way (membership label 1 = the row was in the training set):

* **Loss threshold** (Yeom et al. 2018, "Privacy risk in machine learning", §3.2): score = −loss
  of the row under the target model; the attack says "member" when the loss is below the model's
  mean training loss, the threshold Yeom et al. give the attacker.
* **Shadow models** (Shokri et al. 2017, "Membership inference attacks against machine learning
  models", §V): the attacker trains shadow models the way the target was trained on data it holds,
  labels its shadow-train rows members and its held-out rows non-members, and fits an attack
  classifier on (prediction, label) features; the classifier's probability is the score.

Each attack reports ROC AUC of its score, the *best-threshold* advantage ``max_t TPR(t) − FPR(t)``
(an oracle threshold chosen on the evaluation rows themselves: optimistic, and biased upward on
small samples; :func:`null_advantage` measures that bias) and the advantage at the threshold the
attacker picks without seeing the evaluation rows (an unbiased estimate of the attack's real gain).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import LogisticRegression

from medfed.learn.metrics import roc_auc

Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True, kw_only=True)
class AttackResult:
    """Scores of one attack on one balanced evaluation set."""

    auc: float  # ROC AUC of the membership score (0.5 = chance)
    advantage: float  # max over thresholds of TPR − FPR (oracle threshold)
    advantage_at_threshold: float  # TPR − FPR at the attacker's own threshold
    advantage_se: float  # binomial standard error of advantage_at_threshold (finite evaluation set)
    n_members: int
    n_nonmembers: int


def per_example_loss(logits: npt.ArrayLike, labels: npt.ArrayLike) -> Array:
    """Binary cross-entropy of each row, from logits (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    return np.logaddexp(0.0, -np.abs(z)) + np.maximum(z, 0.0) - y * z


def tpr_fpr(membership: npt.ArrayLike, scores: npt.ArrayLike, threshold: float) -> tuple[float, float]:
    """(TPR, FPR) of the rule "member when ``score >= threshold``"."""
    m = np.asarray(membership) > 0.5
    guess = np.asarray(scores, dtype=np.float64) >= threshold
    return float(np.mean(guess[m])), float(np.mean(guess[~m]))


def advantage_at(membership: npt.ArrayLike, scores: npt.ArrayLike, threshold: float) -> float:
    """TPR − FPR of "member when ``score >= threshold``" (Yeom et al.'s membership advantage)."""
    tpr, fpr = tpr_fpr(membership, scores, threshold)
    return tpr - fpr


def advantage_se(membership: npt.ArrayLike, scores: npt.ArrayLike, threshold: float) -> float:
    """Standard error of :func:`advantage_at` from the finite samples: TPR and FPR are independent
    binomial proportions, so ``sqrt(TPR(1−TPR)/n_members + FPR(1−FPR)/n_nonmembers)``."""
    m = np.asarray(membership) > 0.5
    tpr, fpr = tpr_fpr(m, scores, threshold)
    return float(np.sqrt(tpr * (1 - tpr) / m.sum() + fpr * (1 - fpr) / (~m).sum()))


def best_advantage(membership: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """``max_t TPR(t) − FPR(t)`` over every threshold (the Kolmogorov-Smirnov statistic of the
    two score samples); 0 when no threshold beats saying "member" for everyone or no one."""
    m = np.asarray(membership) > 0.5
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(m.sum()), int((~m).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("need at least one member and one non-member")
    order = np.argsort(-s, kind="stable")
    s_sorted, m_sorted = s[order], m[order]
    tpr = np.cumsum(m_sorted) / n_pos
    fpr = np.cumsum(~m_sorted) / n_neg
    # A threshold sits between distinct scores: only the last row of each group of ties counts.
    last_of_tie = np.append(s_sorted[1:] != s_sorted[:-1], True)
    return float(max(0.0, np.max((tpr - fpr)[last_of_tie])))


def evaluate_attack(membership: npt.ArrayLike, scores: npt.ArrayLike, threshold: float) -> AttackResult:
    """AUC, best-threshold advantage and advantage at ``threshold`` of a membership score."""
    m = np.asarray(membership, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    return AttackResult(
        auc=roc_auc(m, s),
        advantage=best_advantage(m, s),
        advantage_at_threshold=advantage_at(m, s, threshold),
        advantage_se=advantage_se(m, s, threshold),
        n_members=int(np.sum(m > 0.5)),
        n_nonmembers=int(np.sum(m <= 0.5)),
    )


def null_advantage(n_members: int, n_nonmembers: int, rng: np.random.Generator, *, draws: int = 200) -> float:
    """Mean best-threshold advantage when members and non-members score identically (continuous
    i.i.d. scores): the floor :func:`best_advantage` shows on a sample of this size by chance."""
    membership = np.r_[np.ones(n_members), np.zeros(n_nonmembers)]
    return float(np.mean([best_advantage(membership, rng.random(membership.size)) for _ in range(draws)]))


def balanced_members(
    member_groups: npt.ArrayLike, nonmember_groups: npt.ArrayLike, rng: np.random.Generator
) -> IntArray:
    """Indices of a subsample of members with as many rows per group (site) as the non-members.

    Matching the site mix keeps the attack from scoring "which hospital" instead of "which row".

    Raises
    ------
    ValueError
        A group has fewer members than non-members.
    """
    mg, ng = np.asarray(member_groups), np.asarray(nonmember_groups)
    picked = []
    for group in np.unique(ng):
        pool = np.flatnonzero(mg == group)
        need = int(np.sum(ng == group))
        if need > pool.size:
            raise ValueError(f"group {group!r}: {need} non-members but only {pool.size} members")
        picked.append(rng.choice(pool, size=need, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def loss_attack(member_loss: npt.ArrayLike, nonmember_loss: npt.ArrayLike, train_loss: float) -> AttackResult:
    """Yeom et al.'s loss-threshold attack: score −loss; "member" when loss <= ``train_loss``
    (the target model's mean training loss, which Yeom et al. assume the attacker knows)."""
    a, b = np.asarray(member_loss, dtype=np.float64), np.asarray(nonmember_loss, dtype=np.float64)
    membership = np.r_[np.ones(a.size), np.zeros(b.size)]
    return evaluate_attack(membership, -np.r_[a, b], -train_loss)


def attack_features(logits: npt.ArrayLike, labels: npt.ArrayLike) -> Array:
    """Shokri et al.'s attack input for a binary model: the prediction and the true label.

    Columns: the log-odds of the true label (``±logit``, a monotone map of the confidence in the
    true class), the label, and their product, so that one logistic regression holds Shokri's
    per-class attack models (a separate slope and intercept for each label).
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    margin = np.where(y > 0.5, z, -z)
    return np.column_stack([margin, y, margin * y])


def fit_attack_model(features: npt.ArrayLike, membership: npt.ArrayLike) -> LogisticRegression:
    """The attack classifier: membership from :func:`attack_features`, fitted on shadow-model rows."""
    x = np.asarray(features, dtype=np.float64)
    return LogisticRegression(C=1.0, max_iter=1000).fit(x, np.asarray(membership) > 0.5)


def shadow_attack(
    model: LogisticRegression, member_features: npt.ArrayLike, nonmember_features: npt.ArrayLike
) -> AttackResult:
    """Score the target model's rows with the shadow-trained ``model``; its threshold is 0.5
    (the classifier's own decision), chosen on shadow data only."""
    a, b = np.asarray(member_features, dtype=np.float64), np.asarray(nonmember_features, dtype=np.float64)
    membership = np.r_[np.ones(len(a)), np.zeros(len(b))]
    scores = model.predict_proba(np.vstack([a, b]))[:, 1]
    return evaluate_attack(membership, scores, 0.5)


def dp_advantage_bound(epsilon: float, delta: float) -> float:
    """Upper bound on any membership attack's TPR − FPR against an (ε, δ)-DP mechanism:
    ``(e^ε − 1 + 2δ) / (e^ε + 1)`` (Kairouz et al. 2015's hypothesis-testing region; see also
    Humphries et al. 2020). 1 when ε is infinite."""
    if not np.isfinite(epsilon):
        return 1.0
    return float(min(1.0, (np.expm1(epsilon) + 2.0 * delta) / (np.exp(epsilon) + 1.0)))
