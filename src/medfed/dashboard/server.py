"""Serve the dashboard over HTTPS only (TLS 1.2 or newer), in a background thread.

The coordinator's own certificate and key (its startup kit's ``cert.pem`` and ``key.pem``, signed
by the federation CA) authenticate the server; people authenticate with password + TOTP inside
the TLS channel. There is no plaintext listener: a plain HTTP request on the port fails the TLS
handshake.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from medfed.core.errors import ConfigError, TransportError

__all__ = ["DashboardServer", "parse_https_address", "serve_dashboard"]


@dataclass(slots=True, kw_only=True)
class DashboardServer:
    """A running dashboard: its bound ``host``/``port`` and :meth:`stop`."""

    host: str
    port: int
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _socket: socket.socket = field(repr=False)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def minimum_tls(self) -> ssl.TLSVersion:
        """The oldest TLS version the server accepts (set here, not left to the platform's default)."""
        context = self._server.config.ssl
        if context is None:
            raise ConfigError("dashboard server without TLS")
        return context.minimum_version

    def stop(self, timeout_s: float = 5.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)
        self._socket.close()


def parse_https_address(text: str) -> tuple[str, int]:
    """``host:port`` of ``--https`` (port 0: any free port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--https {text!r}: expected host:port, e.g. 127.0.0.1:8443")
    return host.strip("[]"), int(port)


def serve_dashboard(
    app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, cert_path: Path, key_path: Path, ready_s: float = 30.0
) -> DashboardServer:
    """Listen on ``host:port`` with TLS 1.2+ (certificate chain ``cert_path``, key ``key_path``) and
    serve ``app`` from a daemon thread; return once it accepts connections."""
    missing = [f"{what} {p} does not exist" for what, p in (("certificate", cert_path), ("key", key_path))
               if not p.is_file()]  # fmt: skip
    if missing:
        raise ConfigError("dashboard TLS: " + "; ".join(missing))
    config = uvicorn.Config(
        app, ssl_certfile=str(cert_path), ssl_keyfile=str(key_path), log_config=None, access_log=False,
        lifespan="off", ws="none", server_header=False,
    )  # fmt: skip
    config.load()
    if config.ssl is None:  # load() builds it from ssl_certfile; without it there is no HTTPS
        raise ConfigError("dashboard TLS: uvicorn built no TLS context")
    config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2  # HIPAA 164.312(e): no SSL, TLS 1.0 or 1.1
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: without it Nagle + delayed ACK add ~40 ms to small responses
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise TransportError(f"dashboard cannot listen on {host}:{port}: {exc}") from None
    sock.listen(128)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="medfed-dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise TransportError(f"dashboard on {host}:{port} did not start within {ready_s} s")
        time.sleep(0.02)
    bound = sock.getsockname()[1]
    return DashboardServer(host=host, port=bound, _server=server, _thread=thread, _socket=sock)
