"""Cost of signed requests: a signed unary call against an unsigned one, same server, same run.

    .venv/bin/python benchmarks/request_signing.py [--calls 2000] [--upload-mb 100]

One process, real gRPC over mutual TLS on 127.0.0.1 (a fresh CA, a coordinator and a node
certificate, P-256 like every kit). Two servers run the same :class:`FederationServicer` in front
of a trivial API (``Heartbeat`` answers at once), so the call is almost all transport:

* ``unsigned``: the servicer's verifier accepts anything and the client sends no signature (what
  medfed did before signed requests: mTLS only);
* ``signed``: the real :class:`RequestVerifier` (time, body digest, ECDSA P-256 verify, replay cache)
  and a client that signs each call (fresh nonce, time, ECDSA P-256 sign).

Calls alternate between the two in blocks (A B A B ...) so that machine load hits both alike; the
median per-call time of each is reported, and their ratio. Also: the signer's and the verifier's
cost alone (median of ``--calls`` repetitions), and the upload digest's throughput
(:class:`StreamDigest` over a ``--upload-mb`` model's frames; the client hashes once before it
sends, the server folds frames as they arrive). Results on stdout and in
``benchmarks/results/request_signing.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from medfed.core.params import Parameters
from medfed.core.records import ResultMessage, ResultStatus, Role
from medfed.crypto import IdentitySpec, create_ca, issue_certificate
from medfed.crypto.request_signing import RequestSigner, RequestVerifier
from medfed.transport import codec
from medfed.transport import medfed_pb2 as pb
from medfed.transport import medfed_pb2_grpc as pb_grpc
from medfed.transport.grpc_server import FederationServicer
from medfed.transport.signed_calls import StreamDigest, message_digest, method_path

HERE = Path(__file__).resolve().parent


class _Api:
    """Answers a heartbeat at once: the call measures transport and authentication only."""

    def heartbeat(self, peer: Any) -> bool:
        return True


class _AcceptAll(RequestVerifier):
    """The baseline: no signature checks (mTLS only)."""

    def verify(self, *, method: str, body_sha256: str | None, cert_pem: bytes, metadata: Any) -> str:
        return ""


def _server(verifier: RequestVerifier, tls: dict[str, bytes]) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=codec.grpc_options())
    servicer = FederationServicer(_Api(), lambda: frozenset(), verifier=verifier)  # type: ignore[arg-type]
    pb_grpc.add_FederationServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials(
        [(tls["server_key"], tls["server_cert"])], root_certificates=tls["ca"], require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, port


def _pki() -> dict[str, bytes]:
    now = dt.datetime.now(dt.UTC)
    ca = create_ca("bench", now=now)
    server = issue_certificate(
        ca, IdentitySpec(name="coordinator", role=Role.COORDINATOR, ip_addresses=("127.0.0.1",)), now=now
    )
    node = issue_certificate(ca, IdentitySpec(name="alpha", role=Role.NODE), now=now)
    return {
        "ca": ca.cert_pem, "server_cert": server.cert_pem, "server_key": server.key_pem,
        "node_cert": node.cert_pem, "node_key": node.key_pem,
    }  # fmt: skip


def _stub(port: int, tls: dict[str, bytes]) -> tuple[grpc.Channel, pb_grpc.FederationStub]:
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls["ca"], private_key=tls["node_key"], certificate_chain=tls["node_cert"]
    )
    channel = grpc.secure_channel(f"127.0.0.1:{port}", creds, options=codec.grpc_options())
    return channel, pb_grpc.FederationStub(channel)


def _median_us(fn: Any, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def _calls(args: argparse.Namespace, tls: dict[str, bytes]) -> dict[str, float]:
    plain_server, plain_port = _server(_AcceptAll(clock=time.time), tls)
    signed_server, signed_port = _server(RequestVerifier(clock=time.time), tls)
    signer = RequestSigner(tls["node_key"], tls["node_cert"], clock=time.time)
    beat = pb.Beat(status="ok")
    plain_ch, plain = _stub(plain_port, tls)
    signed_ch, signed = _stub(signed_port, tls)

    def unsigned_call() -> None:
        plain.Heartbeat(beat, timeout=10)

    def signed_call() -> None:
        signed.Heartbeat(beat, timeout=10, metadata=signer.sign(method_path("Heartbeat"), message_digest(beat)))

    try:
        for fn in (unsigned_call, signed_call):  # warm-up: connections, TLS handshakes
            for _ in range(50):
                fn()
        a: list[float] = []
        b: list[float] = []
        block = 50
        for _ in range(max(1, args.calls // block)):
            a.append(_median_us(unsigned_call, block))
            b.append(_median_us(signed_call, block))
    finally:
        plain_ch.close()
        signed_ch.close()
        plain_server.stop(0)
        signed_server.stop(0)
    unsigned_us, signed_us = statistics.median(a), statistics.median(b)
    return {"unsigned_call_us": unsigned_us, "signed_call_us": signed_us, "ratio": signed_us / unsigned_us}


def _parts(args: argparse.Namespace, tls: dict[str, bytes]) -> dict[str, float]:
    signer = RequestSigner(tls["node_key"], tls["node_cert"], clock=time.time)
    verifier = RequestVerifier(clock=time.time)
    digest = message_digest(pb.Beat(status="ok"))
    sign_us = _median_us(lambda: signer.sign(method_path("Heartbeat"), digest), args.calls)
    signed = [dict(signer.sign(method_path("Heartbeat"), digest)) for _ in range(args.calls)]
    it = iter(signed)

    def verify() -> None:
        verifier.verify(method=method_path("Heartbeat"), body_sha256=digest, cert_pem=tls["node_cert"],
                        metadata=next(it))  # fmt: skip

    verify_us = _median_us(verify, args.calls)
    return {"sign_us": sign_us, "verify_us": verify_us}


def _upload(args: argparse.Namespace) -> dict[str, float]:
    n = args.upload_mb * 1024 * 1024 // 4
    params = Parameters.from_arrays(("w",), (np.random.default_rng(0).standard_normal(n, dtype=np.float32),))
    result = ResultMessage(task_id="t", job_id="j", round=1, site="alpha", status=ResultStatus.OK,
                           num_examples=1, parameters=params)  # fmt: skip
    frames_s = min(_seconds(lambda: sum(1 for _ in codec.result_frames(result))) for _ in range(3))
    digest_s = min(_seconds(lambda: StreamDigest.of(codec.result_frames(result))) for _ in range(3))
    mib = args.upload_mb
    return {
        "upload_mib": mib, "frames_only_s": frames_s, "frames_and_digest_s": digest_s,
        "digest_mib_per_s": mib / max(digest_s - frames_s, 1e-9),
    }  # fmt: skip


def _seconds(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2000, help="calls of each kind (in blocks of 50)")
    p.add_argument("--upload-mb", type=int, default=100, help="model size for the upload digest, MiB")
    p.add_argument("--out", type=Path, default=HERE / "results" / "request_signing.json")
    args = p.parse_args(argv)
    tls = _pki()
    calls = _calls(args, tls)
    parts = _parts(args, tls)
    upload = _upload(args)
    print(f"unary call over mTLS, median: unsigned {calls['unsigned_call_us']:.0f} µs, "
          f"signed {calls['signed_call_us']:.0f} µs, ratio {calls['ratio']:.2f}")  # fmt: skip
    print(f"sign {parts['sign_us']:.0f} µs, verify (time, digest, ECDSA, replay cache) {parts['verify_us']:.0f} µs")
    print(f"upload digest: {upload['upload_mib']} MiB model, frames {upload['frames_only_s']:.3f} s, frames + digest "
          f"{upload['frames_and_digest_s']:.3f} s ({upload['digest_mib_per_s']:.0f} MiB/s hashing)")  # fmt: skip
    record = {"machine": platform.platform(), "python": sys.version.split()[0], **calls, **parts, **upload}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
