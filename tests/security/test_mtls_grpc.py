"""Real mutual-TLS handshakes over gRPC on loopback with provisioned kits.

Shows the wiring the transport layer uses: the coordinator kit serves with
``require_client_auth=True``, a site kit dials it, the server reads the peer's certificate from
the auth context, and a certificate from another CA never gets past the handshake. gRPC does not
consult CRLs itself, so revocation is enforced by the server against ``coordinator/crl.pem``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc  # type: ignore[import-untyped]  # grpcio ships no type stubs
import pytest

from medfed.crypto import describe_certificate, load_crl
from medfed.security import (
    ProvisionResult,
    TlsMaterial,
    add_site,
    load_tls_material,
    parse_plan,
    provision,
    revoke,
)

PLAN = """
[federation]
name = "demo"
coordinator_host = "127.0.0.1"
coordinator_port = 50443
[[sites]]
name = "cleveland"
[[sites]]
name = "hungary"
"""
CALL_TIMEOUT_S = 10.0
pytestmark = pytest.mark.timeout(120)


class PingServer:
    """A coordinator stand-in: one unary method answering ``role:name`` of the caller."""

    def __init__(self, material: TlsMaterial, revoked: frozenset[int]) -> None:
        self.revoked = revoked
        handler = grpc.method_handlers_generic_handler(
            "medfed.Ping", {"Ping": grpc.unary_unary_rpc_method_handler(self.ping)}
        )
        self.server = grpc.server(ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((handler,))
        credentials = grpc.ssl_server_credentials(
            [(material.key_pem, material.cert_pem)],
            root_certificates=material.ca_pem,
            require_client_auth=True,
        )
        self.port = self.server.add_secure_port("127.0.0.1:0", credentials)

    def ping(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        peer = describe_certificate(context.auth_context()["x509_pem_cert"][0])
        if peer.serial in self.revoked:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "certificate revoked")
        return f"{peer.role}:{peer.common_name}".encode()


@pytest.fixture
def fed(tmp_path: Path) -> ProvisionResult:
    return provision(parse_plan(PLAN), tmp_path / "fed")


@pytest.fixture
def server(fed: ProvisionResult) -> Iterator[PingServer]:
    revoke(fed.root, "hungary")
    material = load_tls_material(fed.root / "coordinator")
    assert material.crl_pem is not None
    ping_server = PingServer(material, load_crl(material.crl_pem, material.ca_pem))
    ping_server.server.start()
    yield ping_server
    ping_server.server.stop(grace=None).wait(timeout=CALL_TIMEOUT_S)


def _call(port: int, material: TlsMaterial, host: str = "127.0.0.1") -> bytes:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=material.ca_pem,
        private_key=material.key_pem,
        certificate_chain=material.cert_pem,
    )
    with grpc.secure_channel(f"{host}:{port}", credentials) as channel:
        ping = channel.unary_unary("/medfed.Ping/Ping")
        response: bytes = ping(b"ping", timeout=CALL_TIMEOUT_S)
        return response


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_provisioned_site_connects(fed: ProvisionResult, server: PingServer, host: str) -> None:
    site = load_tls_material(fed.root / "sites" / "cleveland")

    assert _call(server.port, site, host) == b"node:cleveland"


def test_certificate_from_another_ca_is_refused(fed: ProvisionResult, server: PingServer, tmp_path: Path) -> None:
    other = provision(parse_plan(PLAN), tmp_path / "other")
    stranger = load_tls_material(other.root / "sites" / "cleveland")
    # Trust the real coordinator, so only the client certificate can be at fault.
    ca_pem = (fed.root / "ca" / "ca.pem").read_bytes()
    impostor = TlsMaterial(ca_pem=ca_pem, cert_pem=stranger.cert_pem, key_pem=stranger.key_pem)

    with pytest.raises(grpc.RpcError) as err:
        _call(server.port, impostor)

    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_site_refuses_a_coordinator_from_another_ca(fed: ProvisionResult, server: PingServer, tmp_path: Path) -> None:
    other = provision(parse_plan(PLAN), tmp_path / "other")
    site = load_tls_material(fed.root / "sites" / "cleveland")
    wrong_trust = TlsMaterial(
        ca_pem=(other.root / "ca" / "ca.pem").read_bytes(),
        cert_pem=site.cert_pem,
        key_pem=site.key_pem,
    )

    with pytest.raises(grpc.RpcError) as err:
        _call(server.port, wrong_trust)

    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_revoked_site_is_refused_by_the_server(fed: ProvisionResult, server: PingServer) -> None:
    site = load_tls_material(fed.root / "sites" / "hungary")

    with pytest.raises(grpc.RpcError) as err:
        _call(server.port, site)

    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (err.value.details() or "")


def test_expired_client_certificate_is_refused(fed: ProvisionResult, server: PingServer, tmp_path: Path) -> None:
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    add_site(fed.root, "stale", now=long_ago)
    stale = load_tls_material(fed.root / "sites" / "stale")

    with pytest.raises(grpc.RpcError) as err:
        _call(server.port, stale)

    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
