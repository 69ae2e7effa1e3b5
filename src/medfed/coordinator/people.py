"""People at the coordinator's API: certificate + password/TOTP session, then the role matrix.

Opt-in: a coordinator started with a user store (``--users``) wraps its :class:`Coordinator` in a
:class:`PeopleGuard`. Then every people call must carry a live session (the ``medfed-session``
gRPC metadata, from the ``Login`` RPC) whose user is the certificate's common name: two factors,
the certificate (something you have, checked by mTLS) and the password + TOTP (something you know
and something else you have). A script may instead send an API token (``medfed-token`` metadata,
``medfed users token issue``), still over its user's certificate: the token's scopes narrow the
role; an expired, revoked or unknown token is refused and audited. The session or token gives a
:class:`Principal`; :func:`authorize` decides each call by role x action x resource; a denial is a
``PERMISSION_DENIED`` with the rule's reason and an ``access.denied`` event in the coordinator's
tamper-evident audit log. Logins, failures and ended sessions are audited there too (no passwords,
codes or session secrets, only hashes of none).

Break glass (45 CFR 164.312(a)(2)(ii)): ``Login`` with a reason gives an admin a short emergency
session (:meth:`UserStore.break_glass`, ``access.break_glass`` with ``severity`` dropped to the
allow-list); every call made under it writes another ``access.break_glass`` event naming the action
and resource, whether the normal matrix or only the emergency grant allowed it.

Calls refused by the transport for their signature, time or nonce are recorded as
``request.refused`` (:func:`refused_call_audit`), with or without a user store.
Without a user store the coordinator authorises by the certificate's role alone, as before.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from medfed.coordinator.audit_hooks import CoordinatorAudit
from medfed.coordinator.service import Coordinator
from medfed.core.errors import AuthenticationError, JobError, PermissionDenied
from medfed.core.params import Parameters
from medfed.core.records import ResultMessage, Role
from medfed.crypto.aead import Keyring
from medfed.security.audit_events import ALLOWED_FIELDS, AuditAction
from medfed.security.authz import Action, Principal, Resource, authorize
from medfed.security.users import AuthenticationFailed, AuthPolicy, Credentials, UserStore
from medfed.transport.api import BudgetFigures, Hello, JobViewDict, LoginGrant, Peer, PollOutcome, Welcome
from medfed.transport.signed_calls import RefusedCall

__all__ = ["PeopleGuard", "open_user_store", "refused_call_audit"]

#: UserStore's event names -> the coordinator audit log's actions.
_EVENTS: dict[str, AuditAction] = {
    "auth.login": AuditAction.LOGIN_SUCCEEDED,
    "auth.failed": AuditAction.LOGIN_FAILED,
    "auth.session_ended": AuditAction.LOGOUT,
    "auth.break_glass": AuditAction.BREAK_GLASS,
    "auth.break_glass_refused": AuditAction.PERMISSION_DENIED,
    "auth.token_refused": AuditAction.LOGIN_FAILED,
}
#: UserStore's field names -> the audit log's allow-listed keys (a break-glass reason's SHA-256 links
#: the event to the reason sealed in the user store: its fingerprint).
_RENAMED = {"why": "reason", "token": "token_id", "reason_sha256": "fingerprint"}
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def _audit_fields(fields: Mapping[str, str | int | float | bool]) -> dict[str, str | int | float | bool]:
    """Keep what the audit log allows: a caller-typed user name or address that is not one is dropped."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in fields.items():
        key = _RENAMED.get(key, key)
        if key not in ALLOWED_FIELDS or value == "":
            continue
        if key == "user" and not (isinstance(value, str) and _NAME.fullmatch(value)):
            continue
        if key == "source":
            try:
                ipaddress.ip_address(str(value))
            except ValueError:
                continue
        out[key] = value
    return out


def _store_audit(audit: CoordinatorAudit) -> Callable[[str, Mapping[str, str | int | float | bool]], None]:
    def record(event: str, fields: Mapping[str, str | int | float | bool]) -> None:
        clean = _audit_fields(fields)
        actor = str(clean.get("user", "unknown"))
        action = _EVENTS.get(event)
        if action is None:  # enrolment, lockout, tokens ...: a user change, named by its kind
            action, clean = AuditAction.USER_CHANGED, clean | {"kind": event}
        audit.record(action, actor, clean)

    return record


def open_user_store(
    path: Path,
    *,
    keyring: Keyring,
    audit: CoordinatorAudit,
    policy: AuthPolicy | None = None,
    clock: Callable[[], float] = time.time,
) -> UserStore:
    """The federation's people (``medfed users add --users-db PATH``), audited in the coordinator's log."""
    return UserStore(path, audit=_store_audit(audit), keyring=keyring, policy=policy, clock=clock)


