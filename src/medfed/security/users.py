"""People: unique user ids, roles, passwords, TOTP, API tokens, sessions, lockout and break glass.

One SQLite file (WAL) holds it all; only hashes of secrets are stored (Argon2id for passwords,
SHA-256 for 256-bit random tokens and session ids); TOTP secrets and break-glass reasons, which
must be readable, are sealed with AES-256-GCM under a keyring kept outside the data directory.
The clock is injected so that idle timeouts, lockouts and token expiry are tested without sleeping.
HIPAA 45 CFR 164.312 mapping:

* (a)(2)(i) unique user identification: ``users.user_id`` is the primary key;
* (a)(2)(ii) emergency access: :meth:`UserStore.break_glass`, time-limited and loudly audited;
* (a)(2)(iii) automatic logoff: sessions end after ``session_idle_s`` idle or ``session_max_s``;
* (a)(2)(iv) encryption: TOTP secrets and break-glass reasons sealed at rest;
* (d) person authentication: Argon2id password plus TOTP (RFC 6238), required for admin roles.

Every authentication failure is one opaque :class:`AuthenticationFailed` to the caller; the
reason (unknown user, wrong password, wrong code, locked, rate limited) goes to the audit callable.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from medfed.core.errors import ConfigError, PermissionDenied, ValidationError
from medfed.crypto.aead import Keyring, decrypt, encrypt
from medfed.security.authz import Action, Principal, UserRole, role_actions
from medfed.security.sqlite import open_wal, transaction

__all__ = [
    "ADMIN_ROLES",
    "AuditFn",
    "AuthPolicy",
    "AuthenticationFailed",
    "Credentials",
    "IssuedToken",
    "Session",
    "TokenInfo",
    "TotpAlgorithm",
    "UserRecord",
    "UserStore",
    "otpauth_uri",
    "totp_code",
    "totp_matches",
]

AuditFn = Callable[[str, Mapping[str, str | int | float | bool]], None]
#: Roles that must use TOTP; for the others it is optional.
ADMIN_ROLES = frozenset({UserRole.FEDERATION_ADMIN, UserRole.SITE_ADMIN})
_USER_ID = re.compile(r"[a-z][a-z0-9._-]{1,62}")
_TOKEN_PREFIX = "mft"  # noqa: S105 - a public prefix that makes leaked tokens greppable, not a secret

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY, role TEXT NOT NULL, site TEXT NOT NULL, pw_hash TEXT NOT NULL,
    totp_secret TEXT, totp_pending TEXT, totp_last_step INTEGER NOT NULL DEFAULT -1,
    failures INTEGER NOT NULL DEFAULT 0, locked_until REAL NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY, token_hash TEXT UNIQUE NOT NULL, user_id TEXT NOT NULL,
    scopes TEXT NOT NULL, label TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL, revoked REAL
);
CREATE TABLE IF NOT EXISTS sessions (
    session_hash TEXT PRIMARY KEY, user_id TEXT NOT NULL, created REAL NOT NULL, last_seen REAL NOT NULL,
    expires REAL NOT NULL, emergency INTEGER NOT NULL, ended REAL
);
CREATE TABLE IF NOT EXISTS attempts (
    at REAL NOT NULL, user_id TEXT NOT NULL, source TEXT NOT NULL, ok INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_at ON attempts (at);
CREATE TABLE IF NOT EXISTS break_glass (
    at REAL NOT NULL, user_id TEXT NOT NULL, reason TEXT NOT NULL, session_hash TEXT NOT NULL, expires REAL NOT NULL
);
"""


# --- TOTP (RFC 6238 over HOTP, RFC 4226) ------------------------------------------------------

TOTP_STEP_S = 30
TOTP_DIGITS = 6
TOTP_SKEW_STEPS = 1  # RFC 6238 §5.2: accept one step either side for clock drift


class TotpAlgorithm(enum.StrEnum):
    SHA1 = "SHA1"
    SHA256 = "SHA256"
    SHA512 = "SHA512"


