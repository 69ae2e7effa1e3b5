"""Checkpoints on disk: ``.npz`` without pickle, written atomically, verified by SHA-256.

A checkpoint holds the global model (``model/<name>``) and the strategy state (``state/<name>``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from medfed.core.errors import StoreError
from medfed.core.params import Parameters

_MODEL, _STATE = "model/", "state/"


def _to_npz_bytes(params: Parameters, state: Parameters) -> bytes:
    arrays = {_MODEL + n: a for n, a in params} | {_STATE + n: a for n, a in state}
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None


def save_checkpoint(path: Path, params: Parameters, state: Parameters) -> str:
    """Write a checkpoint; return its SHA-256 (hex)."""
    data = _to_npz_bytes(params, state)
    atomic_write(path, data)
    return hashlib.sha256(data).hexdigest()


def save_model(path: Path, params: Parameters) -> str:
    """Write a model as a plain ``.npz`` (names as keys, no pickle); return its SHA-256."""
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **params.to_dict())
    data = buf.getvalue()
    atomic_write(path, data)
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
