"""What a researcher may ask a site: :class:`QuerySpec`, schema-checked JSON in and out.

A query is a *value*: it travels to each node as JSON (never pickle), and the node answers it with
its own policy. Cohort criteria are simple comparisons (``age>60``, ``sex==1``) joined by AND;
rows with a missing value in any column a query uses are left out (complete-case analysis, as
statsmodels and lifelines do), and that completeness requirement is part of the cohort.
"""

from __future__ import annotations

import enum
import hashlib
import json
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from medfed.core.errors import ValidationError

Level = float | str


class QueryKind(enum.StrEnum):
    """The kinds of question a site answers."""

    @property
    def is_table(self) -> bool:
        """Counts in cells: the kinds that small-cell suppression and DP noise apply to."""
        return self in (QueryKind.COUNT, QueryKind.HISTOGRAM, QueryKind.CROSSTAB)

    COUNT = "count"
    DESCRIBE = "describe"
    HISTOGRAM = "histogram"
    CROSSTAB = "crosstab"
    KAPLAN_MEIER = "kaplan_meier"
    GLM_STATS = "glm_stats"
    COX_STATS = "cox_stats"


class Family(enum.StrEnum):
    """GLM families, each with its canonical link."""

    LOGISTIC = "logistic"  # binomial, logit link
    LINEAR = "linear"  # Gaussian, identity link
    POISSON = "poisson"  # Poisson, log link


class Mechanism(enum.StrEnum):
    LAPLACE = "laplace"
    GAUSSIAN = "gaussian"


class Op(enum.StrEnum):
    EQ = "=="
    NE = "!="
    LE = "<="
    GE = ">="
    LT = "<"
    GT = ">"


_CRITERION = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(==|!=|<=|>=|<|>)\s*(.+?)\s*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Criterion:
    """One cohort condition ``column op value``; parse ``"age>60"`` with :meth:`parse`."""

    column: str
    op: Op
    value: Level

    @classmethod
    def parse(cls, text: str) -> Criterion:
        match = _CRITERION.match(text)
        if match is None:
            ops = [o.value for o in Op]
            raise ValidationError(f"criterion {text!r} is not 'column op value' with op in {ops}", where="where")
        column, op, raw = match.groups()
        value: Level
        try:
            value = float(raw)
        except ValueError:
            value = raw.strip("'\"")
        return cls(column=column, op=Op(op), value=value)

    def mask(self, table: pd.DataFrame) -> np.ndarray:
        """Rows that meet the condition (a missing value never does)."""
        col = table[self.column]
        target: Any = self.value
        if isinstance(target, float) and not pd.api.types.is_numeric_dtype(col):
            col = pd.to_numeric(col, errors="coerce")
        elif isinstance(target, str):
            col = col.astype("string")
        hit: pd.Series = _COMPARE[self.op](col, target)
        out: np.ndarray = np.asarray(hit.fillna(False), dtype=bool) & np.asarray(col.notna(), dtype=bool)
        return out

    def __str__(self) -> str:
        shown = repr(self.value) if isinstance(self.value, str) else f"{self.value:g}"
        return f"{self.column}{self.op.value}{shown}"


