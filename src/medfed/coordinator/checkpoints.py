"""Checkpoints on disk: ``.npz`` without pickle, written atomically, verified by SHA-256.

A checkpoint holds the global model (``model/<name>``) and the strategy state (``state/<name>``).

Encryption at rest is opt-in (``medfed coordinator start --key-file``): with an :class:`AtRest`
every checkpoint and final model is sealed with AES-256-GCM under the keyring's primary key,
bound to its role and its path inside the state directory (:mod:`medfed.security.keys`). The
recorded SHA-256 is of the plaintext ``.npz``, so it survives key rotation (which re-seals files).
A sealed file without the key, or a plaintext file where a sealed one is expected, is refused.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfed.core.errors import StoreError
from medfed.core.params import Parameters
from medfed.crypto.aead import Keyring, is_envelope
from medfed.security.fsio import PRIVATE, atomic_write
from medfed.security.keys import FileRole, read_sealed, sealed_context, write_sealed

_MODEL, _STATE = "model/", "state/"


@dataclass(frozen=True, slots=True, kw_only=True)
class AtRest:
    """Seal files under ``root`` (the coordinator's state directory) with ``keyring``."""

    keyring: Keyring
    root: Path

    def write(self, path: Path, data: bytes, role: FileRole) -> None:
        write_sealed(path, data, self.keyring, context=sealed_context(role, self.root, path))

    def read(self, path: Path, blob: bytes, role: FileRole) -> bytes:
        if not is_envelope(blob):
            raise StoreError(f"{path} is not sealed, but this coordinator encrypts its files at rest")
        return read_sealed(path, self.keyring, context=sealed_context(role, self.root, path))


def _to_npz_bytes(params: Parameters, state: Parameters) -> bytes:
    arrays = {_MODEL + n: a for n, a in params} | {_STATE + n: a for n, a in state}
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    """Atomic write (old file or new, never half: ``security.fsio``); failures become StoreError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data, mode=PRIVATE)  # models can leak training data: owner-only
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None


def save_checkpoint(path: Path, params: Parameters, state: Parameters, *, at_rest: AtRest | None = None) -> str:
    """Write a checkpoint (sealed with ``at_rest``); return the SHA-256 (hex) of its plaintext."""
    data = _to_npz_bytes(params, state)
    if at_rest is not None:
        at_rest.write(path, data, FileRole.CHECKPOINT)
    else:
        _write(path, data)
    return hashlib.sha256(data).hexdigest()


def save_model(path: Path, params: Parameters, *, at_rest: AtRest | None = None) -> str:
    """Write a model as a plain ``.npz`` (names as keys, no pickle; sealed with ``at_rest``); return
    the SHA-256 of the ``.npz``."""
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **params.to_dict())
    data = buf.getvalue()
    if at_rest is not None:
        at_rest.write(path, data, FileRole.MODEL)
    else:
        _write(path, data)
    return hashlib.sha256(data).hexdigest()


def load_checkpoint(path: Path, sha256: str, *, at_rest: AtRest | None = None) -> tuple[Parameters, Parameters]:
    """Read a checkpoint (opening it with ``at_rest``) after checking its digest; raise
    :class:`StoreError` if it was altered, or is sealed and no key was given."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"checkpoint {path} is unreadable: {exc.strerror or exc}") from None
    if at_rest is not None:
        data = at_rest.read(path, data, FileRole.CHECKPOINT)
    elif is_envelope(data):
        raise StoreError(f"checkpoint {path} is encrypted at rest: start the coordinator with its --key-file")
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise StoreError(
            f"checkpoint {path} fails its integrity check (sha256 {digest[:12]}…, expected {sha256[:12]}…)"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            model = {k[len(_MODEL) :]: npz[k] for k in npz.files if k.startswith(_MODEL)}
            state = {k[len(_STATE) :]: npz[k] for k in npz.files if k.startswith(_STATE)}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise StoreError(f"checkpoint {path} is malformed: {exc}") from None
    return Parameters.from_numpy(model), Parameters.from_numpy(state)
