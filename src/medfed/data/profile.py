"""Per-column profiles of a harmonised table, computed at the node and shown only there.

:class:`Profiler` folds record batches one at a time (so a file larger than memory can be
profiled): per column the count, missingness, numeric range, mean and standard deviation (Chan et
al.'s pairwise update of the moments, 1979) and, for categorical columns, the value set with counts
(at most :data:`MAX_VALUES` distinct values are kept; beyond that only their number is reported).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from medfed.data.schema import ColumnType, Schema
from medfed.data.sources import DatasetDecl, iter_harmonised

#: Distinct values kept per categorical column.
MAX_VALUES = 50
#: Histogram bins for numeric columns whose schema declares both min and max.
BINS = 10
_NUMERIC = (ColumnType.FLOAT, ColumnType.INTEGER, ColumnType.BOOLEAN)


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnProfile:
    name: str
    type: ColumnType
    unit: str
    count: int
    missing: int
    minimum: float | None = None
    maximum: float | None = None
    mean: float | None = None
    std: float | None = None
    values: tuple[tuple[str, int], ...] = ()
    distinct_over_limit: bool = False
    #: (low, high, count) over :data:`BINS` equal bins of the schema's declared [min, max]
    histogram: tuple[tuple[float, float, int], ...] = ()

    @property
    def missing_fraction(self) -> float:
        return self.missing / self.count if self.count else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetProfile:
    dataset: str
    rows: int
    columns: tuple[ColumnProfile, ...]
    #: rows a ``drop_row`` missing-value policy excluded (counted, not profiled)
    excluded: int = 0

    def column(self, name: str) -> ColumnProfile:
        return next(c for c in self.columns if c.name == name)

    def to_text(self) -> str:
        """A fixed-width table for a terminal."""
        head = f"dataset {self.dataset}: {self.rows} rows ({self.excluded} excluded by missing-value policy)"
        lines = [head, f"{'column':<24}{'type':<10}{'missing':>9}  summary"]
        for c in self.columns:
            if c.mean is not None:
                summary = f"min {c.minimum:.4g}  max {c.maximum:.4g}  mean {c.mean:.4g}  sd {c.std:.4g} {c.unit}"
            elif c.values:
                more = " ..." if c.distinct_over_limit else ""
                summary = ", ".join(f"{v}: {n}" for v, n in c.values[:8]) + more
            else:
                summary = ""
            lines.append(f"{c.name:<24}{c.type.value:<10}{c.missing_fraction:>8.1%}  {summary}")
        return "\n".join(lines)


@dataclass(slots=True)
class _Moments:
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf

    def add(self, x: np.ndarray) -> None:
        if not len(x):
            return
        n_b, mean_b = len(x), float(x.mean())
        m2_b = float(((x - mean_b) ** 2).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n, self.lo, self.hi = n, min(self.lo, float(x.min())), max(self.hi, float(x.max()))


@dataclass(slots=True)
class Profiler:
    """Accumulates a :class:`DatasetProfile` over batches of a harmonised table."""

    schema: Schema
    rows: int = 0
    missing: Counter[str] = field(default_factory=Counter)
    moments: dict[str, _Moments] = field(default_factory=dict)
    values: dict[str, Counter[str]] = field(default_factory=dict)
    bins: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, frame: pd.DataFrame) -> None:
        self.rows += len(frame)
        for col in self.schema.columns:
            series = frame[col.name]
            absent = series.isna()
            self.missing[col.name] += int(absent.sum())
            present = series[~absent]
            if col.type in _NUMERIC:
                x = present.astype("float64").to_numpy()
                self.moments.setdefault(col.name, _Moments()).add(x)
                if col.minimum is not None and col.maximum is not None and col.maximum > col.minimum:
                    hist, _ = np.histogram(x, bins=BINS, range=(col.minimum, col.maximum))
                    self.bins[col.name] = self.bins.get(col.name, np.zeros(BINS, dtype=np.int64)) + hist
            elif col.type in (ColumnType.CATEGORY, ColumnType.STRING):
                counts = self.values.setdefault(col.name, Counter())
                counts.update({str(k): int(v) for k, v in present.astype(str).value_counts().items()})
                if len(counts) > 10 * MAX_VALUES:  # bound memory on free text or identifiers
                    self.values[col.name] = Counter(dict(counts.most_common(MAX_VALUES + 1)))

    def result(self, dataset: str) -> DatasetProfile:
        cols = []
        for col in self.schema.columns:
            m, counts = self.moments.get(col.name), self.values.get(col.name, Counter())
            numeric = m is not None and m.n > 0
            cols.append(
                ColumnProfile(
                    name=col.name,
                    type=col.type,
                    unit=col.unit,
                    count=self.rows,
                    missing=self.missing[col.name],
                    minimum=m.lo if numeric and m else None,
                    maximum=m.hi if numeric and m else None,
                    mean=m.mean if numeric and m else None,
                    std=math.sqrt(m.m2 / (m.n - 1)) if numeric and m and m.n > 1 else (0.0 if numeric else None),
                    values=tuple(counts.most_common(MAX_VALUES)),
                    distinct_over_limit=len(counts) > MAX_VALUES,
                    histogram=_histogram(col.minimum, col.maximum, self.bins.get(col.name)),
                )
            )
        return DatasetProfile(dataset=dataset, rows=self.rows, columns=tuple(cols))


def profile_frames(dataset: str, schema: Schema, frames: Iterable[pd.DataFrame]) -> DatasetProfile:
    """The profile of a table given as a stream of harmonised frames."""
    profiler = Profiler(schema)
    for frame in frames:
        profiler.add(frame)
    return profiler.result(dataset)


def _histogram(lo: float | None, hi: float | None, counts: np.ndarray | None) -> tuple[tuple[float, float, int], ...]:
    if lo is None or hi is None or counts is None:
        return ()
    edges = np.linspace(lo, hi, BINS + 1)
    return tuple((float(edges[i]), float(edges[i + 1]), int(counts[i])) for i in range(BINS))


def profile_dataset(decl: DatasetDecl, *, as_of: pd.Timestamp | None = None) -> DatasetProfile:
    """Harmonise, validate and profile a declared dataset in one streaming pass.

    Raises
    ------
    DataError, ValidationError
        The dataset cannot be read or fails its schema (every problem listed).
    """
    profiler = Profiler(decl.schema)
    excluded = 0
    for part in iter_harmonised(decl, as_of=as_of):
        profiler.add(part.frame)
        excluded += part.n_dropped
    result = profiler.result(decl.name)
    return DatasetProfile(dataset=result.dataset, rows=result.rows, columns=result.columns, excluded=excluded)
