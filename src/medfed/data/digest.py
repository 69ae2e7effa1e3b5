"""The content fingerprint of a dataset's files, without the data stack (numpy, pandas, pyarrow):
a node checks it before every task, and its first task should not pay for importing pandas."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["fingerprint"]


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
