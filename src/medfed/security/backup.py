"""Encrypted, verified backups of a state directory (HIPAA 164.308(a)(7) contingency plan, 164.312(c)).

An archive is a POSIX tar stream sealed with :class:`medfed.crypto.aead.StreamSealer`
(AES-256-GCM in 1 MiB authenticated chunks; reordering, truncation and a wrong key all fail).
Inside, every file of the state directory plus ``MANIFEST.json``: the SHA-256 and size of each
file. No pickle anywhere: the archive is tar, the manifest JSON.

SQLite databases are copied with SQLite's online backup API (a consistent snapshot even while a
coordinator writes in WAL mode); their ``-wal``/``-shm``/``-journal`` side files are left out.

:func:`restore` unpacks into a staging directory next to the target and checks the manifest
(every file present, no extra file, every hash) *before* it touches the current state; only then
is the old directory renamed aside and the staging directory renamed into place. A corrupted,
truncated or foreign archive, or a wrong key, raises :class:`~medfed.core.errors.StoreError` and
leaves the current state as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from medfed.core.errors import StoreError, ValidationError
from medfed.crypto.aead import Keyring, StreamSealer, decrypt_stream
from medfed.security.fsio import PRIVATE

__all__ = ["BackupManifest", "ManifestFile", "backup", "restore", "verify_backup"]

CONTEXT = "medfed-backup-v1"
MANIFEST = "MANIFEST.json"
_FORMAT = "medfed-backup-manifest-v1"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SIDE_FILES = ("-wal", "-shm", "-journal")
_READ = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestFile:
    path: str  # POSIX, relative to the state directory
    size: int
    sha256: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupManifest:
    created: float
    files: tuple[ManifestFile, ...]

    def to_json_bytes(self) -> bytes:
        files = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files]
        return json.dumps({"format": _FORMAT, "created": self.created, "files": files}, indent=1).encode()

    @classmethod
    def from_json_bytes(cls, data: bytes) -> BackupManifest:
        try:
            obj = json.loads(data)
            if obj["format"] != _FORMAT:
                raise ValueError(f"unknown format {obj['format']!r}")
            files = tuple(
                ManifestFile(path=str(f["path"]), size=int(f["size"]), sha256=str(f["sha256"])) for f in obj["files"]
            )
            return cls(created=float(obj["created"]), files=files)
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"backup manifest is malformed: {exc!r}") from None


# --- backup --------------------------------------------------------------------------------


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(16) == _SQLITE_MAGIC
    except FileNotFoundError:
        return False


def _sqlite_snapshot(path: Path) -> bytes:
    """A consistent copy of a live SQLite database (online backup API), as bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "snapshot.sqlite"
        src = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        dst = sqlite3.connect(copy)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        return copy.read_bytes()


def _walk(state_dir: Path) -> list[Path]:
    everything = sorted(state_dir.rglob("*"))
    if links := [p for p in everything if p.is_symlink() or not (p.is_dir() or p.is_file())]:
        raise StoreError(f"{links[0]}: not a regular file; a state directory holds only files and directories")
    return [p for p in everything if p.is_file()]


def _read(path: Path, snapshot: Callable[[Path], bytes]) -> bytes | None:
    try:
        return snapshot(path)
    except FileNotFoundError:
        return None  # a temporary file that vanished while we walked
    except (OSError, sqlite3.DatabaseError) as exc:
        raise StoreError(f"{path}: cannot read for backup: {exc}") from None


def _files(state_dir: Path) -> Iterator[tuple[str, bytes]]:
    """(relative POSIX path, content) of every file to back up.

    Databases are snapshotted first, then the directory is listed again: every file a database
    snapshot refers to (a checkpoint is durable before its round is committed) is then on disk and
    in the second listing. Files that appear later are extra, never missing.
    """
    databases = [p for p in _walk(state_dir) if _is_sqlite(p)]
    snapshots = {p: _read(p, _sqlite_snapshot) for p in databases}
    side = {Path(str(db) + s) for db in databases for s in _SIDE_FILES}
    for p in databases:
        if (data := snapshots[p]) is not None:
            yield p.relative_to(state_dir).as_posix(), data
    for p in _walk(state_dir):
        if p not in snapshots and p not in side and (data := _read(p, Path.read_bytes)) is not None:
            yield p.relative_to(state_dir).as_posix(), data


class _SealedFile(io.RawIOBase):
    """A write-only file object that seals what tar writes and appends it to ``out``."""

    def __init__(self, out: IO[bytes], sealer: StreamSealer) -> None:
        self._out, self._sealer = out, sealer
        out.write(sealer.header)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._out.write(self._sealer.update(chunk))
        return len(chunk)

    def finish(self) -> None:
        self._out.write(self._sealer.finish())


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), PRIVATE, int(mtime)
    tar.addfile(info, io.BytesIO(data))


