"""One schema language for every harmonised table, and the harmonisation that reaches it.

A :class:`Schema` names each column's type, unit, allowed values or range and what a missing value
means. :func:`conform` checks a frame against it and collects *every* problem with its file, row
and column before raising one :class:`~medfed.core.errors.ValidationError`; rows that a
``drop_row`` policy excludes are counted, never silently lost. :func:`harmonise` first maps a
source's own column names, codes and units onto the schema (a :class:`ColumnMapping` per column),
so four hospitals that code sex or glucose differently produce the same features.

Units follow UCUM spellings (``mg/dL``, ``mmol/L``, ``Cel``); conversions come from the small
explicit table :data:`CONVERSIONS`, never from guessing.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from medfed.core.errors import ValidationError

E = TypeVar("E", bound=enum.Enum)

#: At most this many problems are listed; the rest are counted.
MAX_LISTED = 50


class ColumnType(enum.Enum):
    FLOAT = "float"
    INTEGER = "integer"
    STRING = "string"
    CATEGORY = "category"
    BOOLEAN = "boolean"
    DATE = "date"


class MissingPolicy(enum.Enum):
    ERROR = "error"  # a missing value is a validation problem
    ALLOW = "allow"  # kept as NaN / None
    DROP_ROW = "drop_row"  # the row is excluded and counted


# --- units -----------------------------------------------------------------------------------

#: Spelling variants seen in source systems, mapped to the UCUM code used in schemas.
UNIT_ALIASES: Mapping[str, str] = {
    "mg/dl": "mg/dL",
    "mmol/l": "mmol/L",
    "umol/l": "umol/L",
    "µmol/l": "umol/L",
    "°c": "Cel",
    "c": "Cel",
    "degc": "Cel",
    "°f": "[degF]",
    "f": "[degF]",
    "degf": "[degF]",
    "lb": "[lb_av]",
    "lbs": "[lb_av]",
    "in": "[in_i]",
    "inch": "[in_i]",
    "years": "a",
    "year": "a",
    "yr": "a",
    "beats/minute": "/min",
    "breaths/minute": "/min",
}

#: (analyte or "*", from, to) -> (scale, offset): to = from * scale + offset. Molar masses:
#: glucose 180.16 g/mol, cholesterol 386.65, triglycerides 885.7 (as triolein), creatinine 113.12.
#: HbA1c % (NGSP) -> mmol/mol (IFCC) is the master equation of Hoelzel et al., Clin Chem 2004.
CONVERSIONS: Mapping[tuple[str, str, str], tuple[float, float]] = {
    ("glucose", "mg/dL", "mmol/L"): (10.0 / 180.16, 0.0),
    ("cholesterol", "mg/dL", "mmol/L"): (10.0 / 386.65, 0.0),
    ("triglycerides", "mg/dL", "mmol/L"): (10.0 / 885.7, 0.0),
    ("creatinine", "mg/dL", "umol/L"): (10_000.0 / 113.12, 0.0),
    ("hba1c", "%", "mmol/mol"): (10.929, -2.15 * 10.929),
    ("*", "[lb_av]", "kg"): (0.45359237, 0.0),
    ("*", "g", "kg"): (0.001, 0.0),
    ("*", "[in_i]", "cm"): (2.54, 0.0),
    ("*", "m", "cm"): (100.0, 0.0),
    ("*", "[degF]", "Cel"): (5.0 / 9.0, -32.0 * 5.0 / 9.0),
    ("*", "K", "Cel"): (1.0, -273.15),
}


def normalise_unit(unit: str) -> str:
    """The schema spelling of ``unit`` (``mg/dl`` -> ``mg/dL``); unknown units pass unchanged."""
    stripped = unit.strip()
    return UNIT_ALIASES.get(stripped.lower(), stripped)


def conversion(from_unit: str, to_unit: str, *, analyte: str = "") -> tuple[float, float] | None:
    """``(scale, offset)`` converting ``from_unit`` to ``to_unit`` for ``analyte``, or ``None``."""
    src, dst = normalise_unit(from_unit), normalise_unit(to_unit)
    if src == dst:
        return (1.0, 0.0)
    for key in ((analyte, src, dst), ("*", src, dst)):
        if key in CONVERSIONS:
            return CONVERSIONS[key]
    for key in ((analyte, dst, src), ("*", dst, src)):
        if key in CONVERSIONS:  # the inverse of an affine map
            scale, offset = CONVERSIONS[key]
            return (1.0 / scale, -offset / scale)
    return None


def convert_units(values: npt.ArrayLike, *, from_unit: str, to_unit: str, analyte: str = "") -> npt.NDArray[np.float64]:
    """``values`` in ``from_unit`` expressed in ``to_unit``.

    Raises
    ------
    ValidationError
        No conversion is known between the two units for this analyte.
    """
    factor = conversion(from_unit, to_unit, analyte=analyte)
    if factor is None:
        what = f" for {analyte!r}" if analyte else ""
        raise ValidationError(f"cannot convert {from_unit!r} to {to_unit!r}{what}")
    scale, offset = factor
    return np.asarray(values, dtype=np.float64) * scale + offset


# --- schema ----------------------------------------------------------------------------------


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class Column:
    """One column of a harmonised table."""

    name: str
    type: ColumnType
    unit: str = ""
    allowed: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    missing: MissingPolicy = MissingPolicy.ALLOW
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValidationError("a column needs a name")
        if self.type in (ColumnType.FLOAT, ColumnType.INTEGER) and not all(_is_number(a) for a in self.allowed):
            raise ValidationError(f"column {self.name!r}: allowed values {list(self.allowed)} are not all numbers")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValidationError(f"column {self.name!r}: min {self.minimum} > max {self.maximum}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Schema:
    """An ordered set of :class:`Column`; names are unique."""

    name: str
    columns: tuple[Column, ...]

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValidationError(f"schema {self.name!r}: duplicate columns {dupes}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise ValidationError(f"schema {self.name!r} has no column {name!r} (columns: {list(self.names)})")

    @classmethod
    def from_dicts(cls, name: str, columns: list[Any], *, where: str) -> Schema:
        """Parse ``[[columns]]`` tables (``name``, ``type``, ``unit``, ``allowed``, ``min``, ``max``,
        ``missing``, ``description``), collecting every problem before raising once."""
        problems: list[str] = []
        parsed = [c for i, raw in enumerate(columns) if (c := _column(raw, f"columns[{i}]", problems))]
        if not columns:
            problems.append("no columns declared")
        if problems:
            raise ValidationError(problems, where=where)
        try:
            return cls(name=name, columns=tuple(parsed))
        except ValidationError as exc:
            raise ValidationError(exc.problems, where=where) from None


_COLUMN_KEYS = {"name", "type", "unit", "allowed", "min", "max", "missing", "description"}


def _enum_value(kind: type[E], value: Any, where: str, problems: list[str]) -> E | None:
    try:
        return kind(value)
    except ValueError:
        problems.append(f"{where}: {value!r} is not one of {[m.value for m in kind]}")
        return None


def _column(raw: Any, where: str, problems: list[str]) -> Column | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        problems.append(f'{where}: needs a table with name = "..."')
        return None
    where = f"{where} ({raw['name']})"
    start = len(problems)
    problems.extend(
        f"{where}: unknown key {k!r} (allowed: {sorted(_COLUMN_KEYS)})" for k in raw if k not in _COLUMN_KEYS
    )
    ctype = _enum_value(ColumnType, raw.get("type", "float"), f"{where}.type", problems)
    missing = _enum_value(MissingPolicy, raw.get("missing", "allow"), f"{where}.missing", problems)
    allowed = raw.get("allowed", [])
    if not isinstance(allowed, list):
        problems.append(f"{where}.allowed: must be a list")
    bounds = {k: raw.get(k) for k in ("min", "max")}
    for k, v in bounds.items():
        if v is not None and (not isinstance(v, int | float) or isinstance(v, bool)):
            problems.append(f"{where}.{k}: {v!r} is not a number")
    if len(problems) > start or ctype is None or missing is None or not isinstance(allowed, list):
        return None
    try:
        return Column(
            name=raw["name"],
            type=ctype,
            unit=normalise_unit(str(raw.get("unit", ""))) if raw.get("unit") else "",
            allowed=tuple(str(a) for a in allowed),
            minimum=None if bounds["min"] is None else float(bounds["min"]),
            maximum=None if bounds["max"] is None else float(bounds["max"]),
            missing=missing,
            description=str(raw.get("description", "")),
        )
    except ValidationError as exc:
        problems.extend(f"{where}: {p}" for p in exc.problems)
        return None


# --- mapping a source onto the schema --------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnMapping:
    """Where a schema column comes from: a source column, its unit, and its code translation."""

    target: str
    source: str
    unit: str = ""
    values: Mapping[str, str] = field(default_factory=dict)
    analyte: str = ""


def harmonise(frame: pd.DataFrame, schema: Schema, mappings: tuple[ColumnMapping, ...], *, where: str) -> pd.DataFrame:
    """Rename, recode and convert ``frame``'s columns onto ``schema`` (unmapped columns map by name).

    Raises
    ------
    ValidationError
        A mapped source column is missing or a unit cannot be converted; all listed at once.
    """
    by_target = {m.target: m for m in mappings}
    problems = [f"mapping targets unknown column {t!r}" for t in by_target if t not in schema.names]
    out: dict[str, pd.Series[Any]] = {}
    for col in schema.columns:
        m = by_target.get(col.name, ColumnMapping(target=col.name, source=col.name))
        if m.source not in frame.columns:
            problems.append(f"column {m.source!r} (for {col.name!r}) not found; columns: {list(frame.columns)}")
            continue
        series = frame[m.source]
        if m.values:
            recoded = series.where(_present_mask(series)).astype(str).map(dict(m.values))
            series = recoded.where(recoded.notna(), series)
        if m.unit and col.unit and normalise_unit(m.unit) != col.unit:
            factor = conversion(m.unit, col.unit, analyte=m.analyte or col.name)
            if factor is None:
                problems.append(f"column {m.source!r}: cannot convert {m.unit!r} to {col.unit!r} for {col.name!r}")
                continue
            numeric = pd.to_numeric(series, errors="coerce")
            bad = _present_mask(series) & numeric.isna()
            if bad.any():  # converting must not turn a malformed cell into a silent missing value
                rows = ", ".join(str(i) for i in list(series.index[bad])[:5])
                problems.append(
                    f"column {m.source!r}: {int(bad.sum())} value(s) are not numbers and cannot be converted "
                    f"from {m.unit!r} (rows {rows}{', ...' if int(bad.sum()) > 5 else ''}), "
                    f"e.g. {series[bad].iloc[0]!r}"
                )
                continue
            series = numeric.astype("float64") * factor[0] + factor[1]
        out[col.name] = series
    if problems:
        raise ValidationError(problems, where=where)
    return pd.DataFrame(out, index=frame.index)


# --- validation ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Conformed:
    """A frame that passed :func:`conform`, and how many rows each column's policy dropped."""

    frame: pd.DataFrame
    dropped: Mapping[str, int]

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())


