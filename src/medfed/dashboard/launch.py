"""Start the dashboard beside a running coordinator (``medfed coordinator start --https``)."""

from __future__ import annotations

import logging
from pathlib import Path

from medfed.coordinator.service import Coordinator
from medfed.dashboard.app import create_app
from medfed.dashboard.server import DashboardServer, parse_https_address, serve_dashboard
from medfed.dashboard.web import DashboardContext
from medfed.security.provision import COORDINATOR_PUB
from medfed.security.users import UserStore

__all__ = ["start_dashboard"]

log = logging.getLogger(__name__)


def start_dashboard(
    coordinator: Coordinator, users: UserStore, *, kit: Path, state_dir: Path, address: str
) -> DashboardServer:
    """Serve the dashboard on ``address`` (``host:port``) over HTTPS with the coordinator kit's
    certificate and key (``cert.pem``, ``key.pem``); people log in against ``users``."""
    host, port = parse_https_address(address)
    public = kit / COORDINATOR_PUB
    context = DashboardContext(
        coordinator=coordinator,
        users=users,
        state_dir=state_dir,
        signing_public_key=public if public.is_file() else None,
    )
    server = serve_dashboard(
        create_app(context), host=host, port=port, cert_path=kit / "cert.pem", key_path=kit / "key.pem"
    )
    log.info("dashboard on %s (HTTPS, TLS 1.2+)", server.url)
    return server
