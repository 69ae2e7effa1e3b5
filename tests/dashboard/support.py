"""Helpers of the dashboard tests: a provisioned federation, a coordinator with a user store and
the dashboard on HTTPS (127.0.0.1, the coordinator's kit certificate), in-process nodes over real
mutual TLS with Fed-Heart-Disease rows, one person per role with TOTP enrolled, and Playwright
driving Debian's Chromium (``/usr/bin/chromium``; never a downloaded browser).

Fixtures built on these live in ``tests/dashboard/conftest.py``. Typical use::

    def test_something(dash: Dashboard, page: Page) -> None:
        dash.login(page, RESEARCHER)
        page.goto(dash.url + "/jobs")
        shot(page, "jobs")

Every wait is bounded (Playwright's own timeouts, :func:`integration.support.wait_until`).
"""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from integration.support import Cluster, Federation, NodeThread, job_toml, make_federation, wait_until
from medfed.coordinator.app import start_coordinator
from medfed.coordinator.audit_hooks import CoordinatorAudit
from medfed.coordinator.people import open_user_store
from medfed.coordinator.service import CoordinatorSettings
from medfed.crypto.aead import Keyring, generate_key
from medfed.dashboard.app import create_app
from medfed.dashboard.server import DashboardServer, serve_dashboard
from medfed.dashboard.web import DashboardContext
from medfed.learn.base import TabularData
from medfed.report.html import write_job_report
from medfed.security.authz import UserRole
from medfed.security.users import AuthPolicy, Credentials, UserStore, totp_code

__all__ = [
    "ARTIFACTS",
    "AUDITOR",
    "CHROMIUM",
    "FED_ADMIN",
    "PASSWORD",
    "POLICY",
    "RESEARCHER",
    "SITE_ADMIN",
    "USERS",
    "Clock",
    "Dashboard",
    "job_toml",
    "launch_browser",
    "shot",
    "start_dashboard",
]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "dashboard"
PASSWORD = "correct horse battery staple"
#: Cheap Argon2 (tests only); idle timeout long enough for a loaded machine, shortened by moving the clock.
POLICY = AuthPolicy(argon2_time_cost=1, argon2_memory_kib=8 * 1024, argon2_parallelism=1, session_idle_s=900.0)

RESEARCHER = "researcher"  # also has a certificate in the provisioned federation (integration.support)
FED_ADMIN = "fedadmin"
SITE_ADMIN = "alpha-admin"  # administers site "alpha"
AUDITOR = "auditor"
#: user id -> (role, site)
USERS: dict[str, tuple[UserRole, str]] = {
    RESEARCHER: (UserRole.RESEARCHER, ""),
    FED_ADMIN: (UserRole.FEDERATION_ADMIN, ""),
    SITE_ADMIN: (UserRole.SITE_ADMIN, "alpha"),
    AUDITOR: (UserRole.AUDITOR, ""),
}


