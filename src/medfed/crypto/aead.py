"""Envelope encryption at rest: AES-256-GCM with a versioned header, key ids and key rotation.

An *envelope* is one encrypted blob (a checkpoint, a model, a node's state file)::

    magic "MFE1" | key id length (1 byte) | key id (ASCII) | context length (2 bytes, big-endian)
    | context (UTF-8) | nonce (12 bytes) | ciphertext | GCM tag (16 bytes)

Everything before the ciphertext is the GCM *associated data*, so the key id and the context
(the file's role and path, e.g. ``checkpoint:jobs/j1/round-00003.npz``) are authenticated: an
envelope copied over another file, or relabelled with another key id, fails to open. Nonces are
96 random bits; with at most 2^32 envelopes per key the collision bound stays below 2^-32
(NIST SP 800-38D §8.3), and :func:`rotate` moves data onto a fresh key long before that.

A *stream* (backups) cuts a large plaintext into chunks, each sealed separately with the STREAM
construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015, §7): nonce = 7-byte random prefix |
4-byte chunk counter | 1-byte last-chunk flag. Reordered, dropped or appended chunks and a
truncated stream all fail to open.

Every authentication failure (wrong key, altered byte, truncation) is the same opaque
:class:`~medfed.core.errors.StoreError` -- the caller learns nothing about *why* (the
``cryptography`` recipe habit); only malformed headers and unknown key ids are named.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medfed.core.errors import StoreError, ValidationError

__all__ = [
    "AUTH_FAILED",
    "CHUNK_SIZE",
    "KEY_BYTES",
    "DataKey",
    "Keyring",
    "StreamSealer",
    "decrypt",
    "decrypt_stream",
    "encrypt",
    "encrypt_stream",
    "envelope_info",
    "generate_key",
    "is_envelope",
    "rotate",
]

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12
TAG_BYTES = 16
CHUNK_SIZE = 1 << 20  # plaintext bytes per stream chunk
_MAGIC = b"MFE1"
_STREAM_MAGIC = b"MFS1"
_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MAX_CONTEXT = 1024
#: The one message of every authentication failure.
AUTH_FAILED = "decryption failed: wrong key, or the data was altered or truncated"


@dataclass(frozen=True, slots=True, kw_only=True)
class DataKey:
    """One AES-256 key and its id (the id is written in clear in every envelope it seals)."""

    key_id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        problems = []
        if not _KEY_ID.match(self.key_id):
            problems.append(f"key id {self.key_id!r} must be 1-64 of [A-Za-z0-9._-], starting alphanumeric")
        if len(self.secret) != KEY_BYTES:
            problems.append(f"key {self.key_id!r} has {len(self.secret)} bytes, AES-256 needs {KEY_BYTES}")
        if problems:
            raise ValidationError(problems, where="data key")


@dataclass(frozen=True, slots=True, kw_only=True)
class Keyring:
    """The keys that may open envelopes; new envelopes are sealed under ``primary``."""

    keys: tuple[DataKey, ...]
    primary: str

    def __post_init__(self) -> None:
        ids = [k.key_id for k in self.keys]
        problems = []
        if len(set(ids)) != len(ids):
            problems.append(f"duplicate key ids in {ids}")
        if self.primary not in ids:
            problems.append(f"primary key {self.primary!r} is not among the keys {ids}")
        if problems:
            raise ValidationError(problems, where="keyring")

    @classmethod
    def single(cls, key: DataKey) -> Keyring:
        return cls(keys=(key,), primary=key.key_id)

    def key(self, key_id: str) -> DataKey:
        for k in self.keys:
            if k.key_id == key_id:
                return k
        raise StoreError(f"no key with id {key_id!r} in the keyring (known: {[k.key_id for k in self.keys]})")

    @property
    def primary_key(self) -> DataKey:
        return self.key(self.primary)

    def with_new_primary(self, key: DataKey) -> Keyring:
        """This keyring plus ``key`` as the new primary (old ids still open old envelopes)."""
        return Keyring(keys=(*self.keys, key), primary=key.key_id)

    def without(self, key_id: str) -> Keyring:
        """This keyring less a retired key (never the primary)."""
        if key_id == self.primary:
            raise ValidationError(f"cannot retire the primary key {key_id!r}", where="keyring")
        self.key(key_id)
        return Keyring(keys=tuple(k for k in self.keys if k.key_id != key_id), primary=self.primary)


def generate_key(key_id: str) -> DataKey:
    """A fresh random AES-256 key from the operating system's CSPRNG."""
    return DataKey(key_id=key_id, secret=AESGCM.generate_key(bit_length=256))


