"""Catalog page: which sites hold which datasets, searched by metadata, never by rows.

The entries are what each node published when it registered (:mod:`medfed.data.catalog`): schema,
tags, codes and coarse counts (1 to 4 shown as ``<5``, 5 to 9 as ``5-9``, larger ones rounded to
10), so no exact small count and no row ever reaches this page. A query is words (column, feature,
tag or code names) and comparisons (``age>60``), as ``medfed data search``.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from medfed.coordinator.service import Coordinator
from medfed.core.errors import ValidationError
from medfed.dashboard.web import ctx, render, require
from medfed.data.catalog import CatalogEntry, SearchHit, search
from medfed.security.authz import Action, Resource, role_actions

__all__ = ["NAV", "CatalogResult", "catalog_search", "routes"]

NAV: tuple[str, str] | None = ("/catalog", "Catalog")
MAX_QUERY = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class CatalogResult:
    query: str
    hits: tuple[tuple[SearchHit, CatalogEntry, bool], ...]  # hit, its entry, whether its site is online
    sites: tuple[tuple[str, bool, int], ...]  # site, online, datasets in its catalog


def catalog_search(coordinator: Coordinator, query: str) -> CatalogResult:
    """Search the catalogs of the nodes that registered (the coordinator's ``search_catalog``)."""
    nodes = coordinator.nodes.all()
    online = {n.site for n in coordinator.nodes.online()}
    entries = {(e.site, e.dataset): e for n in nodes for e in n.catalog}
    hits = search(entries.values(), query) if query.strip() else []
    return CatalogResult(
        query=query,
        hits=tuple((h, entries[(h.site, h.dataset)], h.site in online) for h in hits),
        sites=tuple((n.site, n.site in online, len(n.catalog)) for n in nodes),
    )


def catalog(request: Request) -> Response:
    principal = require(request)
    # researchers search before they submit; everyone who reads jobs (admins, site admins, auditors) may look
    if Action.JOB_SUBMIT in role_actions(principal.role):
        require(request, Action.JOB_SUBMIT, Resource.federation())
    else:
        require(request, Action.JOB_READ, Resource.job("*", owner=""))
    query = request.query_params.get("q", "").strip()
    problems = []
    if len(query) > MAX_QUERY:
        query, problems = "", [f"the query is longer than {MAX_QUERY} characters"]
    try:
        result = catalog_search(ctx(request).coordinator, query)
    except ValidationError as exc:
        result, problems = catalog_search(ctx(request).coordinator, ""), [str(exc)]
    return render(request, "catalog.html", {"result": result, "problems": problems, "q": query})


def routes() -> list[Route]:
    return [Route("/catalog", catalog, methods=["GET"])]
