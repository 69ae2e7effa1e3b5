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


def _valid_export() -> tuple[list[str], bytes]:
    import io
    import tempfile

    from medfed.crypto.signing import generate_signing_key
    from medfed.security.audit import AuditAction, AuditEvent, AuditLog

    with tempfile.TemporaryDirectory() as tmp:
        key = generate_signing_key()
        log = AuditLog(Path(tmp) / "a.sqlite", signer=key, checkpoint_every=2)
        for r in range(4):
            log.append(AuditEvent(action=AuditAction.ROUND_COMPLETED, actor="coordinator", fields={"round": r}))
        out = io.StringIO()
        log.export_jsonl(out)
        log.close()
    return out.getvalue().splitlines(), key.public_pem


EXPORT, EXPORT_KEY = _valid_export()
export_values = st.one_of(json_values, st.integers(), st.text(max_size=70), st.sampled_from(["0" * 64, "f" * 128]))


@FUZZ
@given(
    lines=st.lists(st.text(max_size=60) | json_values.map(json.dumps), max_size=5),
    line=st.integers(0, len(EXPORT) - 1),
    key=st.sampled_from(["type", "seq", "at", "action", "actor", "fields", "prev", "hash", "signer", "signature"]),
    value=export_values,
)
def test_audit_export_parser(lines: list[str], line: int, key: str, value: object) -> None:
    # a valid export with one value of one line replaced, plus junk lines
    mutated = list(EXPORT)
    mutated[line] = json.dumps({**json.loads(mutated[line]), key: value})
    for candidate in (mutated, [*lines, *EXPORT]):
        with contextlib.suppress(MedfedError):
            entries, checkpoints = read_jsonl(candidate)
            verify_chain(entries, checkpoints, EXPORT_KEY)  # no crash; detection has its own tests


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
