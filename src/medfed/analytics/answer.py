"""A site answers one query under its own policy: :func:`answer`, pure, with the rng injected.

The node calls it with its table, its :class:`~medfed.analytics.policy.DisclosurePolicy` and the
:class:`~medfed.analytics.policy.AnswerHistory` it persisted; it gets back a :class:`SiteAnswer`
and the new history to persist, or :class:`~medfed.core.errors.PermissionDenied` with the reason.
A refusal changes nothing. For a DP query the node charges
:func:`~medfed.analytics.policy.epsilon_cost` to its ledger *before* calling :func:`answer`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from medfed.analytics import local
from medfed.analytics.policy import (
    AnswerHistory,
    DisclosurePolicy,
    add_dp_noise,
    check_differencing,
    check_dp,
    cohort_mask,
    suppress,
)
from medfed.analytics.spec import QueryKind, QuerySpec
from medfed.core.errors import PermissionDenied, ValidationError
from medfed.core.params import Parameters


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteAnswer:
    """Named float64 arrays plus float metadata: what one site releases for one query.

    Counts withheld by small-cell suppression are NaN in ``counts``. On the wire this is a
    :class:`~medfed.core.params.Parameters` plus a metrics dict (:meth:`to_wire`), the two things
    a :class:`~medfed.core.records.ResultMessage` already carries.
    """

    arrays: Mapping[str, np.ndarray]
    meta: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = [f"{k!r} is not a float64 numpy array" for k, v in self.arrays.items() if not _f64(v)]
        problems += [f"metadata {k!r} is not a number" for k, v in self.meta.items() if not _number(v)]
        if problems:
            raise ValidationError(problems, where="site answer")
        for arr in self.arrays.values():
            arr.flags.writeable = False

    def digest(self) -> str:
        """SHA-256 over names, shapes and bytes of the arrays and the metadata: what the node's
        audit log records about a release without recording the values."""
        h = hashlib.sha256()
        for name in sorted(self.arrays):
            arr = np.ascontiguousarray(self.arrays[name], dtype="<f8")
            h.update(f"{name}:{arr.shape};".encode())
            h.update(arr.tobytes())
        h.update(json.dumps(dict(self.meta), sort_keys=True).encode())
        return h.hexdigest()

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def to_wire(self) -> tuple[Parameters, dict[str, float]]:
        return Parameters.from_numpy(dict(self.arrays)), {k: float(v) for k, v in self.meta.items()}

    @classmethod
    def from_wire(cls, params: Parameters, meta: Mapping[str, float]) -> SiteAnswer:
        arrays = {name: np.asarray(arr, dtype=np.float64) for name, arr in params}
        return cls(arrays=arrays, meta={k: float(v) for k, v in meta.items()})


def _f64(value: object) -> bool:
    return isinstance(value, np.ndarray) and value.dtype == np.float64


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def answer(
    spec: QuerySpec,
    table: pd.DataFrame,
    policy: DisclosurePolicy,
    history: AnswerHistory,
    *,
    rng: np.random.Generator,
) -> tuple[SiteAnswer, AnswerHistory]:
    """Answer ``spec`` from this site's ``table``, or refuse.

    Raises
    ------
    PermissionDenied
        The policy refuses: cohort under ``min_cohort``, a differencing risk, DP the site does not
        offer or requires. The message says which and why.
    ValidationError
        The query names a column the table lacks, or a column holds values the query cannot use.
    """
    check_dp(spec, policy)
    mask = cohort_mask(table, spec.where, spec.used_columns())
    size = int(np.count_nonzero(mask))
    if spec.dp is None:
        check_differencing(mask, spec, table, policy, history)
    if not spec.kind.is_table and size < policy.min_cohort:
        raise PermissionDenied(f"refused: the cohort has fewer than the site's minimum of {policy.min_cohort} patients")
    cohort = table.loc[mask]
    if spec.kind is QueryKind.KAPLAN_MEIER and policy.km_time_grain > 0:
        grain = policy.km_time_grain
        cohort = cohort.assign(**{spec.time: np.ceil(local.numeric(cohort, spec.time) / grain) * grain})
    if spec.kind.is_table:
        result = _table_answer(spec, cohort, policy, rng)
    else:
        arrays = _STATS[spec.kind](cohort, spec)
        result = SiteAnswer(arrays={k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()})
    return result, history.record(spec, size)


def _table_answer(
    spec: QuerySpec, cohort: pd.DataFrame, policy: DisclosurePolicy, rng: np.random.Generator
) -> SiteAnswer:
    if spec.kind is QueryKind.COUNT:
        counts = np.array([float(len(cohort))])
    elif spec.kind is QueryKind.HISTOGRAM:
        counts = local.histogram(cohort, spec)
    else:
        counts = local.crosstab(cohort, spec)
    if spec.dp is not None:
        counts = add_dp_noise(counts, spec.dp, rng)
    released = suppress(counts, policy.min_cell)
    meta = {"min_cell": float(policy.min_cell), "noised": float(spec.dp is not None)}
    return SiteAnswer(arrays={"counts": released}, meta=meta)


_STATS = {
    QueryKind.DESCRIBE: local.describe,
    QueryKind.KAPLAN_MEIER: local.survival_table,
    QueryKind.GLM_STATS: local.glm_stats,
    QueryKind.COX_STATS: local.cox_stats,
}
