"""The privacy-budget ledger a node keeps per dataset, in its own SQLite file.

The site admin sets each dataset's total (ε, δ) in ``site.toml``. Every differentially private
job *reserves* what it will cost before it touches the data and *commits* what each task really
spent after it ran; a job whose cost would exceed what is left is refused at the node, whatever the
researcher asked for. The ledger outlives jobs and restarts.

Composition: within a job, ε is computed for the job's total number of DP-SGD steps at once
(PLD accountant, tight); across jobs, ε and δ add up (basic composition: conservative). A job's
usage is ``max(reserved, committed)`` while it is open and ``committed`` once it closed, so an
open reservation blocks what it may still need. Every change is also appended to ``events``,
the ledger's own audit trail (no patient data, only dataset, job, ε, δ and time).

Closing a job gives back what it reserved and did not commit, and records that amount in its
``close`` event; the ledger computes it, so no caller (nor a coordinator telling the node that a
job ended) can return more than ``reserved - committed`` or return it twice. Real spend stays.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from medfed.core.errors import BudgetExhausted, StoreError
from medfed.security.sqlite import open_wal

SCHEMA = """
CREATE TABLE IF NOT EXISTS budgets (
    dataset TEXT PRIMARY KEY, epsilon REAL NOT NULL, delta REAL NOT NULL, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    dataset TEXT NOT NULL, job_id TEXT NOT NULL, reserved_epsilon REAL NOT NULL, reserved_delta REAL NOT NULL,
    spent_epsilon REAL NOT NULL DEFAULT 0, spent_delta REAL NOT NULL DEFAULT 0, steps INTEGER NOT NULL DEFAULT 0,
    open INTEGER NOT NULL DEFAULT 1, created REAL NOT NULL, PRIMARY KEY (dataset, job_id)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, dataset TEXT NOT NULL, job_id TEXT NOT NULL,
    action TEXT NOT NULL, epsilon REAL NOT NULL, delta REAL NOT NULL, detail TEXT NOT NULL
);
"""
_SLACK = 1e-9  # float noise in sums must not refuse a job that exactly fits


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetStatus:
    """A dataset's budget: total, and used by all jobs (open reservations included)."""

    dataset: str
    epsilon_total: float
    delta_total: float
    epsilon_used: float
    delta_used: float

    @property
    def epsilon_left(self) -> float:
        return max(0.0, self.epsilon_total - self.epsilon_used)

    @property
    def delta_left(self) -> float:
        return max(0.0, self.delta_total - self.delta_used)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpend:
    """What one job has reserved and spent on one dataset, and how many DP steps it took."""

    epsilon_reserved: float
    delta_reserved: float
    epsilon_spent: float
    delta_spent: float
    steps: int
    open: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Release:
    """What closing one job's account gave back: its reservation beyond its committed spend."""

    dataset: str
    job_id: str
    epsilon: float
    delta: float


