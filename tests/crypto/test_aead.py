"""AES-256-GCM envelopes and streams: round trips, key rotation, and every tamper is refused."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medfed.core.errors import StoreError, ValidationError
from medfed.crypto.aead import (
    AUTH_FAILED,
    CHUNK_SIZE,
    DataKey,
    Keyring,
    decrypt,
    decrypt_stream,
    encrypt,
    encrypt_stream,
    envelope_info,
    generate_key,
    rotate,
)

CTX = "checkpoint:checkpoints/j1/round-00001.npz"


@pytest.fixture
def ring() -> Keyring:
    return Keyring.single(generate_key("k1"))


def test_round_trip_and_header(ring: Keyring) -> None:
    blob = encrypt(ring, b"model bytes", context=CTX)

    assert decrypt(ring, blob, context=CTX) == b"model bytes"
    assert envelope_info(blob) == ("k1", CTX)
    assert b"model bytes" not in blob


def test_nonces_differ_between_envelopes(ring: Keyring) -> None:
    assert encrypt(ring, b"same", context=CTX) != encrypt(ring, b"same", context=CTX)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=300), position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_refused(data: bytes, position: int, bit: int) -> None:
    ring = Keyring.single(DataKey(key_id="k1", secret=b"\x01" * 32))
    blob = bytearray(encrypt(ring, data, context=CTX))
    blob[position % len(blob)] ^= 1 << bit

    with pytest.raises(StoreError):
        decrypt(ring, bytes(blob), context=CTX)


def test_wrong_key_is_one_opaque_error(ring: Keyring) -> None:
    other = Keyring.single(generate_key("k1"))  # same id, different secret
    blob = encrypt(ring, b"secret", context=CTX)

    with pytest.raises(StoreError) as wrong:
        decrypt(other, blob, context=CTX)
    tampered = blob[:-1] + bytes([blob[-1] ^ 0x80])
    with pytest.raises(StoreError) as altered:
        decrypt(ring, tampered, context=CTX)

    assert str(wrong.value) == str(altered.value) == AUTH_FAILED


def test_truncated_envelope_is_refused(ring: Keyring) -> None:
    blob = encrypt(ring, b"x" * 100, context=CTX)
    for n in (0, 3, 10, len(blob) - 17, len(blob) - 1):
        with pytest.raises(StoreError):
            decrypt(ring, blob[:n], context=CTX)


def test_context_binds_the_file(ring: Keyring) -> None:
    blob = encrypt(ring, b"site state", context="node-state:ledger.sqlite")

    with pytest.raises(StoreError, match=re.escape("bound to 'node-state:ledger.sqlite'")):
        decrypt(ring, blob, context="checkpoint:checkpoints/j1/round-00001.npz")


def test_rotation_keeps_old_envelopes_readable_and_reseals(ring: Keyring) -> None:
    old_blob = encrypt(ring, b"before rotation", context=CTX)
    rotated = ring.with_new_primary(generate_key("k2"))

    assert decrypt(rotated, old_blob, context=CTX) == b"before rotation"
    new_blob = rotate(rotated, old_blob, context=CTX)
    assert envelope_info(new_blob)[0] == "k2"
    retired = rotated.without("k1")
    assert decrypt(retired, new_blob, context=CTX) == b"before rotation"
    with pytest.raises(StoreError, match="no key with id 'k1'"):
        decrypt(retired, old_blob, context=CTX)


def test_keyring_and_key_validation() -> None:
    with pytest.raises(ValidationError, match="AES-256 needs 32"):
        DataKey(key_id="k", secret=b"short")
    with pytest.raises(ValidationError, match="key id"):
        DataKey(key_id="bad id!", secret=b"\x00" * 32)
    k = generate_key("k1")
    with pytest.raises(ValidationError, match="duplicate"):
        Keyring(keys=(k, k), primary="k1")
    with pytest.raises(ValidationError, match="primary"):
        Keyring(keys=(k,), primary="k9")
    with pytest.raises(ValidationError, match="primary"):
        Keyring.single(k).without("k1")
    assert repr(k) == "DataKey(key_id='k1')"  # the secret never reaches a log line


# --- streams -------------------------------------------------------------------------------


def _sealed(ring: Keyring, data: bytes) -> bytes:
    return b"".join(encrypt_stream(ring, [data[:1000], data[1000:]], context="backup"))


def _open(ring: Keyring, blob: bytes, piece: int = 4096) -> bytes:
    return b"".join(decrypt_stream(ring, [blob[i : i + piece] for i in range(0, len(blob), piece)], context="backup"))


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, 2 * CHUNK_SIZE + 7])
def test_stream_round_trip(ring: Keyring, size: int) -> None:
    data = os.urandom(size)
    assert _open(ring, _sealed(ring, data)) == data


def test_stream_truncation_reorder_and_extension_are_refused(ring: Keyring) -> None:
    blob = _sealed(ring, os.urandom(2 * CHUNK_SIZE + 7))
    header = len(blob) - 3 * (4 + 16) - (2 * CHUNK_SIZE + 7)
    frame = 4 + CHUNK_SIZE + 16
    first, second, last = (
        blob[header : header + frame],
        blob[header + frame : header + 2 * frame],
        blob[header + 2 * frame :],
    )
    cases = {
        "truncated at a frame boundary": blob[: header + 2 * frame],
        "truncated mid-frame": blob[:-5],
        "frames reordered": blob[:header] + second + first + last,
        "frame dropped": blob[:header] + first + last,
        "bytes appended": blob + b"\x00",
    }
    assert _open(ring, blob[:header] + first + second + last)  # the cut above is at the frame boundaries
    for what, bad in cases.items():
        with pytest.raises(StoreError, match="decryption failed"):
            _open(ring, bad)
            pytest.fail(f"{what} was accepted")


def test_stream_wrong_key_and_wrong_context(ring: Keyring) -> None:
    blob = _sealed(ring, b"abc" * 1000)
    with pytest.raises(StoreError, match="decryption failed"):
        _open(Keyring.single(generate_key("k1")), blob)
    with pytest.raises(StoreError, match="bound to 'backup'"):
        b"".join(decrypt_stream(ring, [blob], context="other"))


def test_stream_frame_length_cannot_be_inflated(ring: Keyring) -> None:
    # found by fuzzing: a length field claiming more bytes than remain must not be read short
    blob = bytearray(_sealed(ring, b"short stream"))
    header = len(blob) - (4 + len(b"short stream") + 16)
    blob[header] ^= 0x01  # the length's top byte: now it claims 16 MiB more
    with pytest.raises(StoreError, match="decryption failed"):
        _open(ring, bytes(blob))
