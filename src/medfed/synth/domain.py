"""The public schema of a table and its discretised domain: what the marginal synthesizers count.

A :class:`Schema` is *public* metadata (column kinds, numeric bounds, category lists, whether a
column may be missing): what a data dictionary says, not something read off the rows. When a site
builds one with :func:`infer_schema` it declares those facts public; the report says so.

:func:`fit_domain` turns it into bins. Categorical columns keep their categories; numeric and date
columns get ``bins`` intervals between their public bounds, either equal-width or, with a ρ share,
*DP-chosen*: a fine noisy histogram (Gaussian mechanism) whose cumulative sum places quantile edges
(post-processing). Missing values are their own last code in a nullable column, so missingness is
synthesised like any other value. Values outside a column's bounds are clamped into them, as every
DP method with public bounds does.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medfed.core.errors import ValidationError
from medfed.synth.dp import gaussian_measure

_FINE = 8  # fine histogram cells per final bin for DP-chosen edges


class ColumnKind(enum.StrEnum):
    """How a column is discretised and decoded."""

    NUMERIC = "numeric"
    CATEGORICAL = "categorical"
    DATE = "date"


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnSpec:
    """One column's public metadata. Dates are handled as days since 1970-01-01."""

    name: str
    kind: ColumnKind
    lower: float = 0.0
    upper: float = 0.0
    categories: tuple[str, ...] = ()
    nullable: bool = False
    integer: bool = False

    def __post_init__(self) -> None:
        if self.kind is ColumnKind.CATEGORICAL and not self.categories:
            raise ValidationError("a categorical column needs its categories", where=f"column {self.name!r}")
        if self.kind is not ColumnKind.CATEGORICAL and not (math.isfinite(self.lower) and self.upper > self.lower):
            raise ValidationError(
                f"bounds must be finite with upper > lower, got [{self.lower}, {self.upper}]",
                where=f"column {self.name!r}",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Schema:
    columns: tuple[ColumnSpec, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def infer_schema(df: pd.DataFrame, *, max_categories: int = 20) -> Schema:
    """A schema read off ``df`` (bounds = observed range, categories = observed values).

    Whoever calls this declares the result public metadata; a strict site writes its schema by
    hand instead. Numeric columns with at most 2 distinct values, and object/bool/category columns,
    become categorical.
    """
    specs: list[ColumnSpec] = []
    for name in df.columns:
        col = df[name]
        nullable = bool(col.isna().any())
        present = col.dropna()
        if pd.api.types.is_datetime64_any_dtype(col):
            days = _days(present)
            specs.append(
                ColumnSpec(
                    name=str(name),
                    kind=ColumnKind.DATE,
                    lower=float(days.min()),
                    upper=float(days.max()) + 1.0,
                    nullable=nullable,
                    integer=True,
                )
            )
        elif pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col) and present.nunique() > 2:
            values = present.to_numpy(dtype=np.float64)
            lo, hi = float(values.min()), float(values.max())
            integer = bool(np.all(values == np.round(values)))
            upper = hi + 1.0 if integer or hi <= lo else hi  # integer bins are [v, v + 1)
            specs.append(
                ColumnSpec(
                    name=str(name), kind=ColumnKind.NUMERIC, lower=lo, upper=upper, nullable=nullable, integer=integer
                )
            )
        else:
            cats = tuple(sorted({str(v) for v in present}))
            if len(cats) > max_categories:
                raise ValidationError(
                    f"{len(cats)} distinct values (> {max_categories}): give a schema", where=f"column {name!r}"
                )
            specs.append(
                ColumnSpec(name=str(name), kind=ColumnKind.CATEGORICAL, categories=cats or ("",), nullable=nullable)
            )
    return Schema(columns=tuple(specs))


@dataclass(frozen=True, slots=True, kw_only=True)
class Domain:
    """A schema with bin edges: column ``i`` takes codes ``0 .. sizes[i]-1`` (missing is the last)."""

    schema: Schema
    edges: tuple[np.ndarray, ...]  # per column; empty for categorical

    @property
    def sizes(self) -> tuple[int, ...]:
        out = []
        for spec, edges in zip(self.schema.columns, self.edges, strict=True):
            base = len(spec.categories) if spec.kind is ColumnKind.CATEGORICAL else len(edges) - 1
            out.append(base + int(spec.nullable))
        return tuple(out)

    @property
    def ordinal(self) -> tuple[bool, ...]:
        """Whether each column's codes are ordered: numeric/date bins or two categories, no missing code."""
        return tuple(
            not c.nullable and (c.kind is not ColumnKind.CATEGORICAL or len(c.categories) <= 2)
            for c in self.schema.columns
        )


def fit_domain(df: pd.DataFrame, schema: Schema, *, bins: int, rho: float, rng: np.random.Generator) -> Domain:
    """Bin edges for every numeric/date column; DP quantile edges when ``rho > 0`` (split evenly)."""
    check_frame(df, schema)
    numeric = [c for c in schema.columns if c.kind is not ColumnKind.CATEGORICAL]
    sigma = math.sqrt(len(numeric) / (2.0 * rho)) if rho > 0 and numeric else 0.0
    edges: list[np.ndarray] = []
    for spec in schema.columns:
        if spec.kind is ColumnKind.CATEGORICAL:
            edges.append(np.zeros(0))
            continue
        uniform = np.linspace(spec.lower, spec.upper, bins + 1)
        if sigma == 0.0:
            edges.append(uniform)
            continue
        fine = np.linspace(spec.lower, spec.upper, bins * _FINE + 1)
        values = np.clip(_numeric(df[spec.name].dropna(), spec), spec.lower, spec.upper)
        counts = np.histogram(values, bins=fine)[0]
        noisy = np.maximum(gaussian_measure(counts, sigma, rng), 0.0) + 1e-9
        cdf = np.cumsum(noisy) / noisy.sum()
        cut = np.searchsorted(cdf, np.arange(1, bins) / bins)
        inner = np.unique(fine[np.clip(cut + 1, 1, len(fine) - 2)])
        edges.append(np.concatenate([[spec.lower], inner, [spec.upper]]))
    return Domain(schema=schema, edges=tuple(edges))


def check_frame(df: pd.DataFrame, schema: Schema) -> None:
    """Every problem of ``df`` against ``schema`` (missing columns, unknown categories, bad nulls), raised once."""
    problems: list[str] = []
    for spec in schema.columns:
        if spec.name not in df.columns:
            problems.append(f"column {spec.name!r} is missing")
            continue
        col = df[spec.name]
        nulls = np.flatnonzero(col.isna().to_numpy())
        if nulls.size and not spec.nullable:
            problems.append(
                f"column {spec.name!r}: missing value at row {int(nulls[0])} but the schema says not nullable"
            )
        present = col.dropna()
        if spec.kind is ColumnKind.CATEGORICAL:
            bad = ~present.astype(str).isin(spec.categories)
            if bool(bad.any()):
                row = int(np.flatnonzero(bad.to_numpy())[0])
                problems.append(
                    f"column {spec.name!r}: unknown category {present.iloc[row]!r} at row {present.index[row]}"
                )
        elif spec.kind is ColumnKind.NUMERIC and not pd.api.types.is_numeric_dtype(present):
            problems.append(f"column {spec.name!r}: not numeric")
    if problems:
        raise ValidationError(problems, where="synthesizer input")


def encode(df: pd.DataFrame, domain: Domain) -> np.ndarray:
    """Integer codes, shape (rows, columns), in schema order."""
    check_frame(df, domain.schema)
    out = np.zeros((len(df), len(domain.schema.columns)), dtype=np.int64)
    for j, (spec, edges, size) in enumerate(zip(domain.schema.columns, domain.edges, domain.sizes, strict=True)):
        col = df[spec.name]
        missing = col.isna().to_numpy()
        if spec.kind is ColumnKind.CATEGORICAL:
            lookup = {c: i for i, c in enumerate(spec.categories)}
            codes = np.array([lookup.get(str(v), 0) for v in col.astype(object)], dtype=np.int64)
        else:
            values = np.clip(_numeric(col.fillna(spec.lower), spec), spec.lower, spec.upper)
            codes = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
        out[:, j] = np.where(missing, size - 1, codes)
    return out


def decode(codes: np.ndarray, domain: Domain, rng: np.random.Generator) -> pd.DataFrame:
    """Rows back from codes: a category, or a value drawn uniformly inside its bin; NaN/NaT if missing."""
    data: dict[str, object] = {}
    for j, (spec, edges, size) in enumerate(zip(domain.schema.columns, domain.edges, domain.sizes, strict=True)):
        c = codes[:, j]
        missing = spec.nullable & (c == size - 1)
        if spec.kind is ColumnKind.CATEGORICAL:
            cats = np.array((*spec.categories, ""), dtype=object)
            values = cats[np.minimum(c, len(spec.categories))]
            values[missing] = None
            data[spec.name] = _restore(pd.Series(values, dtype=object), spec)
            continue
        k = np.minimum(c, len(edges) - 2)
        if spec.integer:  # an integer in [edge_k, edge_k+1), or the nearest one if the bin holds none
            lo = np.ceil(edges[k])
            hi = np.maximum(np.ceil(edges[k + 1]) - 1.0, lo)
            x = np.clip(rng.integers(lo.astype(np.int64), hi.astype(np.int64) + 1), spec.lower, spec.upper - 1.0)
        else:
            x = rng.uniform(edges[k], edges[k + 1])
        x = np.where(missing, np.nan, x)
        if spec.kind is ColumnKind.DATE:
            data[spec.name] = pd.to_datetime(x, unit="D")
        else:
            data[spec.name] = x
    return pd.DataFrame(data)


def _restore(values: pd.Series, spec: ColumnSpec) -> pd.Series:
    """Categories that are all numbers come back as numbers (integers when they all are)."""
    numbers = pd.to_numeric(pd.Series(spec.categories), errors="coerce")
    if numbers.isna().any():
        return values
    out = pd.to_numeric(values, errors="coerce")
    if bool((numbers == numbers.round()).all()):
        return out.astype("Int64") if out.isna().any() else out.astype(np.int64)
    return out


def _days(col: pd.Series) -> np.ndarray:
    return (pd.to_datetime(col) - pd.Timestamp(0)).dt.total_seconds().to_numpy() / 86400.0


def _numeric(col: pd.Series, spec: ColumnSpec) -> np.ndarray:
    if spec.kind is ColumnKind.DATE:
        return _days(col)
    return col.to_numpy(dtype=np.float64)
