"""Login and logout: password + TOTP against the federation's user store, over HTTPS.

The same :meth:`UserStore.login` as the gRPC API's ``Login`` RPC (Argon2id, TOTP, lockout, rate
limits, audit), without the client certificate: a browser has none, so the web login is two
factors (password and TOTP code) over server-authenticated TLS. Every refusal shows one opaque
message, whatever the cause (unknown user, wrong password or code, locked, rate limited); the
reason is in the coordinator's audit log.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from medfed.dashboard.web import PRE_COOKIE, SESSION_COOKIE, check_csrf, ctx, current_principal, render
from medfed.security.users import AuthenticationFailed, Credentials

__all__ = ["Renderer", "login_page", "routes", "safe_next", "set_cookie"]
#: How a page renders a template: ``(request, template, context, *, status_code)``.
Renderer = Callable[..., HTMLResponse]
REFUSED = "Login failed: wrong user, password or code, or the account is locked. Try again later."


def set_cookie(response: Response, key: str, value: str) -> None:
    """Every cookie the dashboard sets: never sent over plain HTTP (Secure), never readable by
    scripts (HttpOnly), never sent with a request another site started (SameSite=Strict)."""
    response.set_cookie(key, value, path="/", secure=True, httponly=True, samesite="strict")


def safe_next(target: str) -> str:
    """A local path to go to after login (never another host: no open redirect)."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def login_page(
    request: Request, page: Renderer, *, pre_cookie: str, error: str = "", status_code: int = 200
) -> Response:
    """The login form rendered by ``page``, with a pre-login cookie ``pre_cookie`` (set when absent)
    that the form's CSRF token is bound to. Shared by the dashboard and the node page."""
    pre = request.cookies.get(pre_cookie, "")
    if not pre:
        pre = secrets.token_urlsafe(16)
        request.state.pre_token = pre
    expired = request.query_params.get("expired") == "1"
    notice = "Your session ended (idle or expired). Please log in again." if expired and not error else ""
    context = {"error": error, "notice": notice, "next": safe_next(request.query_params.get("next", "/"))}
    response = page(request, "login.html", context, status_code=status_code)
    if not request.cookies.get(pre_cookie):
        set_cookie(response, pre_cookie, pre)
    return response


def _login_page(request: Request, *, error: str = "", status_code: int = 200) -> Response:
    return login_page(request, render, pre_cookie=PRE_COOKIE, error=error, status_code=status_code)


def login_form(request: Request) -> Response:
    if current_principal(request) is not None:
        return RedirectResponse(safe_next(request.query_params.get("next", "/")), status_code=303)
    return _login_page(request)


async def login_submit(request: Request) -> Response:
    form = await request.form()
    check_csrf(request, form)
    creds = Credentials(
        user_id=str(form.get("user", "")).strip(),
        password=str(form.get("password", "")),
        code=str(form.get("code", "")).strip(),
        source=request.client.host if request.client is not None else "",
    )
    try:  # Argon2id takes ~0.1 s of CPU and 64 MiB: off the event loop
        session = await run_in_threadpool(ctx(request).users.login, creds)
    except AuthenticationFailed:
        return _login_page(request, error=REFUSED, status_code=401)
    response = RedirectResponse(safe_next(str(form.get("next", "/"))), status_code=303)
    set_cookie(response, SESSION_COOKIE, session.secret)
    return response


async def logout(request: Request) -> Response:
    form = await request.form()
    check_csrf(request, form)
    secret = request.cookies.get(SESSION_COOKIE, "")
    if secret:
        await run_in_threadpool(ctx(request).users.logout, secret)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


def routes() -> list[Route]:
    return [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
