"""The node's local page: a small HTTPS site at the hospital showing its datasets, consent counts,
privacy-budget ledger, approvals (approve or reject, with a reason and an optional expiry) and its
own audit log (with verification).

``medfed node start --config site.toml --page 127.0.0.1:8765`` serves it from the node process on
127.0.0.1 only unless ``--page-public`` is given, over TLS 1.2+ with the site's kit certificate.
People log in with password + TOTP against the node's OWN user store (``<state_dir>/users.db``;
``medfed users add --users-db <state_dir>/users.db``): the coordinator's accounts mean nothing here.
Logins, refusals and decisions go into the site's hash-chained audit log (``state_dir/audit.sqlite``);
a decision goes through :func:`~medfed.security.approvals.open_site_approvals`, as
``medfed approvals`` does, so it is recorded and audited the same way.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from medfed.core.errors import ConfigError, MedfedError, PermissionDenied, StoreError, ValidationError
from medfed.crypto.aead import Keyring
from medfed.dashboard import node_page_data as data
from medfed.dashboard.app import STATIC_DIR, BodyLimit, SecurityHeaders, login_redirect
from medfed.dashboard.auth import login_page, safe_next, set_cookie
from medfed.dashboard.pages.scope import when
from medfed.dashboard.web import (
    CSRF_FIELD,
    TEMPLATES_DIR,
    Forbidden,
    LoginRequired,
    NavEntry,
    allowed,
    csrf_for,
    verify_csrf,
)
from medfed.node.fingerprints import FingerprintCache
from medfed.node.runtime import NodeSettings
from medfed.security.approvals import ApprovalState, ApprovalStore, open_site_approvals
from medfed.security.audit import AuditLog, read_log, verify_chain
from medfed.security.audit_events import ALLOWED_FIELDS, AuditAction, AuditEvent, validate_event
from medfed.security.authz import Action, Principal, Resource, authorize
from medfed.security.provision import open_signing_key
from medfed.security.users import AuthenticationFailed, Credentials, UserStore

__all__ = ["NODE_USERS_FILE", "NodePageContext", "check_page_address", "create_node_app", "open_node_page"]

log = logging.getLogger(__name__)

NODE_USERS_FILE = "users.db"
#: Cookie names of their own: browsers scope cookies by host, not port, so the node page on the same
#: host as the coordinator's dashboard must not overwrite its session (nor the other way round).
SESSION_COOKIE, PRE_COOKIE = "medfed_node_session", "medfed_node_pre"
REFUSED = "Login failed: wrong user, password or code, or the account is locked. Try again later."
NAV = [NavEntry(path="/datasets", label="Datasets"), NavEntry(path="/budget", label="Budget"),
       NavEntry(path="/approvals", label="Approvals"), NavEntry(path="/audit", label="Audit")]  # fmt: skip
_EVENTS = {"auth.login": AuditAction.LOGIN_SUCCEEDED, "auth.failed": AuditAction.LOGIN_FAILED,
           "auth.session_ended": AuditAction.LOGOUT, "auth.break_glass": AuditAction.BREAK_GLASS}  # fmt: skip


def check_page_address(host: str, *, public: bool) -> None:
    """Refuse a non-loopback address unless ``public`` (``--page-public``) says so on purpose."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not public:
        raise ConfigError(f"--page {host}: the node page listens on 127.0.0.1 only unless --page-public is given")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodePageContext:
    """What the node page reads and writes, opened once by :func:`open_node_page`."""

    settings: NodeSettings
    state_dir: Path
    users: UserStore
    audit: AuditLog
    audit_public_pem: bytes
    approvals: ApprovalStore | None
    clock: Callable[[], float] = time.time
    csrf_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    #: datasets hashed again only when their files changed (a DICOM directory can be large)
    fingerprints: FingerprintCache = field(default_factory=FingerprintCache, repr=False)

    @property
    def site(self) -> str:
        return self.settings.site

    def record(self, action: AuditAction, actor: str, fields: Mapping[str, str | int | float | bool]) -> None:
        """Append to the site's log, keeping only the fields its PHI contract admits."""
        clean = {k: v for k, v in fields.items() if k in ALLOWED_FIELDS and v != ""}
        event = AuditEvent(action=action, actor=actor, fields={"site": self.site, **clean})
        try:
            validate_event(event)
        except ValidationError:  # a typed user name or reason that is not admissible: keep the bare event
            event = AuditEvent(action=action, actor=self.site, fields={"site": self.site})
        self.audit.append(event)

    def close(self) -> None:
        for closing in (self.users.close, self.audit.checkpoint, self.audit.close):
            try:
                closing()
            except MedfedError as exc:
                log.warning("node page: %s", exc)
        if self.approvals is not None:
            self.approvals.close()


