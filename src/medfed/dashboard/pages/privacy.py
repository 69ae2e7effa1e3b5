"""Privacy page: each site's differential-privacy budget per dataset (total, used, left) and what
each job spent there.

The coordinator holds no ledger: each site keeps its own (``medfed.node.ledger``) and is the
authority on it. What the coordinator knows, and this page shows with its source and time:

* the **total** (ε, δ) a site set for a dataset: in the catalog entry it sends when it registers
  (declared datasets), and in every DP result (``privacy_epsilon_total``);
* the ε **left**, as the site reported it with its latest DP result (``privacy_epsilon_left``);
* each job's **spend** at each site: the job's cumulative ``privacy_epsilon_spent`` /
  ``privacy_delta_spent`` in that site's latest result;
* the site's **ledger figures** (total, used = committed, held = open reservations), which the node
  sends each time it asks which of its jobs ended (at registration, while it holds reservations,
  and right after it released the holds of ended jobs). When that snapshot is newer than the last
  DP result, total and left come from it, and used and held are shown apart.

A gauge is a number and a bar (never colour alone).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from medfed.coordinator.service import Coordinator
from medfed.coordinator.store_budgets import BudgetSnapshot
from medfed.core.config import parse_job_spec
from medfed.core.errors import ConfigError
from medfed.core.selectors import TAG_PREFIX
from medfed.dashboard.pages.scope import site_scope, when
from medfed.dashboard.web import ctx, render
from medfed.security.authz import Action

__all__ = ["NAV", "NAV_ACTIONS", "BudgetGauge", "SiteSpend", "budget_gauges", "routes", "site_spends"]

NAV: tuple[str, str] | None = ("/privacy", "Privacy")
NAV_ACTIONS = frozenset({Action.BUDGET_READ})


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteSpend:
    """What one job spent at one site on one dataset, as of that site's latest result."""

    site: str
    dataset: str
    job_id: str
    job_name: str
    job_state: str
    round: int
    epsilon_spent: float
    delta_spent: float
    epsilon_left: float | None  # the site's budget left, as it reported with this result
    epsilon_total: float | None
    reported_at: float  # the job's last update at the coordinator (when this result was stored)


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetGauge:
    """One site's budget for one dataset, with where each figure came from."""

    site: str
    dataset: str
    epsilon_total: float | None
    delta_total: float | None
    total_source: str
    total_at: float | None
    epsilon_left: float | None
    left_source: str
    left_at: float | None
    jobs: tuple[SiteSpend, ...]
    epsilon_committed: float | None = None  # from the site's ledger snapshot, when it is the newest source
    epsilon_held: float | None = None

    @property
    def epsilon_unexplained(self) -> float:
        """Used beyond what is accounted for: by the ledger's committed and held figures when the
        snapshot is the newest source, else by what the jobs seen here spent."""
        used = self.epsilon_used
        if used is None:
            return 0.0
        known = self.epsilon_committed if self.epsilon_committed is not None else self.epsilon_spent_by_jobs
        return max(0.0, used - known - (self.epsilon_held or 0.0))

    @property
    def epsilon_unreported(self) -> float:
        """Committed at the site (its ledger) beyond what the job results kept here show: rounds
        whose results the coordinator did not keep (e.g. a round that failed at another site)."""
        if self.epsilon_committed is None:
            return 0.0
        return max(0.0, self.epsilon_committed - self.epsilon_spent_by_jobs)

    @property
    def epsilon_spent_by_jobs(self) -> float:
        return sum(j.epsilon_spent for j in self.jobs)

    @property
    def epsilon_used(self) -> float | None:
        """Used = total - left when the site reported both; else what jobs known here spent."""
        if self.epsilon_total is not None and self.epsilon_left is not None:
            return max(0.0, self.epsilon_total - self.epsilon_left)
        return self.epsilon_spent_by_jobs if self.jobs else None

    @property
    def used_fraction(self) -> float | None:
        used = self.epsilon_used
        if self.epsilon_total is None or used is None or self.epsilon_total <= 0:
            return None
        return min(1.0, used / self.epsilon_total)


def _dataset_of(spec_toml: str, job_id: str) -> str:
    try:
        return parse_job_spec(spec_toml, source_name=f"job {job_id}").dataset
    except ConfigError:
        return ""


