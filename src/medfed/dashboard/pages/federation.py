"""Federation: every site, online or offline, its last heartbeat, software version, datasets and
the expiry of the certificate it last connected with. Any logged-in person may look (the gRPC
API shows the same site list with the job list). The page refreshes the status column from
``/federation.json`` every few seconds (``static/federation.js``)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from medfed import __version__
from medfed.dashboard.web import ctx, render, require, utc_text

NAV = ("/federation", "Federation")
#: A certificate closer than this to its expiry is flagged.
EXPIRY_WARNING_S = 30 * 86400.0


def site_rows(request: Request) -> list[dict[str, Any]]:
    """One row per site the coordinator has ever seen (its store), with what the live registry knows."""
    context = ctx(request)
    coordinator = context.coordinator
    now = context.clock()
    live = {n.site: n for n in coordinator.nodes.all()}
    online = {n.site for n in coordinator.nodes.online()}
    ages = coordinator.nodes.contact_ages()  # since the last heartbeat or poll (this process's registry)
    rows = []
    for stored in coordinator.store.nodes():
        site = str(stored["site"])
        info = live.get(site)
        expires = info.cert_expires if info is not None else 0.0
        # a site not seen since this coordinator started: its last registration, from the store
        last_seen = now - ages[site] if site in ages else float(stored["last_seen"])
        rows.append(
            {
                "site": site,
                "online": site in online,
                "last_seen": last_seen,
                "last_seen_text": utc_text(last_seen),
                "age_s": max(0.0, now - last_seen),
                "version": str(stored["version"]),
                "version_differs": str(stored["version"]) != __version__,
                "datasets": list(stored["datasets"]),
                "cert_expires": expires,
                "cert_expires_text": utc_text(expires),
                "cert_warning": bool(expires) and expires - now < EXPIRY_WARNING_S,
            }
        )
    return sorted(rows, key=lambda r: r["site"])


def federation(request: Request) -> Response:
    require(request)
    rows = site_rows(request)
    context = {"sites": rows, "online": sum(r["online"] for r in rows), "coordinator_version": __version__}
    return render(request, "federation.html", context)


def federation_json(request: Request) -> Response:
    """The same rows as JSON, polled by the page (it does not reset the session's idle timer)."""
    require(request, touch=False)
    rows = site_rows(request)
    return JSONResponse({"online": sum(r["online"] for r in rows), "sites": rows})


def routes() -> list[Route]:
    return [
        Route("/federation", federation, methods=["GET"]),
        Route("/federation.json", federation_json, methods=["GET"]),
    ]
