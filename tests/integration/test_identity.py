"""Who may talk to the coordinator, over real gRPC + mutual TLS on loopback: another federation's
certificate, a wrong trust anchor, a revoked or expired certificate and a wrong host name are all
refused with a clear AuthenticationError; there is no plaintext port; roles are enforced."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from integration.support import Cluster, Federation, add_dataset, job_toml, make_federation, start_cluster
from medfed.core.errors import AuthenticationError, PermissionDenied
from medfed.learn.base import TabularData
from medfed.security.provision import add_site, revoke
from medfed.transport import medfed_pb2 as pb
from medfed.transport import medfed_pb2_grpc as pb_grpc
from medfed.transport.api import Hello
from medfed.transport.grpc_client import GrpcCoordinatorLink

pytestmark = pytest.mark.timeout(90)
REFUSAL_S = 20.0  # a refused node must stop within this (it never retries a refused identity)


def _registered(cluster: Cluster) -> set[str]:
    return {n.site for n in cluster.coordinator.nodes.all()} | {n["site"] for n in cluster.coordinator.store.nodes()}


def _refused(cluster: Cluster, site: str, link: GrpcCoordinatorLink) -> AuthenticationError:
    node = cluster.node(site, link=link)
    err = node.wait_finished(REFUSAL_S)
    assert isinstance(err, AuthenticationError), f"expected AuthenticationError, got {err!r}"
    return err


# --- another federation's CA ---------------------------------------------------------------


def test_node_with_a_certificate_from_another_ca_is_refused(
    cluster: Cluster, fed: Federation, tmp_path: Path, heart: dict[str, TabularData]
) -> None:
    # Arrange: an impostor "alpha" from another federation that trusts *our* coordinator, so
    # only its own certificate can be at fault
    other = make_federation(tmp_path / "other", heart, name="otherfed", sites=("alpha",))
    link = GrpcCoordinatorLink(cluster.target, other.tls("alpha", ca_from=fed.kit("alpha")), timeout_s=5.0)

    # Act
    err = _refused(cluster, "alpha", link)

    # Assert: a clear message on the node, and no registration on the coordinator
    assert "TLS handshake with the coordinator" in str(err)
    assert "not signed by this federation's CA" in str(err)
    assert _registered(cluster) == set()


def test_node_trusting_another_ca_refuses_the_coordinator(
    cluster: Cluster, fed: Federation, tmp_path: Path, heart: dict[str, TabularData]
) -> None:
    other = make_federation(tmp_path / "other", heart, name="otherfed", sites=("alpha",))
    link = GrpcCoordinatorLink(cluster.target, fed.tls("alpha", ca_from=other.kit("alpha")), timeout_s=5.0)

    err = _refused(cluster, "alpha", link)

    assert "TLS handshake with the coordinator" in str(err)
    assert _registered(cluster) == set()


# --- revoked -------------------------------------------------------------------------------


def test_revoked_site_is_refused_while_connected_and_when_it_reconnects(cluster: Cluster, fed: Federation) -> None:
    # Arrange: alpha and beta connected
    alpha, beta = cluster.node("alpha"), cluster.node("beta")
    cluster.wait_online(["alpha", "beta"])

    # Act: the federation admin revokes alpha; the coordinator's CrlWatcher sees crl.pem change
    revoke(fed.root, "alpha")

    # Assert: alpha's next call is refused and its runtime stops with the reason
    err = alpha.wait_finished(REFUSAL_S)
    assert isinstance(err, AuthenticationError), repr(err)
    assert "revoked" in str(err) and "alpha" in str(err)
    # a fresh start of alpha is refused at registration
    err = _refused(cluster, "alpha", cluster.link("alpha"))
    assert "revoked" in str(err)
    # beta is unaffected
    assert beta.is_alive() and beta.error is None
    assert cluster.link("beta").heartbeat() is True


# --- expired -------------------------------------------------------------------------------


def _expired_site(fed: Federation, heart: dict[str, TabularData]) -> Path:
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)  # the plan's validity is 30 days
    add_site(fed.root, "late", now=long_ago)
    kit = fed.kit("late")
    add_dataset(kit, "late", heart["alpha"])
    return kit


def test_expired_certificate_is_refused(cluster: Cluster, fed: Federation, heart: dict[str, TabularData]) -> None:
    _expired_site(fed, heart)

    err = _refused(cluster, "late", cluster.link("late"))

    assert "TLS handshake with the coordinator" in str(err) and "expired" in str(err)
    assert "late" not in _registered(cluster)


def test_node_start_with_an_expired_certificate_exits_naming_the_expiry(
    fed: Federation, heart: dict[str, TabularData]
) -> None:
    kit = _expired_site(fed, heart)

    # no coordinator is running: the pre-flight check must refuse before dialling
    proc = subprocess.run(
        [sys.executable, "-m", "medfed", "node", "start", "--config", str(kit / "site.toml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert proc.returncode == 1, proc.stderr
    assert "expired" in proc.stderr and "site.toml" in proc.stderr


# --- host name -----------------------------------------------------------------------------


@pytest.fixture
def elsewhere(tmp_path: Path, heart: dict[str, TabularData]) -> Cluster:
    """A coordinator whose certificate names coord.example.org (and localhost), not 127.0.0.1."""
    fed = make_federation(tmp_path / "hostfed", heart, name="hostfed", host="coord.example.org", sites=("alpha",))
    c = start_cluster(fed, tmp_path / "host-state")
    yield c
    c.close()


@pytest.mark.parametrize("server_name", ["", "wrong.example.org"])
def test_coordinator_with_a_certificate_for_another_host_is_refused(elsewhere: Cluster, server_name: str) -> None:
    # "" dials 127.0.0.1 and checks that name; an override checks the given one instead
    link = GrpcCoordinatorLink(elsewhere.target, elsewhere.fed.tls("alpha", server_name=server_name), timeout_s=5.0)

    err = _refused(elsewhere, "alpha", link)

    assert "TLS handshake with the coordinator" in str(err)
    assert "wrong host name" in str(err)
    assert _registered(elsewhere) == set()


def test_coordinator_with_the_expected_host_name_is_accepted(elsewhere: Cluster) -> None:
    link = GrpcCoordinatorLink(elsewhere.target, elsewhere.fed.tls("alpha", server_name="coord.example.org"))
    try:
        assert link.register(Hello(version="test")).site == "alpha"
    finally:
        link.close()


# --- no plaintext --------------------------------------------------------------------------


def test_there_is_no_plaintext_port(cluster: Cluster) -> None:
    with grpc.insecure_channel(cluster.target) as channel:
        stub = pb_grpc.FederationStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ListJobs(pb.JobQuery(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_without_a_client_certificate_is_refused(cluster: Cluster, fed: Federation) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=(fed.kit("coordinator") / "ca.pem").read_bytes())
    with grpc.secure_channel(cluster.target, creds) as channel:
        stub = pb_grpc.FederationStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Register(pb.Hello(version="x"), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _registered(cluster) == set()


# --- roles ---------------------------------------------------------------------------------


def test_a_researcher_cannot_call_node_rpcs(cluster: Cluster) -> None:
    link = cluster.link("researcher")
    try:
        with pytest.raises(PermissionDenied, match=r"researcher.*needs \['node'\]"):
            link.register(Hello(version="x"))
        with pytest.raises(PermissionDenied):
            link.poll(0.1)
    finally:
        link.close()
    # and a node runtime started with a person's kit stops instead of retrying
    err = cluster.node("researcher", link=cluster.link("researcher")).wait_finished(REFUSAL_S)
    assert isinstance(err, PermissionDenied)
    assert _registered(cluster) == set()


def test_a_node_cannot_call_people_rpcs(cluster: Cluster) -> None:
    as_node = cluster.client("alpha")
    with pytest.raises(PermissionDenied, match=r"alpha.*role 'node'"):
        as_node.submit_job(job_toml(), "x.toml")
    with pytest.raises(PermissionDenied):
        as_node.list_jobs()
    with pytest.raises(PermissionDenied):
        as_node.fetch_model("anything")
    assert cluster.coordinator.store.jobs() == []
