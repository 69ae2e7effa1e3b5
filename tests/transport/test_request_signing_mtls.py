"""Signed requests over real mutual TLS on loopback: a captured call cannot be replayed or altered.

The attacker here holds what a capture gives (the metadata and body of one signed call) and even a
connection authenticated with the same certificate; it does not hold the key (else it could sign).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from integration.support import RESEARCHER, Cluster, Federation
from medfed.coordinator.people import REFUSALS_PER_MINUTE
from medfed.core.errors import AuthenticationError
from medfed.core.params import Parameters
from medfed.core.records import ResultMessage, ResultStatus
from medfed.crypto.request_signing import RequestSigner
from medfed.transport import codec
from medfed.transport import medfed_pb2 as pb
from medfed.transport import medfed_pb2_grpc as pb_grpc
from medfed.transport.api import Hello
from medfed.transport.grpc_client import ClientTls
from medfed.transport.signed_calls import StreamDigest, message_digest, method_path

pytestmark = pytest.mark.timeout(120)


def _channel(cluster: Cluster, tls: ClientTls) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_pem, private_key=tls.key_pem, certificate_chain=tls.cert_pem
    )
    return grpc.secure_channel(cluster.target, creds, options=codec.grpc_options())


@pytest.fixture
def stub(cluster: Cluster, fed: Federation) -> Iterator[pb_grpc.FederationStub]:
    """A raw stub on alpha's certificate (a node), so that tests can send exactly what they captured."""
    with _channel(cluster, fed.tls("alpha")) as channel:
        yield pb_grpc.FederationStub(channel)


def _sign(fed: Federation, name: str, method: str, digest: str, *, key_of: str = "", at: float = 0.0) -> list:
    tls, key = fed.tls(name), fed.tls(key_of or name)
    signer = RequestSigner(key.key_pem, tls.cert_pem, clock=(lambda: at) if at else time.time)
    return list(signer.sign(method_path(method), digest))


def _refused(cluster: Cluster) -> list[dict[str, object]]:
    return [dict(e.fields) for e in cluster.coordinator.audit.log.entries() if e.action == "request.refused"]


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    return err.value


def test_a_captured_call_replayed_from_a_second_channel_is_refused(
    cluster: Cluster, fed: Federation, stub: pb_grpc.FederationStub
) -> None:
    beat = pb.Beat(status="ok")
    captured = _sign(fed, "alpha", "Heartbeat", message_digest(beat))
    assert stub.Heartbeat(beat, timeout=10, metadata=captured).known is False  # the original passes
    with _channel(cluster, fed.tls("alpha")) as second:  # same certificate, new connection
        err = _code(lambda: pb_grpc.FederationStub(second).Heartbeat(beat, timeout=10, metadata=captured))
    assert "replay" in err.details()
    assert _refused(cluster) == [
        {"user": "alpha", "role": "node", "method": "heartbeat", "kind": "replayed", "source": "127.0.0.1"}
    ]


class _Recorder(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Records what a real client puts on the wire: method, metadata and request of each unary call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[tuple[str, str], ...], object]] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: object) -> Any:
        self.calls.append((details.method, tuple(details.metadata or ()), request))
        return continuation(details, request)


def test_a_call_captured_from_the_real_client_cannot_be_replayed(cluster: Cluster, fed: Federation) -> None:
    # Arrange: the node's own link, with a tap on its channel
    link = cluster.link("alpha")
    tap = _Recorder()
    link._stub = pb_grpc.FederationStub(grpc.intercept_channel(link._channel, tap))

    # Act: the genuine call passes; its capture, resent on a new connection with the same certificate, does not
    assert link.register(Hello(version="test")).site == "alpha"
    method, metadata, request = tap.calls[-1]
    assert method == "/medfed.v1.Federation/Register" and {k for k, _ in metadata} >= {
        "medfed-request-time", "medfed-request-nonce", "medfed-request-body", "medfed-request-signature"
    }  # fmt: skip
    with _channel(cluster, fed.tls("alpha")) as second:
        err = _code(lambda: pb_grpc.FederationStub(second).Register(request, timeout=10, metadata=metadata))

    # Assert
    assert "request refused (replayed)" in err.details()
    assert [e["kind"] for e in _refused(cluster)] == ["replayed"]


def test_unsigned_altered_stale_and_foreign_key_calls_are_refused_and_audited(
    cluster: Cluster, fed: Federation, stub: pb_grpc.FederationStub
) -> None:
    hello, other = pb.Hello(version="1"), pb.Hello(version="2")
    attempts = {
        "unsigned": [],
        "altered": _sign(fed, "alpha", "Register", message_digest(other)),  # signed for another body
        "stale": _sign(fed, "alpha", "Register", message_digest(hello), at=time.time() - 600),
        "bad_signature": _sign(fed, "alpha", "Register", message_digest(hello), key_of="beta"),
    }
    for kind, metadata in attempts.items():
        err = _code(lambda m=metadata: stub.Register(hello, timeout=10, metadata=m))
        assert f"request refused ({kind})" in err.details()
    # a call signed for another method is a bad signature too
    _code(lambda: stub.Register(hello, timeout=10, metadata=_sign(fed, "alpha", "Heartbeat", message_digest(hello))))
    assert [e["kind"] for e in _refused(cluster)] == [*attempts, "bad_signature"]
    assert {n.site for n in cluster.coordinator.nodes.online()} == set()  # nothing registered