def totp_code(
    secret: bytes, *, at: float, digits: int = TOTP_DIGITS, step_s: int = TOTP_STEP_S,
    algorithm: TotpAlgorithm = TotpAlgorithm.SHA1,
) -> str:  # fmt: skip
    """The TOTP code for time ``at`` (seconds since the epoch): RFC 6238 §4, RFC 4226 §5.3."""
    return _hotp(secret, int(at // step_s), digits=digits, algorithm=algorithm)


def _hotp(secret: bytes, counter: int, *, digits: int, algorithm: TotpAlgorithm) -> str:
    mac = hmac.new(secret, counter.to_bytes(8, "big"), algorithm.value.lower()).digest()
    offset = mac[-1] & 0x0F  # dynamic truncation, RFC 4226 §5.4
    value = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def totp_matches(secret: bytes, code: str, *, at: float, last_step: int) -> int | None:
    """The time step ``code`` belongs to (within ±1 step of ``at``), or ``None``.

    A step at or before ``last_step`` (the last accepted one) is refused: a code works once
    (RFC 6238 §5.2, "the verifier MUST NOT accept the second attempt of the same OTP").
    """
    if len(code) != TOTP_DIGITS or not code.isdigit():
        return None
    now_step = int(at // TOTP_STEP_S)
    for step in range(now_step - TOTP_SKEW_STEPS, now_step + TOTP_SKEW_STEPS + 1):
        expected = _hotp(secret, step, digits=TOTP_DIGITS, algorithm=TotpAlgorithm.SHA1)
        if step > last_step and hmac.compare_digest(expected, code):
            return step
    return None


def otpauth_uri(secret: bytes, *, account: str, issuer: str) -> str:
    """The ``otpauth://`` URI an authenticator app scans (Google Authenticator key-URI format)."""
    label = quote(f"{issuer}:{account}")
    b32 = base64.b32encode(secret).decode().rstrip("=")
    return (f"otpauth://totp/{label}?secret={b32}&issuer={quote(issuer)}"
            f"&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP_S}")  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthPolicy:
    """Limits for logins, sessions and tokens. Defaults follow NIST SP 800-63B §5.2.2 / §7.2."""

    max_failures: int = 5  # consecutive failed logins before lockout
    lockout_s: float = 900.0
    rate_window_s: float = 300.0
    max_attempts_per_user: int = 10  # per rate window, failed or not
    max_attempts_per_source: int = 30
    session_idle_s: float = 900.0  # automatic logoff
    session_max_s: float = 8 * 3600.0
    break_glass_s: float = 3600.0
    token_max_ttl_s: float = 90 * 86400.0
    min_password_len: int = 12
    argon2_time_cost: int = 3  # RFC 9106 §4, second recommended option: t=3, 64 MiB
    argon2_memory_kib: int = 64 * 1024
    argon2_parallelism: int = 4

    def __post_init__(self) -> None:
        problems = [f"{k} must be > 0, got {v!r}" for k, v in self._positive().items() if not v > 0]
        if problems:
            raise ConfigError("; ".join(problems))

    def _positive(self) -> dict[str, float]:
        names = ("max_failures", "lockout_s", "rate_window_s", "max_attempts_per_user", "max_attempts_per_source",
                 "session_idle_s", "session_max_s", "break_glass_s", "token_max_ttl_s", "min_password_len",
                 "argon2_time_cost", "argon2_memory_kib", "argon2_parallelism")  # fmt: skip
        return {n: getattr(self, n) for n in names}


class AuthenticationFailed(PermissionDenied):
    """Login, token or session refused. One message for every cause; the audit log has the reason."""

    kind = "permission"

    def __init__(self) -> None:
        super().__init__("authentication failed (wrong user, password, code or token, expired, or locked)")


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    user_id: str
    password: str
    code: str = ""  # the current TOTP code, when the user has TOTP
    source: str = ""  # the client's address, for rate limits and the audit log


@dataclass(frozen=True, slots=True, kw_only=True)
class UserRecord:
    user_id: str
    role: UserRole
    site: str
    totp_enabled: bool
    disabled: bool
    locked_until: float
    created: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """A login. ``secret`` goes to the client once (cookie); only its hash is stored."""

    secret: str
    principal: Principal
    expires_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedToken:
    """A new API token. ``secret`` is shown once and never stored."""

    token_id: str
    secret: str
    scopes: frozenset[Action]
    expires_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenInfo:
    token_id: str
    user_id: str
    scopes: frozenset[Action]
    label: str
    created: float
    expires_at: float
    revoked: bool


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class UserStore:
    """The people of one federation (or one site) in a SQLite file."""

    def __init__(
        self,
        path: Path,
        *,
        audit: AuditFn,
        keyring: Keyring,
        policy: AuthPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._keyring = keyring  # seals TOTP secrets and break-glass reasons (AES-256-GCM, crypto.aead)
        self.policy = policy or AuthPolicy()
        self._audit = audit
        self._clock = clock
        self._hasher = PasswordHasher(
            time_cost=self.policy.argon2_time_cost,
            memory_cost=self.policy.argon2_memory_kib,
            parallelism=self.policy.argon2_parallelism,
        )
        self._dummy_hash = ""  # made on first need (see _authenticate)
        self._lock = threading.Lock()
        self._db = open_wal(path, SCHEMA, what="user store")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db, self._lock)

    # --- people ---------------------------------------------------------------------------

    def add_user(self, user_id: str, role: UserRole, password: str, *, site: str = "") -> UserRecord:
        """Create a person. Every problem with the input is reported at once."""
        problems = []
        if not _USER_ID.fullmatch(user_id):
            problems.append(f"user id {user_id!r} must match {_USER_ID.pattern}")
        if len(password) < self.policy.min_password_len:
            problems.append(f"the password must have at least {self.policy.min_password_len} characters")
        if role is UserRole.SITE_ADMIN and not site:
            problems.append("a site admin needs --site (the site they administer)")
        if role is not UserRole.SITE_ADMIN and site:
            problems.append(f"only a site admin has a site; {role.value} {user_id!r} was given {site!r}")
        if problems:
            raise ValidationError(problems, where=f"user {user_id!r}")
        pw_hash = self._hasher.hash(password)
        now = self._clock()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM users WHERE user_id=?", (user_id,)).fetchone():
                raise ValidationError(f"user id {user_id!r} is taken (user ids are unique and never reused)")
            db.execute(
                "INSERT INTO users (user_id, role, site, pw_hash, created) VALUES (?,?,?,?,?)",
                (user_id, role.value, site, pw_hash, now),
            )
        self._audit("user.added", {"user": user_id, "role": role.value, "site": site})
        return self.user(user_id)

    def user(self, user_id: str) -> UserRecord:
        with self._lock:
            row = self._db.execute(
                "SELECT user_id, role, site, totp_secret IS NOT NULL, disabled, locked_until, created"
                " FROM users WHERE user_id=?",
                (user_id,),
            ).fetchone()
        if row is None:
            raise ValidationError(f"no user {user_id!r}")
        return _user_record(row)

    def users(self) -> list[UserRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT user_id, role, site, totp_secret IS NOT NULL, disabled, locked_until, created"
                " FROM users ORDER BY user_id"
            ).fetchall()
        return [_user_record(r) for r in rows]

    def disable_user(self, user_id: str) -> None:
        """Disable a person: every session and token of theirs stops working at once."""
        now = self._clock()
        with self._tx() as db:
            if db.execute("UPDATE users SET disabled=1 WHERE user_id=?", (user_id,)).rowcount == 0:
                raise ValidationError(f"no user {user_id!r}")
            db.execute("UPDATE sessions SET ended=? WHERE user_id=? AND ended IS NULL", (now, user_id))
            db.execute("UPDATE tokens SET revoked=? WHERE user_id=? AND revoked IS NULL", (now, user_id))
        self._audit("user.disabled", {"user": user_id})

    # --- TOTP enrolment -------------------------------------------------------------------

    def begin_totp(self, creds: Credentials, *, issuer: str = "medfed") -> str:
        """Start TOTP enrolment after checking the password (and the current code, when re-enrolling).

        Returns a fresh 160-bit secret as an ``otpauth://`` URI; :meth:`confirm_totp` activates it.
        """
        principal = self._authenticate(creds, enrolling=True)
        secret = secrets.token_bytes(20)  # RFC 4226 §4 R6: at least 128 bits, 160 recommended
        with self._tx() as db:
            db.execute(
                "UPDATE users SET totp_pending=? WHERE user_id=?",
                (self._seal_totp(principal.user_id, secret), principal.user_id),
            )
        self._audit("user.totp_enrolment_started", {"user": principal.user_id})
        return otpauth_uri(secret, account=principal.user_id, issuer=issuer)

    def confirm_totp(self, user_id: str, code: str) -> None:
        """Finish enrolment with a code from the authenticator app; replaces any earlier secret."""
        with self._lock:
            row = self._db.execute("SELECT totp_pending FROM users WHERE user_id=?", (user_id,)).fetchone()
        if row is None or row[0] is None:
            raise ValidationError(f"user {user_id!r} has no TOTP enrolment in progress")
        step = totp_matches(self._open_totp(user_id, row[0]), code, at=self._clock(), last_step=-1)
        if step is None:
            self._audit("user.totp_enrolment_failed", {"user": user_id})
            raise ValidationError(f"user {user_id!r}: the code does not match the new TOTP secret")
        with self._tx() as db:
            db.execute(
                "UPDATE users SET totp_secret=totp_pending, totp_pending=NULL, totp_last_step=? WHERE user_id=?",
                (step, user_id),
            )
        self._audit("user.totp_enrolled", {"user": user_id})

    # TOTP secrets are sealed at rest, bound to their user: a secret copied into another user's
    # row, or a database read without the key, yields nothing (45 CFR 164.312(a)(2)(iv)).

    def _seal_totp(self, user_id: str, secret: bytes) -> str:
        return encrypt(self._keyring, secret, context=f"totp:{user_id}").hex()

    def _open_totp(self, user_id: str, sealed: str) -> bytes:
        return decrypt(self._keyring, bytes.fromhex(sealed), context=f"totp:{user_id}")

    def _seal_reason(self, user_id: str, reason: str) -> str:
        return encrypt(self._keyring, reason.encode(), context=f"break-glass:{user_id}").hex()

    def break_glass_reasons(self, user_id: str) -> list[tuple[float, str]]:
        """When ``user_id`` broke glass and why (for the security officer's review)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT at, reason FROM break_glass WHERE user_id=? ORDER BY at", (user_id,)
            ).fetchall()
        context = f"break-glass:{user_id}"
        return [(float(at), decrypt(self._keyring, bytes.fromhex(r), context=context).decode()) for at, r in rows]

    # --- login, sessions ------------------------------------------------------------------

    def login(self, creds: Credentials) -> Session:
        """Password (+ TOTP) login: a session with an idle timeout and an absolute lifetime."""
        principal = self._authenticate(creds)
        return self._new_session(principal, lifetime_s=self.policy.session_max_s)

    def break_glass(self, creds: Credentials, *, reason: str) -> Session:
        """Emergency access: a short elevated session for an admin, with a mandatory reason.

        The reason is kept in this store (it may be sensitive); the audit event carries its
        SHA-256, the user, the role and the expiry, with ``severity=critical``.
        """
        if len(reason.strip()) < 10:
            raise ValidationError("break glass needs a reason of at least 10 characters", where="break glass")
        principal = self._authenticate(creds)
        if principal.role not in ADMIN_ROLES:
            self._audit("auth.break_glass_refused", {"user": principal.user_id, "role": principal.role.value})
            raise PermissionDenied(f"{principal.role.value} {principal.user_id!r} may not break glass")
        elevated = Principal(user_id=principal.user_id, role=principal.role, site=principal.site, emergency=True)
        session = self._new_session(elevated, lifetime_s=self.policy.break_glass_s)
        with self._tx() as db:
            db.execute(
                "INSERT INTO break_glass VALUES (?,?,?,?,?)",
                (
                    self._clock(),
                    principal.user_id,
                    self._seal_reason(principal.user_id, reason),
                    _sha256(session.secret),
                    session.expires_at,
                ),
            )
        self._audit(
            "auth.break_glass",
            {"severity": "critical", "user": principal.user_id, "role": principal.role.value,
             "site": principal.site, "source": creds.source, "expires_at": session.expires_at,
             "reason_sha256": _sha256(reason)},
        )  # fmt: skip
        return session

    def session(self, secret: str, *, touch: bool = True) -> Principal:
        """The principal of a live session; touching it resets the idle timer.

        ``touch=False`` checks without resetting it: for requests a page makes on its own (a
        progress poll), which must not keep an unattended session alive (automatic logoff)."""
        now, digest = self._clock(), _sha256(secret)
        with self._tx() as db:
            row = db.execute(
                "SELECT s.user_id, s.last_seen, s.expires, s.emergency, s.ended, u.role, u.site, u.disabled"
                " FROM sessions s JOIN users u USING (user_id) WHERE s.session_hash=?",
                (digest,),
            ).fetchone()
            if row is None or row[4] is not None or row[7]:
                raise AuthenticationFailed()
            user_id, last_seen, expires, emergency = row[0], row[1], row[2], bool(row[3])
            if now - last_seen > self.policy.session_idle_s or now >= expires:
                db.execute("UPDATE sessions SET ended=? WHERE session_hash=?", (now, digest))
                why = "idle" if now - last_seen > self.policy.session_idle_s else "expired"
                self._audit("auth.session_ended", {"user": user_id, "why": why, "emergency": emergency})
                raise AuthenticationFailed()
            if touch:
                db.execute("UPDATE sessions SET last_seen=? WHERE session_hash=?", (now, digest))
        return Principal(user_id=user_id, role=UserRole(row[5]), site=row[6], emergency=emergency)

    def logout(self, secret: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE sessions SET ended=? WHERE session_hash=? AND ended IS NULL", (self._clock(), _sha256(secret))
            )

    def _new_session(self, principal: Principal, *, lifetime_s: float) -> Session:
        secret, now = secrets.token_urlsafe(32), self._clock()
        with self._tx() as db:
            db.execute(
                "INSERT INTO sessions VALUES (?,?,?,?,?,?,NULL)",
                (_sha256(secret), principal.user_id, now, now, now + lifetime_s, int(principal.emergency)),
            )
        self._audit(
            "auth.login", {"user": principal.user_id, "role": principal.role.value, "emergency": principal.emergency}
        )
        return Session(secret=secret, principal=principal, expires_at=now + lifetime_s)

    def _refuse(self, creds: Credentials, why: str) -> AuthenticationFailed:
        self._audit("auth.failed", {"user": creds.user_id, "source": creds.source, "why": why})
        return AuthenticationFailed()

    def _authenticate(self, creds: Credentials, *, enrolling: bool = False) -> Principal:
        """Password, then TOTP when the user has it; admins without TOTP may only enrol."""
        now = self._clock()
        role, site, pw_hash, totp_secret, last_step = self._admit(creds, now)
        if not self._verify(pw_hash, creds.password):
            raise self._failed(creds, now, "wrong password")
        if totp_secret is not None:
            step = totp_matches(self._open_totp(creds.user_id, totp_secret), creds.code, at=now, last_step=last_step)
            if step is None or not self._spend_step(creds.user_id, step):
                raise self._failed(creds, now, "wrong or reused code")
        elif UserRole(role) in ADMIN_ROLES and not enrolling:
            self._audit("auth.failed", {"user": creds.user_id, "source": creds.source, "why": "totp not enrolled"})
            raise PermissionDenied(
                f"{role} {creds.user_id!r} must enrol TOTP before logging in (medfed users enrol-totp)"
            )
        with self._tx() as db:
            db.execute("UPDATE users SET failures=0 WHERE user_id=?", (creds.user_id,))
            if self._hasher.check_needs_rehash(pw_hash):  # the policy's Argon2 parameters went up
                db.execute(
                    "UPDATE users SET pw_hash=? WHERE user_id=?", (self._hasher.hash(creds.password), creds.user_id)
                )
        return Principal(user_id=creds.user_id, role=UserRole(role), site=site)

    def _admit(self, creds: Credentials, now: float) -> tuple[str, str, str, str | None, int]:
        """Count the attempt against the rate limits and load the user; refuse before any hashing."""
        since = now - self.policy.rate_window_s
        with self._tx() as db:
            db.execute("DELETE FROM attempts WHERE at < ?", (now - 2 * self.policy.rate_window_s,))
            count = "SELECT COUNT(*) FROM attempts WHERE {}=? AND at>=?"
            by_user = db.execute(count.format("user_id"), (creds.user_id, since)).fetchone()[0]
            by_source = db.execute(count.format("source"), (creds.source, since)).fetchone()[0]
            db.execute("INSERT INTO attempts VALUES (?,?,?,0)", (now, creds.user_id, creds.source))
            row = db.execute(
                "SELECT role, site, pw_hash, totp_secret, totp_last_step, locked_until, disabled FROM users"
                " WHERE user_id=?",
                (creds.user_id,),
            ).fetchone()
        from_source = bool(creds.source) and by_source >= self.policy.max_attempts_per_source
        if by_user >= self.policy.max_attempts_per_user or from_source:
            raise self._refuse(creds, "rate limited")
        if row is None:
            # Verify against a throwaway hash so that timing does not reveal which user ids exist.
            self._dummy_hash = self._dummy_hash or self._hasher.hash(secrets.token_hex(16))
            self._verify(self._dummy_hash, creds.password)
            raise self._refuse(creds, "unknown user")
        if row[6]:
            raise self._refuse(creds, "disabled")
        if row[5] > now:
            raise self._refuse(creds, "locked")
        return row[0], row[1], row[2], row[3], row[4]

    def _spend_step(self, user_id: str, step: int) -> bool:
        """Record ``step`` as used; false when another login already used it (one code, one login)."""
        with self._tx() as db:
            spent = db.execute(
                "UPDATE users SET totp_last_step=? WHERE user_id=? AND totp_last_step<?", (step, user_id, step)
            ).rowcount
        return bool(spent)

    def _failed(self, creds: Credentials, now: float, why: str) -> AuthenticationFailed:
        with self._tx() as db:
            db.execute("UPDATE users SET failures=failures+1 WHERE user_id=?", (creds.user_id,))
            failures = db.execute("SELECT failures FROM users WHERE user_id=?", (creds.user_id,)).fetchone()[0]
            locked = failures >= self.policy.max_failures
            if locked:
                db.execute(
                    "UPDATE users SET failures=0, locked_until=? WHERE user_id=?",
                    (now + self.policy.lockout_s, creds.user_id),
                )
        if locked:
            self._audit(
                "auth.locked", {"user": creds.user_id, "source": creds.source, "until": now + self.policy.lockout_s}
            )
        return self._refuse(creds, why)

    def _verify(self, pw_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(pw_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    # --- API tokens -----------------------------------------------------------------------

    def issue_token(
        self, principal: Principal, *, scopes: frozenset[Action], ttl_s: float, label: str = ""
    ) -> IssuedToken:
        """A scoped, expiring API token for ``principal`` (for the CLI). Shown once; only its hash is kept."""
        problems = []
        if not scopes:
            problems.append("a token needs at least one scope")
        beyond = sorted(s.value for s in scopes - role_actions(principal.role))
        if beyond:
            problems.append(f"a {principal.role.value} cannot hold the scopes {beyond}")
        if not 0 < ttl_s <= self.policy.token_max_ttl_s:
            problems.append(f"ttl must be in (0, {self.policy.token_max_ttl_s:g}] seconds, got {ttl_s!r}")
        if principal.scopes is not None and not scopes <= principal.scopes:
            problems.append(f"a token cannot grant more than its issuer's scopes {sorted(principal.scopes)}")
        if principal.emergency:
            problems.append("a break-glass session cannot issue tokens")
        if problems:
            raise ValidationError(problems, where=f"token for {principal.user_id!r}")
        token_id, now = secrets.token_hex(6), self._clock()
        secret = f"{_TOKEN_PREFIX}_{token_id}_{secrets.token_urlsafe(32)}"  # 256 random bits
        with self._tx() as db:
            db.execute(
                "INSERT INTO tokens VALUES (?,?,?,?,?,?,?,NULL)",
                (token_id, _sha256(secret), principal.user_id, json.dumps(sorted(scopes)), label, now, now + ttl_s),
            )
        self._audit(
            "token.issued",
            {"user": principal.user_id, "token": token_id, "scopes": ",".join(sorted(scopes)), "ttl_s": ttl_s},
        )
        return IssuedToken(token_id=token_id, secret=secret, scopes=scopes, expires_at=now + ttl_s)

    def authenticate_token(self, secret: str, *, source: str = "") -> Principal:
        """The principal behind an API token, limited to the token's scopes."""
        with self._lock:
            row = self._db.execute(
                "SELECT t.token_id, t.user_id, t.scopes, t.expires, t.revoked, u.role, u.site, u.disabled"
                " FROM tokens t JOIN users u USING (user_id) WHERE t.token_hash=?",
                (_sha256(secret),),
            ).fetchone()
        if row is None or row[4] is not None or row[7] or self._clock() >= row[3]:
            why = "unknown" if row is None else "revoked" if row[4] is not None else "disabled" if row[7] else "expired"
            self._audit("auth.token_refused", {"token": "" if row is None else row[0], "why": why, "source": source})
            raise AuthenticationFailed()
        scopes = frozenset(Action(s) for s in json.loads(row[2]))
        return Principal(user_id=row[1], role=UserRole(row[5]), site=row[6], scopes=scopes)

    def revoke_token(self, token_id: str, *, by: Principal) -> None:
        """Revoke a token: its owner or a federation admin may; it stops working at once."""
        with self._tx() as db:
            row = db.execute("SELECT user_id FROM tokens WHERE token_id=?", (token_id,)).fetchone()
            if row is None:
                raise ValidationError(f"no token {token_id!r}")
            if row[0] != by.user_id and by.role is not UserRole.FEDERATION_ADMIN:
                raise PermissionDenied(f"{by.role.value} {by.user_id!r} may not revoke another person's token")
            db.execute("UPDATE tokens SET revoked=? WHERE token_id=? AND revoked IS NULL", (self._clock(), token_id))
        self._audit("token.revoked", {"token": token_id, "user": row[0], "by": by.user_id})

    def tokens(self, user_id: str | None = None) -> list[TokenInfo]:
        query = "SELECT token_id, user_id, scopes, label, created, expires, revoked FROM tokens"
        with self._lock:
            if user_id is None:
                rows = self._db.execute(query + " ORDER BY created").fetchall()
            else:
                rows = self._db.execute(query + " WHERE user_id=? ORDER BY created", (user_id,)).fetchall()
        return [
            TokenInfo(token_id=r[0], user_id=r[1], scopes=frozenset(Action(s) for s in json.loads(r[2])), label=r[3],
                      created=r[4], expires_at=r[5], revoked=r[6] is not None)
            for r in rows
        ]  # fmt: skip


def _user_record(row: tuple[object, ...]) -> UserRecord:
    return UserRecord(
        user_id=str(row[0]), role=UserRole(str(row[1])), site=str(row[2]), totp_enabled=bool(row[3]),
        disabled=bool(row[4]), locked_until=float(row[5]), created=float(row[6]),  # type: ignore[arg-type]  # SQLite REAL
    )  # fmt: skip
