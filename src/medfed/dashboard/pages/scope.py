"""Which sites a page may show to the logged-in person, for the site-scoped actions of the matrix
(budgets, approvals, audit, alerts): every site, or only the site a site admin administers.

Not a page (no ``routes``): the helper the Privacy, Approvals, Audit and Alerts pages share.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from starlette.requests import Request

from medfed.dashboard.web import require
from medfed.security.authz import MATRIX, Action, Principal, Reach, Resource

__all__ = ["SiteScope", "site_scope", "when"]

#: The resource name a federation-wide read is checked against (the matrix only compares it for
#: own-site reach, which never reaches this path).
EVERY_SITE = "all"


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteScope:
    """The principal, and the sites they may read (``None``: every site)."""

    principal: Principal
    sites: frozenset[str] | None

    def covers(self, site: str) -> bool:
        return self.sites is None or site in self.sites

    @property
    def everything(self) -> bool:
        return self.sites is None


def site_scope(request: Request, action: Action, *, site: str = "") -> SiteScope:
    """Check ``action`` for the logged-in person and say how far it reaches.

    A site admin reads their own site; a role with federation-wide reach (or break glass) reads
    every site. ``site`` narrows the check to one site (a filter in the page's query). Raises the
    web layer's ``LoginRequired`` or ``Forbidden`` (audited) like :func:`require`.
    """
    principal = require(request)
    if site:
        require(request, action, Resource.site(site))
        return SiteScope(principal=principal, sites=frozenset({site}))
    if MATRIX.get((principal.role, action)) is Reach.OWN_SITE:
        require(request, action, Resource.site(principal.site))
        return SiteScope(principal=principal, sites=frozenset({principal.site}))
    require(request, action, Resource.site(EVERY_SITE))  # reach ANY, break glass, or a 403
    return SiteScope(principal=principal, sites=None)


def when(t: float | None) -> str:
    """A wall-clock time for a page: ``2026-11-23 15:04:05 UTC`` (``-`` for none)."""
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
