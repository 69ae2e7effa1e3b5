"""What every dashboard page uses: the context, the logged-in principal, rendering and CSRF.

A page handler looks like::

    def jobs(request: Request) -> Response:
        principal = require(request, Action.JOB_READ, Resource.federation())
        return render(request, "jobs.html", {"jobs": ...})

:func:`require` never returns for a refused request: it raises :class:`LoginRequired` (no session,
or one that ended: idle timeout, absolute lifetime, logout) or :class:`Forbidden` (the role matrix
said no; an ``access.denied`` event is in the coordinator's audit log), and the app turns those
into a redirect to ``/login`` or a 403 page with the rule's reason.

Sessions are the :class:`~medfed.security.users.UserStore`'s own (the same as the gRPC API's): the
cookie holds the session secret, the store holds its hash, and each request touches it (sliding
idle timeout). CSRF tokens are an HMAC of the session secret (or of a pre-login cookie) under a
per-process key: a form posted from another origin has neither (and SameSite=Strict cookies are
not sent with it anyway).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from medfed.coordinator.service import Coordinator
from medfed.core.errors import AuthenticationError, PermissionDenied
from medfed.security.audit_events import AuditAction
from medfed.security.authz import Action, Principal, Resource, ResourceKind, authorize, role_actions
from medfed.security.users import AuthenticationFailed, UserStore

__all__ = [
    "CSRF_FIELD",
    "PRE_COOKIE",
    "SESSION_COOKIE",
    "DashboardContext",
    "Forbidden",
    "LoginRequired",
    "NavEntry",
    "allowed",
    "check_csrf",
    "csrf_for",
    "csrf_token",
    "ctx",
    "current_principal",
    "render",
    "require",
    "utc_text",
    "verify_csrf",
]

SESSION_COOKIE = "medfed_session"
PRE_COOKIE = "medfed_pre"  # a random pre-login value the login form's CSRF token is bound to
CSRF_FIELD = "csrf"
TEMPLATES_DIR = Path(__file__).parent / "templates"


@dataclass(frozen=True, slots=True, kw_only=True)
class NavEntry:
    """One link in the navigation bar; shown to roles that hold one of ``actions`` (all when empty)."""

    path: str
    label: str
    actions: frozenset[Action] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class DashboardContext:
    """Everything the pages read, built once by whoever starts the dashboard.

    Parameters
    ----------
    coordinator
        The running coordinator (jobs, nodes, store, audit log at ``coordinator.audit``).
    users
        The federation's people: logins and sessions.
    state_dir
        The coordinator's state directory (``reports/``, ``models/``, ``audit.sqlite``).
    signing_public_key
        The Ed25519 public key that verifies models and audit checkpoints, if known.
    clock
        Wall-clock seconds; injected so that pages showing ages are testable.
    csrf_key
        The per-process key of CSRF tokens (random by default).
    """

    coordinator: Coordinator
    users: UserStore
    state_dir: Path
    signing_public_key: Path | None = None
    clock: Callable[[], float] = time.time
    csrf_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    title: str = "medfed"


class LoginRequired(AuthenticationError):  # noqa: N818 - named for what the page needs, like Forbidden
    """No live session: the app redirects to ``/login`` (with ``expired`` when a session ended)."""

    kind = "authentication"

    def __init__(self, *, expired: bool) -> None:
        self.expired = expired
        super().__init__("your session ended; log in again" if expired else "log in first")


class Forbidden(PermissionDenied):
    """The role matrix refused; the message is the rule's reason, shown on the 403 page."""

    kind = "permission"


def ctx(request: Request) -> DashboardContext:
    """The :class:`DashboardContext` of the app serving ``request``."""
    context: DashboardContext = request.app.state.dashboard
    return context


def _source(request: Request) -> str:
    return request.client.host if request.client is not None else ""


def current_principal(request: Request, *, touch: bool = True) -> Principal | None:
    """The logged-in principal, or ``None``; looked up once per request. ``touch`` resets the
    session's idle timer (a person's own request); ``False`` for a page's automatic polling."""
    if getattr(request.state, "principal_known", False):
        cached: Principal | None = request.state.principal
        return cached
    secret = request.cookies.get(SESSION_COOKIE, "")
    principal: Principal | None = None
    request.state.session_ended = False
    if secret:
        try:
            principal = ctx(request).users.session(secret, touch=touch)
        except AuthenticationFailed:
            request.state.session_ended = True
    request.state.principal = principal
    request.state.principal_known = True
    return principal


