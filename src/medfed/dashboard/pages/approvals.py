"""Approvals page: the job specs sites refused as "not cleared", and where each site admin decides.

A site decides approvals itself (:mod:`medfed.security.approvals`, in its own ``approvals.db``) and
does not take the coordinator's word; so this page cannot approve anything. What the coordinator
does see are the refusals coming back from the sites: an error result whose message the site's
:meth:`ApprovalStore.check` wrote (``site 'x' has not cleared job 'j' (spec 0123abcd4567…): ...``),
either in a round's per-site results or in the error of a job that failed because of it. A site's
result carries the reason (``not-cleared``, ``dataset-changed``) and the refused spec's hash as
fields, which this page uses; it parses the message only where they are empty (an older node, or a
failed job's error text) and for the detail (pending, rejected, expired). This page shows each
refused spec with its diff to the last spec of the same job name that ran at that site, and
tells the site admin where to decide: the node's local page or ``medfed approvals``.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from medfed.coordinator.service import Coordinator
from medfed.coordinator.store import JobRow
from medfed.core.errors import Refusal as Reason
from medfed.dashboard.pages.scope import site_scope, when
from medfed.dashboard.web import ctx, render
from medfed.security.authz import Action

__all__ = ["NAV", "NAV_ACTIONS", "NotCleared", "RefusalKind", "not_cleared", "parse_refusals", "routes"]

NAV: tuple[str, str] | None = ("/approvals", "Approvals")
NAV_ACTIONS = frozenset({Action.APPROVAL_READ})

#: What ApprovalStore.check writes when it refuses (tests check it against a real refusal).
_REFUSAL = re.compile(
    r"site '(?P<site>[^']+)' has not cleared job '(?P<job>[^']+)' \(spec (?P<spec>[0-9a-f]{12})…\): "
    r"(?P<why>.*?)(?=; [\w.-]+: (?:\w+: )?site '|$)"
)


class RefusalKind(enum.StrEnum):
    PENDING = "pending"  # awaits the site admin's approval
    REJECTED = "rejected"
    EXPIRED = "expired"
    OTHER_PURPOSE = "other purpose"  # approved, but for another purpose
    DATASET_CHANGED = "dataset changed"  # the data changed since approval: the spec awaits re-approval


def _kind(why: str) -> RefusalKind:
    if "changed since approval" in why:
        return RefusalKind.DATASET_CHANGED
    if "awaits the site admin's approval" in why:
        return RefusalKind.PENDING
    if why.startswith("rejected by"):
        return RefusalKind.REJECTED
    if "expired" in why:
        return RefusalKind.EXPIRED
    return RefusalKind.OTHER_PURPOSE


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """One "not cleared" refusal as it appeared in an error message."""

    site: str
    job_id: str
    spec_prefix: str  # the first 12 hex digits of the spec's SHA-256
    why: str
    reason: Reason | None = None  # the site's structured reason (None: parsed from text only)

    @property
    def kind(self) -> RefusalKind:
        if self.reason is Reason.DATASET_CHANGED:
            return RefusalKind.DATASET_CHANGED
        return _kind(self.why)


def parse_refusals(text: str) -> list[Refusal]:
    """Every "not cleared" refusal in an error text (a site's error, or a failed job's error)."""
    return [
        Refusal(site=m["site"], job_id=m["job"], spec_prefix=m["spec"], why=m["why"].strip())
        for m in _REFUSAL.finditer(text)
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class NotCleared:
    """A spec a site refused, the latest job that carried it, and what to compare it with."""

    site: str
    kind: RefusalKind
    why: str
    spec_hash: str
    job_id: str
    job_name: str
    owner: str
    refused_at: float  # the job's last update at the coordinator
    spec_toml: str
    diff: str  # unified diff from the last spec of the same job name that ran at this site ("" if none)
    compared_with: str  # the job id of that spec ("" if none)
    cleared_since: str  # a later job with the same spec that ran at this site ("" if none)


#: The words every "not cleared" refusal carries (filtered in the store's SQL before parsing).
_MARK = "has not cleared job"


def not_cleared(coordinator: Coordinator, *, sites: Iterable[str] | None = None) -> list[NotCleared]:
    """The latest refusal per (site, spec), restricted to ``sites``; still-open ones first."""
    keep = None if sites is None else set(sites)
    jobs = coordinator.store.jobs()  # oldest first
    by_id = {j.job_id: j for j in jobs}
    texts: dict[str, list[str]] = {j.job_id: [j.error] for j in jobs if _MARK in j.error}
    fielded = _fielded(coordinator)
    for job_id, round_, site, error in coordinator.store.site_errors(_MARK):
        if (job_id, round_, site) not in fielded:  # an older node's result: its text is all there is
            texts.setdefault(job_id, []).append(error)
    by_job: dict[str, list[Refusal]] = {}
    for (job_id, _, _), r in fielded.items():
        by_job.setdefault(job_id, []).append(r)
    latest: dict[tuple[str, str], tuple[JobRow, Refusal]] = {}
    for row in sorted((by_id[j] for j in {*texts, *by_job} if j in by_id), key=lambda j: j.created):
        parsed = (r for t in texts.get(row.job_id, ()) for r in parse_refusals(t))
        for r in (*parsed, *by_job.get(row.job_id, ())):  # a site's fields win over a job error's text
            if r.job_id == row.job_id and row.spec_hash.startswith(r.spec_prefix) and (keep is None or r.site in keep):
                latest[(r.site, row.spec_hash)] = (row, r)
    ran = coordinator.store.sites_succeeded() if latest else {}
    out = []
    for (site, spec_hash), (row, r) in latest.items():
        later = [
            j for j in jobs if j.spec_hash == spec_hash and j.created > row.created and site in ran.get(j.job_id, ())
        ]
        before = [j for j in jobs if j.name == row.name and j.job_id != row.job_id and site in ran.get(j.job_id, ())]
        base = max((j for j in before if j.created <= row.created), key=lambda j: j.created, default=None)
        out.append(
            NotCleared(
                site=site, kind=r.kind, why=r.why, spec_hash=spec_hash, job_id=row.job_id, job_name=row.name,
                owner=row.owner, refused_at=row.updated, spec_toml=row.spec_toml,
                diff="" if base is None else _diff(base, row), compared_with="" if base is None else base.job_id,
                cleared_since=later[0].job_id if later else "",
            )
        )  # fmt: skip
    return sorted(out, key=lambda n: (bool(n.cleared_since), n.site, -n.refused_at))


def _fielded(coordinator: Coordinator) -> dict[tuple[str, int, str], Refusal]:
    """(job, round, site) -> the refusal a site's result reported in fields (reason and spec hash);
    the message gives only the detail (pending, rejected, ...), and a reworded one loses nothing else."""
    out: dict[tuple[str, int, str], Refusal] = {}
    for job_id, round_, site, reason, spec, error in coordinator.store.site_refusals():
        if reason not in (Reason.NOT_CLEARED, Reason.DATASET_CHANGED) or not spec:
            continue
        texts = [r.why for r in parse_refusals(error) if r.site == site]
        why = texts[0] if texts else error.split(": ", 1)[-1]
        out[(job_id, round_, site)] = Refusal(site=site, job_id=job_id, spec_prefix=spec[:12], why=why, reason=reason)
    return out


def _diff(base: JobRow, row: JobRow) -> str:
    lines = difflib.unified_diff(
        base.spec_toml.splitlines(keepends=True),
        row.spec_toml.splitlines(keepends=True),
        fromfile=f"ran: job {base.job_id} (spec {base.spec_hash[:12]})",
        tofile=f"refused: job {row.job_id} (spec {row.spec_hash[:12]})",
    )
    return "".join(lines)


def approvals(request: Request) -> Response:
    site = request.query_params.get("site", "")
    scope = site_scope(request, Action.APPROVAL_READ, site=site)
    items = not_cleared(ctx(request).coordinator, sites=scope.sites)
    return render(request, "approvals.html", {"items": items, "scope": scope, "when": when})


def routes() -> list[Route]:
    return [Route("/approvals", approvals, methods=["GET"])]