def _present_mask(series: pd.Series[Any]) -> pd.Series[bool]:
    """Not null and, for text, not blank: vectorised (a per-cell Python call costs µs per row)."""
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        # NaN and null both mean missing (Arrow-backed floats keep them apart)
        return pd.Series(~np.isnan(series.to_numpy(dtype=np.float64, na_value=np.nan)), index=series.index)
    present = series.notna()
    if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        text = series.astype("string[pyarrow]")  # strip runs in Arrow's C++ kernels, not per cell in Python
        present &= (text.str.strip() != "").fillna(False)
    return present.astype(bool)


_TRUE, _FALSE = {"true", "1", "yes", "y", "t"}, {"false", "0", "no", "n", "f"}


def _numbers(series: pd.Series[Any]) -> pd.Series[float]:
    """float64 values, NaN where absent or not a number. Arrow strings take one vectorised cast
    when every present cell parses (the usual case); otherwise pandas coerces cell by cell."""
    if isinstance(series.dtype, pd.ArrowDtype) and pa.types.is_string(series.dtype.pyarrow_dtype):
        arrow = pa.array(series.array)
        try:
            cast = pc.cast(pc.utf8_trim_whitespace(arrow), pa.float64())
            return pd.Series(cast.to_numpy(zero_copy_only=False), index=series.index, dtype="float64")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # some cell is not a number: fall through to the per-cell path, which marks it
    return pd.to_numeric(series, errors="coerce").astype("float64")


