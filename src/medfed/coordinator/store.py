"""The coordinator's store: SQLite in WAL mode, one connection per thread.

Tables: ``jobs``, ``rounds`` (aggregated metrics per round), ``site_metrics`` (what each site
reported per round), ``anomalies`` (anomaly detection's report per site and fit round, for jobs
that ask for it), ``checkpoints`` (file, SHA-256, round), ``nodes`` (last contact),
``query_results`` (a query job's combined result, JSON), ``catalog`` (each site's catalog entries,
replaced at each registration) with ``catalog_reports`` (when each site last reported), and
``job_datasets`` (which dataset(s) of each site a job's selector matched), and ``budget_snapshots``
(each site's privacy-ledger figures per dataset, :mod:`medfed.coordinator.store_budgets`).
Every write is one transaction; a killed coordinator leaves the last committed state. The catalog
and dataset-selection tables' methods live in :mod:`medfed.coordinator.store_catalog`.

The schema carries a version (``PRAGMA user_version``): :data:`SCHEMA` is version 1 (what every
store had before versions were kept; its statements are idempotent), and each entry of
:data:`MIGRATIONS` moves an older store one version on, in one transaction, when it is opened.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medfed.aggregation.anomaly import AnomalyRecord
from medfed.coordinator.store_budgets import BudgetTables
from medfed.coordinator.store_catalog import CatalogTables
from medfed.coordinator.store_refusals import RefusalTables
from medfed.core.errors import StoreError
from medfed.core.records import JobState, RoundRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, name TEXT NOT NULL, owner TEXT NOT NULL, spec_toml TEXT NOT NULL,
    spec_hash TEXT NOT NULL, state TEXT NOT NULL, rounds INTEGER NOT NULL,
    completed_round INTEGER NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, kind TEXT NOT NULL, aggregated TEXT NOT NULL,
    duration_s REAL NOT NULL, finished REAL NOT NULL, PRIMARY KEY (job_id, round, kind)
);
CREATE TABLE IF NOT EXISTS site_metrics (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, kind TEXT NOT NULL, site TEXT NOT NULL,
    num_examples INTEGER NOT NULL, metrics TEXT NOT NULL, error TEXT NOT NULL,
    PRIMARY KEY (job_id, round, kind, site)
);
CREATE TABLE IF NOT EXISTS anomalies (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, site TEXT NOT NULL, norm REAL NOT NULL, cosine REAL,
    robust_z REAL NOT NULL, flags TEXT NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (job_id, round, site)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL,
    created REAL NOT NULL, PRIMARY KEY (job_id, round)
);
CREATE TABLE IF NOT EXISTS nodes (
    site TEXT PRIMARY KEY, version TEXT NOT NULL, datasets TEXT NOT NULL, last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS query_results (
    job_id TEXT PRIMARY KEY, result TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS synthesis_results (
    job_id TEXT PRIMARY KEY, result TEXT NOT NULL, created REAL NOT NULL
);
"""

#: (version, statements) in order: what opening an older store applies, each in one transaction.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        2,
        (
            "CREATE TABLE catalog (site TEXT NOT NULL, dataset TEXT NOT NULL, entry TEXT NOT NULL, "
            "reported_at REAL NOT NULL, PRIMARY KEY (site, dataset))",
            "CREATE TABLE catalog_reports (site TEXT PRIMARY KEY, reported_at REAL NOT NULL)",
            "CREATE TABLE job_datasets (job_id TEXT NOT NULL, site TEXT NOT NULL, datasets TEXT NOT NULL, "
            "updated REAL NOT NULL, PRIMARY KEY (job_id, site))",
        ),
    ),
    (
        3,
        (
            "CREATE TABLE budget_snapshots (site TEXT NOT NULL, dataset TEXT NOT NULL, epsilon_total REAL NOT NULL, "
            "delta_total REAL NOT NULL, epsilon_used REAL NOT NULL, delta_used REAL NOT NULL, "
            "epsilon_held REAL NOT NULL, delta_held REAL NOT NULL, reported_at REAL NOT NULL, "
            "PRIMARY KEY (site, dataset))",
        ),
    ),
    (
        4,
        (  # why a site refused a task (a Refusal value, '' otherwise or from an old node) and the spec it refused
            "ALTER TABLE site_metrics ADD COLUMN refusal TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE site_metrics ADD COLUMN refusal_spec TEXT NOT NULL DEFAULT ''",
        ),
    ),
)
#: The version a store has once opened by this release.
SCHEMA_VERSION = MIGRATIONS[-1][0]


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRow:
    job_id: str
    name: str
    owner: str
    spec_toml: str
    spec_hash: str
    state: JobState
    rounds: int
    completed_round: int
    error: str
    created: float
    updated: float