def open_node_page(
    settings: NodeSettings, *, keyring: Keyring, clock: Callable[[], float] = time.time
) -> NodePageContext:
    """Open the site's stores for its page; :class:`ConfigError` when the site has no user store."""
    state = settings.state_dir
    if state is None:
        raise ConfigError(f"site {settings.site!r}: the node page needs [node] state_dir (its users, approvals, audit)")
    users_db = state / NODE_USERS_FILE
    if not users_db.is_file():
        raise ConfigError(
            f"site {settings.site!r}: the node page needs the site's own user store {users_db}; create its admins with "
            f"`medfed users add <id> --role site_admin --site {settings.site} --users-db {users_db}`"
        )
    signing_key = open_signing_key(state / "audit-signing.key")
    audit = AuditLog(state / "audit.sqlite", signer=signing_key, clock=clock)
    holder: list[NodePageContext] = []

    def note(event: str, fields: Mapping[str, str | int | float | bool]) -> None:
        action = _EVENTS.get(event, AuditAction.USER_CHANGED)
        extra = {} if event in _EVENTS else {"kind": event.replace("auth.", "").replace("_", "-")}
        holder[0].record(action, str(fields.get("user", settings.site)), {**fields, **extra})

    users = UserStore(users_db, audit=note, keyring=keyring, clock=clock)
    approvals = None
    if settings.policy is not None or (state / "approvals.db").is_file():
        approvals = open_site_approvals(state, site=settings.site, note=lambda e, f: log.info("%s %s", e, dict(f)),
                                        clock=clock)  # fmt: skip
    context = NodePageContext(settings=settings, state_dir=state, users=users, audit=audit,
                              audit_public_pem=signing_key.public_pem,
                              approvals=approvals, clock=clock)  # fmt: skip
    holder.append(context)
    return context


# --- sessions, CSRF, rendering ------------------------------------------------------------------


def _ctx(request: Request) -> NodePageContext:
    context: NodePageContext = request.app.state.node_page
    return context


def _principal(request: Request) -> Principal | None:
    if hasattr(request.state, "principal"):
        return request.state.principal  # type: ignore[no-any-return]  # request.state is untyped
    secret, principal = request.cookies.get(SESSION_COOKIE, ""), None
    request.state.ended = False
    if secret:
        try:
            principal = _ctx(request).users.session(secret)
        except AuthenticationFailed:
            request.state.ended = True
    request.state.principal = principal
    return principal


def _require(request: Request, action: Action) -> Principal:
    principal = _principal(request)
    if principal is None:
        raise LoginRequired(expired=bool(getattr(request.state, "ended", False)))
    try:
        authorize(principal, action, Resource.site(_ctx(request).site))
    except PermissionDenied as exc:
        _ctx(request).record(AuditAction.PERMISSION_DENIED, principal.user_id,
                             {"user": principal.user_id, "method": action.value, "resource": "site",
                              "reason": "not allowed on the node page"})  # fmt: skip
        raise Forbidden(str(exc)) from None
    return principal


