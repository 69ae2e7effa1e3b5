"""Signed requests (medfed.crypto.request_signing): canonical string, tampering, replay, time, cache bound."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medfed.core.errors import AuthenticationError, ValidationError
from medfed.core.records import Role
from medfed.crypto import Credential, IdentitySpec, create_ca, issue_certificate
from medfed.crypto.request_signing import (
    BODY_KEY,
    NONCE_KEY,
    SIGNATURE_KEY,
    TIME_KEY,
    Refusal,
    ReplayCache,
    RequestRefused,
    RequestSigner,
    RequestVerifier,
    body_digest,
    canonical_request,
    certificate_fingerprint,
)

METHOD = "/medfed.v1.Federation/SubmitJob"
T0 = 1_800_000_000.0
NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def ids() -> dict[str, Credential]:
    ca = create_ca("demo", now=NOW)
    return {name: issue_certificate(ca, IdentitySpec(name=name, role=Role.NODE), now=NOW) for name in ("alpha", "beta")}


def _signed(cred: Credential, clock: Clock, body: bytes = b"spec", method: str = METHOD) -> dict[str, str]:
    return dict(RequestSigner(cred.key_pem, cred.cert_pem, clock=clock).sign(method, body_digest(body)))


def test_the_canonical_string_is_versioned_and_one_field_a_line() -> None:
    text = canonical_request(method=METHOD, body_sha256="b" * 64, nonce="n" * 32, time_ms=123, fingerprint="f" * 64)
    assert text.decode().split("\n") == ["medfed-request-v1", METHOD, "b" * 64, "n" * 32, "123", "f" * 64]
    with pytest.raises(ValidationError, match="newline"):
        canonical_request(method="a\nb", body_sha256="", nonce="", time_ms=0, fingerprint="")


def test_a_signed_request_passes_once_and_its_replay_is_refused(ids: dict[str, Credential]) -> None:
    clock = Clock()
    verifier = RequestVerifier(clock=clock)
    headers = _signed(ids["alpha"], clock)
    digest = verifier.verify(method=METHOD, body_sha256=body_digest(b"spec"), cert_pem=ids["alpha"].cert_pem,
                             metadata=headers)  # fmt: skip
    assert digest == hashlib.sha256(b"spec").hexdigest()
    clock.t += 60  # still inside the window
    with pytest.raises(RequestRefused) as err:
        verifier.verify(method=METHOD, body_sha256=digest, cert_pem=ids["alpha"].cert_pem, metadata=headers)
    assert err.value.refusal is Refusal.REPLAYED
    assert isinstance(err.value, AuthenticationError)


def test_each_signature_has_a_fresh_nonce(ids: dict[str, Credential]) -> None:
    clock = Clock()
    a, b = _signed(ids["alpha"], clock), _signed(ids["alpha"], clock)
    assert a[NONCE_KEY] != b[NONCE_KEY] and len(a[NONCE_KEY]) == 32


@pytest.mark.parametrize(
    ("field", "refusal"),
    [
        ("method", Refusal.BAD_SIGNATURE),
        ("body", Refusal.ALTERED),
        ("body_header_and_body", Refusal.BAD_SIGNATURE),
        ("nonce", Refusal.BAD_SIGNATURE),
        ("time", Refusal.BAD_SIGNATURE),
        ("certificate", Refusal.BAD_SIGNATURE),
        ("signature", Refusal.BAD_SIGNATURE),
    ],
)
def test_tampering_with_any_field_is_refused(ids: dict[str, Credential], field: str, refusal: Refusal) -> None:
    clock = Clock()
    verifier = RequestVerifier(clock=clock)
    headers = _signed(ids["alpha"], clock)
    method, body, cert = METHOD, body_digest(b"spec"), ids["alpha"].cert_pem
    if field == "method":
        method = "/medfed.v1.Federation/CancelJob"
    elif field == "body":
        body = body_digest(b"spec, altered")
    elif field == "body_header_and_body":
        body = headers[BODY_KEY] = body_digest(b"spec, altered")
    elif field == "nonce":
        headers[NONCE_KEY] = ("0" if headers[NONCE_KEY][0] != "0" else "1") + headers[NONCE_KEY][1:]
    elif field == "time":
        headers[TIME_KEY] = str(int(headers[TIME_KEY]) + 1)
    elif field == "certificate":  # signed by alpha, arriving on a connection authenticated as beta
        cert = ids["beta"].cert_pem
    else:
        der = bytearray(base64.urlsafe_b64decode(headers[SIGNATURE_KEY][3:] + "=="))
        der[-1] ^= 1
        headers[SIGNATURE_KEY] = "v1." + base64.urlsafe_b64encode(bytes(der)).decode().rstrip("=")
    with pytest.raises(RequestRefused) as err:
        verifier.verify(method=method, body_sha256=body, cert_pem=cert, metadata=headers)
    assert err.value.refusal is refusal
    assert len(verifier.cache) == 0  # nothing refused before the signature check enters the cache


def test_a_request_signed_with_another_key_is_refused(ids: dict[str, Credential]) -> None:
    clock = Clock()
    forged = dict(RequestSigner(ids["beta"].key_pem, ids["alpha"].cert_pem, clock=clock).sign(METHOD, "0" * 64))
    with pytest.raises(RequestRefused) as err:
        RequestVerifier(clock=clock).verify(
            method=METHOD, body_sha256="0" * 64, cert_pem=ids["alpha"].cert_pem, metadata=forged
        )
    assert err.value.refusal is Refusal.BAD_SIGNATURE


@pytest.mark.parametrize("offset_s", [-121.0, 121.0, -3600.0])
def test_stale_or_future_requests_are_refused(ids: dict[str, Credential], offset_s: float) -> None:
    clock = Clock()
    headers = _signed(ids["alpha"], Clock(T0 + offset_s))
    with pytest.raises(RequestRefused, match="check this machine's clock") as err:
        RequestVerifier(skew_s=120.0, clock=clock).verify(
            method=METHOD, body_sha256=None, cert_pem=ids["alpha"].cert_pem, metadata=headers
        )
    assert err.value.refusal is Refusal.STALE


def _started_earlier(skew_s: float, clock: Clock) -> RequestVerifier:
    """A verifier that has been running for a while (its start is no floor for these requests)."""
    clock.t -= 1000
    verifier = RequestVerifier(skew_s=skew_s, clock=clock)
    clock.t += 1000
    return verifier


def test_the_skew_is_configurable(ids: dict[str, Credential]) -> None:
    clock = Clock()
    headers = _signed(ids["alpha"], Clock(T0 - 100))
    _started_earlier(120.0, clock).verify(
        method=METHOD, body_sha256=None, cert_pem=ids["alpha"].cert_pem, metadata=headers
    )
    with pytest.raises(RequestRefused) as err:
        _started_earlier(30.0, clock).verify(
            method=METHOD, body_sha256=None, cert_pem=ids["alpha"].cert_pem, metadata=headers
        )
    assert err.value.refusal is Refusal.STALE


def test_a_request_signed_before_the_verifier_started_is_refused(ids: dict[str, Credential]) -> None:
    """The replay cache lives in memory: after a restart, a request from before cannot be told from a replay."""
    clock = Clock()
    headers = _signed(ids["alpha"], Clock(T0 - 5))  # e.g. captured just before the coordinator restarted
    with pytest.raises(RequestRefused) as err:
        RequestVerifier(clock=clock).verify(
            method=METHOD, body_sha256=None, cert_pem=ids["alpha"].cert_pem, metadata=headers
        )
    assert err.value.refusal is Refusal.BEFORE_START
    # a caller that signs again now passes
    RequestVerifier(clock=clock).verify(
        method=METHOD, body_sha256=None, cert_pem=ids["alpha"].cert_pem, metadata=_signed(ids["alpha"], clock)
    )


def test_unsigned_and_malformed_calls_are_refused(ids: dict[str, Credential]) -> None:
    clock = Clock()
    verifier = RequestVerifier(clock=clock)
    with pytest.raises(RequestRefused) as err:
        verifier.verify(method=METHOD, body_sha256=None, cert_pem=ids["alpha"].cert_pem, metadata={})
    assert err.value.refusal is Refusal.UNSIGNED
    bad = _signed(ids["alpha"], clock) | {NONCE_KEY: "xyz", TIME_KEY: "soon"}
    del bad[SIGNATURE_KEY]
    with pytest.raises(RequestRefused) as err:
        verifier.verify(method=METHOD, body_sha256=None, cert_pem=ids["alpha"].cert_pem, metadata=bad)
    assert err.value.refusal is Refusal.MALFORMED
    for key in (NONCE_KEY, TIME_KEY, SIGNATURE_KEY):  # every problem named at once
        assert key in str(err.value)


def test_a_signer_needs_a_p256_key(ids: dict[str, Credential]) -> None:
    with pytest.raises(ValidationError, match="private key"):
        RequestSigner(b"not a key", ids["alpha"].cert_pem, clock=Clock())
    assert certificate_fingerprint(ids["alpha"].cert_pem) != certificate_fingerprint(ids["beta"].cert_pem)


# --- the replay cache ------------------------------------------------------------------------


def test_cache_entries_expire_with_the_window() -> None:
    cache = ReplayCache(window_s=120.0, max_entries=10)
    assert cache.admit(b"a", T0, now=T0) is None
    assert cache.admit(b"a", T0, now=T0 + 100) is Refusal.REPLAYED
    assert cache.admit(b"b", T0 + 200, now=T0 + 200) is None  # a's request is now out of the window
    assert len(cache) == 1
    assert cache.admit(b"a", T0, now=T0 + 200) is Refusal.STALE  # and its replay is stale


def test_a_flood_cannot_grow_the_cache_or_reopen_a_replay() -> None:
    cache = ReplayCache(window_s=120.0, max_entries=1000)
    first = (b"victim", T0)
    assert cache.admit(*first, now=T0, peer="mallory") is None
    for i in range(20_000):  # a flood of fresh, distinct nonces within one window
        cache.admit(i.to_bytes(16, "big"), T0 + 1 + i * 0.001, now=T0 + 1 + i * 0.001, peer="mallory")
        assert len(cache) <= 1000
    # the first nonce was dropped to keep the bound, but its replay is still refused
    assert cache.admit(*first, now=T0 + 30, peer="mallory") is Refusal.STALE
    assert cache.floor("mallory") >= T0
    # a fresh request still passes
    assert cache.admit(b"fresh", T0 + 30, now=T0 + 30, peer="mallory") is None


def test_a_flood_by_one_caller_leaves_the_others_window_alone() -> None:
    cache = ReplayCache(window_s=120.0, max_entries=1000)
    alice = [(i.to_bytes(16, "big"), T0 + i) for i in range(50)]  # an honest caller, a request a second
    for nonce, at in alice:
        assert cache.admit(nonce, at, now=at, peer="alice") is None
    for i in range(10_000):  # mallory floods with requests dated as far ahead as the skew allows
        cache.admit(b"m" + i.to_bytes(15, "big"), T0 + 50 + 120, now=T0 + 50, peer="mallory")
    assert len(cache) <= 1000
    # alice's nonces are all still remembered (replays: REPLAYED, not merely stale) ...
    assert all(cache.admit(n, at, now=T0 + 60, peer="alice") is Refusal.REPLAYED for n, at in alice)
    assert cache.floor("alice") == float("-inf")
    # ... and her next request, dated a little behind everyone else's, still passes
    assert cache.admit(b"late", T0 + 55, now=T0 + 60, peer="alice") is None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 10_000), st.floats(0, 90)), max_size=300),
    st.integers(1, 20),
)
def test_property_a_request_is_admitted_at_most_once(steps: list[tuple[bool, int, float]], bound: int) -> None:
    """Fresh requests (new nonce, time a little behind now) mixed with replays of earlier ones."""
    cache = ReplayCache(window_s=120.0, max_entries=bound)
    sent: list[tuple[bytes, float]] = []
    admitted: set[tuple[bytes, float]] = set()
    now = T0
    for replay, pick, lag_s in steps:
        now += lag_s / 10
        if replay and sent:
            request = sent[pick % len(sent)]
        else:
            request = (len(sent).to_bytes(4, "big"), now - lag_s)
            sent.append(request)
        if cache.admit(*request, now=now) is None:
            assert request not in admitted
            admitted.add(request)
        assert len(cache) <= bound


@functools.cache
def _fuzz_cert() -> bytes:
    return issue_certificate(create_ca("fuzz", now=NOW), IdentitySpec(name="a", role=Role.NODE), now=NOW).cert_pem


_TEXT = st.one_of(
    st.text(max_size=120),
    st.from_regex(r"v1\.[A-Za-z0-9_-]{0,100}", fullmatch=True),
    st.from_regex(r"[0-9a-f]{32}|[0-9a-f]{64}|[0-9]{1,16}", fullmatch=True),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([TIME_KEY, NONCE_KEY, BODY_KEY, SIGNATURE_KEY, "other"]), _TEXT))
def test_fuzz_any_metadata_is_refused_cleanly(metadata: dict[str, str]) -> None:
    """Outside input: whatever the headers hold, the verifier refuses with RequestRefused, nothing else."""
    with pytest.raises(RequestRefused):
        RequestVerifier(clock=Clock()).verify(method=METHOD, body_sha256=None, cert_pem=_fuzz_cert(), metadata=metadata)
