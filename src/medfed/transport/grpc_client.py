"""gRPC clients over mutual TLS: the node's link to the coordinator and the researcher's client.

Every call is signed with the kit's key (:mod:`medfed.crypto.request_signing`): a fresh nonce and
the current time per call, so a retry is signed again, never resent.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from medfed.core.errors import AuthenticationError, MedfedError, TransportError, error_from_kind
from medfed.core.params import Parameters
from medfed.core.records import ResultMessage, TaskMessage
from medfed.crypto.pki import check_identity
from medfed.crypto.request_signing import RequestSigner
from medfed.transport import codec
from medfed.transport import medfed_pb2 as pb
from medfed.transport import medfed_pb2_grpc as pb_grpc
from medfed.transport.api import BudgetFigures, Hello, LoginGrant, Welcome
from medfed.transport.grpc_server import ERROR_KIND_KEY, SESSION_KEY
from medfed.transport.signed_calls import TOKEN_KEY, StreamDigest, message_digest, method_path

T = TypeVar("T")

# "verification check failed": how gRPC reports a coordinator certificate for another host name.
_TLS_HINTS = ("handshake", "ssl", "certificate", "tls", "alert", "verification check failed")
# A server that refuses our certificate closes the connection right after the handshake (TLS 1.3:
# the client has already finished its side), so gRPC reports only this; see _Client._diagnose.
_CLOSED_HINT = "socket closed"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientTls:
    """PEM material of a node's or user's identity, the federation CA, and optionally the host
    name to expect in the coordinator's certificate when it differs from the dialled host."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    server_name: str = ""


def translate(exc: grpc.RpcError, target: str) -> MedfedError:
    """Turn a gRPC failure into a medfed error with a message a person can act on."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or ""
    trailing = dict(exc.trailing_metadata() or ()) if isinstance(exc, grpc.Call) else {}
    kind = trailing.get(ERROR_KIND_KEY)
    if isinstance(kind, str):
        return error_from_kind(kind, details)
    if code == grpc.StatusCode.UNAVAILABLE and any(h in details.lower() for h in _TLS_HINTS):
        return AuthenticationError(
            f"TLS handshake with the coordinator at {target} failed: {details}. "
            "Either the coordinator refused this certificate (issued by another CA, expired or "
            "revoked) or this node refused the coordinator's (another CA or wrong host name); "
            "run `medfed node check --config site.toml` to see which."
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(details)
    return TransportError(f"coordinator at {target}: {code.name if code else 'error'}: {details}")


def _channel(target: str, tls: ClientTls) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_pem, private_key=tls.key_pem, certificate_chain=tls.cert_pem
    )
    options: list[tuple[str, Any]] = list(codec.grpc_options())
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.secure_channel(target, creds, options=options)


class _Client:
    def __init__(self, target: str, tls: ClientTls, *, timeout_s: float = 30.0) -> None:
        self.target = target
        self._tls = tls
        self._channel = _channel(target, tls)
        self._stub = pb_grpc.FederationStub(self._channel)
        self._timeout = timeout_s
        self._signer = RequestSigner(tls.key_pem, tls.cert_pem, clock=time.time)

    def _signed(self, method: str, request: Any) -> tuple[tuple[str, str], ...]:
        """Metadata for one call of ``method`` with the message ``request``: the request signature."""
        return self._signer.sign(method_path(method), message_digest(request))

    def _rpc(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except grpc.RpcError as exc:
            raise self._diagnose(translate(exc, self.target)) from None

    def _diagnose(self, err: MedfedError) -> MedfedError:
        """Name the reason when the coordinator dropped the connection and our own certificate
        explains it (expired, not yet valid, not issued by the federation CA we hold).

        With TLS 1.3 a refused client certificate reaches the client only as a closed socket,
        which also happens transiently; so the error becomes a (fatal) AuthenticationError only
        when a local check of our certificate finds a reason the coordinator must refuse it.
        """
        if type(err) is not TransportError or _CLOSED_HINT not in str(err).lower():
            return err
        problems = check_identity(self._tls.cert_pem, self._tls.ca_pem, now=dt.datetime.now(dt.UTC))
        if not problems:
            return err
        return AuthenticationError(
            f"TLS handshake with the coordinator at {self.target} failed: it closed the connection, "
            f"refusing this certificate: {'; '.join(problems)}"
        )

    def close(self) -> None:
        self._channel.close()


class GrpcCoordinatorLink(_Client):
    """A node's outbound connection to the coordinator."""

    def register(self, hello: Hello) -> Welcome:
        msg = pb.Hello(
            version=hello.version,
            datasets=list(hello.datasets),
            tasks=list(hello.tasks),
            catalog_json=hello.catalog_json,
        )
        w = self._rpc(lambda: self._stub.Register(msg, timeout=self._timeout, metadata=self._signed("Register", msg)))
        return Welcome(
            site=w.site, heartbeat_interval_s=w.heartbeat_interval_s, coordinator_version=w.coordinator_version
        )

    def heartbeat(self) -> bool:
        beat = pb.Beat(status="ok")
        return bool(
            self._rpc(
                lambda: self._stub.Heartbeat(beat, timeout=self._timeout, metadata=self._signed("Heartbeat", beat))
            ).known
        )

    def poll(self, wait_s: float) -> TaskMessage | float:
        # the stream is read to its end inside _rpc so that failures mid-stream are translated too
        def call() -> TaskMessage | float:
            req = pb.Poll(wait_s=wait_s)
            meta = self._signed("PollTask", req)
            return codec.read_task(self._stub.PollTask(req, timeout=wait_s + self._timeout, metadata=meta))

        return self._rpc(call)

    def jobs_ended(self, job_ids: tuple[str, ...], budgets: tuple[BudgetFigures, ...] = ()) -> dict[str, str]:
        figures = [pb.BudgetFigures(**dataclasses.asdict(b)) for b in budgets]
        req = pb.OpenJobs(job_ids=list(job_ids), budgets=figures)
        reply = self._rpc(
            lambda: self._stub.JobsEnded(req, timeout=self._timeout, metadata=self._signed("JobsEnded", req))
        )
        return dict(reply.states)

    def submit(self, result: ResultMessage) -> None:
        # the signed digest of an upload covers every frame: one pass to hash, one to send
        digest = StreamDigest.of(codec.result_frames(result))

        def call() -> pb.Ack:
            meta = self._signer.sign(method_path("SubmitResult"), digest)
            ack: pb.Ack = self._stub.SubmitResult(
                codec.result_frames(result), timeout=self._timeout * 10, metadata=meta
            )
            return ack

        ack = self._rpc(call)
        if not ack.accepted:
            kind, _, message = ack.message.partition(": ")
            raise error_from_kind(kind, message)