def _header(magic: bytes, key_id: str, context: str) -> bytes:
    ctx = context.encode("utf-8")
    if len(ctx) > _MAX_CONTEXT:
        raise ValidationError(f"context is {len(ctx)} bytes, at most {_MAX_CONTEXT}", where="envelope")
    kid = key_id.encode("ascii")
    return magic + bytes([len(kid)]) + kid + struct.pack(">H", len(ctx)) + ctx


def _parse_header(blob: bytes, magic: bytes, what: str) -> tuple[str, str, int]:
    """(key id, context, header length) of an envelope or stream; StoreError if malformed."""
    bad = StoreError(f"not a medfed {what} (bad or truncated header)")
    if blob[:4] != magic or len(blob) < 5:
        raise bad
    n = blob[4]
    end = 5 + n
    if len(blob) < end + 2:
        raise bad
    (m,) = struct.unpack(">H", blob[end : end + 2])
    if len(blob) < end + 2 + m:
        raise bad
    try:
        key_id = blob[5:end].decode("ascii")
        context = blob[end + 2 : end + 2 + m].decode("utf-8")
    except UnicodeDecodeError:
        raise bad from None
    return key_id, context, end + 2 + m


def _check_context(found: str, expected: str) -> None:
    if found != expected:
        raise StoreError(f"envelope is bound to {found!r}, expected {expected!r} (moved or swapped file?)")


def is_envelope(blob: bytes) -> bool:
    """True when ``blob`` starts like an envelope (says nothing of whether it opens)."""
    return blob[:4] == _MAGIC


def envelope_info(blob: bytes) -> tuple[str, str]:
    """The (key id, context) an envelope claims, read from its header without decrypting."""
    key_id, context, _ = _parse_header(blob, _MAGIC, "envelope")
    return key_id, context


def encrypt(keyring: Keyring, plaintext: bytes, *, context: str) -> bytes:
    """Seal ``plaintext`` under the primary key, bound to ``context`` (role and path of the file)."""
    key = keyring.primary_key
    header = _header(_MAGIC, key.key_id, context)
    nonce = os.urandom(NONCE_BYTES)
    return header + nonce + AESGCM(key.secret).encrypt(nonce, plaintext, header)


def decrypt(keyring: Keyring, blob: bytes, *, context: str) -> bytes:
    """Open an envelope sealed for ``context`` by any key of ``keyring``.

    Raises
    ------
    StoreError
        Malformed header, unknown key id, another context, or (one opaque message,
        :data:`AUTH_FAILED`) a wrong key or altered/truncated data.
    """
    key_id, found, n = _parse_header(blob, _MAGIC, "envelope")
    _check_context(found, context)
    key = keyring.key(key_id)
    if len(blob) < n + NONCE_BYTES + TAG_BYTES:
        raise StoreError(AUTH_FAILED)
    nonce = blob[n : n + NONCE_BYTES]
    try:
        return AESGCM(key.secret).decrypt(nonce, blob[n + NONCE_BYTES :], blob[:n])
    except InvalidTag:
        raise StoreError(AUTH_FAILED) from None


def rotate(keyring: Keyring, blob: bytes, *, context: str) -> bytes:
    """Re-seal an envelope under the keyring's primary key (unchanged if it already is)."""
    key_id, _ = envelope_info(blob)
    if key_id == keyring.primary:
        decrypt(keyring, blob, context=context)  # still prove it opens
        return blob
    return encrypt(keyring, decrypt(keyring, blob, context=context), context=context)


# --- streams (STREAM construction) ---------------------------------------------------------


def _stream_nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">I", counter) + (b"\x01" if last else b"\x00")