class PrivacyLedger:
    """Thread-safe ledger over a SQLite file (WAL)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = open_wal(path, SCHEMA, what="privacy ledger")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _event(self, dataset: str, job_id: str, action: str, eps: float, delta: float, detail: str = "") -> None:
        self._db.execute(
            "INSERT INTO events (at, dataset, job_id, action, epsilon, delta, detail) VALUES (?,?,?,?,?,?,?)",
            (time.time(), dataset, job_id, action, eps, delta, detail),
        )

    def set_budget(self, dataset: str, *, epsilon: float, delta: float) -> None:
        """Set a dataset's total budget (the site admin's decision, from ``site.toml``)."""
        if not epsilon > 0 or not 0 < delta < 1:
            raise BudgetExhausted(f"dataset {dataset!r}: a budget needs epsilon > 0 and 0 < delta < 1")
        with self._lock:
            row = self._db.execute("SELECT epsilon, delta FROM budgets WHERE dataset=?", (dataset,)).fetchone()
            if row is not None and (row[0], row[1]) == (epsilon, delta):
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR REPLACE INTO budgets VALUES (?,?,?,?)", (dataset, epsilon, delta, time.time()))
            self._event(dataset, "", "set-budget", epsilon, delta)
            self._db.execute("COMMIT")

    def status(self, dataset: str) -> BudgetStatus | None:
        """The dataset's budget and use, or ``None`` when the site set no budget for it."""
        with self._lock:
            return self._status(dataset)

    def _status(self, dataset: str) -> BudgetStatus | None:
        row = self._db.execute("SELECT epsilon, delta FROM budgets WHERE dataset=?", (dataset,)).fetchone()
        if row is None:
            return None
        used = self._db.execute(
            "SELECT COALESCE(SUM(CASE WHEN open THEN MAX(reserved_epsilon, spent_epsilon) ELSE spent_epsilon END), 0),"
            " COALESCE(SUM(CASE WHEN open THEN MAX(reserved_delta, spent_delta) ELSE spent_delta END), 0)"
            " FROM jobs WHERE dataset=?",
            (dataset,),
        ).fetchone()
        return BudgetStatus(
            dataset=dataset, epsilon_total=row[0], delta_total=row[1], epsilon_used=used[0], delta_used=used[1]
        )

    def job(self, dataset: str, job_id: str) -> JobSpend | None:
        with self._lock:
            row = self._db.execute(
                "SELECT reserved_epsilon, reserved_delta, spent_epsilon, spent_delta, steps, open FROM jobs"
                " WHERE dataset=? AND job_id=?",
                (dataset, job_id),
            ).fetchone()
        if row is None:
            return None
        return JobSpend(
            epsilon_reserved=row[0], delta_reserved=row[1], epsilon_spent=row[2], delta_spent=row[3],
            steps=row[4], open=bool(row[5]),
        )  # fmt: skip

    def reserve(self, dataset: str, job_id: str, *, epsilon: float, delta: float) -> None:
        """Hold (ε, δ) for ``job_id`` (growing an earlier hold), or raise :class:`BudgetExhausted`."""
        with self._lock:
            status = self._status(dataset)
            if status is None:
                raise BudgetExhausted(f"dataset {dataset!r} has no privacy budget set at this site")
            row = self._db.execute(
                "SELECT reserved_epsilon, reserved_delta, spent_epsilon, spent_delta, open FROM jobs"
                " WHERE dataset=? AND job_id=?",
                (dataset, job_id),
            ).fetchone()
            mine_eps = max(row[0], row[2]) if row else 0.0
            mine_delta = max(row[1], row[3]) if row else 0.0
            if row is not None and not row[4]:
                raise BudgetExhausted(f"job {job_id} already closed its privacy account on dataset {dataset!r}")
            eps = max(epsilon, mine_eps)
            dlt = max(delta, mine_delta)
            others_eps, others_delta = status.epsilon_used - mine_eps, status.delta_used - mine_delta
            if others_eps + eps > status.epsilon_total + _SLACK or others_delta + dlt > status.delta_total + _SLACK:
                raise BudgetExhausted(
                    f"dataset {dataset!r}: job {job_id} needs ε={eps:.4g}, δ={dlt:.3g} but only "
                    f"ε={max(0.0, status.epsilon_total - others_eps):.4g}, "
                    f"δ={max(0.0, status.delta_total - others_delta):.3g} are left of the site's budget "
                    f"(ε={status.epsilon_total:.4g}, δ={status.delta_total:.3g})"
                )
            if row is not None and (row[0], row[1]) == (eps, dlt):
                return  # already held: nothing changes, nothing to record
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO jobs (dataset, job_id, reserved_epsilon, reserved_delta, created) VALUES (?,?,?,?,?)"
                " ON CONFLICT(dataset, job_id) DO UPDATE SET reserved_epsilon=?, reserved_delta=?",
                (dataset, job_id, eps, dlt, time.time(), eps, dlt),
            )
            self._event(dataset, job_id, "reserve", eps, dlt)
            self._db.execute("COMMIT")

    def commit(self, dataset: str, job_id: str, *, epsilon: float, delta: float, steps: int) -> None:
        """Record that the job has now spent ``epsilon``/``delta`` in total over ``steps`` steps."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute(
                "UPDATE jobs SET spent_epsilon=MAX(spent_epsilon, ?), spent_delta=MAX(spent_delta, ?), steps=?"
                " WHERE dataset=? AND job_id=?",
                (epsilon, delta, steps, dataset, job_id),
            )
            if cur.rowcount != 1:
                self._db.execute("ROLLBACK")
                raise StoreError(f"job {job_id} has no reservation on dataset {dataset!r} to commit against")
            self._event(dataset, job_id, "commit", epsilon, delta, f"steps={steps}")
            self._db.execute("COMMIT")

    def close_job(self, dataset: str, job_id: str, *, reason: str = "final evaluation") -> Release | None:
        """Close the job's account: what it reserved beyond what it committed is given back.

        Returns what was released, or ``None`` when the job holds no open account on ``dataset``
        (never opened, or closed already: closing is idempotent). The ``close`` event records the
        released (ε, δ) and ``reason``.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT reserved_epsilon, reserved_delta, spent_epsilon, spent_delta FROM jobs"
                " WHERE dataset=? AND job_id=? AND open=1",
                (dataset, job_id),
            ).fetchone()
            if row is None:
                self._db.execute("COMMIT")
                return None
            self._db.execute("UPDATE jobs SET open=0 WHERE dataset=? AND job_id=? AND open=1", (dataset, job_id))
            eps, delta = max(0.0, row[0] - row[2]), max(0.0, row[1] - row[3])
            self._event(dataset, job_id, "close", eps, delta, f"released; {reason}")
            self._db.execute("COMMIT")
        return Release(dataset=dataset, job_id=job_id, epsilon=eps, delta=delta)

    def release_job(self, job_id: str, *, reason: str) -> list[Release]:
        """Close ``job_id``'s open accounts on every dataset (a job that ended without its final
        evaluation); what each gave back, empty when none was open."""
        with self._lock:
            rows = self._db.execute("SELECT dataset FROM jobs WHERE job_id=? AND open=1", (job_id,)).fetchall()
        out = [self.close_job(ds, job_id, reason=reason) for (ds,) in rows]
        return [r for r in out if r is not None]

    def figures(self) -> list[tuple[str, float, float, float, float, float, float]]:
        """Per dataset with a budget: (dataset, ε total, δ total, ε committed, δ committed, ε held,
        δ held), held being what open reservations hold beyond their committed spend."""
        with self._lock:
            rows = self._db.execute(
                "SELECT b.dataset, b.epsilon, b.delta,"
                " COALESCE(SUM(j.spent_epsilon), 0), COALESCE(SUM(j.spent_delta), 0),"
                " COALESCE(SUM(CASE WHEN j.open THEN MAX(0, j.reserved_epsilon - j.spent_epsilon) ELSE 0 END), 0),"
                " COALESCE(SUM(CASE WHEN j.open THEN MAX(0, j.reserved_delta - j.spent_delta) ELSE 0 END), 0)"
                " FROM budgets b LEFT JOIN jobs j ON j.dataset = b.dataset GROUP BY b.dataset ORDER BY b.dataset"
            ).fetchall()
        return [(str(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4]), float(r[5]), float(r[6])) for r in rows]

    def open_jobs(self, *, limit: int = 256) -> list[str]:
        """Ids of the jobs holding an open account on any dataset, oldest first (at most ``limit``)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id FROM jobs WHERE open=1 GROUP BY job_id ORDER BY MIN(created), job_id LIMIT ?",
                (limit,),
            ).fetchall()
        return [r[0] for r in rows]

    def events(self, dataset: str) -> list[dict[str, object]]:
        """The ledger's audit trail for ``dataset``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, at, job_id, action, epsilon, delta, detail FROM events WHERE dataset=? ORDER BY seq",
                (dataset,),
            ).fetchall()
        keys = ("seq", "at", "job_id", "action", "epsilon", "delta", "detail")
        return [dict(zip(keys, r, strict=True)) for r in rows]
