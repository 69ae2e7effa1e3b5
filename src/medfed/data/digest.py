"""The content fingerprint of a dataset's files, without the data stack (numpy, pandas, pyarrow):
a node checks it before every task, and its first task should not pay for importing pandas."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["files_version", "fingerprint"]


def fingerprint(path: Path, *, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's (or a directory's sorted files') bytes, read in chunks: the content id."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def files_version(path: Path | None) -> tuple[int, int, int]:
    """(latest mtime in ns, total size, file count) of a file or of a directory's files; zeros if
    absent. Cheap (``stat`` only): a changed version says the content may have changed and is worth
    hashing or reading again (the rule ``git status`` and ``rsync`` use)."""
    if path is None or not path.exists():
        return (0, 0, 0)
    stats = [f.stat() for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path.stat()]
    return (max((s.st_mtime_ns for s in stats), default=0), sum(s.st_size for s in stats), len(stats))
