"""Data keys at rest: a keyring file or an environment variable, kept outside the data directory.

The keyring file is JSON, owner-only (``0600``)::

    {"format": "medfed-keyring-v1", "primary": "k2",
     "keys": [{"id": "k1", "key": "<base64 of 32 bytes>"}, {"id": "k2", "key": "..."}]}

The environment variable (:data:`KEY_ENV`) holds ``id:base64[,id:base64...]``, the first being
the primary. Either way the key must not live inside the directory it protects: a backup or a
stolen disk image of the data directory must not carry its own key (HIPAA 164.312(a)(2)(iv)).
A file readable by group or others is refused rather than silently used.

Rotation (:func:`rotate_keyring_file`) adds a new primary key and keeps the old ones, so every
existing envelope still opens; :func:`reencrypt_tree` then re-seals a directory's envelopes under
the new primary, after which the old key can be retired (:func:`retire_key`).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medfed.core.errors import ConfigError, StoreError, ValidationError
from medfed.crypto.aead import DataKey, Keyring, decrypt, encrypt, envelope_info, generate_key, is_envelope, rotate
from medfed.security.fsio import PRIVATE, atomic_write, exclusive_lock

__all__ = [
    "KEY_ENV",
    "FileRole",
    "generate_keyring_file",
    "keyring_from_env",
    "load_keyring",
    "read_keyring_file",
    "read_sealed",
    "reencrypt_tree",
    "retire_key",
    "rotate_keyring_file",
    "sealed_context",
    "write_keyring_file",
    "write_sealed",
]

#: Environment variable holding ``id:base64[,id:base64...]`` (first = primary).
KEY_ENV = "MEDFED_DATA_KEY"
_FORMAT = "medfed-keyring-v1"


def _decode_key(key_id: str, text: str, where: str) -> DataKey:
    try:
        secret = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: key {key_id!r} is not valid base64") from None
    try:
        return DataKey(key_id=key_id, secret=secret)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _outside(path: Path, data_dirs: tuple[Path, ...], where: str) -> None:
    resolved = path.resolve()
    for d in data_dirs:
        if resolved.is_relative_to(d.resolve()):
            raise ConfigError(f"{where}: the key must be kept outside the data directory {d}")


def read_keyring_file(path: Path, *, data_dirs: tuple[Path, ...] = ()) -> Keyring:
    """Load a keyring file; refuse it if group/other can access it or it lies in a data dir.

    Raises
    ------
    ConfigError
        Missing, unreadable, too permissive, inside ``data_dirs`` or malformed (names the file).
    """
    _outside(path, data_dirs, str(path))
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read key file: {exc.strerror or exc}") from None
    if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path}: key file is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run chmod 600 {path}"
        )
    try:
        obj = json.loads(text)
        if not isinstance(obj, dict) or obj.get("format") != _FORMAT:
            raise ConfigError(f"{path}: not a medfed keyring (expected format {_FORMAT!r})")
        keys = tuple(_decode_key(str(k["id"]), str(k["key"]), str(path)) for k in obj["keys"])
        return Keyring(keys=keys, primary=str(obj["primary"]))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: malformed keyring: {exc!r}") from None
    except ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def keyring_from_env(env: Mapping[str, str], *, name: str = KEY_ENV) -> Keyring | None:
    """The keyring in ``env[name]``, or ``None`` when the variable is unset or empty."""
    value = env.get(name, "").strip()
    if not value:
        return None
    keys = []
    for i, item in enumerate(value.split(",")):
        key_id, sep, b64 = item.strip().partition(":")
        if not sep:
            raise ConfigError(f"${name}: item {i + 1} must be id:base64")
        keys.append(_decode_key(key_id, b64, f"${name}"))
    try:
        return Keyring(keys=tuple(keys), primary=keys[0].key_id)
    except ValidationError as exc:
        raise ConfigError(f"${name}: {exc}") from None


def load_keyring(
    key_file: Path | None, env: Mapping[str, str], *, data_dirs: tuple[Path, ...] = (), env_name: str = KEY_ENV
) -> Keyring:
    """The keyring from ``key_file`` if given, else from the environment; ConfigError if neither."""
    if key_file is not None:
        return read_keyring_file(key_file, data_dirs=data_dirs)
    ring = keyring_from_env(env, name=env_name)
    if ring is None:
        raise ConfigError(f"no data key: give a key file (--key-file) or set ${env_name}")
    return ring


def write_keyring_file(path: Path, keyring: Keyring) -> None:
    """Write ``keyring`` atomically, owner-only."""
    body: dict[str, Any] = {
        "format": _FORMAT,
        "primary": keyring.primary,
        "keys": [{"id": k.key_id, "key": base64.b64encode(k.secret).decode()} for k in keyring.keys],
    }
    try:
        atomic_write(path, (json.dumps(body, indent=2) + "\n").encode(), mode=PRIVATE)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write key file: {exc.strerror or exc}") from None


def generate_keyring_file(path: Path, key_id: str, *, data_dirs: tuple[Path, ...] = ()) -> Keyring:
    """Create a new keyring file with one fresh key; refuse to overwrite an existing file."""
    _outside(path, data_dirs, str(path))
    if path.exists():
        raise ConfigError(f"{path}: exists already; use rotate to add a key")
    try:
        ring = Keyring.single(generate_key(key_id))
    except ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    write_keyring_file(path, ring)
    return ring


def rotate_keyring_file(path: Path, new_key_id: str) -> Keyring:
    """Add a fresh key as the new primary; old keys stay so old envelopes still open."""
    with exclusive_lock(path.with_name(path.name + ".lock")):
        ring = read_keyring_file(path)
        try:
            ring = ring.with_new_primary(generate_key(new_key_id))
        except ValidationError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        write_keyring_file(path, ring)
    return ring


def retire_key(path: Path, key_id: str) -> Keyring:
    """Remove a (non-primary) key once nothing is sealed under it any more."""
    with exclusive_lock(path.with_name(path.name + ".lock")):
        try:
            ring = read_keyring_file(path).without(key_id)
        except (ValidationError, StoreError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        write_keyring_file(path, ring)
    return ring


def reencrypt_tree(root: Path, keyring: Keyring) -> list[Path]:
    """Re-seal every envelope under ``root`` whose key is not the primary; return those rewritten.

    Each file is opened (authenticated) before it is replaced atomically, so a file that fails to
    open stops the walk with a :class:`StoreError` naming it, and no file is ever half-written.
    """
    changed = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        blob = path.read_bytes()
        if not is_envelope(blob):
            continue
        key_id, context = envelope_info(blob)
        if key_id == keyring.primary:
            continue
        try:
            new = rotate(keyring, blob, context=context)
        except StoreError as exc:
            raise StoreError(f"{path}: {exc}") from None
        atomic_write(path, new, mode=stat.S_IMODE(path.stat().st_mode))
        changed.append(path)
    return changed


# --- sealed files --------------------------------------------------------------------------


class FileRole(enum.StrEnum):
    """What a sealed file is; part of the context its envelope is bound to."""

    CHECKPOINT = "checkpoint"
    MODEL = "model"
    NODE_STATE = "node-state"
    REPORT = "report"


def sealed_context(role: FileRole, root: Path, path: Path) -> str:
    """The context for ``path`` under ``root``: ``<role>:<path relative to root>`` (POSIX).

    Relative, so a state directory restored elsewhere still opens; bound, so a file moved or
    copied over another inside the directory does not.
    """
    try:
        rel = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise ValidationError(f"{path} is not under {root}", where="sealed file") from None
    return f"{role.value}:{rel}"


def write_sealed(path: Path, data: bytes, keyring: Keyring, *, context: str) -> None:
    """Encrypt ``data`` under the primary key and write it atomically, owner-only."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, encrypt(keyring, data, context=context), mode=PRIVATE)
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None


def read_sealed(path: Path, keyring: Keyring, *, context: str) -> bytes:
    """Read and open a sealed file; :class:`StoreError` naming the file if it fails."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"{path} is unreadable: {exc.strerror or exc}") from None
    try:
        return decrypt(keyring, blob, context=context)
    except StoreError as exc:
        raise StoreError(f"{path}: {exc}") from None
