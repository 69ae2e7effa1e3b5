"""The coordinator's side of one-shot queries: per-site answers in, one :data:`QueryResult` out.

Counts add up; a cell a site withheld (small-cell suppression) is unknown, so the combined cell
is the sum of what was released plus a count of hidden site cells, never a guess. Means and
variances pool exactly from (n, mean, M2) (Chan, Golub & LeVeque 1979).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medfed.analytics.answer import SiteAnswer
from medfed.analytics.models import RegressionResult
from medfed.analytics.spec import QueryKind, QuerySpec
from medfed.analytics.survival import KMResult, combine_km
from medfed.core.errors import JobError, ValidationError


@dataclass(frozen=True, slots=True, kw_only=True)
class TableResult:
    """Counts per site and combined, for count, histogram and crosstab queries.

    ``per_site[s]`` has NaN where site ``s`` withheld a cell; ``combined`` sums the released
    counts and ``hidden`` says how many site cells each combined cell is missing.
    """

    kind: QueryKind
    row_labels: tuple[str, ...]
    col_labels: tuple[str, ...]
    per_site: Mapping[str, np.ndarray]
    combined: np.ndarray
    hidden: np.ndarray
    min_cell: int
    noised: bool

    def cell_text(self, value: float, hidden: int = 0) -> str:
        """``"<5"`` for a withheld site cell; ``"≥12"`` for a combined cell with hidden parts."""
        if np.isnan(value):
            return f"<{self.min_cell}" if not self.noised else "suppressed"
        text = f"{value:.1f}" if self.noised else f"{round(value)}"
        return f"≥{text}" if hidden else text

    def frame(self, site: str | None = None) -> pd.DataFrame:
        """The table of one site, or the combined one (``site=None``), as display strings."""
        values = self.combined if site is None else self.per_site[site]
        hidden = self.hidden if site is None else np.zeros(values.shape, dtype=int)
        shape = (len(self.row_labels), len(self.col_labels))
        cells = [
            [self.cell_text(float(v), int(h)) for v, h in zip(row, hrow, strict=True)]
            for row, hrow in zip(values.reshape(shape), hidden.reshape(shape), strict=True)
        ]
        return pd.DataFrame(cells, index=list(self.row_labels), columns=list(self.col_labels))


@dataclass(frozen=True, slots=True, kw_only=True)
class DescribeResult:
    """Count, mean and variance (ddof 1) per column, per site and pooled."""

    columns: tuple[str, ...]
    per_site: Mapping[str, pd.DataFrame]
    combined: pd.DataFrame


QueryResult = TableResult | DescribeResult | KMResult | RegressionResult


def _labels(spec: QuerySpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if spec.kind is QueryKind.COUNT:
        return ("patients",), ("count",)
    if spec.kind is QueryKind.HISTOGRAM:
        e = spec.bins
        inner = [f"[{a:g}, {b:g})" for a, b in itertools.pairwise(e)]
        inner[-1] = inner[-1][:-1] + "]"
        return (f"< {e[0]:g}", *inner, f"> {e[-1]:g}"), ("count",)
    return tuple(str(v) for v in spec.levels[0]), tuple(str(v) for v in spec.levels[1])


def combine_table(spec: QuerySpec, answers: Mapping[str, SiteAnswer]) -> TableResult:
    rows, cols = _labels(spec)
    per_site = {s: np.asarray(a["counts"]).reshape(len(rows), len(cols)) for s, a in sorted(answers.items())}
    if not per_site:
        raise JobError(f"{spec.kind.value}: no site answered")
    stack = np.stack(list(per_site.values()))
    hidden = np.isnan(stack).sum(axis=0)
    min_cell = {int(a.meta.get("min_cell", 0)) for a in answers.values()}
    return TableResult(
        kind=spec.kind, row_labels=rows, col_labels=cols, per_site=per_site, combined=np.nansum(stack, axis=0),
        hidden=hidden, min_cell=max(min_cell), noised=any(a.meta.get("noised", 0) for a in answers.values()),
    )  # fmt: skip


def _describe_frame(columns: tuple[str, ...], n: float, mean: np.ndarray, m2: np.ndarray) -> pd.DataFrame:
    var = m2 / (n - 1) if n > 1 else np.full_like(m2, np.nan)
    return pd.DataFrame({"n": n, "mean": mean, "variance": var, "std": np.sqrt(var)}, index=list(columns))


def combine_describe(spec: QuerySpec, answers: Mapping[str, SiteAnswer]) -> DescribeResult:
    if not answers:
        raise JobError("describe: no site answered")
    per_site = {}
    for site, a in sorted(answers.items()):
        per_site[site] = _describe_frame(spec.columns, float(a["n"][0]), a["mean"], a["m2"])
    n = float(sum(a["n"][0] for a in answers.values()))
    mean = sum(a["n"][0] * a["mean"] for a in answers.values()) / n
    m2 = sum(a["m2"] + a["n"][0] * (a["mean"] - mean) ** 2 for a in answers.values())
    return DescribeResult(columns=spec.columns, per_site=per_site, combined=_describe_frame(spec.columns, n, mean, m2))


def histogram_quantiles(result: TableResult, edges: tuple[float, ...], probs: tuple[float, ...]) -> np.ndarray:
    """Quantiles of the combined histogram by linear interpolation within bins.

    Approximate by construction: exact to within one bin width, and only over released counts
    (raises when cells are hidden or values fall outside the edges, rather than guess).
    """
    counts = result.combined.reshape(-1)
    if result.hidden.any() or counts[0] > 0 or counts[-1] > 0:
        raise ValidationError("quantiles need a histogram with no hidden cells and nothing outside the edges")
    inner = counts[1:-1]
    cdf = np.concatenate([[0.0], np.cumsum(inner)]) / inner.sum()
    out: np.ndarray = np.interp(np.asarray(probs), cdf, np.asarray(edges))
    return out


def combine(spec: QuerySpec, answers: Mapping[str, SiteAnswer]) -> QueryResult:
    """Combine one round of site answers. GLM and Cox statistics need iterations: use
    :func:`~medfed.analytics.models.fit_glm` / :func:`~medfed.analytics.models.fit_cox`.

    Raises
    ------
    JobError
        No site answered.
    ValidationError
        The answers do not fit the query, or the query is one step of an iterative fit.
    """
    if spec.kind.is_table:
        return combine_table(spec, answers)
    if spec.kind is QueryKind.DESCRIBE:
        return combine_describe(spec, answers)
    if spec.kind is QueryKind.KAPLAN_MEIER:
        return combine_km(spec, answers)
    raise ValidationError(f"{spec.kind.value} is one step of an iterative fit: use fit_glm or fit_cox")
