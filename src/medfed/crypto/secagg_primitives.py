"""Cryptographic recipes for secure aggregation (SecAgg+, Bell et al. 2020; Bonawitz et al. 2017).

Everything here is a pure function of its arguments; randomness comes from an injected
:data:`RandomBytes` source (``n -> n random bytes``), :func:`os.urandom` by default. Tests may pass
``numpy.random.default_rng(seed).bytes`` for reproducibility, never production code.

- **Key agreement**: X25519 key pairs (raw 32-byte keys) and :func:`agree`, which runs the exchange
  and derives a 32-byte key with HKDF-SHA256 (RFC 5869), bound to a caller-chosen ``info``.
- **PRG**: :func:`prg_words` expands a 32-byte seed into ``count`` little-endian ``uint32`` words:
  the AES-256-CTR keystream (zero IV) of an all-zero message, viewed by numpy without a Python loop
  (~3 ms per 1e6 words). Every seed must be used for one expansion only (fresh keys per round).
- **Authenticated encryption** of share messages: AES-256-GCM with a random 96-bit nonce prepended
  to the ciphertext (NIST SP 800-38D); every failure is one opaque :class:`DecryptionError`.
- **Shamir secret sharing** (Shamir 1979) over GF(p), p = 2^127 − 1: a secret of any length is cut
  into 15-byte chunks, each shared with an independent random polynomial of degree ``t − 1``;
  any ``t`` shares reconstruct it, fewer raise :class:`~medfed.core.errors.ValidationError`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medfed.core.errors import ValidationError

__all__ = [
    "KEY_BYTES",
    "SHAMIR_PRIME",
    "DecryptionError",
    "KeyPair",
    "RandomBytes",
    "Share",
    "agree",
    "decode_share",
    "encode_share",
    "generate_keypair",
    "open_sealed",
    "prg_words",
    "public_key_of",
    "seal",
    "shamir_combine",
    "shamir_split",
    "system_random",
]

#: A source of randomness: ``rng(n)`` returns ``n`` random bytes.
RandomBytes = Callable[[int], bytes]

#: Length of X25519 keys, derived keys, PRG seeds and self-mask seeds.
KEY_BYTES = 32

#: The Mersenne prime 2^127 − 1: the field of the Shamir shares.
SHAMIR_PRIME = (1 << 127) - 1
_CHUNK = 15  # bytes per field element: 2^120 < p
_ELEMENT_BYTES = 16  # encoded size of one field element
_NONCE_BYTES = 12


def system_random(n: int) -> bytes:
    """The default :data:`RandomBytes`: the operating system's CSPRNG."""
    return os.urandom(n)


