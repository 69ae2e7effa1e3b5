"""Signed requests: ECDSA P-256 over method, body digest, nonce, time and certificate; a replay cache.

mTLS proves who opened a connection; it does not stop a request captured at either end (a log, a
proxy that terminates TLS, a debugging dump) from being sent again. Flower signs only a timestamp,
so a captured request replays for its whole validity window. Here every call carries four gRPC
metadata entries (:data:`TIME_KEY`, :data:`NONCE_KEY`, :data:`BODY_KEY`, :data:`SIGNATURE_KEY`)
and the signature covers the canonical string (:func:`canonical_request`)::

    medfed-request-v1
    <method, e.g. /medfed.v1.Federation/SubmitJob>
    <SHA-256 hex of the request body>
    <128-bit random nonce, 32 hex digits>
    <time, integer milliseconds since the epoch>
    <SHA-256 hex of the caller's certificate (DER)>

signed with the private key of the caller's kit (the key of its mTLS certificate, ECDSA P-256 with
SHA-256, FIPS 186-5). The verifier takes the public key and the fingerprint from the certificate the
TLS layer authenticated, never from the request, so a signature made for one certificate is
useless on a connection authenticated as another. It then refuses, in this order: missing or
malformed headers (:attr:`Refusal.UNSIGNED`, :attr:`Refusal.MALFORMED`), a time more than
``skew_s`` from its clock (:attr:`Refusal.STALE`), a body whose digest differs from the signed one
(:attr:`Refusal.ALTERED`), a bad signature (:attr:`Refusal.BAD_SIGNATURE`), a request signed before
the verifier started (:attr:`Refusal.BEFORE_START`: its replay cache, in memory, is new after a
restart; the transport makes this refusal retryable, and a retry is signed afresh), and a nonce
already seen (:attr:`Refusal.REPLAYED`).

:class:`ReplayCache` bounds memory: it remembers a nonce (per caller certificate) only while its
request could still pass the time check (``time + skew_s``), and holds at most ``max_entries`` in
all. When full it drops the oldest entry of the caller that holds the most, and raises that
caller's floor to the dropped entry's time: from then on a request of that caller no newer than a
dropped entry is refused as stale. A flood therefore narrows the flooder's own window (its fresh
requests still pass; other callers are untouched while it holds more entries than they do) but
can neither grow memory past the bound nor reopen a replay of a dropped nonce. The cache keys on
the signed nonce, not on the signature bytes (ECDSA signatures are malleable). Only requests with a
valid signature reach the cache, so only holders of a federation key can fill it.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import heapq
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from medfed.core.errors import AuthenticationError, ValidationError

__all__ = [
    "BODY_KEY",
    "DEFAULT_MAX_NONCES",
    "DEFAULT_SKEW_S",
    "NONCE_KEY",
    "SIGNATURE_KEY",
    "TIME_KEY",
    "Refusal",
    "ReplayCache",
    "RequestRefused",
    "RequestSigner",
    "RequestVerifier",
    "body_digest",
    "canonical_request",
    "certificate_fingerprint",
]

TIME_KEY = "medfed-request-time"
NONCE_KEY = "medfed-request-nonce"
BODY_KEY = "medfed-request-body"
SIGNATURE_KEY = "medfed-request-signature"
_VERSION = "medfed-request-v1"
_SIG_PREFIX = "v1."

#: Default allowed distance between the caller's clock and the verifier's (seconds).
DEFAULT_SKEW_S = 120.0
#: Default bound of the replay cache: ~120 bytes an entry, so about 30 MiB at the bound.
DEFAULT_MAX_NONCES = 262_144

_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MS = re.compile(r"[0-9]{1,15}")
_MAX_KEYS = 1024  # public keys remembered by a verifier (one per peer certificate)


class Refusal(enum.StrEnum):
    """Why a signed request was refused (the audit log's ``kind``)."""

    UNSIGNED = "unsigned"
    MALFORMED = "malformed"
    STALE = "stale"
    ALTERED = "altered"
    BAD_SIGNATURE = "bad_signature"
    REPLAYED = "replayed"
    BEFORE_START = "before_start"  # signed before this verifier (its replay cache) existed: sign again


class RequestRefused(AuthenticationError):  # noqa: N818 - a verdict, like PermissionDenied
    """A request's signature, time or nonce was refused; ``refusal`` says which check failed."""

    def __init__(self, refusal: Refusal, detail: str) -> None:
        self.refusal = refusal
        super().__init__(f"request refused ({refusal.value}): {detail}")


def body_digest(body: bytes) -> str:
    """SHA-256 (hex) of a request body: what :data:`BODY_KEY` carries and the signature covers."""
    return hashlib.sha256(body).hexdigest()


def certificate_fingerprint(cert_pem: bytes) -> str:
    """SHA-256 (hex) of a PEM certificate's DER encoding (the first certificate of a chain)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise ValidationError(f"not a PEM X.509 certificate: {exc}", where="request signing") from None
    return cert.fingerprint(hashes.SHA256()).hex()


def canonical_request(*, method: str, body_sha256: str, nonce: str, time_ms: int, fingerprint: str) -> bytes:
    """The exact bytes that are signed: one field a line, in a fixed order, with a version tag.

    Every field has a fixed alphabet without newlines (hex digits, digits, a gRPC method path),
    so no two different requests share a canonical string.
    """
    if "\n" in method:
        raise ValidationError("a method name cannot contain a newline", where="request signing")
    return f"{_VERSION}\n{method}\n{body_sha256}\n{nonce}\n{time_ms}\n{fingerprint}".encode()


class RequestSigner:
    """Signs requests with a kit's private key (ECDSA P-256) for its certificate.

    Parameters
    ----------
    key_pem, cert_pem : bytes
        The caller's mTLS identity (PKCS#8 key, certificate), as in every kit.
    clock : callable
        Seconds since the epoch (injected for tests).
    """

    def __init__(self, key_pem: bytes, cert_pem: bytes, *, clock: Callable[[], float]) -> None:
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ValidationError(f"unreadable private key: {exc}", where="request signing") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ValidationError("the kit key must be ECDSA P-256", where="request signing")
        self._key = key
        self._clock = clock
        self.fingerprint = certificate_fingerprint(cert_pem)

    def sign(self, method: str, body_sha256: str) -> tuple[tuple[str, str], ...]:
        """The metadata entries for one call of ``method`` whose body digest is ``body_sha256``.

        A fresh nonce each time: a retried call is signed again, never resent.
        """
        nonce, time_ms = secrets.token_hex(16), int(self._clock() * 1000)
        message = canonical_request(
            method=method, body_sha256=body_sha256, nonce=nonce, time_ms=time_ms, fingerprint=self.fingerprint
        )
        der = self._key.sign(message, ec.ECDSA(hashes.SHA256()))
        signature = _SIG_PREFIX + base64.urlsafe_b64encode(der).decode().rstrip("=")
        return (TIME_KEY, str(time_ms)), (NONCE_KEY, nonce), (BODY_KEY, body_sha256), (SIGNATURE_KEY, signature)


class _PeerNonces:
    """One caller's nonces within the window, oldest request time first, and its floor."""

    __slots__ = ("floor", "heap", "seen")

    def __init__(self) -> None:
        self.heap: list[tuple[float, bytes]] = []
        self.seen: set[bytes] = set()
        self.floor = float("-inf")  # this caller's requests at or before this time are refused

    def expire(self, before: float) -> int:
        dropped = 0
        while self.heap and self.heap[0][0] < before:
            self.seen.discard(heapq.heappop(self.heap)[1])
            dropped += 1
        return dropped


class ReplayCache:
    """Nonces seen within the time window, per caller, at most ``max_entries`` in all.

    When full, the caller holding the most entries loses its oldest one and that caller's floor
    rises to its time (see the module docstring): a flood narrows the flooder's own window, not
    another caller's. Thread-safe; ``admit`` is O(log n), and O(callers) when the cache is full.
    """

    def __init__(self, *, window_s: float, max_entries: int = DEFAULT_MAX_NONCES) -> None:
        if not window_s > 0 or max_entries < 1:
            raise ValidationError(f"window_s must be > 0 and max_entries >= 1, got {window_s!r}, {max_entries!r}")
        self.window_s = window_s
        self.max_entries = max_entries
        self._peers: dict[str, _PeerNonces] = {}
        self._total = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._total

    def floor(self, peer: str = "") -> float:
        """The time at or before which ``peer``'s requests are refused (-inf until an eviction)."""
        with self._lock:
            known = self._peers.get(peer)
            return known.floor if known is not None else float("-inf")

    def admit(self, nonce: bytes, at: float, *, now: float, peer: str = "") -> Refusal | None:
        """Record ``peer``'s ``nonce`` of a request made at ``at``; a :class:`Refusal` if it must not pass."""
        oldest_allowed = now - self.window_s
        with self._lock:
            nonces = self._peers.get(peer)
            if nonces is not None:
                self._total -= nonces.expire(oldest_allowed)
            if at < oldest_allowed or (nonces is not None and at <= nonces.floor):
                return Refusal.STALE
            if nonces is not None and nonce in nonces.seen:
                return Refusal.REPLAYED
            if self._total >= self.max_entries:
                self._make_room(oldest_allowed)
            nonces = self._peers.setdefault(peer, _PeerNonces())
            if at <= nonces.floor:  # it was this caller's oldest: refusing it keeps the bound and the guarantee
                return Refusal.STALE
            heapq.heappush(nonces.heap, (at, nonce))
            nonces.seen.add(nonce)
            self._total += 1
            return None

    def _make_room(self, oldest_allowed: float) -> None:
        for peer, nonces in list(self._peers.items()):
            self._total -= nonces.expire(oldest_allowed)
            if not nonces.heap and nonces.floor < oldest_allowed:  # nothing left that could matter
                del self._peers[peer]
        while self._total >= self.max_entries:
            largest = max(self._peers.values(), key=lambda n: len(n.heap))
            at, dropped = heapq.heappop(largest.heap)
            largest.seen.discard(dropped)
            largest.floor = max(largest.floor, at)
            self._total -= 1


@dataclass(frozen=True, slots=True, kw_only=True)
class _Headers:
    time_ms: int
    nonce: str
    body: str
    signature: bytes


def _parse(metadata: Mapping[str, str]) -> _Headers:
    keys = (TIME_KEY, NONCE_KEY, BODY_KEY, SIGNATURE_KEY)
    if not any(k in metadata for k in keys):
        raise RequestRefused(Refusal.UNSIGNED, "the call carries no request signature")
    values = [metadata.get(k, "") for k in keys]
    time_ms, nonce, body, sig = values
    problems = [k for k, v in zip(keys, values, strict=True) if not v]
    if time_ms and not _MS.fullmatch(time_ms):
        problems.append(f"{TIME_KEY} is not an integer of milliseconds")
    if nonce and not _HEX32.fullmatch(nonce):
        problems.append(f"{NONCE_KEY} is not 32 hex digits")
    if body and not _HEX64.fullmatch(body):
        problems.append(f"{BODY_KEY} is not a SHA-256 hex digest")
    der = b""
    if sig:
        try:
            if not sig.startswith(_SIG_PREFIX):
                raise ValueError
            der = base64.urlsafe_b64decode(sig[len(_SIG_PREFIX) :] + "=" * (-len(sig) % 4))
        except ValueError:
            problems.append(f"{SIGNATURE_KEY} is not '{_SIG_PREFIX}' and base64url")
    if problems:
        raise RequestRefused(Refusal.MALFORMED, "; ".join(problems))
    return _Headers(time_ms=int(time_ms), nonce=nonce, body=body, signature=der)


class RequestVerifier:
    """Checks signed requests against the TLS peer's certificate, its clock and a replay cache.

    Parameters
    ----------
    skew_s : float
        Largest allowed distance between the request's time and ``clock()``.
    max_nonces : int
        Bound of the replay cache.
    clock : callable
        Seconds since the epoch (injected for tests).
    """

    def __init__(
        self, *, skew_s: float = DEFAULT_SKEW_S, max_nonces: int = DEFAULT_MAX_NONCES, clock: Callable[[], float]
    ) -> None:
        self.skew_s = skew_s
        self.cache = ReplayCache(window_s=skew_s, max_entries=max_nonces)
        self._clock = clock
        # The cache lives in memory: a request signed before it existed (before a restart) could be
        # one it saw in a former life, so it is refused; an honest caller signs again (a retry).
        self.started = clock()
        self._keys: dict[bytes, tuple[ec.EllipticCurvePublicKey, str]] = {}
        self._keys_lock = threading.Lock()

    def _key(self, cert_pem: bytes) -> tuple[ec.EllipticCurvePublicKey, str]:
        with self._keys_lock:
            known = self._keys.get(cert_pem)
        if known is not None:
            return known
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            raise RequestRefused(Refusal.BAD_SIGNATURE, "the peer certificate is unreadable") from None
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise RequestRefused(Refusal.BAD_SIGNATURE, "the peer certificate's key is not ECDSA")
        entry = (key, cert.fingerprint(hashes.SHA256()).hex())
        with self._keys_lock:
            if len(self._keys) >= _MAX_KEYS:
                self._keys.clear()  # a bounded memo, not state: rebuilt on the next call
            self._keys[cert_pem] = entry
        return entry

    def verify(self, *, method: str, body_sha256: str | None, cert_pem: bytes, metadata: Mapping[str, str]) -> str:
        """Accept one request or raise :class:`RequestRefused`; returns the signed body digest.

        ``body_sha256`` is the digest of the body as received; ``None`` for a streamed body that
        is still to come (the caller must then compare the returned digest with the stream's).
        """
        h = _parse(metadata)
        now = self._clock()
        at = h.time_ms / 1000.0
        if abs(now - at) > self.skew_s:
            raise RequestRefused(
                Refusal.STALE,
                f"the request time is {now - at:+.0f} s from the coordinator's clock (allowed: ±{self.skew_s:g} s); "
                "check this machine's clock",
            )
        if body_sha256 is not None and body_sha256 != h.body:
            raise RequestRefused(Refusal.ALTERED, "the body differs from the signed one")
        key, fingerprint = self._key(cert_pem)
        message = canonical_request(
            method=method, body_sha256=h.body, nonce=h.nonce, time_ms=h.time_ms, fingerprint=fingerprint
        )
        try:
            key.verify(h.signature, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise RequestRefused(
                Refusal.BAD_SIGNATURE, "the signature does not match this certificate's key and request"
            ) from None
        if at < self.started:
            raise RequestRefused(Refusal.BEFORE_START, "signed before the coordinator (re)started; sign it again")
        refusal = self.cache.admit(bytes.fromhex(h.nonce), at, now=now, peer=fingerprint)
        if refusal is Refusal.REPLAYED:
            raise RequestRefused(refusal, "this request was already received (a replay)")
        if refusal is not None:
            raise RequestRefused(refusal, "the request is older than requests the replay cache had to drop")
        return h.body