class ResearcherClient(_Client):
    """What the CLI uses: submit, inspect and cancel jobs, download models.

    ``session`` (from :meth:`login`) or ``token`` (an API token, ``medfed users token issue``) goes
    with every call as gRPC metadata; a coordinator with a user store refuses people's calls
    without one. A token is used only while there is no session.
    """

    def __init__(
        self, target: str, tls: ClientTls, *, timeout_s: float = 30.0, session: str = "", token: str = ""
    ) -> None:
        super().__init__(target, tls, timeout_s=timeout_s)
        self.session = session
        self.token = token

    def _meta(self, method: str, request: Any) -> tuple[tuple[str, str], ...]:
        signed = self._signed(method, request)
        if self.session:
            return ((SESSION_KEY, self.session), *signed)
        return ((TOKEN_KEY, self.token), *signed) if self.token else signed

    def login(self, user_id: str, password: str, code: str = "", *, break_glass_reason: str = "") -> LoginGrant:
        """Password + TOTP over this certificate: a session, also used by this client from now on.

        A ``break_glass_reason`` asks for emergency access (admins only): a short session under
        which every call is loudly audited.
        """
        req = pb.LoginRequest(user_id=user_id, password=password, totp_code=code, break_glass_reason=break_glass_reason)
        reply = self._rpc(lambda: self._stub.Login(req, timeout=self._timeout, metadata=self._signed("Login", req)))
        self.session = reply.session
        return LoginGrant(
            session=reply.session, expires_at=reply.expires_at, role=reply.role, emergency=reply.emergency
        )

    def _json(self, view: pb.JobView) -> dict[str, Any]:
        try:
            data = json.loads(view.json)
        except json.JSONDecodeError as exc:
            raise TransportError(f"malformed job view from {self.target}: {exc}") from None
        if not isinstance(data, dict):
            raise TransportError(f"malformed job view from {self.target}: not an object")
        return data

    def submit_job(self, spec_toml: str, source_name: str = "<job>") -> dict[str, Any]:
        req = pb.JobRequest(spec_toml=spec_toml, source_name=source_name)
        return self._json(
            self._rpc(lambda: self._stub.SubmitJob(req, timeout=self._timeout, metadata=self._meta("SubmitJob", req)))
        )

    def get_job(self, job_id: str) -> dict[str, Any]:
        req = pb.JobQuery(job_id=job_id)
        return self._json(
            self._rpc(lambda: self._stub.GetJob(req, timeout=self._timeout, metadata=self._meta("GetJob", req)))
        )

    def list_jobs(self) -> dict[str, Any]:
        req = pb.JobQuery()
        return self._json(
            self._rpc(lambda: self._stub.ListJobs(req, timeout=self._timeout, metadata=self._meta("ListJobs", req)))
        )

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        req = pb.JobQuery(job_id=job_id)
        return self._json(
            self._rpc(lambda: self._stub.CancelJob(req, timeout=self._timeout, metadata=self._meta("CancelJob", req)))
        )

    def search_catalog(self, query: str) -> dict[str, Any]:
        """Per-site dataset metadata matching ``query`` (coarse counts; the coordinator holds no rows)."""
        req = pb.CatalogQuery(query=query)
        return self._json(
            self._rpc(
                lambda: self._stub.SearchCatalog(req, timeout=self._timeout, metadata=self._meta("SearchCatalog", req))
            )
        )

    def fetch_model(self, job_id: str) -> Parameters:
        return self.fetch_signed_model(job_id)[0]

    def fetch_signed_model(self, job_id: str) -> tuple[Parameters, bytes]:
        """The final model and the coordinator's signature and provenance (JSON; empty if unsigned)."""

        def call() -> tuple[Parameters, bytes]:
            req = pb.JobQuery(job_id=job_id)
            frames: Iterator[pb.Frame] = self._stub.FetchModel(
                req, timeout=self._timeout * 10, metadata=self._meta("FetchModel", req)
            )
            return codec.read_signed_model(frames, where=f"model of job {job_id}")

        return self._rpc(call)