def _number(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def site_spends(coordinator: Coordinator) -> list[SiteSpend]:
    """Every (job, site) whose results report a privacy spend, in job order."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for s in coordinator.store.latest_site_reports("privacy_epsilon_spent"):
        if _number(s["metrics"], "privacy_epsilon_spent") is not None:
            latest[(s["job_id"], s["site"])] = s  # rows come ordered by round: the last one wins
    jobs = {row.job_id: row for row in coordinator.store.jobs()}
    datasets: dict[str, str] = {}
    matches: dict[str, dict[str, list[str]]] = {}
    spends = []
    for (job_id, site), s in sorted(latest.items(), key=lambda kv: (jobs[kv[0][0]].created, kv[0][1])):
        row, m = jobs[job_id], s["metrics"]
        if job_id not in datasets:
            datasets[job_id] = _dataset_of(row.spec_toml, job_id)
            tagged = datasets[job_id].startswith(TAG_PREFIX)
            matches[job_id] = coordinator.store.dataset_matches(job_id) if tagged else {}
        # a tag-selected job spent the budget of the site's own dataset its selector matched there
        found = matches[job_id].get(site, [])
        dataset = found[0] if len(found) == 1 else datasets[job_id]
        spends.append(
            SiteSpend(
                site=site, dataset=dataset, job_id=job_id, job_name=row.name, job_state=row.state.value,
                round=int(s["round"]), epsilon_spent=_number(m, "privacy_epsilon_spent") or 0.0,
                delta_spent=_number(m, "privacy_delta_spent") or 0.0,
                epsilon_left=_number(m, "privacy_epsilon_left"), epsilon_total=_number(m, "privacy_epsilon_total"),
                reported_at=row.updated,
            )
        )  # fmt: skip
    return spends


def _catalog_budgets(coordinator: Coordinator) -> dict[tuple[str, str], tuple[float, float | None, float | None]]:
    """(site, dataset) -> (ε total, δ total, reported at) from the catalog entries the coordinator keeps."""
    return {
        (x.site, x.entry.dataset): (x.entry.epsilon_budget, x.entry.delta_budget, x.reported_at)
        for x in coordinator.catalog_entries()
        if x.entry.epsilon_budget is not None
    }


def budget_gauges(coordinator: Coordinator, *, sites: Iterable[str] | None = None) -> list[BudgetGauge]:
    """One gauge per (site, dataset) with a budget the coordinator heard of, restricted to ``sites``."""
    keep = None if sites is None else set(sites)
    spends = [s for s in site_spends(coordinator) if keep is None or s.site in keep]
    catalog = {k: v for k, v in _catalog_budgets(coordinator).items() if keep is None or k[0] in keep}
    snapshots = {
        (x.site, x.figures.dataset): x for x in coordinator.store.budget_snapshots() if keep is None or x.site in keep
    }
    keys = sorted(set(catalog) | set(snapshots) | {(s.site, s.dataset) for s in spends})
    by_key: dict[tuple[str, str], list[SiteSpend]] = {}
    for s in spends:
        by_key.setdefault((s.site, s.dataset), []).append(s)
    return [
        _gauge(
            site, dataset, catalog.get((site, dataset)), by_key.get((site, dataset), []), snapshots.get((site, dataset))
        )
        for site, dataset in keys
    ]


def _gauge(
    site: str,
    dataset: str,
    catalog: tuple[float, float | None, float | None] | None,
    jobs: Sequence[SiteSpend],
    snapshot: BudgetSnapshot | None = None,
) -> BudgetGauge:
    last = max(jobs, key=lambda j: j.reported_at, default=None)
    total, delta, total_source, total_at = None, None, "not reported (the site sent no budget)", None
    if last is not None and last.epsilon_total is not None:
        total, total_at = last.epsilon_total, last.reported_at
        total_source = f"reported with job {last.job_id}'s round {last.round} result"
    if catalog is not None and (total_at is None or (catalog[2] or 0.0) >= total_at):
        total, delta, total_at = catalog[0], catalog[1], catalog[2]
        total_source = "the site's catalog entry, sent when it registered"
    left, left_source, left_at = None, "no DP result from this site yet", None
    if last is not None and last.epsilon_left is not None:
        left, left_at = last.epsilon_left, last.reported_at
        left_source = f"reported with job {last.job_id}'s round {last.round} result"
    committed, held = None, None
    if snapshot is not None and (left_at is None or snapshot.reported_at >= left_at):
        f, source = snapshot.figures, "the site's ledger, reported when it asked which of its jobs ended"
        committed, held = f.epsilon_used, f.epsilon_held
        left, left_at, left_source = (
            max(0.0, f.epsilon_total - f.epsilon_used - f.epsilon_held),
            snapshot.reported_at,
            source,
        )
        if total_at is None or snapshot.reported_at >= total_at:
            total, delta, total_at, total_source = f.epsilon_total, f.delta_total, snapshot.reported_at, source
    return BudgetGauge(
        site=site, dataset=dataset, epsilon_total=total, delta_total=delta, total_source=total_source,
        total_at=total_at, epsilon_left=left, left_source=left_source, left_at=left_at, jobs=tuple(jobs),
        epsilon_committed=committed, epsilon_held=held,
    )  # fmt: skip


def privacy(request: Request) -> Response:
    site = request.query_params.get("site", "")
    scope = site_scope(request, Action.BUDGET_READ, site=site)
    gauges = budget_gauges(ctx(request).coordinator, sites=scope.sites)
    return render(request, "privacy.html", {"gauges": gauges, "scope": scope, "site_filter": site, "when": when})


def routes() -> list[Route]:
    return [Route("/privacy", privacy, methods=["GET"])]
