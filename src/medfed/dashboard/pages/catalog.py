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

from medfed.coordinator.nodes import CatalogListing
from medfed.coordinator.service import Coordinator
from medfed.core.errors import ValidationError
from medfed.dashboard.pages.scope import when
from medfed.dashboard.web import ctx, render, require
from medfed.data.catalog import SearchHit, search
from medfed.security.authz import Action, Resource

__all__ = ["NAV", "NAV_ACTIONS", "CatalogResult", "catalog_search", "routes"]

NAV: tuple[str, str] | None = ("/catalog", "Catalog")
NAV_ACTIONS = frozenset({Action.CATALOG_READ})
MAX_QUERY = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class CatalogResult:
    query: str
    hits: tuple[tuple[SearchHit, CatalogListing], ...]  # a hit, and its entry with its site's state and age
    sites: tuple[tuple[str, bool, int, float], ...]  # site, online, datasets in its catalog, reported at


def catalog_search(coordinator: Coordinator, query: str) -> CatalogResult:
    """Search every entry the coordinator keeps (each site's last report, online or not), as its
    ``search_catalog`` does for the API."""
    listings = {(x.site, x.entry.dataset): x for x in coordinator.catalog_entries()}
    hits = search((x.entry for x in listings.values()), query) if query.strip() else []
    sites: dict[str, tuple[bool, int, float]] = {}
    for x in listings.values():
        _, n, at = sites.get(x.site, (x.online, 0, x.reported_at))
        sites[x.site] = (x.online, n + 1, max(at, x.reported_at))
    return CatalogResult(
        query=query,
        hits=tuple((h, listings[(h.site, h.dataset)]) for h in hits),
        sites=tuple((site, *sites[site]) for site in sorted(sites)),
    )


def catalog(request: Request) -> Response:
    require(request, Action.CATALOG_READ, Resource.federation())
    query = request.query_params.get("q", "").strip()
    problems = []
    if len(query) > MAX_QUERY:
        query, problems = "", [f"the query is longer than {MAX_QUERY} characters"]
    try:
        result = catalog_search(ctx(request).coordinator, query)
    except ValidationError as exc:
        result, problems = catalog_search(ctx(request).coordinator, ""), [str(exc)]
    return render(request, "catalog.html", {"result": result, "problems": problems, "q": query, "when": when})


def routes() -> list[Route]:
    return [Route("/catalog", catalog, methods=["GET"])]
