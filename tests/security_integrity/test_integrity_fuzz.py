"""Bounded fuzzing of every parser here that reads outside input: envelopes, encrypted streams,
keyring files, audit exports, model signatures and backup manifests. Any input must either parse
or raise a medfed error naming the problem; nothing else may escape."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medfed.core.errors import ConfigError, MedfedError
from medfed.crypto.aead import Keyring, decrypt, decrypt_stream, encrypt, encrypt_stream, envelope_info, generate_key
from medfed.crypto.signing import ModelSignature
from medfed.security.audit import read_jsonl, verify_chain
from medfed.security.backup import BackupManifest
from medfed.security.keys import keyring_from_env, read_keyring_file

RING = Keyring.single(generate_key("k1"))
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


def _flip(seed: bytes, flips: dict[int, int]) -> bytes:
    out = bytearray(seed)
    for i, x in flips.items():
        out[i] ^= x
    return bytes(out)


def _mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, and the valid ``seed`` with bytes flipped, cut or appended."""
    flips = st.dictionaries(st.integers(0, len(seed) - 1), st.integers(1, 255), min_size=1, max_size=4)
    return (
        st.binary(max_size=200)
        | flips.map(lambda fs: _flip(seed, fs))
        | st.integers(0, len(seed) - 1).map(lambda n: seed[:n])
        | st.binary(min_size=1, max_size=20).map(lambda tail: seed + tail)
    )


ENVELOPE = encrypt(RING, b"payload" * 10, context="ctx")
STREAM = b"".join(encrypt_stream(RING, [os.urandom(300)], context="ctx"))


@FUZZ
@given(blob=_mutations(ENVELOPE))
def test_envelope_parser(blob: bytes) -> None:
    # every mutation of a valid envelope must be refused with a medfed error, nothing else
    with pytest.raises(MedfedError):
        envelope_info(blob)
        decrypt(RING, blob, context="ctx")


@FUZZ
@given(blob=_mutations(STREAM), piece=st.integers(1, 64))
def test_stream_parser(blob: bytes, piece: int) -> None:
    with pytest.raises(MedfedError):
        b"".join(decrypt_stream(RING, [blob[i : i + piece] for i in range(0, len(blob), piece)], context="ctx"))


@FUZZ
@given(value=json_values, raw=st.text(max_size=80))
def test_keyring_file_parser(tmp_path: Path, value: object, raw: str) -> None:
    path = tmp_path / "k.keys"
    for text in (json.dumps(value), raw, json.dumps({"format": "medfed-keyring-v1", "primary": value, "keys": value})):
        path.write_text(text)
        os.chmod(path, 0o600)
        with pytest.raises(ConfigError):
            read_keyring_file(path)


@FUZZ
@given(value=st.text(max_size=80))
def test_env_keyring_parser(value: str) -> None:
    with contextlib.suppress(ConfigError):  # parses, or a ConfigError; nothing else
        keyring_from_env({"MEDFED_DATA_KEY": value})


@FUZZ
@given(
    lines=st.lists(st.text(max_size=60) | json_values.map(json.dumps), max_size=5),
    objs=st.lists(json_values, max_size=3),
)
def test_audit_export_parser(lines: list[str], objs: list[object]) -> None:
    typed = [json.dumps({"type": "entry", **o}) if isinstance(o, dict) else json.dumps(o) for o in objs]
    with contextlib.suppress(MedfedError):
        entries, checkpoints = read_jsonl([*lines, *typed])
        verify_chain(entries, checkpoints, None)


@FUZZ
@given(value=json_values, raw=st.binary(max_size=80))
def test_model_signature_and_manifest_parsers(value: object, raw: bytes) -> None:
    for data in (
        json.dumps(value).encode(),
        raw,
        json.dumps({"format": "medfed-model-signature-v1", "provenance": value}).encode(),
    ):
        with pytest.raises(MedfedError):
            ModelSignature.from_json_bytes(data)
        with pytest.raises(MedfedError):
            BackupManifest.from_json_bytes(data)