class Store(CatalogTables, BudgetTables, RefusalTables):
    """Thread-safe access to the coordinator database at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        try:
            self._conn().executescript(SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from None

    def _migrate(self) -> None:
        """Bring an older store to :data:`SCHEMA_VERSION`; refuse one written by a newer release."""
        version = self.schema_version or 1
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} has schema version {version}; this release knows up to {SCHEMA_VERSION}"
            )
        for target, statements in MIGRATIONS:
            if target <= version:
                continue
            with self._tx() as db:
                if int(db.execute("PRAGMA user_version").fetchone()[0]) >= target:  # another process got here first
                    continue
                for statement in statements:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {int(target)}")
            version = target

    @property
    def schema_version(self) -> int:
        """The store's schema version (0: created before versions were kept)."""
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # --- jobs ------------------------------------------------------------------------------

    def add_job(self, *, job_id: str, name: str, owner: str, spec_toml: str, spec_hash: str, rounds: int) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs VALUES (?,?,?,?,?,?,?,0,'',?,?)",
                (job_id, name, owner, spec_toml, spec_hash, JobState.PENDING.value, rounds, now, now),
            )

    def set_job_state(self, job_id: str, state: JobState, *, error: str = "") -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state=?, error=?, updated=? WHERE job_id=?",
                (state.value, error, time.time(), job_id),
            )

    def job(self, job_id: str) -> JobRow | None:
        row = self._conn().execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return _job_row(row) if row else None

    def jobs(self, *, state: JobState | None = None) -> list[JobRow]:
        if state is None:
            rows = self._conn().execute("SELECT * FROM jobs ORDER BY created").fetchall()
        else:
            rows = self._conn().execute("SELECT * FROM jobs WHERE state=? ORDER BY created", (state.value,)).fetchall()
        return [_job_row(r) for r in rows]

    # --- rounds ----------------------------------------------------------------------------

    def complete_round(
        self,
        record: RoundRecord,
        *,
        checkpoint: tuple[str, str] | None,
        anomalies: Sequence[AnomalyRecord] = (),
    ) -> None:
        """Record a finished round, its site metrics, its anomaly reports and (for fit rounds) its
        checkpoint, atomically."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO rounds VALUES (?,?,?,?,?,?)",
                (record.job_id, record.round, record.kind.value, json.dumps(record.aggregated), record.duration_s, now),
            )
            for s in record.sites:
                db.execute(
                    "INSERT OR REPLACE INTO site_metrics (job_id, round, kind, site, num_examples, metrics, error, "
                    "refusal, refusal_spec) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        record.job_id,
                        record.round,
                        record.kind.value,
                        s.site,
                        s.num_examples,
                        json.dumps(s.metrics),
                        s.error,
                        "" if s.refusal is None else s.refusal.value,
                        s.refusal_spec,
                    ),
                )
            for a in anomalies:
                db.execute(
                    "INSERT OR REPLACE INTO anomalies VALUES (?,?,?,?,?,?,?,?)",
                    (record.job_id, a.round, a.site, a.norm, a.cosine, a.robust_z, json.dumps(sorted(a.flags)),
                     a.reason),
                )  # fmt: skip
            if checkpoint is not None:
                path, digest = checkpoint
                db.execute(
                    "INSERT OR REPLACE INTO checkpoints VALUES (?,?,?,?,?)",
                    (record.job_id, record.round, path, digest, now),
                )
                db.execute(
                    "UPDATE jobs SET completed_round=?, updated=? WHERE job_id=?",
                    (record.round, now, record.job_id),
                )

    def add_checkpoint(self, job_id: str, rnd: int, path: str, digest: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?,?,?,?,?)", (job_id, rnd, path, digest, time.time())
            )

    def latest_checkpoint(self, job_id: str) -> tuple[int, str, str] | None:
        row = (
            self._conn()
            .execute(
                "SELECT round, path, sha256 FROM checkpoints WHERE job_id=? ORDER BY round DESC LIMIT 1", (job_id,)
            )
            .fetchone()
        )
        return (int(row[0]), str(row[1]), str(row[2])) if row else None

    def round_rows(self, job_id: str) -> list[dict[str, Any]]:
        rows = (
            self._conn()
            .execute(
                "SELECT round, kind, aggregated, duration_s FROM rounds WHERE job_id=? ORDER BY round, kind", (job_id,)
            )
            .fetchall()
        )
        return [{"round": r[0], "kind": r[1], "aggregated": json.loads(r[2]), "duration_s": r[3]} for r in rows]

    def site_rows(self, job_id: str) -> list[dict[str, Any]]:
        rows = (
            self._conn()
            .execute(
                "SELECT round, kind, site, num_examples, metrics, error FROM site_metrics WHERE job_id=? "
                "ORDER BY round, kind, site",
                (job_id,),
            )
            .fetchall()
        )
        return [
            {
                "round": r[0],
                "kind": r[1],
                "site": r[2],
                "num_examples": r[3],
                "metrics": json.loads(r[4]),
                "error": r[5],
            }
            for r in rows
        ]

    # --- across jobs (the dashboard's Privacy and Approvals pages): filtered in SQL, not per job ---

    def latest_site_reports(self, metric: str) -> list[dict[str, Any]]:
        """Each site's latest successful result per job that reports ``metric`` (the highest round;
        both kinds when both report it), by job, round and site."""
        rows = self._conn().execute(
            "WITH r AS MATERIALIZED (SELECT job_id, round, kind, site, metrics FROM site_metrics"
            " WHERE error='' AND instr(metrics, ?) > 0)"
            " SELECT r.job_id, r.round, r.kind, r.site, r.metrics FROM r JOIN"
            " (SELECT job_id, site, MAX(round) AS last FROM r GROUP BY job_id, site) m"
            " ON r.job_id = m.job_id AND r.site = m.site AND r.round = m.last"
            " ORDER BY r.job_id, r.round, r.kind, r.site",
            (json.dumps(metric),),
        ).fetchall()  # fmt: skip
        out = []
        for job_id, rnd, kind, site, text in rows:
            metrics = json.loads(text)
            if metric in metrics:  # instr() matched the key's JSON spelling; a value could hold it too
                out.append({"job_id": job_id, "round": rnd, "kind": kind, "site": site, "metrics": metrics})
        return out

    def site_errors(self, containing: str) -> list[tuple[str, int, str, str]]:
        """``(job_id, round, site, error)`` of every site result whose error contains ``containing``."""
        rows = (
            self._conn()
            .execute(
                "SELECT job_id, round, site, error FROM site_metrics WHERE instr(error, ?) > 0 ORDER BY job_id, round",
                (containing,),
            )
            .fetchall()
        )
        return [(str(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in rows]

    def sites_succeeded(self) -> dict[str, set[str]]:
        """job id -> the sites that returned at least one successful result for it."""
        out: dict[str, set[str]] = {}
        for job_id, site in self._conn().execute("SELECT DISTINCT job_id, site FROM site_metrics WHERE error=''"):
            out.setdefault(str(job_id), set()).add(str(site))
        return out

    def anomaly_rows(self, job_id: str) -> list[dict[str, Any]]:
        """Anomaly reports of a job, by round and site, in :meth:`AnomalyRecord.as_dict` form."""
        rows = (
            self._conn()
            .execute(
                "SELECT round, site, norm, cosine, robust_z, flags, reason FROM anomalies WHERE job_id=? "
                "ORDER BY round, site",
                (job_id,),
            )
            .fetchall()
        )
        keys = ("round", "site", "norm", "cosine", "robust_z", "flags", "reason")
        return [dict(zip(keys, r, strict=True)) | {"flags": json.loads(r[5])} for r in rows]

    def set_query_result(self, job_id: str, result_json: str) -> None:
        """Keep a query job's result (JSON from :mod:`medfed.coordinator.queries`)."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO query_results VALUES (?,?,?)", (job_id, result_json, time.time()))

    def query_result(self, job_id: str) -> str | None:
        row = self._conn().execute("SELECT result FROM query_results WHERE job_id=?", (job_id,)).fetchone()
        return str(row[0]) if row else None

    def set_synthesis_result(self, job_id: str, result_json: str) -> None:
        """Keep a synthesis job's combined table and per-site costs (JSON from :mod:`medfed.coordinator.synthesis`)."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO synthesis_results VALUES (?,?,?)", (job_id, result_json, time.time()))

    def synthesis_result(self, job_id: str) -> str | None:
        row = self._conn().execute("SELECT result FROM synthesis_results WHERE job_id=?", (job_id,)).fetchone()
        return str(row[0]) if row else None

    # --- nodes -----------------------------------------------------------------------------

    def touch_node(self, site: str, *, version: str, datasets: tuple[str, ...]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO nodes VALUES (?,?,?,?)",
                (site, version, json.dumps(list(datasets)), time.time()),
            )

    def nodes(self) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT site, version, datasets, last_seen FROM nodes ORDER BY site").fetchall()
        return [{"site": r[0], "version": r[1], "datasets": json.loads(r[2]), "last_seen": r[3]} for r in rows]


def _job_row(row: tuple[Any, ...]) -> JobRow:
    return JobRow(
        job_id=row[0],
        name=row[1],
        owner=row[2],
        spec_toml=row[3],
        spec_hash=row[4],
        state=JobState(row[5]),
        rounds=row[6],
        completed_round=row[7],
        error=row[8],
        created=row[9],
        updated=row[10],
    )
