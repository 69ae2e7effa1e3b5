"""Kaplan–Meier curves and the log-rank test from per-site event tables: exactly the pooled answer.

Each site sends, per group, its distinct times with event and censoring counts. Merged, they are
the pooled life table, so the product-limit estimate, Greenwood's variance and the log-rank
statistic are those of the pooled rows (Kaplan & Meier 1958; Mantel 1966). Confidence bands use
the log(−log) transform, as lifelines and R's ``survfit(conf.type="log-log")`` do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import chi2, norm

from medfed.analytics.answer import SiteAnswer
from medfed.analytics.spec import QueryKind, QuerySpec
from medfed.core.errors import JobError, ValidationError

Ask = Callable[[QuerySpec], Mapping[str, SiteAnswer]]


@dataclass(frozen=True, slots=True, kw_only=True)
class KMCurve:
    """One product-limit curve at every distinct time (time 0 first), with a log(−log) CI."""

    label: str
    timeline: np.ndarray
    survival: np.ndarray
    ci_lower: np.ndarray
    ci_upper: np.ndarray
    at_risk: np.ndarray
    events: np.ndarray
    censored: np.ndarray

    def summary(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "at_risk": self.at_risk, "events": self.events, "censored": self.censored,
                "survival": self.survival, "ci_lower": self.ci_lower, "ci_upper": self.ci_upper,
            },
            index=pd.Index(self.timeline, name="time"),
        )  # fmt: skip

    def median(self) -> float:
        """The first time the curve is at or below 0.5 (inf when it never gets there)."""
        below = np.nonzero(self.survival <= 0.5)[0]
        return float(self.timeline[below[0]]) if below.size else float("inf")


@dataclass(frozen=True, slots=True, kw_only=True)
class LogRankResult:
    statistic: float
    df: int
    p_value: float
    observed: np.ndarray
    expected: np.ndarray


@dataclass(frozen=True, slots=True, kw_only=True)
class KMResult:
    curves: tuple[KMCurve, ...]
    logrank: LogRankResult | None
    sites: tuple[str, ...]
    alpha: float = 0.05

    def summary(self) -> pd.DataFrame:
        """One row per group: patients, events, median survival."""
        rows = {
            c.label: {"patients": c.at_risk[0], "events": c.events.sum(), "median": c.median()} for c in self.curves
        }
        return pd.DataFrame.from_dict(rows, orient="index")


def _merge(answers: Mapping[str, SiteAnswer], j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pooled life table of group ``j``: distinct times, events and censorings at each."""
    try:
        times = np.concatenate([a[f"time/{j}"] for a in answers.values()])
        events = np.concatenate([a[f"events/{j}"] for a in answers.values()])
        censored = np.concatenate([a[f"censored/{j}"] for a in answers.values()])
    except KeyError as exc:
        raise ValidationError(f"a site's answer lacks {exc.args[0]!r}", where="kaplan_meier") from None
    grid, inverse = np.unique(times, return_inverse=True)
    return grid, np.bincount(inverse, events, len(grid)), np.bincount(inverse, censored, len(grid))


def km_curve(label: str, times: np.ndarray, events: np.ndarray, censored: np.ndarray, alpha: float) -> KMCurve:
    """Product-limit estimate and Greenwood log(−log) band from a life table."""
    if times.size == 0 or times[0] > 0:
        times, events, censored = (np.concatenate([[0.0], a]) for a in (times, events, censored))
    at_risk = (events + censored)[::-1].cumsum()[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        survival = np.cumprod(1.0 - events / at_risk)
        greenwood = np.cumsum(events / (at_risk * (at_risk - events)))
        z = norm.ppf(1 - alpha / 2)
        log_s = np.log(survival)
        lower = np.exp(-np.exp(np.log(-log_s) - z * np.sqrt(greenwood) / log_s))
        upper = np.exp(-np.exp(np.log(-log_s) + z * np.sqrt(greenwood) / log_s))
    flat = survival == 1.0  # no event yet: the band is the point
    lower, upper = np.where(flat, 1.0, lower), np.where(flat, 1.0, upper)
    return KMCurve(
        label=label, timeline=times, survival=survival, ci_lower=lower, ci_upper=upper, at_risk=at_risk,
        events=events, censored=censored,
    )  # fmt: skip


def logrank(tables: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> LogRankResult:
    """The k-group log-rank test (Mantel 1966) from per-group life tables."""
    grid = np.unique(np.concatenate([t for t, _, _ in tables]))
    k = len(tables)
    d = np.zeros((k, grid.size))
    n = np.zeros((k, grid.size))
    for g, (t, ev, ce) in enumerate(tables):
        pos = np.searchsorted(grid, t)
        d[g, pos] = ev
        removed = np.zeros(grid.size)
        removed[pos] = ev + ce
        n[g] = removed[::-1].cumsum()[::-1]
    d_all, n_all = d.sum(axis=0), n.sum(axis=0)
    live = n_all > 0
    d, n, d_all, n_all = d[:, live], n[:, live], d_all[live], n_all[live]
    expected = (n * d_all / n_all).sum(axis=1)
    factor = np.where(n_all > 1, d_all * (n_all - d_all) / np.maximum(n_all - 1, 1) / n_all**2, 0.0)
    cov = np.einsum("t,gt,ht->gh", factor, n, n) * -1.0
    cov[np.diag_indices(k)] += (factor * n_all * n).sum(axis=1)
    observed = d.sum(axis=1)
    diff = (observed - expected)[: k - 1]
    stat = float(diff @ np.linalg.solve(cov[: k - 1, : k - 1], diff))
    return LogRankResult(
        statistic=stat, df=k - 1, p_value=float(chi2.sf(stat, k - 1)), observed=observed, expected=expected
    )


def combine_km(spec: QuerySpec, answers: Mapping[str, SiteAnswer], *, alpha: float = 0.05) -> KMResult:
    labels = [str(v) for v in spec.levels[0]] if spec.group else ["all"]
    tables = [_merge(answers, j) for j in range(len(labels))]
    curves = tuple(km_curve(lab, *tab, alpha) for lab, tab in zip(labels, tables, strict=True))
    test = logrank(tables) if len(tables) > 1 else None
    return KMResult(curves=curves, logrank=test, sites=tuple(sorted(answers)), alpha=alpha)


def kaplan_meier(ask: Ask, spec: QuerySpec, *, alpha: float = 0.05) -> KMResult:
    """Ask every site once and return the pooled curves (and log-rank test when grouped).

    Raises
    ------
    JobError
        No site answered.
    """
    if spec.kind is not QueryKind.KAPLAN_MEIER:
        raise ValidationError(f"kaplan_meier needs a kaplan_meier query, got {spec.kind.value}")
    answers = ask(spec)
    if not answers:
        raise JobError("kaplan_meier: no site answered")
    return combine_km(spec, answers, alpha=alpha)
