"""Users: Argon2id passwords, TOTP (RFC 6238 vectors), lockout, rate limits, sessions, tokens, break glass."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from medfed.core.errors import PermissionDenied, StoreError, ValidationError
from medfed.crypto.aead import Keyring, generate_key
from medfed.security.authz import Action, UserRole
from medfed.security.users import (
    AuthenticationFailed,
    AuthPolicy,
    Credentials,
    TotpAlgorithm,
    UserStore,
    totp_code,
    totp_matches,
)

# Cheap Argon2id parameters keep the tests fast; the algorithm is the same.
FAST = AuthPolicy(argon2_time_cost=1, argon2_memory_kib=1024, argon2_parallelism=1, max_failures=3)
PW = "correct horse battery"
KEYRING = Keyring.single(generate_key("k1"))

# RFC 6238 Appendix B: (time, SHA1, SHA256, SHA512), 8 digits.
RFC6238 = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]
SEEDS = {
    TotpAlgorithm.SHA1: b"12345678901234567890",
    TotpAlgorithm.SHA256: b"12345678901234567890" * 1 + b"123456789012",
    TotpAlgorithm.SHA512: b"1234567890" * 6 + b"1234",
}


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Audit:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def __call__(self, name: str, fields: object) -> None:
        self.events.append((name, dict(fields)))  # type: ignore[call-overload]

    def names(self) -> list[str]:
        return [n for n, _ in self.events]


@pytest.fixture
def env(tmp_path: Path) -> tuple[UserStore, Clock, Audit]:
    clock, audit = Clock(), Audit()
    return UserStore(tmp_path / "users.db", audit=audit, keyring=KEYRING, policy=FAST, clock=clock), clock, audit


def secret_of(uri: str) -> bytes:
    import base64
    from urllib.parse import parse_qs, urlparse

    b32 = parse_qs(urlparse(uri).query)["secret"][0]
    return base64.b32decode(b32 + "=" * (-len(b32) % 8))


def enrol(store: UserStore, clock: Clock, user: str) -> bytes:
    secret = secret_of(store.begin_totp(Credentials(user_id=user, password=PW)))
    store.confirm_totp(user, totp_code(secret, at=clock()))
    clock.t += 30  # the enrolment code's step is used up
    return secret


@pytest.mark.parametrize(("t", "sha1", "sha256", "sha512"), RFC6238)
def test_totp_matches_rfc6238_appendix_b(t: int, sha1: str, sha256: str, sha512: str) -> None:
    for algorithm, expected in (
        (TotpAlgorithm.SHA1, sha1),
        (TotpAlgorithm.SHA256, sha256),
        (TotpAlgorithm.SHA512, sha512),
    ):
        assert totp_code(SEEDS[algorithm], at=t, digits=8, algorithm=algorithm) == expected


def test_totp_accepts_one_step_of_skew_and_no_reuse() -> None:
    secret, t = b"k" * 20, 1_000_000_000.0
    prev, cur, nxt, far = (totp_code(secret, at=t + d) for d in (-30, 0, 30, 90))
    assert totp_matches(secret, prev, at=t, last_step=-1) == int(t // 30) - 1
    assert totp_matches(secret, nxt, at=t, last_step=-1) == int(t // 30) + 1
    assert totp_matches(secret, far, at=t, last_step=-1) is None
    assert totp_matches(secret, cur, at=t, last_step=int(t // 30)) is None  # already used
    assert totp_matches(secret, "12a456", at=t, last_step=-1) is None


def test_password_is_argon2id_and_never_stored_in_clear(env: tuple[UserStore, Clock, Audit], tmp_path: Path) -> None:
    store, _, _ = env
    store.add_user("alice", UserRole.RESEARCHER, PW)
    pw_hash = sqlite3.connect(tmp_path / "users.db").execute("SELECT pw_hash FROM users").fetchone()[0]
    assert pw_hash.startswith("$argon2id$") and PW not in pw_hash
    assert store.login(Credentials(user_id="alice", password=PW)).principal.role is UserRole.RESEARCHER


def test_add_user_reports_every_problem_and_ids_are_unique(env: tuple[UserStore, Clock, Audit]) -> None:
    store, _, _ = env
    with pytest.raises(ValidationError) as err:
        store.add_user("Bad Id", UserRole.SITE_ADMIN, "short")
    assert len(err.value.problems) == 3
    store.add_user("bob", UserRole.RESEARCHER, PW)
    with pytest.raises(ValidationError, match="taken"):
        store.add_user("bob", UserRole.AUDITOR, PW)
    assert [u.user_id for u in store.users()] == ["bob"]


def test_admin_must_enrol_totp_then_needs_the_code(env: tuple[UserStore, Clock, Audit]) -> None:
    store, clock, _ = env
    store.add_user("root", UserRole.FEDERATION_ADMIN, PW)
    with pytest.raises(PermissionDenied, match="enrol TOTP"):
        store.login(Credentials(user_id="root", password=PW))
    with pytest.raises(AuthenticationFailed):
        store.begin_totp(Credentials(user_id="root", password="not the password"))
    uri = store.begin_totp(Credentials(user_id="root", password=PW))
    assert uri.startswith("otpauth://totp/medfed%3Aroot?secret=") and "period=30" in uri
    secret = secret_of(uri)
    with pytest.raises(ValidationError):
        store.confirm_totp("root", "000000" if totp_code(secret, at=clock()) != "000000" else "111111")
    store.confirm_totp("root", totp_code(secret, at=clock()))
    clock.t += 30
    with pytest.raises(AuthenticationFailed):
        store.login(Credentials(user_id="root", password=PW))  # no code
    code = totp_code(secret, at=clock())
    assert store.login(Credentials(user_id="root", password=PW, code=code)).principal.user_id == "root"
    with pytest.raises(AuthenticationFailed):  # the same code twice
        store.login(Credentials(user_id="root", password=PW, code=code))


def test_totp_is_optional_for_researchers_but_enforced_once_enrolled(env: tuple[UserStore, Clock, Audit]) -> None:
    store, clock, _ = env
    store.add_user("rita", UserRole.RESEARCHER, PW)
    store.login(Credentials(user_id="rita", password=PW))
    secret = enrol(store, clock, "rita")
    with pytest.raises(AuthenticationFailed):
        store.login(Credentials(user_id="rita", password=PW))
    store.login(Credentials(user_id="rita", password=PW, code=totp_code(secret, at=clock())))
    with pytest.raises(AuthenticationFailed):  # re-enrolment needs the current code too
        store.begin_totp(Credentials(user_id="rita", password=PW))


def test_one_code_wins_a_race_of_concurrent_logins(env: tuple[UserStore, Clock, Audit]) -> None:
    import threading

    store, clock, _ = env
    store.add_user("rita", UserRole.RESEARCHER, PW)
    secret = enrol(store, clock, "rita")
    creds = Credentials(user_id="rita", password=PW, code=totp_code(secret, at=clock()))
    results: list[str] = []

    def attempt() -> None:
        try:
            store.login(creds)
            results.append("ok")
        except AuthenticationFailed:
            results.append("refused")

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == ["ok", "refused", "refused", "refused"]


def test_lockout_after_failures_is_opaque_and_audited(env: tuple[UserStore, Clock, Audit]) -> None:
    store, clock, audit = env
    store.add_user("alice", UserRole.RESEARCHER, PW)
    for _ in range(3):
        with pytest.raises(AuthenticationFailed) as err:
            store.login(Credentials(user_id="alice", password="wrong password!", source="10.0.0.9"))
    assert "auth.locked" in audit.names()
    with pytest.raises(AuthenticationFailed) as locked:  # right password, but locked: same message
        store.login(Credentials(user_id="alice", password=PW))
    assert str(locked.value) == str(err.value)
    assert audit.events[-1][1]["why"] == "locked"
    clock.t += FAST.lockout_s + 1
    store.login(Credentials(user_id="alice", password=PW))


def test_rate_limit_per_user_and_per_source(tmp_path: Path) -> None:
    clock, audit = Clock(), Audit()
    policy = AuthPolicy(argon2_time_cost=1, argon2_memory_kib=1024, argon2_parallelism=1, max_failures=100,
                        max_attempts_per_user=4, max_attempts_per_source=6, rate_window_s=60)  # fmt: skip
    store = UserStore(tmp_path / "u.db", audit=audit, keyring=KEYRING, policy=policy, clock=clock)
    for name in ("ann", "ben"):
        store.add_user(name, UserRole.RESEARCHER, PW)
    for _ in range(4):
        store.login(Credentials(user_id="ann", password=PW, source="a"))
    with pytest.raises(AuthenticationFailed):
        store.login(Credentials(user_id="ann", password=PW, source="b"))
    assert audit.events[-1][1]["why"] == "rate limited"
    store.login(Credentials(user_id="ben", password=PW, source="b"))
    store.login(Credentials(user_id="ben", password=PW, source="a"))
    store.login(Credentials(user_id="ben", password=PW, source="a"))
    with pytest.raises(AuthenticationFailed):  # source "a" made 6 attempts in the window
        store.login(Credentials(user_id="ben", password=PW, source="a"))
    clock.t += 61
    store.login(Credentials(user_id="ann", password=PW, source="a"))


def test_unknown_user_gets_the_same_error(env: tuple[UserStore, Clock, Audit]) -> None:
    store, _, audit = env
    with pytest.raises(AuthenticationFailed):
        store.login(Credentials(user_id="nobody", password=PW))
    assert audit.events[-1] == ("auth.failed", {"user": "nobody", "source": "", "why": "unknown user"})


def test_session_idle_timeout_and_absolute_lifetime(env: tuple[UserStore, Clock, Audit]) -> None:
    store, clock, audit = env
    store.add_user("alice", UserRole.RESEARCHER, PW)
    s = store.login(Credentials(user_id="alice", password=PW))
    clock.t += FAST.session_idle_s - 1
    assert store.session(s.secret).user_id == "alice"
    clock.t += FAST.session_idle_s + 1
    with pytest.raises(AuthenticationFailed):
        store.session(s.secret)
    assert audit.events[-1][1]["why"] == "idle"
    s2 = store.login(Credentials(user_id="alice", password=PW))
    for _ in range(int(FAST.session_max_s // 600) + 1):  # active all day, never idle
        clock.t += 600
        try:
            store.session(s2.secret)
        except AuthenticationFailed:
            break
    assert clock.t - (s2.expires_at - FAST.session_max_s) >= FAST.session_max_s
    assert audit.events[-1][1]["why"] == "expired"
    s3 = store.login(Credentials(user_id="alice", password=PW))
    store.logout(s3.secret)
    with pytest.raises(AuthenticationFailed):
        store.session(s3.secret)


def test_tokens_are_scoped_expiring_hashed_and_revocable(env: tuple[UserStore, Clock, Audit], tmp_path: Path) -> None:
    store, clock, _ = env
    store.add_user("alice", UserRole.RESEARCHER, PW)
    me = store.login(Credentials(user_id="alice", password=PW)).principal
    with pytest.raises(ValidationError, match="cannot hold"):
        store.issue_token(me, scopes=frozenset({Action.USER_MANAGE}), ttl_s=60)
    tok = store.issue_token(me, scopes=frozenset({Action.JOB_READ}), ttl_s=3600, label="laptop")
    assert tok.secret.startswith(f"mft_{tok.token_id}_") and len(tok.secret) > 40
    stored = sqlite3.connect(tmp_path / "users.db").execute("SELECT token_hash FROM tokens").fetchone()[0]
    assert tok.secret not in stored and len(stored) == 64
    p = store.authenticate_token(tok.secret)
    assert p.user_id == "alice" and p.scopes == frozenset({Action.JOB_READ})
    with pytest.raises(AuthenticationFailed):
        store.authenticate_token(tok.secret + "x")
    clock.t += 3601
    with pytest.raises(AuthenticationFailed):
        store.authenticate_token(tok.secret)
    tok2 = store.issue_token(me, scopes=frozenset({Action.JOB_SUBMIT}), ttl_s=3600)
    store.add_user("mallory", UserRole.RESEARCHER, PW)
    other = store.login(Credentials(user_id="mallory", password=PW)).principal
    with pytest.raises(PermissionDenied):
        store.revoke_token(tok2.token_id, by=other)
    store.revoke_token(tok2.token_id, by=me)
    with pytest.raises(AuthenticationFailed):
        store.authenticate_token(tok2.secret)
    assert [t.revoked for t in store.tokens("alice")] == [False, True]


def test_disabling_a_user_ends_sessions_and_tokens(env: tuple[UserStore, Clock, Audit]) -> None:
    store, _, _ = env
    store.add_user("alice", UserRole.RESEARCHER, PW)
    s = store.login(Credentials(user_id="alice", password=PW))
    tok = store.issue_token(s.principal, scopes=frozenset({Action.JOB_READ}), ttl_s=60)
    store.disable_user("alice")
    for attempt in (lambda: store.session(s.secret), lambda: store.authenticate_token(tok.secret)):
        with pytest.raises(AuthenticationFailed):
            attempt()
    with pytest.raises(AuthenticationFailed):
        store.login(Credentials(user_id="alice", password=PW))


def test_break_glass_is_time_limited_needs_reason_and_is_loud(env: tuple[UserStore, Clock, Audit]) -> None:
    store, clock, audit = env
    store.add_user("sam", UserRole.SITE_ADMIN, PW, site="cleveland")
    secret = enrol(store, clock, "sam")
    creds = Credentials(user_id="sam", password=PW, code=totp_code(secret, at=clock()), source="10.1.1.1")
    with pytest.raises(ValidationError, match="reason"):
        store.break_glass(creds, reason="   ")
    reason = "runaway job is exporting during an outage"
    s = store.break_glass(creds, reason=reason)
    assert s.principal.emergency and s.expires_at == clock() + FAST.break_glass_s
    name, fields = audit.events[-1]
    assert name == "auth.break_glass" and fields["severity"] == "critical" and reason not in str(fields)
    assert store.break_glass_reasons("sam") == [(clock(), reason)]
    assert store.session(s.secret).emergency
    with pytest.raises(ValidationError, match="break-glass"):
        store.issue_token(s.principal, scopes=frozenset({Action.JOB_CANCEL}), ttl_s=60)
    clock.t += FAST.break_glass_s
    with pytest.raises(AuthenticationFailed):
        store.session(s.secret)


def test_researcher_cannot_break_glass(env: tuple[UserStore, Clock, Audit]) -> None:
    store, _, audit = env
    store.add_user("rita", UserRole.RESEARCHER, PW)
    with pytest.raises(PermissionDenied, match="may not break glass"):
        store.break_glass(Credentials(user_id="rita", password=PW), reason="I want to see everything now")
    assert audit.names()[-1] == "auth.break_glass_refused"


def test_bad_policy_and_unreadable_store_are_clear_errors(tmp_path: Path) -> None:
    from medfed.core.errors import ConfigError, StoreError

    with pytest.raises(ConfigError, match="lockout_s must be > 0"):
        AuthPolicy(lockout_s=0)
    junk = tmp_path / "users.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open the user store"):
        UserStore(junk, audit=Audit(), keyring=KEYRING, policy=FAST)


def test_totp_secrets_are_sealed_and_bound_to_their_user(env: tuple[UserStore, Clock, Audit], tmp_path: Path) -> None:
    store, clock, _ = env
    for name in ("alice", "mallory"):
        store.add_user(name, UserRole.RESEARCHER, PW)
    secret = enrol(store, clock, "alice")
    enrol(store, clock, "mallory")
    db = sqlite3.connect(tmp_path / "users.db", isolation_level=None)
    sealed = db.execute("SELECT totp_secret FROM users WHERE user_id='alice'").fetchone()[0]
    assert secret.hex() not in sealed and secret not in bytes.fromhex(sealed)
    other = UserStore(tmp_path / "users.db", audit=Audit(), keyring=Keyring.single(generate_key("k2")), policy=FAST)
    with pytest.raises(StoreError):  # the database without its key
        other.login(Credentials(user_id="alice", password=PW, code=totp_code(secret, at=clock())))
    db.execute("UPDATE users SET totp_secret=? WHERE user_id='mallory'", (sealed,))  # copy alice's secret
    with pytest.raises(StoreError):
        store.login(Credentials(user_id="mallory", password=PW, code=totp_code(secret, at=clock())))