#: Refused calls written to the audit log per caller and minute; beyond it they are counted, and the
#: caller's next written event carries the count (a flood cannot fill the log, and stays visible).
REFUSALS_PER_MINUTE = 20


def refused_call_audit(
    audit: CoordinatorAudit, *, per_minute: int = REFUSALS_PER_MINUTE, clock: Callable[[], float] = time.monotonic
) -> Callable[[RefusedCall], None]:
    """Record calls the transport refused (unsigned, altered, stale, replayed) as ``request.refused``.

    At most ``per_minute`` events per caller certificate and minute; an event's ``count`` (when > 1)
    says how many refusals it stands for: itself and those left out before it.
    """
    lock = threading.Lock()
    windows: dict[str, list[float]] = {}  # caller -> [window start, written, left out]

    def record(call: RefusedCall) -> None:
        now = clock()
        with lock:
            window = windows.get(call.name)
            if window is None or now - window[0] >= 60.0:
                if len(windows) > 4096:  # callers are the federation's certificates; drop quiet ones
                    for name in [n for n, w in windows.items() if now - w[0] >= 60.0 and not w[2]]:
                        del windows[name]
                window = windows[call.name] = [now, 0, window[2] if window else 0]
            if window[1] >= per_minute:
                window[2] += 1
                return
            window[1] += 1
            count, window[2] = int(window[2]) + 1, 0
        fields: dict[str, str | int | float | bool] = {"user": call.name, "role": call.role, "method": call.method}
        fields |= {"kind": call.refusal.value, "source": call.source} | ({"count": count} if count > 1 else {})
        audit.record(AuditAction.REQUEST_REFUSED, call.name, _audit_fields(fields))

    return record


def _trusted(peer: Peer) -> Peer:
    """The peer the Coordinator sees once the matrix allowed the call (it then skips its own owner check)."""
    return Peer(name=peer.name, role=Role.ADMIN, serial=peer.serial, source=peer.source)


