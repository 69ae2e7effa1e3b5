"""Content fingerprints of a site's datasets, as site approvals pin them.

A fingerprint is the SHA-256 of a dataset's files (:func:`medfed.data.digest.fingerprint`, the
same digest as the catalog entry's): a legacy CSV directory, or a declared dataset's file or
directory. A dataset read from a database (``dsn``) has none (''): approvals cannot pin it, and
``medfed approvals list`` says so.

The node checks the fingerprint before every task that reads data, so :class:`FingerprintCache`
hashes a dataset again only when one of its files changed size or modification time, or a file
was added or removed (the rule ``git status`` and ``rsync`` use): an edit that keeps both size and
mtime of every file is not seen until the next restart of the node.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from medfed.core.errors import DataError
from medfed.data.digest import files_version

if TYPE_CHECKING:
    from medfed.node.runtime import DatasetConfig

__all__ = ["FingerprintCache", "dataset_fingerprint", "dataset_fingerprints", "dataset_path"]


def dataset_path(ds: DatasetConfig) -> Path | None:
    """The file or directory whose bytes make ``ds``; ``None`` for a database."""
    if ds.decl is not None:
        return None if ds.decl.dsn else ds.decl.path
    return ds.path


def dataset_fingerprint(ds: DatasetConfig) -> str:
    """SHA-256 of the dataset's files ('' for a database).

    Raises
    ------
    DataError
        The dataset's files are missing or unreadable.
    """
    from medfed.data.digest import fingerprint  # hashlib only: the data stack (pandas) is not imported

    path = dataset_path(ds)
    if path is None:
        return ""
    if not path.exists():
        raise DataError(f"dataset {ds.name}: {path} does not exist, so it has no fingerprint")
    try:
        return fingerprint(path)
    except OSError as exc:
        raise DataError(f"dataset {ds.name}: cannot read {path}: {exc.strerror or exc}") from None


def dataset_fingerprints(datasets: Mapping[str, DatasetConfig], names: Iterable[str]) -> dict[str, str]:
    """Fingerprints of the named datasets this site declares (others and databases left out)."""
    found = {name: dataset_fingerprint(datasets[name]) for name in names if name in datasets}
    return {name: digest for name, digest in found.items() if digest}


class FingerprintCache:
    """:func:`dataset_fingerprint`, hashed again only when the dataset's files changed on disk."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[Path, tuple[tuple[int, int, int], str]] = {}
        self.computed = 0  # how many times a dataset was hashed (for tests and logs)

    def current(self, ds: DatasetConfig) -> str:
        path = dataset_path(ds)
        if path is None or not path.exists():
            return dataset_fingerprint(ds)  # '' for a database; DataError for missing files
        version = files_version(path)
        with self._lock:
            known = self._known.get(path)
            if known is not None and known[0] == version:
                return known[1]
        digest = dataset_fingerprint(ds)
        with self._lock:
            self._known[path] = (version, digest)
            self.computed += 1
        return digest
