"""The SQLite files a site or the coordinator keeps (ledger, approvals, users): one way to open them
(WAL, autocommit, shared between threads behind the owner's lock) and one transaction helper."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medfed.core.errors import StoreError

__all__ = ["open_wal", "transaction"]


def open_wal(path: Path, schema: str, *, what: str) -> sqlite3.Connection:
    """Open (creating it and its directory if needed) the SQLite file ``path`` in WAL mode and apply
    ``schema``; :class:`StoreError` naming ``what`` and the file if it cannot be opened."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(schema)
    except (OSError, sqlite3.DatabaseError) as exc:
        raise StoreError(f"cannot open the {what} {path}: {exc}") from None
    return db


@contextmanager
def transaction(db: sqlite3.Connection, lock: threading.Lock) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` under ``lock``; ``ROLLBACK`` on any exception."""
    with lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
