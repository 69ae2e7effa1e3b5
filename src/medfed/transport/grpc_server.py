"""gRPC adapter: the Federation service on one mutual-TLS port, in front of a CoordinatorAPI.

There is no plaintext listener: :func:`serve` only binds with server credentials that require a
client certificate from the federation CA. Who the caller is comes from that certificate (CN =
name, OU = role), never from a message; revoked serials are refused on every call. Every call must
also carry a request signature made with that certificate's key over the method, the body digest, a
nonce and the time (:mod:`medfed.crypto.request_signing`, :mod:`medfed.transport.signed_calls`): an
unsigned, altered, stale or replayed call is refused (``UNAUTHENTICATED``) and reported to
``on_refused`` (the coordinator's audit log).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from medfed.core.errors import (
    AuthenticationError,
    ConfigError,
    DataError,
    JobError,
    MedfedError,
    PermissionDenied,
    RegistryError,
    StoreError,
    TransportError,
    ValidationError,
    error_kind,
)
from medfed.core.records import Role
from medfed.crypto.pki import describe_certificate
from medfed.crypto.request_signing import DEFAULT_MAX_NONCES, DEFAULT_SKEW_S, Refusal, RequestRefused, RequestVerifier
from medfed.transport import codec
from medfed.transport import medfed_pb2 as pb
from medfed.transport import medfed_pb2_grpc as pb_grpc
from medfed.transport.api import BudgetFigures, CoordinatorAPI, Hello, Login, Peer
from medfed.transport.signed_calls import (
    TOKEN_KEY,
    RefusedCall,
    StreamDigest,
    audit_method,
    message_digest,
    method_path,
)

log = logging.getLogger(__name__)

_STATUS: dict[type[MedfedError], grpc.StatusCode] = {
    AuthenticationError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    ValidationError: grpc.StatusCode.INVALID_ARGUMENT,
    RegistryError: grpc.StatusCode.INVALID_ARGUMENT,
    DataError: grpc.StatusCode.FAILED_PRECONDITION,
    JobError: grpc.StatusCode.FAILED_PRECONDITION,
    StoreError: grpc.StatusCode.INTERNAL,
}

ERROR_KIND_KEY = "medfed-error-kind"
SESSION_KEY = "medfed-session"  # a person's login session, when the coordinator has a user store
NODE_ROLES = frozenset({Role.NODE})
PEOPLE_ROLES = frozenset({Role.RESEARCHER, Role.ADMIN})


#: Bytes of model uploads decoded at once (one larger upload still passes, alone).
DEFAULT_UPLOAD_BUDGET = 2 * 1024**3


class ByteBudget:
    """A counting semaphore over bytes: ``hold(n)`` waits until ``n`` bytes are free.

    A request above the capacity waits until nothing else is held, then passes alone, so one
    model larger than the budget is slowed, never refused.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._held = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, n: int, *, alive: Callable[[], bool] = lambda: True) -> Iterator[None]:
        n = min(max(n, 0), self.capacity)
        with self._cond:
            while self._held + n > self.capacity:
                if not alive():
                    raise TransportError("the upload was abandoned while it waited for memory")
                self._cond.wait(1.0)
            self._held += n
        try:
            yield
        finally:
            with self._cond:
                self._held -= n
                self._cond.notify_all()


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestPolicy:
    """How signed requests are checked: allowed clock skew and the replay cache's bound."""

    skew_s: float = DEFAULT_SKEW_S
    max_nonces: int = DEFAULT_MAX_NONCES

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.skew_s <= 3600:
            problems.append(f"skew_s must be in (0, 3600] seconds, got {self.skew_s!r}")
        if self.max_nonces < 1000:
            problems.append(f"max_nonces must be >= 1000, got {self.max_nonces!r}")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerTls:
    """PEM material of the coordinator's identity and the federation CA."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def _source(peer: str) -> str:
    """The IP address in a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``), else ''."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return ""


