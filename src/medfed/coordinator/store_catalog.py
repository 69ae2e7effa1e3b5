"""The coordinator store's catalog and dataset-selection tables (a part of
:class:`medfed.coordinator.store.Store`, which creates them in its schema migration 2).

``catalog`` holds each site's last reported catalog entries (JSON, replaced at each registration),
``catalog_reports`` when each site last reported, ``job_datasets`` which datasets of each online
site a job's selector matched.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from medfed.core.errors import ValidationError
from medfed.data.catalog import CatalogEntry

__all__ = ["CatalogTables", "StoredEntry"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredEntry:
    """A catalog entry as the store keeps it: the site's last report and when it came."""

    entry: CatalogEntry
    reported_at: float


class CatalogTables:
    """Methods of :class:`~medfed.coordinator.store.Store` over the catalog and selection tables."""

    def _conn(self) -> sqlite3.Connection:  # provided by Store
        raise NotImplementedError

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:  # provided by Store
        raise NotImplementedError

    # --- catalog ---------------------------------------------------------------------------

    def replace_catalog(self, site: str, entries: Sequence[CatalogEntry], *, at: float | None = None) -> None:
        """``site``'s report at registration: its entries replace the ones it sent before."""
        foreign = [e.dataset for e in entries if e.site != site]
        if foreign:
            raise ValidationError(f"entries {foreign} name another site", where=f"catalog of site {site!r}")
        now = time.time() if at is None else at
        with self._tx() as db:
            db.execute("DELETE FROM catalog WHERE site=?", (site,))
            db.executemany(
                "INSERT INTO catalog VALUES (?,?,?,?)",
                [(site, e.dataset, json.dumps(e.to_dict(), sort_keys=True), now) for e in entries],
            )
            db.execute("INSERT OR REPLACE INTO catalog_reports VALUES (?,?)", (site, now))

    def catalog(self) -> list[StoredEntry]:
        """Every site's last reported entries, by site and dataset."""
        rows = self._conn().execute("SELECT entry, reported_at FROM catalog ORDER BY site, dataset").fetchall()
        return [StoredEntry(entry=CatalogEntry.from_dict(json.loads(r[0])), reported_at=float(r[1])) for r in rows]

    def catalog_reports(self) -> dict[str, float]:
        """When each site last reported its catalog (also a site whose report was empty)."""
        rows = self._conn().execute("SELECT site, reported_at FROM catalog_reports ORDER BY site").fetchall()
        return {str(r[0]): float(r[1]) for r in rows}

    # --- dataset selection -----------------------------------------------------------------

    def set_dataset_matches(self, job_id: str, matches: Mapping[str, Sequence[str]]) -> None:
        """Which datasets of each site a job's selector matched (an empty list: none; such a
        site takes no part). Sites not named keep what was recorded before."""
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO job_datasets VALUES (?,?,?,?)",
                [(job_id, site, json.dumps(sorted(names)), now) for site, names in matches.items()],
            )

    def dataset_matches(self, job_id: str) -> dict[str, list[str]]:
        """Per site, the datasets a job's selector matched there (empty: the site took no part)."""
        rows = (
            self._conn()
            .execute("SELECT site, datasets FROM job_datasets WHERE job_id=? ORDER BY site", (job_id,))
            .fetchall()
        )
        return {str(r[0]): list(json.loads(r[1])) for r in rows}