def backup(
    state_dir: Path, out_path: Path, keyring: Keyring, *, clock: Callable[[], float] = time.time
) -> BackupManifest:
    """Write an encrypted archive of ``state_dir`` to ``out_path`` (atomically, owner-only).

    Raises
    ------
    StoreError
        ``state_dir`` is missing, holds a link or an unreadable file, or ``out_path`` lies inside it.
    """
    if not state_dir.is_dir():
        raise StoreError(f"{state_dir}: no such state directory")
    if out_path.resolve().is_relative_to(state_dir.resolve()):
        raise StoreError(f"{out_path}: the archive must not be written inside the state directory it backs up")
    now = float(clock())
    try:
        fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    except OSError as exc:
        raise StoreError(f"{out_path}: cannot write the archive there: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            sealed = _SealedFile(out, StreamSealer(keyring, context=CONTEXT))
            entries = []
            with tarfile.open(fileobj=sealed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for rel, data in _files(state_dir):
                    _add(tar, rel, data, now)
                    entries.append(ManifestFile(path=rel, size=len(data), sha256=hashlib.sha256(data).hexdigest()))
                manifest = BackupManifest(created=now, files=tuple(entries))
                _add(tar, MANIFEST, manifest.to_json_bytes(), now)
            sealed.finish()
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, PRIVATE)
        os.replace(tmp, out_path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise StoreError(f"{out_path}: cannot write the archive: {exc.strerror or exc}") from None
        raise
    return manifest


# --- restore -------------------------------------------------------------------------------


class _PlainReader(io.RawIOBase):
    """A read-only file object over the decrypted chunks of an archive."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._buf = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf = nxt
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def drain(self) -> None:
        """Consume the rest (runs the stream's final authentication checks)."""
        for _ in self._chunks:
            pass


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(_READ):
            yield chunk


def _safe_name(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts or name.startswith("/"):
        raise StoreError(f"backup member {name!r} has an unsafe path")
    return p


def _unpack(archive: Path, keyring: Keyring, staging: Path) -> BackupManifest:
    """Decrypt and unpack into ``staging``, then check it against the manifest."""
    try:
        reader = _PlainReader(decrypt_stream(keyring, _file_chunks(archive), context=CONTEXT))
        found: dict[str, tuple[int, str]] = {}
        manifest_bytes = None
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    raise StoreError(f"backup member {member.name!r} is not a regular file")
                name = _safe_name(member.name)
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                if member.name == MANIFEST:
                    manifest_bytes = data
                    continue
                if member.name in found:
                    raise StoreError(f"backup member {member.name!r} appears twice")
                target = staging.joinpath(*name.parts)
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                found[member.name] = (len(data), hashlib.sha256(data).hexdigest())
        reader.drain()
    except OSError as exc:
        raise StoreError(f"{archive}: cannot read the archive: {exc.strerror or exc}") from None
    except tarfile.TarError as exc:
        raise StoreError(f"{archive}: archive is malformed: {exc}") from None
    if manifest_bytes is None:
        raise StoreError(f"{archive}: archive has no manifest")
    manifest = BackupManifest.from_json_bytes(manifest_bytes)
    _check_manifest(archive, manifest, found)
    return manifest


def _check_manifest(archive: Path, manifest: BackupManifest, found: dict[str, tuple[int, str]]) -> None:
    problems: list[str] = []
    listed = {f.path: (f.size, f.sha256) for f in manifest.files}
    problems += [f"{p}: listed in the manifest but missing" for p in sorted(listed.keys() - found.keys())]
    problems += [f"{p}: in the archive but not in the manifest" for p in sorted(found.keys() - listed.keys())]
    problems += [
        f"{p}: content does not match its manifest hash"
        for p in sorted(listed.keys() & found.keys())
        if listed[p] != found[p]
    ]
    if problems:
        raise StoreError(str(ValidationError(problems, where=f"{archive}: manifest check failed")))


def _staging(state_dir: Path) -> Path:
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=state_dir.parent, prefix=f".{state_dir.name}.restore-"))


def verify_backup(archive: Path, keyring: Keyring) -> BackupManifest:
    """Decrypt and check a whole archive without restoring it; its manifest if it is sound."""
    with tempfile.TemporaryDirectory(prefix="medfed-verify-") as tmp:
        return _unpack(archive, keyring, Path(tmp))


def restore(archive: Path, state_dir: Path, keyring: Keyring) -> BackupManifest:
    """Replace ``state_dir`` with the archive's content, but only after all of it verified.

    The new directory is renamed into place after the old one is renamed aside (two renames on
    one file system); if the second rename fails, the old directory is put back.
    """
    try:
        staging = _staging(state_dir)
    except OSError as exc:
        raise StoreError(f"{state_dir}: cannot stage a restore next to it: {exc.strerror or exc}") from None
    try:
        manifest = _unpack(archive, keyring, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    try:
        if state_dir.exists():
            old = Path(tempfile.mkdtemp(dir=state_dir.parent, prefix=f".{state_dir.name}.old-"))
            os.rmdir(old)
            os.rename(state_dir, old)
        os.rename(staging, state_dir)
    except OSError as exc:
        if old is not None and old.exists() and not state_dir.exists():
            os.rename(old, state_dir)
        shutil.rmtree(staging, ignore_errors=True)
        raise StoreError(f"{state_dir}: cannot move the restored state into place: {exc.strerror or exc}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return manifest