_COMPARE: dict[Op, Callable[[pd.Series, Any], pd.Series]] = {
    Op.EQ: operator.eq, Op.NE: operator.ne, Op.LE: operator.le,
    Op.GE: operator.ge, Op.LT: operator.lt, Op.GT: operator.gt,
}  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class DPRequest:
    """Differential privacy asked for one query: the mechanism and its (ε, δ)."""

    mechanism: Mechanism
    epsilon: float
    delta: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class QuerySpec:
    """One question to every site. Use the named constructors (:meth:`count`, :meth:`glm`, ...).

    Fields a kind does not use stay empty; :meth:`validate` (run on construction) says which are
    missing or out of place, all at once.
    """

    kind: QueryKind
    where: tuple[Criterion, ...] = ()
    columns: tuple[str, ...] = ()  # describe: columns; histogram: 1; crosstab: 2
    bins: tuple[float, ...] = ()  # histogram: increasing bin edges
    levels: tuple[tuple[Level, ...], ...] = ()  # crosstab: levels per column; kaplan_meier: group levels
    time: str = ""  # kaplan_meier, cox_stats
    event: str = ""  # kaplan_meier, cox_stats: 1 = event, 0 = censored
    group: str = ""  # kaplan_meier: optional group column (log-rank test)
    family: Family | None = None  # glm_stats
    outcome: str = ""  # glm_stats
    covariates: tuple[str, ...] = ()  # glm_stats, cox_stats
    intercept: bool = True  # glm_stats
    beta: tuple[float, ...] = ()  # glm_stats, cox_stats: where to evaluate
    dp: DPRequest | None = None

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ValidationError(problems, where=f"query ({self.kind.value})")

    # -- named constructors ------------------------------------------------------------------
    @classmethod
    def count(cls, where: tuple[str, ...] = (), *, dp: DPRequest | None = None) -> QuerySpec:
        return cls(kind=QueryKind.COUNT, where=_parse_all(where), dp=dp)

    @classmethod
    def glm(cls, family: Family, outcome: str, covariates: tuple[str, ...], where: tuple[str, ...] = ()) -> QuerySpec:
        return cls(
            kind=QueryKind.GLM_STATS, family=family, outcome=outcome, covariates=tuple(covariates),
            where=_parse_all(where),
        )  # fmt: skip

    @classmethod
    def cox(cls, time: str, event: str, covariates: tuple[str, ...], where: tuple[str, ...] = ()) -> QuerySpec:
        return cls(
            kind=QueryKind.COX_STATS, time=time, event=event, covariates=tuple(covariates), where=_parse_all(where)
        )

    def replace(self, **changes: Any) -> QuerySpec:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    # -- what the query touches ---------------------------------------------------------------
    @property
    def design_names(self) -> tuple[str, ...]:
        """Names of the model coefficients (GLM: ``Intercept`` first when asked)."""
        if self.kind is QueryKind.GLM_STATS and self.intercept:
            return ("Intercept", *self.covariates)
        return self.covariates

    def used_columns(self) -> tuple[str, ...]:
        """Every column the answer reads; rows missing any of them are not in the cohort."""
        cols = [*self.columns, self.time, self.event, self.group, self.outcome, *self.covariates]
        cols += [c.column for c in self.where]
        return tuple(sorted({c for c in cols if c}))

    def cohort_key(self) -> str:
        """SHA-256 of the cohort definition (criteria + complete-case columns), for the history."""
        return cohort_fingerprint(self.where, self.used_columns())

    # -- JSON ---------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(_to_dict(self), sort_keys=True, allow_nan=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> QuerySpec:
        """Parse and schema-check; every problem is reported in one :class:`ValidationError`."""
        try:
            raw = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValidationError(f"not JSON: {exc}", where="query") from None
        return _from_dict(raw)