class PeopleGuard:
    """A :class:`CoordinatorAPI` in front of a :class:`Coordinator`: nodes pass through, people are
    authenticated (certificate name == session user) and authorised by the matrix."""

    def __init__(self, coordinator: Coordinator, users: UserStore) -> None:
        self._inner = coordinator
        self._users = users
        self._audit = coordinator.audit

    # --- login ------------------------------------------------------------------------------

    def login(self, peer: Peer, *, user_id: str, password: str, code: str, break_glass_reason: str = "") -> LoginGrant:
        """Password + TOTP for the certificate's own user: a session (lockout and rate limits apply).

        With ``break_glass_reason``: emergency access for an admin (:meth:`UserStore.break_glass`).
        """
        creds = Credentials(user_id=user_id, password=password, code=code, source=peer.source)
        if user_id != peer.name:
            self._audit.record(
                AuditAction.LOGIN_FAILED,
                peer.name,
                _audit_fields({"user": peer.name, "source": peer.source, "reason": "certificate of another user"}),
            )
            raise AuthenticationFailed()
        if break_glass_reason:
            session = self._users.break_glass(creds, reason=break_glass_reason)
        else:
            session = self._users.login(creds)
        return LoginGrant(
            session=session.secret,
            expires_at=session.expires_at,
            role=session.principal.role.value,
            emergency=session.principal.emergency,
        )

    def _principal(self, peer: Peer) -> Principal:
        """The person behind a call: their session, else their API token, over their own certificate."""
        if peer.session and peer.token:
            self._deny(peer, "session", Resource.federation(), "both a session and an api token were sent")
            raise AuthenticationError(f"{peer.name!r}: send a login session or an API token, not both")
        if not peer.session and not peer.token:
            self._deny(peer, "session", Resource.federation(), "no login session")
            raise AuthenticationError(
                f"{peer.name!r}: this coordinator requires a login; run `medfed login --config client.toml` "
                "or give an API token (--token-file, $MEDFED_TOKEN)"
            )
        via = "session" if peer.session else "token"
        try:
            if peer.session:
                principal = self._users.session(peer.session)
            else:
                principal = self._users.authenticate_token(peer.token, source=peer.source)
        except AuthenticationFailed:
            self._deny(peer, via, Resource.federation(), f"the {via} was refused (unknown, expired or revoked)")
            raise
        if principal.user_id != peer.name:
            self._deny(peer, via, Resource.federation(), f"the {via} belongs to another user than the certificate")
            raise AuthenticationFailed()
        return principal

    def _deny(self, peer: Peer, method: str, resource: Resource, reason: str) -> None:
        fields: dict[str, str | int | float | bool] = {"user": peer.name, "method": method, "reason": reason}
        fields |= {"source": peer.source, "resource": resource.kind.value}
        if resource.name and resource.kind.value == "job":
            fields["job_id"] = resource.name
        self._audit.record(AuditAction.PERMISSION_DENIED, peer.name, _audit_fields(fields))

    def _allow(self, peer: Peer, action: Action, resource: Resource) -> Principal:
        principal = self._principal(peer)
        try:
            decision = authorize(principal, action, resource)
        except PermissionDenied as exc:
            self._deny(peer, action.value, resource, f"{principal.role.value} has no {action.value} right here")
            raise PermissionDenied(str(exc)) from None
        if principal.emergency:
            self._emergency_call(peer, action, resource, granted_by_break_glass=decision.emergency)
        return principal

    def _emergency_call(self, peer: Peer, action: Action, resource: Resource, *, granted_by_break_glass: bool) -> None:
        """Every call under a break-glass session is audited loudly, allowed or not by the normal matrix."""
        fields: dict[str, str | int | float | bool] = {"user": peer.name, "method": action.value, "source": peer.source}
        fields |= {"resource": resource.kind.value, "kind": "emergency_call"}
        fields["outcome"] = "break_glass_grant" if granted_by_break_glass else "role_grant"
        if resource.name and resource.kind.value == "job":
            fields["job_id"] = resource.name
        self._audit.record(AuditAction.BREAK_GLASS, peer.name, _audit_fields(fields))

    def _job(self, job_id: str) -> Resource:
        row = self._inner.store.job(job_id)
        if row is None:
            raise JobError(f"no job with id {job_id!r}")
        return Resource.job(job_id, owner=row.owner)

    # --- node-facing: certificate role only (as before) --------------------------------------

    def register(self, peer: Peer, hello: Hello) -> Welcome:
        return self._inner.register(peer, hello)

    def heartbeat(self, peer: Peer) -> bool:
        return self._inner.heartbeat(peer)

    def poll(self, peer: Peer, wait_s: float) -> PollOutcome:
        return self._inner.poll(peer, wait_s)

    def submit(self, peer: Peer, result: ResultMessage) -> None:
        self._inner.submit(peer, result)

    def jobs_ended(
        self, peer: Peer, job_ids: tuple[str, ...], budgets: tuple[BudgetFigures, ...] = ()
    ) -> dict[str, str]:
        return self._inner.jobs_ended(peer, job_ids, budgets)

    # --- people-facing -----------------------------------------------------------------------

    def submit_job(self, peer: Peer, spec_toml: str, source_name: str) -> JobViewDict:
        self._allow(peer, Action.JOB_SUBMIT, Resource.federation())
        return self._inner.submit_job(peer, spec_toml, source_name)

    def get_job(self, peer: Peer, job_id: str) -> JobViewDict:
        self._allow(peer, Action.JOB_READ, self._job(job_id))
        return self._inner.get_job(_trusted(peer), job_id)

    def list_jobs(self, peer: Peer) -> JobViewDict:
        """The jobs the matrix lets this person read (a researcher: their own)."""
        principal = self._principal(peer)
        if principal.scopes is not None and Action.JOB_READ not in principal.scopes:
            self._deny(peer, Action.JOB_READ.value, Resource.federation(), "the api token has no job.read scope")
            raise PermissionDenied(f"{peer.name!r}: the API token's scopes do not include {Action.JOB_READ.value}")
        if principal.emergency:
            self._emergency_call(peer, Action.JOB_READ, Resource.federation(), granted_by_break_glass=False)
        view = self._inner.list_jobs(_trusted(peer))
        jobs = []
        for job in view.get("jobs", []):
            try:
                authorize(principal, Action.JOB_READ, Resource.job(str(job["job_id"]), owner=str(job["owner"])))
            except PermissionDenied:
                continue
            jobs.append(job)
        return view | {"jobs": jobs}

    def cancel_job(self, peer: Peer, job_id: str) -> JobViewDict:
        self._allow(peer, Action.JOB_CANCEL, self._job(job_id))
        return self._inner.cancel_job(_trusted(peer), job_id)

    def fetch_model(self, peer: Peer, job_id: str) -> Parameters:
        self._allow(peer, Action.RESULT_READ, self._job(job_id))
        return self._inner.fetch_model(_trusted(peer), job_id)

    def model_signature(self, peer: Peer, job_id: str) -> bytes:
        self._allow(peer, Action.RESULT_READ, self._job(job_id))
        return self._inner.model_signature(_trusted(peer), job_id)

    def search_catalog(self, peer: Peer, query: str) -> JobViewDict:
        # metadata and coarse counts only: researchers design jobs with it, auditors and admins read it
        self._allow(peer, Action.CATALOG_READ, Resource.federation())
        return self._inner.search_catalog(peer, query)
