"""The dashboard as `medfed coordinator start --https` serves it, tested with Python's ``ssl``: its
certificate verifies against the federation CA (and only that CA), TLS 1.2 and 1.3 are offered,
TLS 1.1 is refused, and a plaintext HTTP request gets no HTTP answer."""

from __future__ import annotations

import base64
import http.client
import re
import socket
import ssl
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from dashboard.support import PASSWORD, POLICY, Dashboard
from integration.support import Federation, Processes, wait_until
from medfed.crypto.aead import Keyring, generate_key
from medfed.security.authz import UserRole
from medfed.security.users import UserStore

pytestmark = pytest.mark.timeout(180)

HOST = "127.0.0.1"


def _context(
    ca: Path | None, *, minimum: ssl.TLSVersion | None = None, maximum: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca)) if ca else ssl.create_default_context()
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def _handshake(ctx: ssl.SSLContext, port: int) -> str:
    with socket.create_connection((HOST, port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=HOST) as tls:
        return str(tls.version())


@pytest.fixture
def dashboard_port(fed: Federation, processes: Processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """A coordinator process with ``--https 127.0.0.1:0`` and a user store in its state directory."""
    key = generate_key("k1")
    monkeypatch.setenv("MEDFED_DATA_KEY", f"k1:{base64.b64encode(key.secret).decode()}")
    state = tmp_path / "state"
    users = UserStore(state / "users.db", audit=lambda e, f: None, keyring=Keyring.single(key), policy=POLICY)
    users.add_user("researcher", UserRole.RESEARCHER, PASSWORD)
    users.close()
    args = ["coordinator", "start", "--kit", str(fed.kit("coordinator")), "--state", str(state),
            "--listen", f"{HOST}:{fed.port}", "--heartbeat", "1", "--https", f"{HOST}:0"]  # fmt: skip
    proc = processes.run(args, "coordinator")
    wait_until(
        lambda: "coordinator ready on port" in proc.text() or proc.popen.poll() is not None,
        timeout_s=60,
        what="the coordinator process to listen",
    )
    found = re.search(r"dashboard at https://127\.0\.0\.1:(\d+)/", proc.text())
    assert found, proc.text()
    return int(found.group(1))


def test_the_dashboard_speaks_only_tls_1_2_plus_with_the_federation_certificate(
    fed: Federation, dashboard_port: int
) -> None:
    ca = fed.kit("coordinator") / "ca.pem"

    # the certificate verifies against the federation CA, for the address people use
    conn = http.client.HTTPSConnection(HOST, dashboard_port, context=_context(ca), timeout=10)
    conn.request("GET", "/login")
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    assert response.status == 200 and "Authenticator code" in body
    assert response.getheader("x-frame-options") == "DENY"
    assert "medfed_pre=" in (response.getheader("set-cookie") or "")
    assert "Secure" in (response.getheader("set-cookie") or "")

    # ... and not against the public web PKI (a browser without the CA must warn)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(_context(None), dashboard_port)

    # TLS 1.2 and 1.3 are offered; TLS 1.1 is refused
    assert _handshake(_context(ca, maximum=ssl.TLSVersion.TLSv1_2), dashboard_port) == "TLSv1.2"
    assert _handshake(_context(ca, minimum=ssl.TLSVersion.TLSv1_3), dashboard_port) == "TLSv1.3"
    with warnings.catch_warnings():  # Python deprecates TLS 1.1 itself; this client offers it on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        old = _context(ca, minimum=ssl.TLSVersion.TLSv1_1, maximum=ssl.TLSVersion.TLSv1_1)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1: the refusal must come from the server
    with pytest.raises(ssl.SSLError):
        _handshake(old, dashboard_port)

    # no plaintext listener: an HTTP request on the port gets no HTTP answer
    with socket.create_connection((HOST, dashboard_port), timeout=10) as raw:
        raw.sendall(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            answer = raw.recv(1024)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert not answer.startswith(b"HTTP/")


def test_the_server_itself_sets_tls_1_2_as_its_minimum(dash: Dashboard) -> None:
    # Debian's OpenSSL already refuses TLS 1.1 by default; the dashboard does not rely on that
    assert dash.server.minimum_tls is ssl.TLSVersion.TLSv1_2


def test_https_without_a_user_store_is_refused(fed: Federation, tmp_path: Path) -> None:
    args = [sys.executable, "-m", "medfed", "coordinator", "start", "--kit", str(fed.kit("coordinator")),
            "--state", str(tmp_path / "state"), "--listen", f"{HOST}:0", "--https", f"{HOST}:0"]  # fmt: skip

    done = subprocess.run(args, capture_output=True, text=True, timeout=120)

    assert done.returncode == 1
    assert "--https 127.0.0.1:0: the dashboard needs a user store" in done.stderr


def test_a_malformed_https_address_is_refused(fed: Federation, tmp_path: Path) -> None:
    args = [sys.executable, "-m", "medfed", "coordinator", "start", "--kit", str(fed.kit("coordinator")),
            "--state", str(tmp_path / "state"), "--listen", f"{HOST}:0", "--https", "8443"]  # fmt: skip

    done = subprocess.run(args, capture_output=True, text=True, timeout=120)

    assert done.returncode == 1 and "expected host:port" in done.stderr
