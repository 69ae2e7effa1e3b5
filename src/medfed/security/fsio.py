"""Atomic, permission-aware file writes for key material and registries.

A reader never sees a half-written file: data goes to a temporary file in the same directory,
is flushed to disk, then renamed over the target with :func:`os.replace` (atomic on POSIX and
Windows). The temporary file is created ``0600`` by :func:`tempfile.mkstemp`, so a private key
is never readable by others, not even for a moment.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PRIVATE", "PUBLIC", "atomic_write", "exclusive_lock"]

#: Mode of private keys and of files only the federation operator should read.
PRIVATE = 0o600
#: Mode of certificates, CRLs and configuration templates.
PUBLIC = 0o644


def _fsync_dir(directory: Path) -> None:
    """Persist a rename (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = PUBLIC) -> None:
    """Replace ``path`` with ``data`` atomically and give it ``mode``.

    Parameters
    ----------
    path : Path
        The target; its directory must exist.
    data : bytes
        The full new content.
    mode : int
        Permission bits, e.g. :data:`PRIVATE` for keys.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block.

    Serialises concurrent ``add_site``/``add_user``/``revoke`` runs against one federation
    directory. Uses :func:`fcntl.flock` where available; elsewhere it only creates the file.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE)
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows has no fcntl
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
