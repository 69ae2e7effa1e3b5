"""Checkpoints on disk: ``.npz`` without pickle, written atomically, verified by SHA-256.

A checkpoint holds the global model (``model/<name>``) and the strategy state (``state/<name>``).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

from medfed.core.errors import StoreError
from medfed.core.params import Parameters
from medfed.security.fsio import PRIVATE, atomic_write

_MODEL, _STATE = "model/", "state/"


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


def save_checkpoint(path: Path, params: Parameters, state: Parameters) -> str:
    """Write a checkpoint; return its SHA-256 (hex)."""
    data = _to_npz_bytes(params, state)
    _write(path, data)
    return hashlib.sha256(data).hexdigest()


def save_model(path: Path, params: Parameters) -> str:
    """Write a model as a plain ``.npz`` (names as keys, no pickle); return its SHA-256."""
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **params.to_dict())
    data = buf.getvalue()
    _write(path, data)
    return hashlib.sha256(data).hexdigest()


def load_checkpoint(path: Path, sha256: str) -> tuple[Parameters, Parameters]:
    """Read a checkpoint after checking its digest; raise :class:`StoreError` if it was altered."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"checkpoint {path} is unreadable: {exc.strerror or exc}") from None
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