def _csrf(request: Request) -> str:
    logged_in = _principal(request) is not None
    return csrf_for(request, _ctx(request).csrf_key, cookies=(SESSION_COOKIE, PRE_COOKIE), logged_in=logged_in)


def _check_csrf(request: Request, form: FormData) -> None:
    verify_csrf(form, _csrf(request))


def _render(request: Request, template: str, context: dict[str, Any], *, status_code: int = 200) -> HTMLResponse:
    principal = _principal(request)
    page = {"principal": principal, "nav": NAV if principal else [], "csrf": _csrf(request), "csrf_field": CSRF_FIELD,
            "site_title": f"medfed node · {_ctx(request).site}", "when": when, "site": _ctx(request).site}  # fmt: skip
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(request, template, page | context, status_code=status_code)


# --- login -------------------------------------------------------------------------------------


def _login_page(request: Request, *, error: str = "", status_code: int = 200) -> Response:
    return login_page(request, _render, pre_cookie=PRE_COOKIE, error=error, status_code=status_code)


def login_form(request: Request) -> Response:
    if _principal(request) is not None:
        return RedirectResponse("/datasets", status_code=303)
    return _login_page(request)


async def login_submit(request: Request) -> Response:
    form = await request.form()
    _check_csrf(request, form)
    creds = Credentials(user_id=str(form.get("user", "")).strip(), password=str(form.get("password", "")),
                        code=str(form.get("code", "")).strip(),
                        source=request.client.host if request.client is not None else "")  # fmt: skip
    try:
        session = await run_in_threadpool(_ctx(request).users.login, creds)
    except AuthenticationFailed:
        return _login_page(request, error=REFUSED, status_code=401)
    target = safe_next(str(form.get("next", "/")))
    response = RedirectResponse("/datasets" if target == "/" else target, status_code=303)
    set_cookie(response, SESSION_COOKIE, session.secret)
    return response


async def logout(request: Request) -> Response:
    form = await request.form()
    _check_csrf(request, form)
    if secret := request.cookies.get(SESSION_COOKIE, ""):
        await run_in_threadpool(_ctx(request).users.logout, secret)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


# --- pages -------------------------------------------------------------------------------------


def datasets(request: Request) -> Response:
    _require(request, Action.BUDGET_READ)
    c = _ctx(request)
    today = dt.datetime.fromtimestamp(c.clock(), dt.UTC).date()
    views = data.dataset_views(c.settings.datasets, c.state_dir, on=today, fingerprints=c.fingerprints)
    return _render(request, "node/datasets.html", {"datasets": views, "consent": data.consent_counts(c.state_dir)})


def budget(request: Request) -> Response:
    _require(request, Action.BUDGET_READ)
    c = _ctx(request)
    return _render(
        request, "node/budget.html", {"budgets": data.budget_views(c.settings.datasets, c.state_dir / "ledger.sqlite")}
    )


def approvals(request: Request, *, message: str = "", error: str = "", status_code: int = 200) -> Response:
    principal = _require(request, Action.APPROVAL_READ)
    store = _ctx(request).approvals
    items = [] if store is None else store.approvals()
    order = {ApprovalState.PENDING: 0, ApprovalState.APPROVED: 1, ApprovalState.REJECTED: 2}
    items.sort(key=lambda a: (order[a.state], -a.submitted_at))
    shown = [(a, store.spec_text(a.spec_hash), store.diff(a.spec_hash)) for a in items] if store is not None else []
    may_decide = allowed(principal, Action.APPROVAL_DECIDE, Resource.site(_ctx(request).site))
    context = {"items": shown, "rules": [] if store is None else store.rules(), "enabled": store is not None,
               "may_decide": may_decide, "message": message, "error": error}  # fmt: skip
    return _render(request, "node/approvals.html", context, status_code=status_code)


async def decide(request: Request) -> Response:
    form = await request.form()
    return await run_in_threadpool(_decide, request, form)