class Clock:
    """The user store's clock: real time plus an offset a test can move forward (session expiry,
    a fresh TOTP step for the next login). Thread-safe: the dashboard reads it from its threads."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds


def _enrol_totp(users: UserStore, clock: Clock, user_id: str) -> bytes:
    uri = users.begin_totp(Credentials(user_id=user_id, password=PASSWORD))
    b32 = parse_qs(urlparse(uri).query)["secret"][0]
    secret = base64.b32decode(b32 + "=" * (-len(b32) % 8))
    users.confirm_totp(user_id, totp_code(secret, at=clock()))
    clock.advance(30)  # the enrolment code's step is spent
    return secret


@dataclass
class Dashboard:
    """A running federation with the dashboard: ``url`` is ``https://127.0.0.1:<port>``."""

    cluster: Cluster
    users: UserStore
    clock: Clock
    server: DashboardServer
    context: DashboardContext
    totp: dict[str, bytes]
    _login_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def fed(self) -> Federation:
        return self.cluster.fed

    @property
    def coordinator(self) -> Any:
        return self.cluster.coordinator

    def code(self, user: str) -> str:
        """The user's current TOTP code; the clock then moves one step on, so no code is reused."""
        with self._login_lock:
            code = totp_code(self.totp[user], at=self.clock())
            self.clock.advance(30)
            return code

    def login(self, page: Any, user: str, *, next_path: str = "/") -> None:
        """Log ``user`` in through the login form (password + TOTP) and wait for the landing page."""
        page.goto(self.url + "/login" + (f"?next={next_path}" if next_path != "/" else ""))
        page.fill("#user", user)
        page.fill("#password", PASSWORD)
        page.fill("#code", self.code(user))
        with page.expect_navigation():
            page.click("form[action='/login'] button[type=submit]")
        if "/login" in page.url:
            raise AssertionError(f"login of {user!r} failed: {page.inner_text('main')}")

    def submit(self, owner: str = RESEARCHER, **job: Any) -> str:
        """Submit a job straight to the coordinator (as ``owner``); its id."""
        from medfed.core.records import Role
        from medfed.transport.api import Peer

        view = self.coordinator.submit_job(Peer(name=owner, role=Role.RESEARCHER), job_toml(**job), "test job")
        return str(view["job_id"])

    def wait_job(self, job_id: str, *, timeout_s: float = 120.0) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            row = self.coordinator.store.job(job_id)
            return {"state": row.state.value} if row is not None and row.state.finished else None

        return wait_until(finished, timeout_s=timeout_s, what=f"job {job_id} to finish")

    def audit_actions(self) -> list[tuple[str, str, dict[str, object]]]:
        return [(e.action, e.actor, dict(e.fields)) for e in self.coordinator.audit.log.entries()]

    def close(self) -> None:
        self.server.stop()
        self.cluster.close()


def start_dashboard(
    root: Path,
    heart: dict[str, TabularData],
    *,
    sites: tuple[str, ...] = ("alpha", "beta", "gamma"),
    nodes: tuple[str, ...] | None = None,
    heartbeat_s: float = 1.0,  # online = contact within 3 heartbeats: tolerant of a loaded machine
) -> Dashboard:
    """Provision a federation under ``root``, start its coordinator (user store with one person per
    role of :data:`USERS`, each with TOTP) and the dashboard on HTTPS, and node threads for
    ``nodes`` (default: every site), online before this returns."""
    fed = make_federation(root / "fed", heart, sites=sites)
    keyring = Keyring.single(generate_key("k1"))
    clock = Clock()

    def users(audit: CoordinatorAudit) -> UserStore:
        return open_user_store(root / "users.db", keyring=keyring, audit=audit, policy=POLICY, clock=clock)

    state = root / "state"
    kit = fed.kit("coordinator")
    settings = CoordinatorSettings(state_dir=state, heartbeat_interval_s=heartbeat_s, signing_key=kit / "signing.key")

    def report(job_id: str, view: dict[str, Any]) -> None:  # as `medfed coordinator start` does
        if "query_result" not in view and "synthesis_result" not in view:
            write_job_report(view, state / "reports" / f"{job_id}.html")

    proc = start_coordinator(
        settings,
        address="127.0.0.1:0",
        tls=fed.server_tls(),
        crl_path=kit / "crl.pem",
        users=users,
        on_job_finished=report,
    )
    cluster = Cluster(fed=fed, proc=proc, state_dir=state)
    try:
        store = proc.users
        if store is None:
            raise AssertionError("the coordinator opened no user store")
        totp = {}
        for user_id, (role, site) in USERS.items():
            store.add_user(user_id, role, PASSWORD, site=site)
            totp[user_id] = _enrol_totp(store, clock, user_id)
        context = DashboardContext(coordinator=proc.coordinator, users=store, state_dir=state, clock=clock)
        server = serve_dashboard(create_app(context), cert_path=kit / "cert.pem", key_path=kit / "key.pem")
        for site in sites if nodes is None else nodes:
            cluster.node(site)
        cluster.wait_online(list(sites if nodes is None else nodes))
    except BaseException:
        cluster.close()
        raise
    return Dashboard(cluster=cluster, users=store, clock=clock, server=server, context=context, totp=totp)


def launch_browser(playwright: Any) -> Any:
    """Headless Debian Chromium (never ``playwright install``)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])


def shot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as ``build/test-artifacts/dashboard/<name>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def node_thread(dash: Dashboard, site: str) -> NodeThread:
    """The running node thread of ``site``."""
    return next(n for n in dash.cluster.nodes if n.runtime.settings.site == site)
