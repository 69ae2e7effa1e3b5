"""A site's disclosure control: its policy, its record of what it answered, and DP noise.

The policy belongs to the node (set by the site admin), never to the researcher's request.

* **Small-cell suppression**: a count in ``1 .. min_cell-1`` is withheld (shown ``<5``); when a
  table has exactly one withheld cell, the smallest other non-zero cell is withheld too, so the
  first cannot be recovered from a margin (secondary suppression, Hundepool et al. 2012,
  *Statistical Disclosure Control*, §5.4).
* **Minimum cohort**: any query other than a count needs at least ``min_cohort`` rows.
* **Differencing**: the node keeps an :class:`AnswerHistory` of every cohort it answered (criteria
  and complete-case columns). A new cohort that differs from an earlier one by fewer than
  ``differencing_threshold`` *rows* (symmetric difference, re-evaluated on the site's current
  table, not merely a difference of sizes) is refused: "age>60" and "age>60 and id!=123" reveal
  patient 123 by subtraction.
* **Differential privacy** per query (count, histogram, crosstab; sensitivity 1 under add/remove
  of one patient): Laplace (pure ε) or the analytic Gaussian mechanism (Balle & Wang 2018, ICML,
  Thm. 8). :func:`epsilon_cost` is what the node charges to its ledger *before* answering. A noised
  answer is exempt from the differencing check: its ε is what protects it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from medfed.analytics.spec import Criterion, DPRequest, Mechanism, Op, QuerySpec, cohort_fingerprint
from medfed.core.errors import ConfigError, PermissionDenied, ValidationError

HISTORY_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class DisclosurePolicy:
    """What a site lets out. Defaults follow common practice for aggregate health statistics."""

    min_cell: int = 5
    min_cohort: int = 10
    differencing_threshold: int = 5
    allow_dp: bool = True
    require_dp: bool = False  # counts/histograms/crosstabs only with noise
    max_query_epsilon: float = 1.0
    #: > 0: survival times are rounded up to multiples of this before a Kaplan–Meier table leaves
    #: the site (exact event dates are quasi-identifiers); the pooled curve is then exact for the
    #: coarsened times. 0 releases the distinct times as they are.
    km_time_grain: float = 0.0

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be an integer >= 1, got {getattr(self, name)!r}"
            for name in ("min_cell", "min_cohort", "differencing_threshold")
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1
        ]
        if not (math.isfinite(self.max_query_epsilon) and self.max_query_epsilon > 0):
            problems.append(f"max_query_epsilon must be > 0, got {self.max_query_epsilon!r}")
        if not (math.isfinite(self.km_time_grain) and self.km_time_grain >= 0):
            problems.append(f"km_time_grain must be a finite number >= 0, got {self.km_time_grain!r}")
        if self.require_dp and not self.allow_dp:
            problems.append("require_dp needs allow_dp")
        if problems:
            raise ConfigError("disclosure policy: " + "; ".join(problems))


@dataclass(frozen=True, slots=True, kw_only=True)
class CohortRecord:
    """A cohort a site answered about: its definition, size then, and how many answers it got."""

    key: str
    where: tuple[Criterion, ...]
    complete: tuple[str, ...]
    size: int
    answers: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class AnswerHistory:
    """What a node has answered, as a JSON value the node persists between queries."""

    cohorts: tuple[CohortRecord, ...] = ()

    def record(self, spec: QuerySpec, size: int) -> AnswerHistory:
        key = spec.cohort_key()
        kept = [c for c in self.cohorts if c.key != key]
        seen = [c for c in self.cohorts if c.key == key]
        answers = seen[0].answers + 1 if seen else 1
        new = CohortRecord(key=key, where=spec.where, complete=spec.used_columns(), size=size, answers=answers)
        return AnswerHistory(cohorts=(*kept, new))

    def to_json(self) -> str:
        cohorts = [
            {
                "key": c.key, "size": c.size, "answers": c.answers, "complete": list(c.complete),
                "where": [{"column": w.column, "op": w.op.value, "value": w.value} for w in c.where],
            }
            for c in self.cohorts
        ]  # fmt: skip
        return json.dumps({"version": HISTORY_VERSION, "cohorts": cohorts}, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> AnswerHistory:
        """Parse what :meth:`to_json` wrote; a tampered or malformed record is a ValidationError."""
        try:
            raw: Any = json.loads(text)
            if raw.get("version") != HISTORY_VERSION:
                raise ValidationError(f"unknown version {raw.get('version')!r}", where="answer history")
            records = [_record(c) for c in raw["cohorts"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValidationError(f"malformed: {exc!r}", where="answer history") from None
        return cls(cohorts=tuple(records))


def _record(raw: dict[str, Any]) -> CohortRecord:
    where = tuple(Criterion(column=str(w["column"]), op=Op(w["op"]), value=_level(w["value"])) for w in raw["where"])
    complete = tuple(str(c) for c in raw["complete"])
    if cohort_fingerprint(where, complete) != raw["key"]:
        raise ValueError("cohort key does not match its definition")
    return CohortRecord(
        key=raw["key"], where=where, complete=complete, size=int(raw["size"]), answers=int(raw["answers"])
    )


def _level(value: object) -> float | str:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"criterion value {value!r} is not a number or a string")
    return value if isinstance(value, str) else float(value)


# -- cohort selection ---------------------------------------------------------------------------
def cohort_mask(table: pd.DataFrame, where: tuple[Criterion, ...], complete: tuple[str, ...]) -> np.ndarray:
    """Rows meeting every criterion with no missing value in ``complete``.

    Raises
    ------
    ValidationError
        A criterion or the query names a column the site's table lacks (all listed).
    """
    missing = sorted(({c.column for c in where} | set(complete)) - set(table.columns))
    if missing:
        raise ValidationError(f"no column(s) {missing} in the site's table", where="query")
    mask = np.ones(len(table), dtype=bool)
    for c in where:
        mask &= c.mask(table)
    if complete:
        mask &= np.asarray(table[list(complete)].notna().all(axis=1), dtype=bool)
    return mask


def check_differencing(
    mask: np.ndarray, spec: QuerySpec, table: pd.DataFrame, policy: DisclosurePolicy, history: AnswerHistory
) -> None:
    """Refuse a cohort within ``differencing_threshold`` rows of an answered one (not the same)."""
    key = spec.cohort_key()
    for past in history.cohorts:
        if past.key == key:
            continue
        try:
            before = cohort_mask(table, past.where, past.complete)
        except ValidationError:
            continue  # a column that no longer exists: that cohort cannot be rebuilt to compare
        diff = int(np.count_nonzero(before != mask))
        if 0 < diff < policy.differencing_threshold:
            raise PermissionDenied(
                f"refused: this cohort differs from one answered earlier by {diff} patient(s), fewer than "
                f"the site's differencing threshold of {policy.differencing_threshold}"
            )


def suppress(counts: np.ndarray, min_cell: int) -> np.ndarray:
    """Counts with small cells (and one complementary cell) replaced by NaN; never mutates."""
    out = np.asarray(counts, dtype=np.float64).copy()
    flat = out.reshape(-1)
    small = (flat > 0) & (flat < min_cell)
    if np.count_nonzero(small) == 1 and flat.size > 1:
        others = np.where(~small & (flat > 0))[0]
        if others.size:
            small[others[np.argmin(flat[others])]] = True
    flat[small] = np.nan
    return out


# -- differential privacy -----------------------------------------------------------------------
def gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """The smallest σ for (ε, δ)-DP: the analytic Gaussian mechanism (Balle & Wang 2018, Thm. 8).

    Found by bisection on ``δ(σ) = Φ(Δ/2σ − εσ/Δ) − e^ε Φ(−Δ/2σ − εσ/Δ)``, which falls with σ.
    """

    def delta_at(sigma: float) -> float:
        a, b = sensitivity / (2 * sigma), epsilon * sigma / sensitivity
        return float(norm.cdf(a - b) - math.exp(epsilon) * norm.cdf(-a - b))

    lo, hi = 1e-6 * sensitivity, sensitivity
    while delta_at(hi) > delta:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if delta_at(mid) <= delta else (mid, hi)
        if hi - lo < 1e-12 * hi:
            break
    return hi


def epsilon_cost(spec: QuerySpec) -> tuple[float, float]:
    """(ε, δ) the node charges to its privacy ledger for this query; (0, 0) without DP."""
    return (0.0, 0.0) if spec.dp is None else (spec.dp.epsilon, spec.dp.delta)


def check_dp(spec: QuerySpec, policy: DisclosurePolicy) -> None:
    """Refuse DP the site does not offer, an ε over the site's cap, or no DP where it is required."""
    if spec.dp is None:
        if policy.require_dp and spec.kind.is_table:
            raise PermissionDenied(f"refused: this site answers {spec.kind.value} queries only with DP noise")
        return
    if not policy.allow_dp:
        raise PermissionDenied("refused: this site does not offer differentially private answers")
    if spec.dp.epsilon > policy.max_query_epsilon:
        raise PermissionDenied(
            f"refused: ε = {spec.dp.epsilon:g} for one query is over this site's cap of {policy.max_query_epsilon:g}"
        )


def add_dp_noise(counts: np.ndarray, dp: DPRequest, rng: np.random.Generator) -> np.ndarray:
    """Counts plus Laplace(1/ε) or analytic-Gaussian noise (L1 = L2 sensitivity 1: one patient
    changes one cell by one)."""
    values = np.asarray(counts, dtype=np.float64)
    if dp.mechanism is Mechanism.LAPLACE:
        return values + rng.laplace(0.0, 1.0 / dp.epsilon, size=values.shape)
    return values + rng.normal(0.0, gaussian_sigma(dp.epsilon, dp.delta), size=values.shape)