def _decide(request: Request, form: FormData) -> Response:
    principal = _require(request, Action.APPROVAL_DECIDE)
    _check_csrf(request, form)
    c, spec_hash = _ctx(request), str(request.path_params["spec_hash"])
    if c.approvals is None:
        raise Forbidden("this site has no [policy]: there is nothing to approve here")
    verdict, reason = str(form.get("decision", "")), str(form.get("reason", "")).strip()
    try:
        current = c.approvals.get(spec_hash)
        if verdict == "approve":
            expires = _expiry(str(form.get("expires_days", "")).strip(), c.clock())
            ds = c.settings.datasets.get(current.dataset)
            pins = {current.dataset: data.dataset_fingerprint(ds, c.fingerprints)} if ds is not None else {}
            a = c.approvals.approve(spec_hash, by=principal, reason=reason, expires_at=expires, fingerprints=pins)
        elif verdict == "reject":
            a = c.approvals.reject(spec_hash, by=principal, reason=reason)
        else:
            raise ValidationError(f"decision must be approve or reject, got {verdict[:20]!r}", where="node page")
    except (ValidationError, PermissionDenied) as exc:
        return approvals(request, error=str(exc), status_code=400)
    return approvals(request, message=f"{a.state.value}: spec {a.spec_hash[:16]} (job {a.name!r})")


def _expiry(days: str, now: float) -> float | None:
    if not days:
        return None
    try:
        value = float(days)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3650:
        raise ValidationError(f"expiry must be a number of days in (0, 3650], got {days[:20]!r}", where="approval")
    return now + value * 86400


def audit(request: Request, *, report: object = None, error: str = "") -> Response:
    _require(request, Action.AUDIT_READ)
    entries, _ = read_log(_ctx(request).audit.path)
    context = {"entries": list(reversed(entries[-200:])), "total": len(entries), "report": report, "error": error}
    return _render(request, "node/audit.html", context)


async def audit_verify(request: Request) -> Response:
    form = await request.form()
    return await run_in_threadpool(_verify, request, form)


def _verify(request: Request, form: FormData) -> Response:
    _require(request, Action.AUDIT_READ)
    _check_csrf(request, form)
    c = _ctx(request)
    try:
        entries, checkpoints = read_log(c.audit.path)  # read-only: verifying never alters the evidence
    except StoreError as exc:
        return audit(request, error=str(exc))
    return audit(request, report=verify_chain(entries, checkpoints, c.audit_public_pem))


def _home(request: Request) -> Response:
    return RedirectResponse("/datasets" if _principal(request) else "/login", status_code=303)


def _login_required(request: Request, exc: Exception) -> Response:
    return login_redirect(request, exc, session_cookie=SESSION_COOKIE)


def _error(request: Request, exc: Exception) -> Response:
    status, heading = (403, "Not allowed") if isinstance(exc, Forbidden) else (400, "Cannot do that")
    return _render(request, "error.html", {"heading": heading, "message": str(exc)}, status_code=status)


def create_node_app(context: NodePageContext) -> Starlette:
    """The node page as a Starlette app (serve it with :func:`medfed.dashboard.server.serve_dashboard`)."""
    routes = [
        Route("/", _home), Route("/login", login_form, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]), Route("/datasets", datasets), Route("/budget", budget),
        Route("/approvals", approvals), Route("/approvals/{spec_hash:str}", decide, methods=["POST"]),
        Route("/audit", audit), Route("/audit/verify", audit_verify, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]  # fmt: skip
    app = Starlette(routes=routes, exception_handlers={LoginRequired: _login_required, Forbidden: _error,
                                                        MedfedError: _error})  # fmt: skip
    app.state.node_page = context
    app.state.templates = Jinja2Templates(directory=TEMPLATES_DIR)
    app.add_middleware(BodyLimit)  # forms are small: refuse large bodies before parsing (413)
    app.add_middleware(SecurityHeaders)
    return app
