"""Run a coordinator process: the store, the job runners and the mTLS gRPC service."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from medfed.coordinator.audit_hooks import CoordinatorAudit
from medfed.coordinator.people import PeopleGuard, refused_call_audit
from medfed.coordinator.service import Coordinator, CoordinatorSettings
from medfed.core.errors import AuthenticationError, ValidationError
from medfed.crypto.pki import load_crl
from medfed.security.users import UserStore
from medfed.transport.api import JobViewDict
from medfed.transport.grpc_server import RequestPolicy, ServerTls, serve

log = logging.getLogger(__name__)


class CrlWatcher:
    """Revoked serials from a CRL file, reloaded when the file changes (checked on each call).

    A CRL that fails its signature check is refused and the last good list stays in force.
    """

    def __init__(self, path: Path | None, ca_pem: bytes) -> None:
        self._path, self._ca = path, ca_pem
        self._stamp: tuple[float, int] | None = None
        self._revoked: frozenset[int] = frozenset()
        self._lock = threading.Lock()

    def __call__(self) -> frozenset[int]:
        if self._path is None:
            return self._revoked
        try:
            st = self._path.stat()
        except FileNotFoundError:
            return self._revoked
        stamp = (st.st_mtime, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._revoked = load_crl(self._path.read_bytes(), self._ca)
                    log.info("loaded CRL %s: %d revoked serial(s)", self._path, len(self._revoked))
                except (AuthenticationError, ValidationError, OSError) as exc:
                    log.error("refused CRL %s: %s (keeping the previous list)", self._path, exc)
                self._stamp = stamp
            return self._revoked


@dataclass(frozen=True, slots=True, kw_only=True)
class CoordinatorProcess:
    coordinator: Coordinator
    server: grpc.Server
    port: int
    users: UserStore | None = None

    def stop(self, grace_s: float = 2.0) -> None:
        self.coordinator.stop()
        self.server.stop(grace_s).wait(grace_s + 1)
        if self.users is not None:
            self.users.close()


def start_coordinator(
    settings: CoordinatorSettings,
    *,
    address: str,
    tls: ServerTls,
    crl_path: Path | None,
    on_job_finished: Callable[[str, JobViewDict], None] | None = None,
    users: Callable[[CoordinatorAudit], UserStore] | None = None,
    requests: RequestPolicy | None = None,
) -> CoordinatorProcess:
    """Open the store, resume unfinished jobs, and listen on ``address`` (mTLS only).

    ``users`` opens the federation's user store (given the coordinator's audit log, see
    :func:`medfed.coordinator.people.open_user_store`): people then log in and every people call is
    authorised by the role matrix. Without it the certificate's role alone decides, as before.
    ``requests`` sets the signed-request checks (clock skew, replay cache); refused calls are audited.
    """
    coordinator = Coordinator(settings, on_job_finished=on_job_finished)
    revoked = CrlWatcher(crl_path, tls.ca_pem)
    try:
        store = None if users is None else users(coordinator.audit)
    except BaseException:
        coordinator.stop()
        coordinator.store.close()
        raise
    refused = refused_call_audit(coordinator.audit)
    if store is None:
        server, port = serve(
            coordinator, address=address, tls=tls, revoked=revoked, requests=requests, on_refused=refused
        )
    else:
        guard = PeopleGuard(coordinator, store)
        server, port = serve(
            guard, address=address, tls=tls, revoked=revoked, login=guard.login, requests=requests, on_refused=refused
        )
    coordinator.start()
    log.info(
        "coordinator listening on %s (mutual TLS), state in %s",
        address.rsplit(":", 1)[0] + f":{port}",
        settings.state_dir,
    )
    return CoordinatorProcess(coordinator=coordinator, server=server, port=port, users=store)
