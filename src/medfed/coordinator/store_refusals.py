"""The coordinator store's refusal fields (a part of :class:`medfed.coordinator.store.Store`, whose
schema migration 4 adds ``refusal`` and ``refusal_spec`` to ``site_metrics``).

A site's result says why its governance refused a task (a :class:`~medfed.core.errors.Refusal`
value) and which spec it refused (SHA-256, hex); results from older nodes leave both empty. The
Approvals page reads them instead of parsing the error text.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager

from medfed.core.errors import Refusal
from medfed.core.records import SiteMetrics, TaskKind

__all__ = ["RefusalTables"]


class RefusalTables:
    """Methods of :class:`~medfed.coordinator.store.Store` over ``site_metrics``' refusal columns."""

    def _conn(self) -> sqlite3.Connection:  # provided by Store
        raise NotImplementedError

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:  # provided by Store
        raise NotImplementedError

    def record_refusals(self, job_id: str, round_: int, kind: TaskKind, sites: Sequence[SiteMetrics]) -> None:
        """Keep the refusals of a round that failed (no :meth:`complete_round` follows): the sites'
        reasons stay queryable (:meth:`site_refusals`) beside the failed job's error text."""
        rows = [
            (job_id, round_, kind.value, s.site, 0, "{}", s.error, s.refusal.value, s.refusal_spec)
            for s in sites
            if s.refusal is not None
        ]
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO site_metrics (job_id, round, kind, site, num_examples, metrics, error, "
                "refusal, refusal_spec) VALUES (?,?,?,?,?,?,?,?,?)",
                rows,
            )

    def site_refusals(self) -> list[tuple[str, int, str, Refusal, str, str]]:
        """``(job_id, round, site, refusal, spec_hash, error)`` of every site result that carried a
        refusal reason, oldest first (in the order the coordinator recorded them: job ids are random)."""
        rows = self._conn().execute(
            "SELECT job_id, round, site, refusal, refusal_spec, error FROM site_metrics WHERE refusal != '' "
            "ORDER BY rowid"
        )
        return [(str(r[0]), int(r[1]), str(r[2]), Refusal(r[3]), str(r[4]), str(r[5])) for r in rows]
