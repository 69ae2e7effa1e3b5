"""Release of synthetic data: the site's gate, exact-copy removal, and federated combination.

:func:`prepare_release` is what a node runs before anything synthetic leaves it: it drops every
synthetic row that is an exact copy of a training row (and says how many), then applies the site's
:class:`ReleasePolicy` to the evaluation of what is left. A blocked release carries its reasons.

:func:`combine_sites` is the coordinator's half of federated synthesis: each site releases DP
synthetic rows of the common schema, and the union with a site column is one multi-site table a
researcher can prototype on. It is post-processing of DP outputs, so it costs no privacy; each
site's (ε, δ) is that site's own spend (the sites hold disjoint patients: parallel composition).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from medfed.core.errors import ValidationError
from medfed.synth.evaluate import Evaluation, exact_copies


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleasePolicy:
    """A site's rules for releasing synthetic rows."""

    max_mia_auc: float = 0.6
    require_dp: bool = True
    block_erased_subgroups: bool = False

    def __post_init__(self) -> None:
        if not 0.5 <= self.max_mia_auc <= 1.0:
            raise ValidationError(f"max_mia_auc must be in [0.5, 1], got {self.max_mia_auc!r}", where="release policy")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseDecision:
    released: bool
    reasons: tuple[str, ...]
    rows: pd.DataFrame  # what may leave (empty when blocked)
    dropped_copies: int


def drop_exact_copies(train: pd.DataFrame, synthetic: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``synthetic`` without rows equal to a training row, and how many were dropped."""
    copies = exact_copies(train, synthetic)
    return synthetic[~copies].reset_index(drop=True), int(copies.sum())


def gate(evaluation: Evaluation, policy: ReleasePolicy, *, differentially_private: bool) -> tuple[str, ...]:
    """Every reason ``policy`` blocks a release with this ``evaluation`` (empty: it may go)."""
    reasons = []
    if evaluation.exact_copies > 0:
        reasons.append(f"{evaluation.exact_copies} synthetic rows are exact copies of training rows")
    if evaluation.mia_auc > policy.max_mia_auc:
        reasons.append(
            f"membership-inference AUC {evaluation.mia_auc:.3f} exceeds the site's limit {policy.max_mia_auc}"
        )
    if policy.require_dp and not differentially_private:
        reasons.append("the synthesizer is not differentially private and the site's policy requires DP")
    if policy.block_erased_subgroups and evaluation.erased_subgroups:
        reasons.append(f"subgroups erased: {', '.join(evaluation.erased_subgroups)}")
    return tuple(reasons)


def prepare_release(
    *,
    train: pd.DataFrame,
    synthetic: pd.DataFrame,
    evaluation: Evaluation,
    policy: ReleasePolicy,
    differentially_private: bool,
) -> ReleaseDecision:
    """Drop exact copies of training rows, then gate what is left.

    ``evaluation`` is of ``synthetic`` as sampled, copies included (its privacy scores are then
    conservative). Its copy count does not block: those rows are dropped here, and the decision
    says how many. A release with no rows left is blocked.
    """
    kept, dropped = drop_exact_copies(train, synthetic)
    reasons = [
        r for r in gate(evaluation, policy, differentially_private=differentially_private) if "exact copies" not in r
    ]
    if kept.empty:
        reasons.insert(0, f"all {dropped} synthetic rows are exact copies of training rows")
    released = not reasons
    return ReleaseDecision(
        released=released, reasons=tuple(reasons), rows=kept if released else kept.iloc[0:0], dropped_copies=dropped
    )


def combine_sites(frames: Mapping[str, pd.DataFrame], *, site_column: str = "site") -> pd.DataFrame:
    """One multi-site synthetic table: every site's rows with a ``site_column``, sites in sorted order.

    Raises
    ------
    ValidationError
        No site, a site whose columns differ from the first site's (the common schema), or a frame
        that already has ``site_column``; every problem is listed.
    """
    if not frames:
        raise ValidationError("no site frames to combine", where="federated synthesis")
    names = sorted(frames)
    reference = list(frames[names[0]].columns)
    problems = []
    for name in names:
        cols = list(frames[name].columns)
        if site_column in cols:
            problems.append(f"site {name!r}: already has a {site_column!r} column")
        if sorted(cols) != sorted(reference):
            problems.append(
                f"site {name!r}: columns {sorted(set(cols) ^ set(reference))} differ from the common schema"
            )
    if problems:
        raise ValidationError(problems, where="federated synthesis")
    parts = [frames[n][reference].assign(**{site_column: n}) for n in names]
    return pd.concat(parts, ignore_index=True)
