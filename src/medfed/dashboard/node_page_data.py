"""What the node's local page shows, as values: declared datasets, consent counts and the
privacy-budget ledger. Read from the site's own files; nothing here is sent anywhere.

These figures are exact (row counts, consent counts): the page is for the site's own admins and
auditors, on 127.0.0.1 by default. The coordinator only ever sees the coarse catalog.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from medfed.core.errors import DataError, MedfedError
from medfed.data.consent import ConsentRegistry, ConsentStatus
from medfed.node.datasets import local_profile, read_registry
from medfed.node.fingerprints import FingerprintCache
from medfed.node.ledger import BudgetStatus, PrivacyLedger
from medfed.node.runtime import DatasetConfig

__all__ = ["BudgetView", "ConsentCounts", "DatasetView", "budget_views", "consent_counts", "dataset_views"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetView:
    name: str
    format: str
    path: str
    rows: int | None
    fingerprint: str
    valid: bool
    state: str  # "valid", or why not


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsentCounts:
    """Patients by their current decisions (the newest per purpose counts)."""

    patients: int
    opted_in: int  # every current decision is a permit
    withdrawn: int  # at least one current decision is a deny (opted out or withdrew)
    decisions: int

    @classmethod
    def of(cls, registry: ConsentRegistry) -> ConsentCounts:
        latest: dict[tuple[str, str], tuple[dt.date, int, ConsentStatus]] = {}
        for i, r in enumerate(registry.records):
            key = (r.patient_id, r.purpose)
            if key not in latest or (r.date, i) >= latest[key][:2]:
                latest[key] = (r.date, i, r.status)
        denied = {p for (p, _), v in latest.items() if v[2] is ConsentStatus.DENY}
        patients = {p for p, _ in latest}
        return cls(patients=len(patients), opted_in=len(patients - denied), withdrawn=len(denied),
                   decisions=len(registry.records))  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetView:
    dataset: str
    status: BudgetStatus | None  # None: no budget set (DP jobs refused)
    events: tuple[Mapping[str, object], ...]  # the ledger's own trail, newest first

    @property
    def used_fraction(self) -> float | None:
        if self.status is None or self.status.epsilon_total <= 0:
            return None
        return min(1.0, self.status.epsilon_used / self.status.epsilon_total)


def _legacy_rows(path: Path) -> int | None:
    files = [path / "train.csv", path / "test.csv"]
    if not all(f.is_file() for f in files):
        return None
    with files[0].open("rb") as a, files[1].open("rb") as b:
        return max(sum(1 for _ in a) - 1, 0) + max(sum(1 for _ in b) - 1, 0)


def dataset_views(
    datasets: Mapping[str, DatasetConfig],
    state_dir: Path | None,
    *,
    on: dt.date,
    fingerprints: FingerprintCache | None = None,
) -> list[DatasetView]:
    """Each declared dataset: format, exact rows (after opt-outs of every purpose), fingerprint and
    whether it passes validation now (a failing one is not offered to the federation).
    ``fingerprints``: the page's cache, so a dataset is hashed again only when its files changed."""
    cache = fingerprints or FingerprintCache()
    registry = read_registry(state_dir)
    views = []
    for name in sorted(datasets):
        ds = datasets[name]
        if ds.decl is None:
            rows = _legacy_rows(ds.path)
            state = "valid (train.csv and test.csv; no declared schema)" if rows is not None else "missing CSV files"
            views.append(DatasetView(name=name, format="csv (legacy directory)", path=str(ds.path), rows=rows,
                                     fingerprint=dataset_fingerprint(ds, cache), valid=rows is not None,
                                     state=state))  # fmt: skip
            continue
        decl = ds.decl
        try:
            rows, state, valid = local_profile(decl, registry, on=on).rows, "valid", True
        except (MedfedError, OSError) as exc:
            rows, state, valid = None, f"invalid: {exc}", False
        where = "database (dsn)" if decl.dsn else str(decl.path)
        digest = dataset_fingerprint(ds, cache)
        views.append(DatasetView(name=name, format=decl.format.value, path=where, rows=rows, fingerprint=digest,
                                 valid=valid, state=state))  # fmt: skip
    return views


def dataset_fingerprint(ds: DatasetConfig, fingerprints: FingerprintCache | None = None) -> str:
    """The content fingerprint an approval pins, as the node computes it before a task
    (:mod:`medfed.node.fingerprints`); '' for a database, or files missing or unreadable."""
    try:
        return (fingerprints or FingerprintCache()).current(ds)
    except (DataError, OSError):
        return ""


def consent_counts(state_dir: Path | None) -> ConsentCounts:
    return ConsentCounts.of(read_registry(state_dir))


def budget_views(
    datasets: Mapping[str, DatasetConfig], ledger_path: Path | None, *, events: int = 20
) -> list[BudgetView]:
    """Each dataset's budget (total, used with open reservations, left) and its latest ledger events."""
    if ledger_path is None or not ledger_path.is_file():
        return [BudgetView(dataset=n, status=None, events=()) for n in sorted(datasets)]
    ledger = PrivacyLedger(ledger_path)
    try:
        return [
            BudgetView(dataset=n, status=ledger.status(n), events=tuple(reversed(ledger.events(n)[-events:])))
            for n in sorted(datasets)
        ]
    finally:
        ledger.close()