def test_the_clients_sign_every_call(cluster: Cluster) -> None:
    link, client = cluster.link("alpha"), cluster.client(RESEARCHER)
    assert link.register(Hello(version="test")).site == "alpha"
    assert link.heartbeat() is True
    assert client.list_jobs()["jobs"] == []
    assert _refused(cluster) == []


def test_an_upload_altered_after_signing_is_refused_at_its_end(
    cluster: Cluster, fed: Federation, stub: pb_grpc.FederationStub
) -> None:
    def result(weights: np.ndarray) -> ResultMessage:
        params = Parameters.from_arrays(("w",), (weights,))
        return ResultMessage(task_id="t1", job_id="j1", round=1, site="alpha", status=ResultStatus.OK,
                             num_examples=3, parameters=params)  # fmt: skip

    weights = np.linspace(0, 1, 2_500_000, dtype=np.float32)  # 10 MB: three chunks
    tampered_weights = weights.copy()
    tampered_weights[-1] += 1  # one value in the last chunk: same header, different bytes
    signed_for = StreamDigest.of(codec.result_frames(result(weights)))
    metadata = _sign(fed, "alpha", "SubmitResult", signed_for)
    ack = stub.SubmitResult(codec.result_frames(result(tampered_weights)), timeout=10, metadata=metadata)
    assert not ack.accepted and "altered" in ack.message
    assert [e["kind"] for e in _refused(cluster)] == ["altered"]
    # the genuine stream with a fresh signature passes the signature check (and reaches the coordinator)
    metadata = _sign(fed, "alpha", "SubmitResult", signed_for)
    ack = stub.SubmitResult(codec.result_frames(result(weights)), timeout=10, metadata=metadata)
    assert not ack.accepted and "unknown task" in ack.message  # the coordinator judged it: no such task
    assert len(_refused(cluster)) == 1


def test_a_client_with_a_far_off_clock_gets_a_clear_error(cluster: Cluster, fed: Federation) -> None:
    from medfed.transport.grpc_client import GrpcCoordinatorLink

    link = GrpcCoordinatorLink(cluster.target, fed.tls("alpha"), timeout_s=10.0)
    link._signer = RequestSigner(fed.tls("alpha").key_pem, fed.tls("alpha").cert_pem, clock=lambda: time.time() - 900)
    try:
        with pytest.raises(AuthenticationError, match="check this machine's clock"):
            link.heartbeat()
    finally:
        link.close()


def test_a_call_signed_before_the_coordinator_started_is_retryable(cluster: Cluster, fed: Federation) -> None:
    """After a restart the replay cache is empty: older signatures are refused, as a transport error the node
    retries (signing again), not as an authentication failure that would stop it."""
    from medfed.core.errors import TransportError
    from medfed.transport.grpc_client import GrpcCoordinatorLink

    link = GrpcCoordinatorLink(cluster.target, fed.tls("alpha"), timeout_s=10.0)
    tls = fed.tls("alpha")
    link._signer = RequestSigner(tls.key_pem, tls.cert_pem, clock=lambda: time.time() - 60)  # the cluster is younger
    try:
        with pytest.raises(TransportError, match="sign it again") as err:
            link.heartbeat()
        assert not isinstance(err.value, AuthenticationError)
    finally:
        link.close()
    assert [e["kind"] for e in _refused(cluster)] == ["before_start"]


def test_a_flood_of_refused_calls_cannot_fill_the_audit_log(cluster: Cluster, stub: pb_grpc.FederationStub) -> None:
    for _ in range(REFUSALS_PER_MINUTE + 5):  # unsigned calls, as fast as they go
        _code(lambda: stub.Heartbeat(pb.Beat(status="ok"), timeout=10))
    assert len(_refused(cluster)) == REFUSALS_PER_MINUTE


def test_left_out_refusals_are_counted_in_the_callers_next_event(tmp_path: Path) -> None:
    from medfed.coordinator.audit_hooks import CoordinatorAudit
    from medfed.coordinator.people import refused_call_audit
    from medfed.crypto.request_signing import Refusal
    from medfed.transport.signed_calls import RefusedCall

    audit, t = CoordinatorAudit(tmp_path), [0.0]
    record = refused_call_audit(audit, per_minute=3, clock=lambda: t[0])
    mallory = RefusedCall(name="mallory", role="node", method="heartbeat", refusal=Refusal.REPLAYED, source="10.0.0.9")
    alice = RefusedCall(name="alice", role="node", method="register", refusal=Refusal.STALE, source="10.0.0.7")
    for _ in range(10):
        record(mallory)
    record(alice)  # another caller is not held back by mallory's flood
    t[0] = 61.0
    record(mallory)
    events = [(e.actor, dict(e.fields).get("count")) for e in audit.log.entries() if e.action == "request.refused"]
    audit.close()
    assert events == [("mallory", None)] * 3 + [("alice", None), ("mallory", 8)]