def _deny(request: Request, principal: Principal, action: Action, resource: Resource) -> None:
    fields: dict[str, str | int | float | bool] = {
        "user": principal.user_id,
        "method": action.value,
        "resource": resource.kind.value,
        "reason": f"{principal.role.value} has no {action.value} right here (dashboard)",
    }
    source = _source(request)
    if source:
        fields["source"] = source
    if resource.kind is ResourceKind.JOB and resource.name:
        fields["job_id"] = resource.name
    ctx(request).coordinator.audit.record(AuditAction.PERMISSION_DENIED, principal.user_id, fields)


def require(
    request: Request, action: Action | None = None, resource: Resource | None = None, *, touch: bool = True
) -> Principal:
    """The logged-in principal, allowed ``action`` on ``resource`` by the role matrix.

    Without ``action`` only a login is required. Raises :class:`LoginRequired` (no or ended
    session) or :class:`Forbidden` (audited as ``access.denied``). ``touch=False`` for requests
    a page makes by itself (polling): they must not keep an idle session alive.
    """
    principal = current_principal(request, touch=touch)
    if principal is None:
        raise LoginRequired(expired=bool(getattr(request.state, "session_ended", False)))
    if action is not None:
        target = resource if resource is not None else Resource.federation()
        try:
            decision = authorize(principal, action, target)
        except PermissionDenied as exc:
            _deny(request, principal, action, target)
            raise Forbidden(str(exc)) from None
        if decision.emergency:  # break glass: allowed, and loudly recorded
            ctx(request).coordinator.audit.record(
                AuditAction.BREAK_GLASS,
                principal.user_id,
                {"user": principal.user_id, "method": action.value, "resource": target.kind.value},
            )
    return principal


def allowed(principal: Principal, action: Action, resource: Resource) -> bool:
    """Whether the matrix grants it (no audit event: for showing or hiding links and forms)."""
    try:
        authorize(principal, action, resource)
    except PermissionDenied:
        return False
    return True


def csrf_for(request: Request, key: bytes, *, cookies: tuple[str, str], logged_in: bool) -> str:
    """The CSRF token of a page served under ``key``: an HMAC of the session cookie when
    ``logged_in``, else of the pre-login value (``cookies``: the session's and the pre-login
    cookie's names; the node page has its own)."""
    session_cookie, pre_cookie = cookies
    binding = request.cookies.get(session_cookie, "") if logged_in else ""
    if not binding:
        binding = "pre:" + str(getattr(request.state, "pre_token", "") or request.cookies.get(pre_cookie, ""))
    return hmac.new(key, binding.encode(), hashlib.sha256).hexdigest()


def verify_csrf(form: FormData | Mapping[str, Any], expected: str) -> None:
    """Refuse a form whose CSRF field is not ``expected`` (raises :class:`Forbidden`)."""
    sent = form.get(CSRF_FIELD, "")
    if not isinstance(sent, str) or not sent or not hmac.compare_digest(sent, expected):
        raise Forbidden("the form's CSRF token is missing or stale: reload the page and try again")


def csrf_token(request: Request) -> str:
    """The CSRF token for forms on this page: bound to the session (or the pre-login cookie)."""
    logged_in = current_principal(request) is not None
    return csrf_for(request, ctx(request).csrf_key, cookies=(SESSION_COOKIE, PRE_COOKIE), logged_in=logged_in)


def check_csrf(request: Request, form: FormData | Mapping[str, Any]) -> None:
    """Refuse a POST whose form lacks this session's CSRF token (raises :class:`Forbidden`)."""
    verify_csrf(form, csrf_token(request))


def _nav(request: Request, principal: Principal | None) -> list[NavEntry]:
    if principal is None:
        return []
    actions = role_actions(principal.role)
    entries: list[NavEntry] = request.app.state.nav
    return [e for e in entries if not e.actions or e.actions & actions]


def templates(request: Request) -> Jinja2Templates:
    found: Jinja2Templates = request.app.state.templates
    return found


def render(request: Request, template: str, context: dict[str, Any], *, status_code: int = 200) -> HTMLResponse:
    """Render ``template`` (which extends ``base.html``) with ``context`` plus ``principal``,
    ``nav``, ``csrf`` (the token; forms put it in a hidden field named ``csrf``), ``title`` and
    ``now``."""
    principal = current_principal(request)
    page = {
        "principal": principal,
        "nav": _nav(request, principal),
        "csrf": csrf_token(request),
        "csrf_field": CSRF_FIELD,
        "site_title": ctx(request).title,
        "now": ctx(request).clock(),
    }
    response = templates(request).TemplateResponse(request, template, page | context, status_code=status_code)
    return response


def utc_text(ts: float) -> str:
    """Seconds since the epoch as ``YYYY-MM-DD HH:MM:SS UTC`` (``—`` for none); the ``utc`` filter
    of the templates."""
    if not ts or ts <= 0:
        return "—"
    return dt.datetime.fromtimestamp(float(ts), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
