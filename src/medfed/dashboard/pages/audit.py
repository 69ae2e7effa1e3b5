"""Audit page: search the coordinator's tamper-evident audit log and verify its chain.

The log (``state_dir/audit.sqlite``, :mod:`medfed.security.audit`) is read through
:func:`~medfed.security.audit.read_log`, which opens the file read-only: neither a search nor a
verification can alter the evidence (opening an :class:`AuditLog` would re-create dropped guards).
Verification (:func:`~medfed.security.audit_chain.verify_chain`) checks every link, hash and
signed checkpoint with the coordinator's public key and names the first bad entry.

A site admin sees only the entries about their own site (its ``site`` field or the site as the
actor); a verification always covers the whole chain, since a chain is only as good as every link.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from medfed.core.errors import StoreError, ValidationError
from medfed.dashboard.pages.scope import SiteScope, site_scope, when
from medfed.dashboard.web import check_csrf, ctx, render
from medfed.security.audit import AuditEntry, VerifyReport, read_log, verify_chain
from medfed.security.authz import Action

__all__ = ["NAV", "NAV_ACTIONS", "AuditQuery", "parse_query", "routes", "search", "verify"]

NAV: tuple[str, str] | None = ("/audit", "Audit")
NAV_ACTIONS = frozenset({Action.AUDIT_READ})
#: Entries shown per search (newest first).
PAGE_LIMIT = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditQuery:
    """A search of the log; empty strings and ``None`` match everything."""

    action: str = ""
    actor: str = ""
    job_id: str = ""
    since: float | None = None
    until: float | None = None
    limit: int = PAGE_LIMIT

    def matches(self, e: AuditEntry) -> bool:
        return (
            (not self.action or e.action == self.action or e.action.startswith(self.action + "."))
            and (not self.actor or e.actor == self.actor)
            and (not self.job_id or str(e.fields.get("job_id", "")) == self.job_id)
            and (self.since is None or e.at >= self.since)
            and (self.until is None or e.at < self.until)
        )


def _time(text: str, name: str, problems: list[str], *, end: bool) -> float | None:
    if not text:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        problems.append(f"{name}: {text[:40]!r} is not a date (YYYY-MM-DD) or time (YYYY-MM-DDTHH:MM)")
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    if end and len(text) == 10:  # a bare date: up to the end of that day
        parsed += dt.timedelta(days=1)
    return parsed.timestamp()


def parse_query(params: Mapping[str, str]) -> AuditQuery:
    """The query of the page's search form; :class:`ValidationError` lists every bad field."""
    problems: list[str] = []
    since = _time(params.get("since", "").strip(), "since", problems, end=False)
    until = _time(params.get("until", "").strip(), "until", problems, end=True)
    if since is not None and until is not None and until <= since:
        problems.append("until must be after since")
    fields = {k: params.get(k, "").strip() for k in ("action", "actor", "job")}
    problems += [f"{k}: too long" for k, v in fields.items() if len(v) > 100]
    if problems:
        raise ValidationError(problems, where="audit search")
    return AuditQuery(action=fields["action"], actor=fields["actor"], job_id=fields["job"], since=since, until=until)


def _about(e: AuditEntry, scope: SiteScope) -> bool:
    if scope.sites is None:
        return True
    return e.actor in scope.sites or str(e.fields.get("site", "")) in scope.sites


def search(entries: Sequence[AuditEntry], query: AuditQuery, scope: SiteScope) -> tuple[list[AuditEntry], int]:
    """Matching entries within ``scope``, newest first (at most ``query.limit``), and how many matched."""
    hits = [e for e in entries if _about(e, scope) and query.matches(e)]
    return list(reversed(hits[-query.limit :])), len(hits)


def verify(path: Path, public_pem: bytes | None) -> VerifyReport:
    """Verify the whole log at ``path``, read-only."""
    entries, checkpoints = read_log(path)
    return verify_chain(entries, checkpoints, public_pem)


def _actions(entries: Sequence[AuditEntry]) -> list[str]:
    return sorted({e.action for e in entries})


def _page(request: Request, *, report: VerifyReport | None = None, verify_error: str = "") -> Response:
    scope = site_scope(request, Action.AUDIT_READ)
    path = ctx(request).coordinator.audit.log.path
    problems: list[str] = []
    try:
        query = parse_query(request.query_params)
    except ValidationError as exc:
        query, problems = AuditQuery(), [str(exc)]
    try:
        everything, _ = read_log(path)  # read-only, once per page
        hits, matched = search(everything, query, scope)
    except StoreError as exc:
        hits, matched, everything, problems = [], 0, [], [*problems, str(exc)]
    return render(
        request,
        "audit.html",
        {
            "entries": hits, "matched": matched, "query": query, "problems": problems, "scope": scope,
            "actions": _actions(everything), "report": report, "verify_error": verify_error, "when": when,
            "params": request.query_params,
        },
    )  # fmt: skip


def audit(request: Request) -> Response:
    return _page(request)


async def audit_verify(request: Request) -> Response:
    form = await request.form()
    return await run_in_threadpool(_verified, request, form)


def _verified(request: Request, form: FormData) -> Response:
    site_scope(request, Action.AUDIT_READ)
    check_csrf(request, form)
    coordinator = ctx(request).coordinator
    try:
        report = verify(coordinator.audit.log.path, coordinator.audit.key.public_pem)
    except StoreError as exc:
        return _page(request, verify_error=str(exc))
    return _page(request, report=report)


def routes() -> list[Route]:
    return [Route("/audit", audit, methods=["GET"]), Route("/audit/verify", audit_verify, methods=["POST"])]