def cohort_fingerprint(where: tuple[Criterion, ...], columns: tuple[str, ...]) -> str:
    canon = json.dumps(
        {"where": sorted(json.dumps([c.column, c.op.value, c.value]) for c in where), "complete": sorted(columns)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canon.encode()).hexdigest()


def _parse_all(where: tuple[str, ...]) -> tuple[Criterion, ...]:
    return tuple(Criterion.parse(w) for w in where)


def _needs(spec: QuerySpec) -> dict[str, bool]:
    k = spec.kind
    return {
        "columns": k in (QueryKind.DESCRIBE, QueryKind.HISTOGRAM, QueryKind.CROSSTAB),
        "bins": k is QueryKind.HISTOGRAM,
        "levels": k is QueryKind.CROSSTAB or (k is QueryKind.KAPLAN_MEIER and bool(spec.group)),
        "time": k in (QueryKind.KAPLAN_MEIER, QueryKind.COX_STATS),
        "event": k in (QueryKind.KAPLAN_MEIER, QueryKind.COX_STATS),
        "family": k is QueryKind.GLM_STATS,
        "outcome": k is QueryKind.GLM_STATS,
        "covariates": k is QueryKind.COX_STATS,
    }


def _problems(spec: QuerySpec) -> list[str]:
    problems: list[str] = []
    needs = _needs(spec)
    for name, needed in needs.items():
        present = getattr(spec, name) not in ((), "", None)
        if needed and not present:
            problems.append(f"{name} is required for {spec.kind.value}")
        elif present and not needed and name != "covariates":
            problems.append(f"{name} is not used by {spec.kind.value}")
    if spec.covariates and spec.kind not in (QueryKind.GLM_STATS, QueryKind.COX_STATS):
        problems.append(f"covariates is not used by {spec.kind.value}")
    if spec.group and spec.kind is not QueryKind.KAPLAN_MEIER:
        problems.append(f"group is not used by {spec.kind.value}")
    want = {QueryKind.HISTOGRAM: 1, QueryKind.CROSSTAB: 2}.get(spec.kind)
    if want is not None and len(spec.columns) != want:
        problems.append(f"{spec.kind.value} takes {want} column(s), got {len(spec.columns)}")
    if spec.kind is QueryKind.CROSSTAB and len(spec.levels) != 2:
        problems.append(f"crosstab takes levels for 2 columns, got {len(spec.levels)}")
    if spec.kind is QueryKind.KAPLAN_MEIER and spec.group and len(spec.levels) != 1:
        problems.append("kaplan_meier with a group takes one tuple of group levels")
    edges = np.asarray(spec.bins, dtype=float)
    if spec.bins and (len(edges) < 2 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0)):
        problems.append("bins must be at least 2 finite, strictly increasing edges")
    if spec.beta and (len(spec.beta) != len(spec.design_names) or not np.all(np.isfinite(spec.beta))):
        problems.append(f"beta must be {len(spec.design_names)} finite numbers ({list(spec.design_names)})")
    if spec.beta and spec.kind not in (QueryKind.GLM_STATS, QueryKind.COX_STATS):
        problems.append(f"beta is not used by {spec.kind.value}")
    if spec.dp is not None:
        problems += _dp_problems(spec.kind, spec.dp)
    return problems


def _dp_problems(kind: QueryKind, dp: DPRequest) -> list[str]:
    problems = []
    if not kind.is_table:
        problems.append(f"differential privacy is offered for count, histogram and crosstab, not {kind.value}")
    if not (np.isfinite(dp.epsilon) and dp.epsilon > 0):
        problems.append(f"dp epsilon must be a finite number > 0, got {dp.epsilon!r}")
    gaussian = dp.mechanism is Mechanism.GAUSSIAN
    if gaussian and not 0 < dp.delta < 1:
        problems.append(f"the Gaussian mechanism needs 0 < delta < 1, got {dp.delta!r}")
    if not gaussian and dp.delta != 0:
        problems.append("the Laplace mechanism is pure ε-DP: delta must be 0")
    return problems


# -- JSON schema --------------------------------------------------------------------------------
_STR_FIELDS = ("time", "event", "group", "outcome")
_FIELDS = {"kind", "where", "columns", "bins", "levels", "family", "covariates", "intercept", "beta", "dp"}


def _to_dict(spec: QuerySpec) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": spec.kind.value}
    if spec.where:
        out["where"] = [{"column": c.column, "op": c.op.value, "value": c.value} for c in spec.where]
    for name in ("columns", "covariates", "bins", "beta"):
        if getattr(spec, name):
            out[name] = list(getattr(spec, name))
    if spec.levels:
        out["levels"] = [list(lv) for lv in spec.levels]
    out |= {name: getattr(spec, name) for name in _STR_FIELDS if getattr(spec, name)}
    if spec.family is not None:
        out["family"] = spec.family.value
    if not spec.intercept:
        out["intercept"] = False
    if spec.dp is not None:
        out["dp"] = {"mechanism": spec.dp.mechanism.value, "epsilon": spec.dp.epsilon, "delta": spec.dp.delta}
    return out