def _abort(context: grpc.ServicerContext, exc: MedfedError) -> NoReturn:
    code = next((c for t, c in _STATUS.items() if isinstance(exc, t)), grpc.StatusCode.UNKNOWN)
    context.set_trailing_metadata(((ERROR_KIND_KEY, error_kind(exc)),))
    context.abort(code, str(exc))
    raise AssertionError("unreachable: ServicerContext.abort raises")  # grpc is untyped


class FederationServicer(pb_grpc.FederationServicer):  # type: ignore[misc]  # generated base is untyped
    """Authenticates every call by certificate, checks the role, calls the CoordinatorAPI."""

    def __init__(
        self,
        api: CoordinatorAPI,
        revoked: Callable[[], frozenset[int]],
        *,
        upload_budget: ByteBudget | None = None,
        login: Login | None = None,
        verifier: RequestVerifier | None = None,
        on_refused: Callable[[RefusedCall], None] | None = None,
    ) -> None:
        self._api = api
        self._revoked = revoked
        self._budget = upload_budget or ByteBudget(DEFAULT_UPLOAD_BUDGET)
        self._login = login
        self._verifier = verifier or RequestVerifier(clock=time.time)
        self._on_refused = on_refused

    def _peer(self, context: grpc.ServicerContext, roles: frozenset[Role], method: str, request: Any) -> Peer:
        """The authenticated caller of ``method`` whose body is the message ``request``."""
        return self._signed_peer(context, roles, method, request)[0]

    def _signed_peer(
        self, context: grpc.ServicerContext, roles: frozenset[Role], method: str, request: Any
    ) -> tuple[Peer, str]:
        """The caller and the signed body digest; ``request=None`` for a stream, which the caller
        must check against that digest once it has read it."""
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert") or []
        if not pems:
            _abort(context, AuthenticationError("no client certificate presented"))
        info = describe_certificate(pems[0])
        if info.serial in self._revoked():
            log.warning("refused revoked certificate %s (serial %x)", info.common_name, info.serial)
            _abort(
                context,
                AuthenticationError(f"certificate of {info.common_name!r} (serial {info.serial:x}) is revoked"),
            )
        try:
            role = Role(str(info.role))
        except ValueError:
            _abort(context, PermissionDenied(f"certificate of {info.common_name!r} carries unknown role {info.role!r}"))
        if role not in roles:
            allowed = sorted(r.value for r in roles)
            _abort(
                context, PermissionDenied(f"{info.common_name!r} has role {role.value!r}; this call needs {allowed}")
            )
        meta = {str(k): str(v) for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        source = _source(context.peer())
        body = None if request is None else message_digest(request)
        try:
            signed = self._verifier.verify(
                method=method_path(method), body_sha256=body, cert_pem=pems[0], metadata=meta
            )
        except RequestRefused as exc:
            self._refused(RefusedCall(name=info.common_name, role=role.value, method=audit_method(method),
                                      refusal=exc.refusal, source=source))  # fmt: skip
            if exc.refusal is Refusal.BEFORE_START:  # retryable: a TransportError at the caller, which signs again
                context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            _abort(context, exc)
        peer = Peer(
            name=info.common_name,
            role=role,
            serial=info.serial,
            session=meta.get(SESSION_KEY, ""),
            token=meta.get(TOKEN_KEY, ""),
            source=source,
            cert_expires=info.not_after.timestamp(),
        )
        return peer, signed

    def _refused(self, call: RefusedCall) -> None:
        log.warning("refused %s from %s (%s): %s", call.method, call.name, call.source, call.refusal.value)
        if self._on_refused is not None:
            try:
                self._on_refused(call)
            except Exception:  # the call is refused either way; a broken audit hook is logged
                log.exception("could not record the refused call")

    def _call(self, context: grpc.ServicerContext, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except MedfedError as exc:
            _abort(context, exc)

    # --- node-facing ---------------------------------------------------------------------

    def Register(self, request: pb.Hello, context: grpc.ServicerContext) -> pb.Welcome:  # noqa: N802 - gRPC name
        peer = self._peer(context, NODE_ROLES, "Register", request)
        hello = Hello(
            version=request.version,
            datasets=tuple(request.datasets),
            tasks=tuple(request.tasks),
            catalog_json=request.catalog_json,
        )
        w = self._call(context, lambda: self._api.register(peer, hello))
        return pb.Welcome(
            site=w.site, heartbeat_interval_s=w.heartbeat_interval_s, coordinator_version=w.coordinator_version
        )

    def Heartbeat(self, request: pb.Beat, context: grpc.ServicerContext) -> pb.BeatAck:  # noqa: N802
        peer = self._peer(context, NODE_ROLES, "Heartbeat", request)
        return pb.BeatAck(known=self._call(context, lambda: self._api.heartbeat(peer)))

    def PollTask(self, request: pb.Poll, context: grpc.ServicerContext) -> Iterator[pb.Frame]:  # noqa: N802
        peer = self._peer(context, NODE_ROLES, "PollTask", request)
        wait_s = min(max(request.wait_s, 0.0), 60.0)
        outcome = self._call(context, lambda: self._api.poll(peer, wait_s))
        if outcome.task is None:
            yield pb.Frame(none=pb.NoTask(retry_after_s=outcome.retry_after_s))
            return
        yield from codec.task_frames(outcome.task)

    def JobsEnded(self, request: pb.OpenJobs, context: grpc.ServicerContext) -> pb.EndedJobs:  # noqa: N802
        peer = self._peer(context, NODE_ROLES, "JobsEnded", request)
        budgets = tuple(
            BudgetFigures(
                dataset=b.dataset, epsilon_total=b.epsilon_total, delta_total=b.delta_total,
                epsilon_used=b.epsilon_used, delta_used=b.delta_used, epsilon_held=b.epsilon_held,
                delta_held=b.delta_held,
            )
            for b in request.budgets
        )  # fmt: skip
        states = self._call(context, lambda: self._api.jobs_ended(peer, tuple(request.job_ids), budgets))
        return pb.EndedJobs(states=states)

    def SubmitResult(self, request_iterator: Iterator[pb.Frame], context: grpc.ServicerContext) -> pb.Ack:  # noqa: N802
        peer, signed = self._signed_peer(context, NODE_ROLES, "SubmitResult", None)
        digest = StreamDigest()
        frames = digest.over(request_iterator)
        first = next(frames, None)
        need = first.result.layout.total_bytes if first is not None and first.WhichOneof("body") == "result" else 0
        try:
            # each upload in flight holds a buffer of the whole model: bound their sum
            with self._budget.hold(need, alive=context.is_active):
                result = codec.read_result(itertools.chain([first] if first else [], frames), site=peer.name)
                if digest.hexdigest() != signed:  # checked once the whole stream is in, before it is used
                    self._refused(RefusedCall(name=peer.name, role=peer.role.value, method="submit_result",
                                              refusal=Refusal.ALTERED, source=peer.source))  # fmt: skip
                    raise RequestRefused(Refusal.ALTERED, "the uploaded stream differs from the signed one")
                self._api.submit(peer, result)
        except MedfedError as exc:
            return pb.Ack(accepted=False, message=f"{error_kind(exc)}: {exc}")
        return pb.Ack(accepted=True)

    # --- people-facing -------------------------------------------------------------------

    def _view(self, job_id: str, view: dict[str, Any]) -> pb.JobView:
        return pb.JobView(job_id=job_id, json=json.dumps(view, sort_keys=True))

    def SubmitJob(self, request: pb.JobRequest, context: grpc.ServicerContext) -> pb.JobView:  # noqa: N802
        peer = self._peer(context, PEOPLE_ROLES, "SubmitJob", request)
        view = self._call(context, lambda: self._api.submit_job(peer, request.spec_toml, request.source_name))
        return self._view(view["job_id"], view)

    def GetJob(self, request: pb.JobQuery, context: grpc.ServicerContext) -> pb.JobView:  # noqa: N802
        peer = self._peer(context, PEOPLE_ROLES, "GetJob", request)
        return self._view(request.job_id, self._call(context, lambda: self._api.get_job(peer, request.job_id)))

    def ListJobs(self, request: pb.JobQuery, context: grpc.ServicerContext) -> pb.JobView:  # noqa: N802
        peer = self._peer(context, PEOPLE_ROLES, "ListJobs", request)
        return self._view("", self._call(context, lambda: self._api.list_jobs(peer)))

    def CancelJob(self, request: pb.JobQuery, context: grpc.ServicerContext) -> pb.JobView:  # noqa: N802
        peer = self._peer(context, PEOPLE_ROLES, "CancelJob", request)
        return self._view(request.job_id, self._call(context, lambda: self._api.cancel_job(peer, request.job_id)))

    def FetchModel(self, request: pb.JobQuery, context: grpc.ServicerContext) -> Iterator[pb.Frame]:  # noqa: N802
        peer = self._peer(context, PEOPLE_ROLES, "FetchModel", request)
        params = self._call(context, lambda: self._api.fetch_model(peer, request.job_id))
        signature = self._call(context, lambda: self._api.model_signature(peer, request.job_id))
        yield from codec.model_frames(params, signature=signature)

    def SearchCatalog(self, request: pb.CatalogQuery, context: grpc.ServicerContext) -> pb.JobView:  # noqa: N802
        peer = self._peer(context, PEOPLE_ROLES, "SearchCatalog", request)
        return self._view("", self._call(context, lambda: self._api.search_catalog(peer, request.query)))

    def Login(self, request: pb.LoginRequest, context: grpc.ServicerContext) -> pb.LoginReply:  # noqa: N802
        peer = self._peer(context, PEOPLE_ROLES, "Login", request)
        login = self._login
        if login is None:
            _abort(context, ConfigError("this coordinator has no user store: the certificate alone identifies you"))
        grant = self._call(
            context,
            lambda: login(
                peer, user_id=request.user_id, password=request.password, code=request.totp_code,
                break_glass_reason=request.break_glass_reason,
            ),
        )  # fmt: skip
        return pb.LoginReply(
            session=grant.session, expires_at=grant.expires_at, role=grant.role, emergency=grant.emergency
        )


def serve(
    api: CoordinatorAPI,
    *,
    address: str,
    tls: ServerTls,
    revoked: Callable[[], frozenset[int]],
    max_workers: int = 256,
    upload_budget_bytes: int = DEFAULT_UPLOAD_BUDGET,
    login: Login | None = None,
    requests: RequestPolicy | None = None,
    on_refused: Callable[[RefusedCall], None] | None = None,
) -> tuple[grpc.Server, int]:
    """Start the Federation service on ``address`` (``host:port``; port 0 picks one) over mTLS.

    ``requests`` sets the signed-request checks (clock skew, replay cache bound); ``on_refused``
    hears of every call refused for its signature, time or nonce (to audit it).
    Returns the started server and the bound port.
    """
    policy = requests or RequestPolicy()
    verifier = RequestVerifier(skew_s=policy.skew_s, max_nonces=policy.max_nonces, clock=time.time)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=codec.grpc_options())
    servicer = FederationServicer(
        api, revoked, upload_budget=ByteBudget(upload_budget_bytes), login=login, verifier=verifier,
        on_refused=on_refused,
    )  # fmt: skip
    pb_grpc.add_FederationServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials(
        [(tls.key_pem, tls.cert_pem)], root_certificates=tls.ca_pem, require_client_auth=True
    )
    port = server.add_secure_port(address, creds)
    if port == 0:
        raise ConfigError(f"cannot listen on {address}: address in use or not allowed")
    server.start()
    return server, port