def _coerce(series: pd.Series[Any], col: Column) -> tuple[pd.Series[Any], pd.Series[bool]]:
    """The series in the column's type, and a mask of present values that failed to coerce."""
    present = _present_mask(series)
    if col.type in (ColumnType.FLOAT, ColumnType.INTEGER):
        values = _numbers(series.where(present))
        bad = present & ~np.isfinite(values)
        if col.type is ColumnType.INTEGER:
            bad |= present & np.isfinite(values) & (values != np.round(values))
        return values, bad
    if col.type is ColumnType.BOOLEAN:
        text = series.where(present).astype(str).str.strip().str.lower()
        flags = text.map(lambda t: True if t in _TRUE else False if t in _FALSE else None)
        return flags.where(present), present & flags.isna()
    if col.type is ColumnType.DATE:
        dates = pd.to_datetime(series.where(present), errors="coerce", format="ISO8601", utc=True)
        return dates, present & dates.isna()
    text = series.astype(str).str.strip().where(present, None)
    return text, present & False


def conform(
    frame: pd.DataFrame, schema: Schema, *, where: str, first_row: int = 2, row_word: str = "line"
) -> Conformed:
    """Check and type ``frame`` (already harmonised) against ``schema``.

    Row ``i`` of the frame is reported as ``<row_word> <first_row + i>`` (a CSV's data start on
    line 2). Every problem is collected; then one :class:`ValidationError` is raised.
    """
    missing_cols = [c for c in schema.names if c not in frame.columns]
    if missing_cols:
        raise ValidationError([f"missing columns {missing_cols}"], where=where)
    problems: list[str] = []
    typed: dict[str, pd.Series[Any]] = {}
    drop = np.zeros(len(frame), dtype=bool)
    dropped: dict[str, int] = {}
    for col in schema.columns:
        raw = frame[col.name].reset_index(drop=True)
        values, bad = _coerce(raw, col)
        absent = ~_present_mask(raw).to_numpy()
        bad_mask = _out_of_contract(col, values, absent) | bad.to_numpy(dtype=bool)
        at = f"column {col.name!r}"
        problems += _listed(bad_mask, raw, f"{at}: {{}} {_why(col)}", row_word, first_row)
        if col.missing is MissingPolicy.ERROR:
            problems += _listed(absent, raw, f"{at}: missing value not allowed", row_word, first_row)
        elif col.missing is MissingPolicy.DROP_ROW and absent.any():
            dropped[col.name] = int((absent & ~drop).sum())
            drop |= absent
        typed[col.name] = values
    if problems:
        raise ValidationError(problems, where=where)
    out = pd.DataFrame(typed).loc[~drop].reset_index(drop=True)
    return Conformed(frame=out, dropped=dropped)