def _enum(cls: type[enum.StrEnum], value: Any, name: str, problems: list[str]) -> Any:
    try:
        return cls(value)
    except ValueError:
        problems.append(f"{name} {value!r} is not one of {[m.value for m in cls]}")
        return None


def _seq(raw: dict[str, Any], name: str, kind: type | tuple[type, ...], problems: list[str]) -> tuple[Any, ...]:
    value = raw.get(name, [])
    ok = isinstance(value, list) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
    if not ok:
        problems.append(f"{name} must be a list of {getattr(kind, '__name__', 'numbers')}")
        return ()
    return tuple(float(v) if isinstance(v, int | float) else v for v in value)


def _criteria(raw: Any, problems: list[str]) -> tuple[Criterion, ...]:
    out = []
    for i, c in enumerate(raw if isinstance(raw, list) else [None]):
        ok = isinstance(c, dict) and set(c) == {"column", "op", "value"} and isinstance(c["column"], str)
        if not ok or isinstance(c["value"], bool) or not isinstance(c["value"], int | float | str):
            problems.append(f"where[{i}] must be {{column: str, op, value: number|str}}")
            continue
        op = _enum(Op, c["op"], f"where[{i}].op", problems)
        if op is not None:
            value = float(c["value"]) if isinstance(c["value"], int | float) else c["value"]
            out.append(Criterion(column=c["column"], op=op, value=value))
    return tuple(out)


def _dp(raw: Any, problems: list[str]) -> DPRequest | None:
    if not (isinstance(raw, dict) and set(raw) <= {"mechanism", "epsilon", "delta"} and "mechanism" in raw):
        problems.append("dp must be {mechanism, epsilon, delta}")
        return None
    mech = _enum(Mechanism, raw["mechanism"], "dp.mechanism", problems)
    eps, delta = raw.get("epsilon"), raw.get("delta", 0.0)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (eps, delta)):
        problems.append("dp epsilon and delta must be numbers")
        return None
    if mech is None or not isinstance(eps, int | float) or not isinstance(delta, int | float):
        return None
    return DPRequest(mechanism=mech, epsilon=float(eps), delta=float(delta))


def _from_dict(raw: Any) -> QuerySpec:
    if not isinstance(raw, dict):
        raise ValidationError("a query is a JSON object", where="query")
    problems = [f"unknown field {k!r}" for k in sorted(set(raw) - _FIELDS - set(_STR_FIELDS))]
    kind = _enum(QueryKind, raw.get("kind"), "kind", problems)
    fields: dict[str, Any] = {name: raw[name] for name in _STR_FIELDS if name in raw}
    problems += [f"{n} must be a string" for n, v in fields.items() if not isinstance(v, str)]
    fields["columns"] = _seq(raw, "columns", str, problems)
    fields["covariates"] = _seq(raw, "covariates", str, problems)
    fields["bins"] = _seq(raw, "bins", (int, float), problems)
    fields["beta"] = _seq(raw, "beta", (int, float), problems)
    levels = raw.get("levels", [])
    if isinstance(levels, list) and all(isinstance(lv, list) for lv in levels):
        fields["levels"] = tuple(_seq({"l": lv}, "l", (int, float, str), problems) for lv in levels)
    else:
        problems.append("levels must be a list of lists")
    fields["where"] = _criteria(raw.get("where", []), problems)
    if "family" in raw:
        fields["family"] = _enum(Family, raw["family"], "family", problems)
    if not isinstance(raw.get("intercept", True), bool):
        problems.append("intercept must be true or false")
    fields["intercept"] = raw.get("intercept", True) is not False
    if "dp" in raw:
        fields["dp"] = _dp(raw["dp"], problems)
    if problems or kind is None:
        raise ValidationError(problems, where="query")
    return QuerySpec(kind=kind, **fields)
