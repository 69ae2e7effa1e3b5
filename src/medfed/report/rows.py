"""Rows per site: how many rows each site read for a job and how many its policies left out.

A node counts, for a declared dataset, the rows it read, those its consent filter removed (patients
who opted out of the job's purpose) and those a missing-value policy dropped as invalid, and sends
the counts — never an identity — with its metrics (``medfed.node.datasets.JobData.metrics``). This
module turns a job view's site metrics into one line per site for the terminal, the HTML report
and the dashboard, e.g. ``cleveland: 303 rows, 4 excluded by consent (4 patients), 0 invalid
(missing-value policy), 299 used``. A site whose counts are not in the view says why: a
differentially private job keeps them at the site (they are exact counts of its patients), and a
legacy CSV directory has no consent filter to count.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ROW_METRICS", "CountsStatus", "SiteRows", "site_rows", "site_rows_lines"]

#: The metric names a node sends its counts under.
ROW_METRICS = {
    "read": "policy_rows_read",
    "consent": "consent_rows_excluded",
    "patients": "consent_patients_excluded",
    "invalid": "policy_rows_dropped",
}


class CountsStatus(enum.StrEnum):
    REPORTED = "reported"
    WITHHELD = "withheld"  # a DP job: the site released no exact count
    NONE = "none"  # no counts: a legacy dataset (no consent filter) or the site failed


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteRows:
    """One site's counts for a job (``read`` is -1 when a node of an older release sent none)."""

    site: str
    status: CountsStatus
    read: int = 0
    consent: int = 0
    patients: int = 0
    invalid: int = 0

    @property
    def used(self) -> int:
        return self.read - self.consent - self.invalid

    def line(self) -> str:
        if self.status is CountsStatus.WITHHELD:
            return f"{self.site}: row counts kept at the site (differentially private job)"
        if self.status is CountsStatus.NONE:
            return f"{self.site}: no row counts (a CSV directory without a consent filter, or no result)"
        patients = f" ({self.patients} patient{'s' if self.patients != 1 else ''})" if self.consent else ""
        excluded = f"{self.consent} excluded by consent{patients}, {self.invalid} invalid (missing-value policy)"
        if self.read < 0:
            return f"{self.site}: {excluded}"
        return f"{self.site}: {self.read} rows, {excluded}, {self.used} used"


def _latest_metrics(view: Mapping[str, Any]) -> dict[str, Mapping[str, float]]:
    """Per site, the metrics of its last successful result in the job (rounds in order)."""
    latest: dict[str, Mapping[str, float]] = {}
    for s in sorted(view.get("site_metrics", []), key=lambda s: int(s["round"])):
        if not s.get("error"):
            latest[str(s["site"])] = s["metrics"]
    return latest


def site_rows(view: Mapping[str, Any]) -> list[SiteRows]:
    """The counts of every site that answered the job successfully, by site."""
    out = []
    for site, metrics in sorted(_latest_metrics(view).items()):
        if ROW_METRICS["consent"] in metrics:
            counts = {k: int(metrics.get(name, -1 if k == "read" else 0)) for k, name in ROW_METRICS.items()}
            out.append(SiteRows(site=site, status=CountsStatus.REPORTED, **counts))
        elif metrics.get("metrics_withheld"):
            out.append(SiteRows(site=site, status=CountsStatus.WITHHELD))
        else:
            out.append(SiteRows(site=site, status=CountsStatus.NONE))
    return out


def site_rows_lines(view: Mapping[str, Any]) -> list[str]:
    """One line per site; empty when no site reported counts (nothing was declared anywhere)."""
    rows = site_rows(view)
    if all(r.status is CountsStatus.NONE for r in rows):
        return []
    return [r.line() for r in rows]