def _out_of_contract(col: Column, values: pd.Series[Any], absent: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Present values outside the column's allowed set or [min, max]."""
    bad = np.zeros(len(values), dtype=bool)
    numeric = col.type in (ColumnType.FLOAT, ColumnType.INTEGER)
    if col.allowed:
        allowed = [float(a) for a in col.allowed] if numeric else list(col.allowed)
        bad |= ~absent & ~(values if numeric else values.astype(str)).isin(allowed).to_numpy()
    if numeric:
        v = values.to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            if col.minimum is not None:
                bad |= v < col.minimum
            if col.maximum is not None:
                bad |= v > col.maximum
    return bad


def _listed(mask: npt.NDArray[np.bool_], raw: pd.Series[Any], message: str, row_word: str, first_row: int) -> list[str]:
    """``<row_word> N, <message>`` per flagged cell (``{}`` in ``message``: the raw value), at most
    :data:`MAX_LISTED`, then a count of the rest."""
    rows = np.nonzero(mask)[0]
    head, sep, tail = message.partition("{}")
    out = [
        f"{row_word} {first_row + i}, {head}{raw.iat[i]!r}{tail}" if sep else f"{row_word} {first_row + i}, {message}"
        for i in rows[:MAX_LISTED].tolist()
    ]
    if len(rows) > MAX_LISTED:
        out.append(f"{head.rstrip(': ')}: ... and {len(rows) - MAX_LISTED} more like this")
    return out


def _why(col: Column) -> str:
    parts = [f"is not a valid {col.type.value}"]
    if col.allowed:
        parts.append(f"or not one of {list(col.allowed)}")
    if col.minimum is not None or col.maximum is not None:
        parts.append(f"or outside [{col.minimum}, {col.maximum}]")
    return " ".join(parts)


# --- coded clinical events -> one row per patient ----------------------------------------------

#: Code-system URIs (FHIR) and OMOP vocabulary ids, mapped to the short names feature maps use.
SYSTEMS: Mapping[str, str] = {
    "http://loinc.org": "loinc",
    "http://snomed.info/sct": "snomed",
    "http://hl7.org/fhir/sid/icd-10-cm": "icd10",
    "http://hl7.org/fhir/sid/icd-10": "icd10",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "rxnorm",
    "loinc": "loinc",
    "snomed": "snomed",
    "icd10cm": "icd10",
    "icd10": "icd10",
    "rxnorm": "rxnorm",
}

#: Columns of an events frame: one coded fact about one patient.
EVENT_COLUMNS = ("patient_id", "system", "code", "value", "unit", "time", "where")


def code_key(system: str, code: str) -> str:
    """``loinc|2345-7`` from a FHIR system URI or an OMOP vocabulary id and a code."""
    return f"{SYSTEMS.get(system.strip().lower(), SYSTEMS.get(system.strip(), system))}|{code.strip()}"


class FeatureKind(enum.Enum):
    MEASUREMENT = "measurement"  # latest value on or before the reference date, in the feature's unit
    CONDITION = "condition"  # 1.0 if any matching code was recorded by then, else 0.0
    MEDICATION = "medication"  # 1.0 if any matching drug was ordered or exposed by then, else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureSpec:
    """A named feature: the codes (``system|code``; a trailing ``*`` matches a code prefix, e.g.
    ``icd10|E11*``) that feed it and, for measurements, its unit."""

    name: str
    kind: FeatureKind
    codes: tuple[str, ...]
    unit: str = ""


def parse_features(table: Any, *, where: str) -> tuple[FeatureSpec, ...]:
    """``{glucose = {code = "loinc|2345-7", unit = "mmol/L"}, hf = {kind = "condition", code = [...]}}``."""
    if not isinstance(table, dict):
        raise ValidationError("features must be a table of name = {kind, code, unit}", where=where)
    problems: list[str] = []
    specs = []
    for name, raw in table.items():
        if not isinstance(raw, dict):
            problems.append(f"features.{name}: must be a table with code = ... (and kind, unit)")
            continue
        kind = _enum_value(FeatureKind, raw.get("kind", "measurement"), f"features.{name}.kind", problems)
        codes = raw.get("code", raw.get("codes"))
        codes = [codes] if isinstance(codes, str) else codes
        if not isinstance(codes, list) or not codes or not all(isinstance(c, str) and "|" in c for c in codes):
            problems.append(f"features.{name}.code: needs 'system|code' strings, got {codes!r}")
            continue
        unit = raw.get("unit", "")
        if kind is FeatureKind.MEASUREMENT and not unit:
            problems.append(f"features.{name}.unit: a measurement needs its unit")
        if kind is not None:
            keys = tuple(code_key(*c.split("|", 1)) for c in codes)
            specs.append(FeatureSpec(name=name, kind=kind, codes=keys, unit=normalise_unit(unit) if unit else ""))
    if problems:
        raise ValidationError(problems, where=where)
    return tuple(specs)


def pivot_events(
    patients: pd.DataFrame, events: pd.DataFrame, features: tuple[FeatureSpec, ...], *, as_of: pd.Timestamp
) -> pd.DataFrame:
    """One row per patient: ``patient_id``, ``age`` (years at ``as_of``), ``sex``, then each feature.

    ``patients`` has ``patient_id``, ``birth_date``, ``sex``; ``events`` has :data:`EVENT_COLUMNS`.
    Events after ``as_of`` are ignored. A measurement in a unit that cannot be converted to its
    feature's unit is an error naming where it came from, never a silent drop.
    """
    out = patients[["patient_id"]].copy()
    birth = pd.to_datetime(patients["birth_date"], errors="coerce", utc=True)
    out["age"] = ((as_of - birth).dt.days / 365.25).to_numpy()
    out["sex"] = patients["sex"].to_numpy()
    events = events.loc[~(events["time"] > as_of)]
    key = events["system"].map(lambda s: SYSTEMS.get(str(s).lower(), str(s))) + "|" + events["code"].astype(str)
    problems: list[str] = []
    for spec in features:
        prefixes = tuple(c[:-1] for c in spec.codes if c.endswith("*"))  # icd10|E11* : the whole E11 block
        rows = events.loc[key.isin(spec.codes) | (key.str.startswith(prefixes) if prefixes else False)]
        if spec.kind is FeatureKind.MEASUREMENT:
            values = _in_unit(rows, spec, problems)
            latest = values.sort_values("time").groupby("patient_id")["value"].last()
            out[spec.name] = out["patient_id"].map(latest).astype("float64")
        else:
            out[spec.name] = out["patient_id"].isin(set(rows["patient_id"])).astype("float64")
    if problems:
        raise ValidationError(problems, where="harmonising events")
    return out.reset_index(drop=True)


def _in_unit(rows: pd.DataFrame, spec: FeatureSpec, problems: list[str]) -> pd.DataFrame:
    parts = []
    rows = rows.loc[pd.to_numeric(rows["value"], errors="coerce").notna()]  # a coded row with no value measures nothing
    for unit, group in rows.groupby(rows["unit"].fillna("").astype(str), sort=False):
        factor = conversion(str(unit), spec.unit, analyte=spec.name) if unit else None
        if factor is None:
            first = group["where"].iloc[0] if "where" in group else "?"
            problems.append(f"{first}: {spec.name}: cannot convert {unit!r} to {spec.unit!r} ({len(group)} values)")
            continue
        parts.append(group.assign(value=pd.to_numeric(group["value"], errors="coerce") * factor[0] + factor[1]))
    return pd.concat(parts) if parts else rows.assign(value=pd.Series(dtype="float64"))