class DecryptionError(ValidationError):
    """A sealed message failed authentication: wrong key, tampered, truncated or mis-addressed.

    Deliberately opaque: the cause is never told apart, as with ``cryptography``'s ``InvalidTag``.
    """

    def __init__(self) -> None:
        super().__init__("sealed message failed authentication")


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A raw X25519 key pair (32 bytes each); the private half stays out of ``repr``."""

    public: bytes
    private: bytes = field(repr=False)


def generate_keypair(rng: RandomBytes = system_random) -> KeyPair:
    """A fresh X25519 key pair whose private key is 32 bytes drawn from ``rng`` (RFC 7748 clamps it)."""
    private = rng(KEY_BYTES)
    return KeyPair(public=public_key_of(private), private=private)


def public_key_of(private: bytes) -> bytes:
    """The raw X25519 public key of a raw 32-byte private key."""
    key = _private_key(private)
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def agree(private: bytes, peer_public: bytes, *, info: bytes) -> bytes:
    """X25519 exchange, then HKDF-SHA256 (no salt) to a 32-byte key bound to ``info``.

    Both sides get the same key when they pass the same ``info``. Raises
    :class:`~medfed.core.errors.ValidationError` for a malformed or low-order public key.
    """
    if len(peer_public) != KEY_BYTES:
        raise ValidationError(f"X25519 public key must be {KEY_BYTES} bytes, got {len(peer_public)}")
    try:
        shared = _private_key(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        # cryptography refuses the all-zero shared secret of a low-order point (RFC 7748 §6.1).
        raise ValidationError("X25519 exchange failed: the peer's public key is invalid") from None
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def _private_key(private: bytes) -> X25519PrivateKey:
    if len(private) != KEY_BYTES:
        raise ValidationError(f"X25519 private key must be {KEY_BYTES} bytes, got {len(private)}")
    return X25519PrivateKey.from_private_bytes(private)


def prg_words(seed: bytes, count: int) -> npt.NDArray[np.uint32]:
    """Expand a 32-byte ``seed`` into ``count`` pseudo-random ``uint32`` words (read-only array).

    AES-256-CTR with a zero IV encrypting zeros is the keystream itself; the seed must never be
    reused for another expansion (SecAgg seeds are fresh every round).
    """
    if len(seed) != KEY_BYTES:
        raise ValidationError(f"PRG seed must be {KEY_BYTES} bytes, got {len(seed)}")
    if count < 0:
        raise ValidationError(f"word count must be >= 0, got {count}")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(encryptor.update(bytes(4 * count)), dtype="<u4").astype(np.uint32, copy=False)


def seal(key: bytes, plaintext: bytes, *, associated_data: bytes, rng: RandomBytes = system_random) -> bytes:
    """AES-256-GCM encryption: ``nonce (12 bytes) || ciphertext || tag (16 bytes)``.

    ``associated_data`` (e.g. session, sender and recipient) is authenticated, not encrypted.
    """
    if len(key) != KEY_BYTES:
        raise ValidationError(f"AES-256-GCM key must be {KEY_BYTES} bytes, got {len(key)}")
    nonce = rng(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: bytes, sealed: bytes, *, associated_data: bytes) -> bytes:
    """Decrypt what :func:`seal` produced; any failure raises one opaque :class:`DecryptionError`."""
    if len(key) != KEY_BYTES or len(sealed) < _NONCE_BYTES + 16:
        raise DecryptionError
    try:
        return AESGCM(key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], associated_data)
    except InvalidTag:
        raise DecryptionError from None


@dataclass(frozen=True, slots=True)
class Share:
    """One Shamir share of a byte string: the evaluation point ``x`` and one value per chunk.

    ``length`` is the byte length of the secret, needed to turn field elements back into bytes.
    """

    x: int
    ys: tuple[int, ...]
    length: int


def shamir_split(secret: bytes, *, xs: Sequence[int], threshold: int, rng: RandomBytes = system_random) -> list[Share]:
    """Share ``secret`` at the distinct non-zero points ``xs`` so that any ``threshold`` reconstruct it.

    Returns one :class:`Share` per point, in the order of ``xs``.
    """
    problems: list[str] = []
    if not 1 <= threshold <= len(xs):
        problems.append(f"threshold must be in 1..{len(xs)} (the number of shares), got {threshold}")
    if len(set(xs)) != len(xs):
        problems.append("share points must be distinct")
    if any(not 0 < x < SHAMIR_PRIME for x in xs):
        problems.append("share points must be in 1..p-1")
    if problems:
        raise ValidationError(problems, where="shamir_split")
    chunks = [secret[i : i + _CHUNK] for i in range(0, len(secret), _CHUNK)]
    # Coefficients from 32 random bytes reduced mod p: bias below 2^-128.
    polys = [
        [int.from_bytes(c, "big")] + [int.from_bytes(rng(32), "big") % SHAMIR_PRIME for _ in range(threshold - 1)]
        for c in chunks
    ]
    return [Share(x=x, ys=tuple(_horner(poly, x) for poly in polys), length=len(secret)) for x in xs]


def _horner(coefficients: list[int], x: int) -> int:
    acc = 0
    for c in reversed(coefficients):
        acc = (acc * x + c) % SHAMIR_PRIME
    return acc


def shamir_combine(shares: Sequence[Share], *, threshold: int) -> bytes:
    """Reconstruct the secret from at least ``threshold`` shares (Lagrange interpolation at 0).

    Uses the first ``threshold`` shares. Raises :class:`~medfed.core.errors.ValidationError` for
    fewer than ``threshold`` shares, repeated points or shares of different secrets.
    """
    if threshold < 1:
        raise ValidationError(f"threshold must be >= 1, got {threshold}", where="shamir_combine")
    if len(shares) < threshold:
        raise ValidationError(
            f"need {threshold} shares to reconstruct the secret, got {len(shares)}", where="shamir_combine"
        )
    used = list(shares[:threshold])
    problems: list[str] = []
    if len({s.x for s in used}) != len(used):
        problems.append("shares have repeated points")
    if len({(s.length, len(s.ys)) for s in used}) != 1:
        problems.append("shares belong to secrets of different lengths")
    if problems:
        raise ValidationError(problems, where="shamir_combine")
    p = SHAMIR_PRIME
    weights = []
    for s in used:
        num, den = 1, 1
        for o in used:
            if o.x != s.x:
                num = num * o.x % p
                den = den * (o.x - s.x) % p
        weights.append(num * pow(den, -1, p) % p)
    length = used[0].length
    out = bytearray()
    for k in range(len(used[0].ys)):
        value = sum(w * s.ys[k] for w, s in zip(weights, used, strict=True)) % p
        size = min(_CHUNK, length - k * _CHUNK)
        if value >= 1 << (8 * size):
            raise ValidationError("shares are inconsistent (reconstructed value out of range)", where="shamir_combine")
        out += value.to_bytes(size, "big")
    return bytes(out)


def encode_share(share: Share) -> bytes:
    """Fixed-width bytes of a share: ``x`` (u32), ``length`` (u16), then 16 bytes per value."""
    if not 0 < share.x < 1 << 32 or not 0 <= share.length < 1 << 16:
        raise ValidationError(f"share point {share.x} or length {share.length} out of the encodable range")
    return struct.pack(">IH", share.x, share.length) + b"".join(y.to_bytes(_ELEMENT_BYTES, "big") for y in share.ys)


def decode_share(data: bytes) -> Share:
    """Inverse of :func:`encode_share`; raises :class:`~medfed.core.errors.ValidationError` on bad input."""
    if len(data) < 6:
        raise ValidationError("share encoding too short")
    x, length = struct.unpack(">IH", data[:6])
    n = -(-length // _CHUNK)
    if len(data) != 6 + n * _ELEMENT_BYTES:
        raise ValidationError(f"share encoding has {len(data)} bytes, expected {6 + n * _ELEMENT_BYTES}")
    ys = tuple(int.from_bytes(data[6 + i * 16 : 22 + i * 16], "big") for i in range(n))
    if x == 0 or any(y >= SHAMIR_PRIME for y in ys):
        raise ValidationError("share encoding holds values outside the field")
    return Share(x=x, ys=ys, length=length)
