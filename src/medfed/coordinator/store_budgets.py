"""The coordinator store's privacy-budget snapshots (a part of
:class:`medfed.coordinator.store.Store`, which creates the table in its schema migration 3).

``budget_snapshots`` holds, per site and dataset, the latest figures the site's ledger reported
when the node asked which of its jobs ended (total, used = committed, held = open reservations)
and when they came. The site stays the authority: these are its numbers, repeated.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from medfed.core.errors import ValidationError
from medfed.transport.api import BudgetFigures

__all__ = ["BudgetSnapshot", "BudgetTables"]

_FIELDS = ("epsilon_total", "delta_total", "epsilon_used", "delta_used", "epsilon_held", "delta_held")


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetSnapshot:
    """A site's ledger figures for one dataset and when the coordinator received them."""

    site: str
    figures: BudgetFigures
    reported_at: float


def check_figures(site: str, budgets: Sequence[BudgetFigures]) -> None:
    """Refuse a report with a blank or repeated dataset or a figure that is not a finite number >= 0."""
    problems: list[str] = []
    seen: set[str] = set()
    for i, b in enumerate(budgets):
        if not b.dataset.strip():
            problems.append(f"budget #{i} names no dataset")
        elif b.dataset in seen:
            problems.append(f"dataset {b.dataset!r} is reported twice")
        seen.add(b.dataset)
        bad = [f for f in _FIELDS if not (math.isfinite(getattr(b, f)) and getattr(b, f) >= 0)]
        if bad:
            problems.append(f"budget #{i} ({b.dataset!r}): {', '.join(bad)} must be finite numbers >= 0")
    if problems:
        raise ValidationError(problems, where=f"budget report from site {site!r}")


class BudgetTables:
    """Methods of :class:`~medfed.coordinator.store.Store` over ``budget_snapshots``."""

    def _conn(self) -> sqlite3.Connection:  # provided by Store
        raise NotImplementedError

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:  # provided by Store
        raise NotImplementedError

    def record_budgets(self, site: str, budgets: Sequence[BudgetFigures], *, at: float | None = None) -> None:
        """Keep ``site``'s latest figures per dataset (datasets it did not name keep theirs)."""
        check_figures(site, budgets)
        now = time.time() if at is None else at
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO budget_snapshots VALUES (?,?,?,?,?,?,?,?,?)",
                [(site, b.dataset, *(float(getattr(b, f)) for f in _FIELDS), now) for b in budgets],
            )

    def budget_snapshots(self) -> list[BudgetSnapshot]:
        """Every site's latest figures, by site and dataset."""
        rows = (
            self._conn()
            .execute(
                "SELECT site, dataset, epsilon_total, delta_total, epsilon_used, delta_used, epsilon_held, delta_held,"
                " reported_at FROM budget_snapshots ORDER BY site, dataset"
            )
            .fetchall()
        )
        return [
            BudgetSnapshot(
                site=str(r[0]),
                figures=BudgetFigures(dataset=str(r[1]), **{f: float(v) for f, v in zip(_FIELDS, r[2:8], strict=True)}),
                reported_at=float(r[8]),
            )
            for r in rows
        ]
