"""The dashboard as a Starlette app: login, the pages of :data:`~medfed.dashboard.pages.PAGE_MODULES`,
static files served from the package (no CDN), and security headers on every response.

Headers: a Content-Security-Policy with no inline script or style and nothing from another origin,
``X-Frame-Options: DENY`` (and ``frame-ancestors 'none'``), ``nosniff``, no referrer, HSTS, and
``Cache-Control: no-store`` on everything but static files. Cookies are Secure, HttpOnly and
SameSite=Strict (:func:`medfed.dashboard.auth.set_cookie`). Serve it only with
:func:`medfed.dashboard.server.serve_dashboard` (HTTPS, TLS 1.2+).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medfed.core.errors import MedfedError
from medfed.dashboard import auth
from medfed.dashboard.pages import PAGE_MODULES, load_pages
from medfed.dashboard.web import (
    SESSION_COOKIE,
    TEMPLATES_DIR,
    DashboardContext,
    Forbidden,
    LoginRequired,
    NavEntry,
    render,
    utc_text,
)

__all__ = ["SECURITY_HEADERS", "BodyLimit", "SecurityHeaders", "create_app", "login_redirect"]

STATIC_DIR = Path(__file__).parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: dict[str, str] = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "strict-transport-security": "max-age=31536000",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


class SecurityHeaders:
    """ASGI middleware: :data:`SECURITY_HEADERS` on every response; ``no-store`` outside ``/static``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                extra = dict(SECURITY_HEADERS)
                if not static:
                    extra["cache-control"] = "no-store"
                headers += [(k.encode(), v.encode()) for k, v in extra.items() if k.encode() not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


#: The largest request body a page accepts (the job-spec form is the biggest, 64 KiB of TOML).
MAX_BODY_BYTES = 256 * 1024


class BodyLimit:
    """ASGI middleware: refuse a request body over :data:`MAX_BODY_BYTES` (413), declared or streamed."""

    def __init__(self, app: ASGIApp, *, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await Response("request body too large or malformed length", status_code=413)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"request body over {self.limit} bytes")
            return message

        await self.app(scope, counted, send)


def login_redirect(request: Request, exc: Exception, *, session_cookie: str = SESSION_COOKIE) -> Response:
    """The answer to :class:`LoginRequired`: to ``/login``, remembering the page asked for (path and
    query, one encoded ``next=`` value); the cookie ``session_cookie`` of an ended session is dropped."""
    expired = isinstance(exc, LoginRequired) and exc.expired
    target = quote(
        request.url.path + (f"?{request.url.query}" if request.url.query else ""), safe="/"
    )  # the whole target is one parameter value
    response = RedirectResponse(f"/login?next={target}" + ("&expired=1" if expired else ""), status_code=303)
    if expired:
        response.delete_cookie(session_cookie, path="/", secure=True, httponly=True, samesite="strict")
    return response


def _forbidden(request: Request, exc: Exception) -> Response:
    return render(request, "error.html", {"heading": "Not allowed", "message": str(exc)}, status_code=403)


def _bad_request(request: Request, exc: Exception) -> Response:
    return render(request, "error.html", {"heading": "Cannot do that", "message": str(exc)}, status_code=400)


def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "error"
    return render(request, "error.html", {"heading": f"{status}", "message": detail}, status_code=status)


def _home(request: Request) -> Response:
    nav: list[NavEntry] = request.app.state.nav
    return RedirectResponse(nav[0].path if nav else "/login", status_code=303)


def create_app(context: DashboardContext, *, pages: tuple[str, ...] = PAGE_MODULES) -> Starlette:
    """The dashboard app over ``context`` with the page modules ``pages``."""
    page_routes, nav = load_pages(pages)
    routes: list[BaseRoute] = [
        Route("/", _home, methods=["GET"]),
        *auth.routes(),
        *page_routes,
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            LoginRequired: login_redirect,
            Forbidden: _forbidden,
            MedfedError: _bad_request,
            HTTPException: _http_error,
        },
    )
    app.state.dashboard = context
    app.state.nav = nav
    templates = Jinja2Templates(directory=TEMPLATES_DIR)
    templates.env.filters["utc"] = utc_text
    app.state.templates = templates
    app.add_middleware(BodyLimit)
    app.add_middleware(SecurityHeaders)
    return app