class StreamSealer:
    """Push-style STREAM encryption: :meth:`update` returns sealed frames as plaintext arrives,
    :meth:`finish` the final frame. :attr:`header` goes first in the output."""

    def __init__(self, keyring: Keyring, *, context: str) -> None:
        key = keyring.primary_key
        self._aead = AESGCM(key.secret)
        self._prefix = os.urandom(7)
        self.header = _header(_STREAM_MAGIC, key.key_id, context) + self._prefix
        self._counter, self._pending, self._done = 0, bytearray(), False

    def _frame(self, data: bytes | memoryview, last: bool) -> bytes:
        sealed = self._aead.encrypt(_stream_nonce(self._prefix, self._counter, last), data, self.header)
        self._counter += 1
        if self._counter >= 2**32 - 1:
            raise ValidationError("stream too long for one nonce prefix", where="encrypted stream")
        return struct.pack(">I", len(sealed)) + sealed

    def update(self, data: bytes) -> bytes:
        if self._done:
            raise ValidationError("stream already finished", where="encrypted stream")
        self._pending += data
        full = (len(self._pending) - 1) // CHUNK_SIZE  # keep at least one byte back for the final frame
        if full == 0:
            return b""
        with memoryview(self._pending) as view:
            out = [self._frame(view[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE], False) for i in range(full)]
        del self._pending[: full * CHUNK_SIZE]
        return b"".join(out)

    def finish(self) -> bytes:
        self._done = True
        return self._frame(bytes(self._pending), True)


def encrypt_stream(keyring: Keyring, chunks: Iterable[bytes], *, context: str) -> Iterator[bytes]:
    """Seal a sequence of plaintext chunks; yields the header, then sealed frames.

    Each frame is a 4-byte big-endian length and a sealed chunk of :data:`CHUNK_SIZE` plaintext
    bytes (chunks of any size are re-cut); the final frame carries the last-chunk flag.
    """
    sealer = StreamSealer(keyring, context=context)
    yield sealer.header
    for chunk in chunks:
        if out := sealer.update(chunk):
            yield out
    yield sealer.finish()


class _Reader:
    def __init__(self, source: Iterable[bytes]) -> None:
        self._it, self._buf = iter(source), bytearray()

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, fewer only at the end of the source."""
        while len(self._buf) < n:
            nxt = next(self._it, None)
            if nxt is None:
                break
            self._buf += nxt
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


def decrypt_stream(keyring: Keyring, source: Iterable[bytes], *, context: str) -> Iterator[bytes]:
    """Open a stream frame by frame, yielding plaintext chunks as each one authenticates.

    A consumer must treat what it received as untrusted until the iterator finishes without
    raising: truncation is only detected at the end (no final frame). Any failure raises
    :class:`StoreError` (opaque :data:`AUTH_FAILED` for authentication failures).
    """
    reader = _Reader(source)
    head = reader.read(5)
    rest = reader.read(head[4] + 2) if len(head) == 5 else b""
    ctx_len = struct.unpack(">H", rest[-2:])[0] if len(rest) >= 2 else 0
    blob = head + rest + reader.read(ctx_len)
    key_id, found, n = _parse_header(blob, _STREAM_MAGIC, "encrypted stream")
    _check_context(found, context)
    aead = AESGCM(keyring.key(key_id).secret)
    prefix = reader.read(7)
    if len(prefix) != 7:
        raise StoreError(AUTH_FAILED)
    header, counter = blob[:n] + prefix, 0
    while True:
        size = reader.read(4)
        if len(size) != 4:
            raise StoreError(AUTH_FAILED)  # truncated: the final frame never came
        want = struct.unpack(">I", size)[0]
        sealed = reader.read(want)
        if len(sealed) != want:
            raise StoreError(AUTH_FAILED)  # truncated mid-frame, or a length field altered
        last = _open_frame(aead, prefix, counter, sealed, header)
        yield last[1]
        if last[0]:
            break
        counter += 1
    if reader.read(1):
        raise StoreError(AUTH_FAILED)  # bytes after the final frame


def _open_frame(aead: AESGCM, prefix: bytes, counter: int, sealed: bytes, header: bytes) -> tuple[bool, bytes]:
    """(is last, plaintext) of one frame; tries the non-final nonce first."""
    for last in (False, True):
        try:
            return last, aead.decrypt(_stream_nonce(prefix, counter, last), sealed, header)
        except InvalidTag:
            continue
    raise StoreError(AUTH_FAILED)
