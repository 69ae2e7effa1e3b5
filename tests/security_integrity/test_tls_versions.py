"""In transit (HIPAA 164.312(e)): the coordinator's one port speaks TLS 1.2 or 1.3 only, asks for a
client certificate, and answers no plaintext.

Probed with Python's ``ssl`` module against a real coordinator on 127.0.0.1. A control server
(Python ``ssl``, TLS 1.0 allowed) first proves that this client really can offer the old
protocol versions, so a refusal by the coordinator is the coordinator's doing.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator

import pytest

from integration.support import RESEARCHER, Cluster, Federation

pytestmark = pytest.mark.timeout(120)
TIMEOUT_S = 5.0
OLD = {"TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1}
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def _pin(ctx: ssl.SSLContext, low: ssl.TLSVersion, high: ssl.TLSVersion) -> None:
    """Pin the protocol range; for TLS 1.0/1.1 also let OpenSSL offer them at all (security level 0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python deprecates naming TLS 1.0/1.1: we must
        ctx.minimum_version, ctx.maximum_version = low, high
    ctx.set_ciphers("ALL:@SECLEVEL=0")


def _client_context(fed: Federation, version: ssl.TLSVersion | None, *, with_cert: bool = True) -> ssl.SSLContext:
    kit = fed.kit(RESEARCHER)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the identity check is not under test here; the CA still is
    ctx.load_verify_locations(cafile=str(kit / "ca.pem"))
    if with_cert:
        ctx.load_cert_chain(str(kit / "cert.pem"), str(kit / "key.pem"))
    if version is not None:
        _pin(ctx, version, version)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def _handshake(port: int, ctx: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw, ctx.wrap_socket(raw) as tls:
        tls.settimeout(TIMEOUT_S)
        return str(tls.version())


@pytest.fixture
def control_port(fed: Federation) -> Iterator[int]:
    """A permissive TLS server (1.0 and up), to prove the client can offer old versions."""
    kit = fed.kit("coordinator")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(kit / "cert.pem"), str(kit / "key.pem"))
    _pin(ctx, ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_3)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)  # how often the accept loop checks for stop
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(TIMEOUT_S)
                with contextlib.suppress(ssl.SSLError, OSError):
                    ctx.wrap_socket(conn, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    server.close()
    thread.join(TIMEOUT_S + 1)


def _unverified(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.mark.parametrize("name", sorted(OLD))
def test_old_tls_versions_are_refused(cluster: Cluster, fed: Federation, control_port: int, name: str) -> None:
    # the control proves this client can speak the old version ...
    assert _handshake(control_port, _unverified(_client_context(fed, OLD[name]))) == name
    # ... and the coordinator refuses it
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(cluster.proc.port, _client_context(fed, OLD[name]))


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_modern_tls_versions_are_accepted(cluster: Cluster, fed: Federation, version: ssl.TLSVersion) -> None:
    assert _handshake(cluster.proc.port, _client_context(fed, version)) == version.name.replace("_", ".")


def test_default_negotiation_is_modern(cluster: Cluster, fed: Federation) -> None:
    assert _handshake(cluster.proc.port, _client_context(fed, None)) in ("TLSv1.2", "TLSv1.3")


def test_client_certificate_is_required(cluster: Cluster, fed: Federation) -> None:
    ctx = _client_context(fed, ssl.TLSVersion.TLSv1_2, with_cert=False)  # TLS 1.2: the refusal comes in the handshake
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(cluster.proc.port, ctx)


@pytest.mark.parametrize(
    "request_bytes", [H2_PREFACE, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"], ids=["h2", "http1"]
)
def test_plaintext_gets_no_answer(cluster: Cluster, request_bytes: bytes) -> None:
    with socket.create_connection(("127.0.0.1", cluster.proc.port), timeout=TIMEOUT_S) as raw:
        raw.sendall(request_bytes)
        try:
            reply = raw.recv(4096)
        except ConnectionError:
            reply = b""
    # closed, or a TLS alert record (content type 21); never an HTTP/2 frame or an HTTP response
    assert reply == b"" or reply[0] == 0x15, reply[:32]
    assert b"HTTP/" not in reply


def test_plaintext_grpc_channel_never_connects(cluster: Cluster) -> None:
    import grpc  # type: ignore[import-untyped]  # grpcio ships no type stubs

    channel = grpc.insecure_channel(cluster.target)
    try:
        with pytest.raises(grpc.FutureTimeoutError):
            grpc.channel_ready_future(channel).result(timeout=2.0)
    finally:
        channel.close()
