"""Alerts page: the coordinator's security alerts (:mod:`medfed.security.alerts`,
``state_dir/alerts.sqlite``): unusual access by people and anomalous updates from nodes.

Each alert shows its kind, who it is about, when, why and its score; the page filters by kind.
A site admin sees only the alerts about their own site (update alerts name the site).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from medfed.dashboard.pages.scope import site_scope, when
from medfed.dashboard.web import ctx, render
from medfed.security.alerts import AlertStore, StoredAlert
from medfed.security.authz import Action

__all__ = ["ALERTS_FILE", "NAV", "NAV_ACTIONS", "list_alerts", "routes"]

NAV: tuple[str, str] | None = ("/alerts", "Alerts")
NAV_ACTIONS = frozenset({Action.ALERT_READ})
#: The coordinator's alert store, under its state directory.
ALERTS_FILE = "alerts.sqlite"
PAGE_LIMIT = 500


def list_alerts(
    path: Path, *, kind: str = "", sites: Collection[str] | None = None
) -> tuple[list[StoredAlert], tuple[str, ...]]:
    """Alerts newest first, of ``kind`` (one of an alert's comma-joined kinds) and about ``sites``,
    and every kind the alerts about ``sites`` carry (for the filter); one opening of the store."""
    if not path.is_file():
        return [], ()
    store = AlertStore(path)
    try:
        return store.list(kind=kind or None, limit=PAGE_LIMIT, subjects=sites), store.kinds(subjects=sites)
    finally:
        store.close()


def alerts(request: Request) -> Response:
    scope = site_scope(request, Action.ALERT_READ)
    kind = request.query_params.get("kind", "").strip()[:64]
    shown, kinds = list_alerts(ctx(request).state_dir / ALERTS_FILE, kind=kind, sites=scope.sites)
    return render(request, "alerts.html", {"alerts": shown, "kinds": kinds, "kind": kind, "scope": scope, "when": when})


def routes() -> list[Route]:
    return [Route("/alerts", alerts, methods=["GET"])]
