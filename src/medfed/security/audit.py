"""A tamper-evident, append-only audit log (HIPAA 45 CFR 164.312(b) audit controls, (c) integrity).

Entries live in SQLite. Entry ``n`` stores ``hash_n = SHA-256(hash_{n-1} || canonical JSON of
(seq, at, action, actor, fields))``, with ``hash_0`` = 64 zeros (a hash chain, Schneier & Kelsey
1999). Every ``checkpoint_every`` entries the log signs ``(seq, hash)`` with an Ed25519 key
(:mod:`medfed.crypto.signing`), so an attacker who rewrites the chain and recomputes every hash
is still caught at the next signed checkpoint, and deleting the tail behind a checkpoint is
caught too. Entries after the last checkpoint are protected by the chain only: export them (to a
SIEM) or checkpoint often. SQLite triggers refuse UPDATE and DELETE as a guard against accidents.

:func:`verify_chain` names the FIRST bad entry (sequence number and why). Events never carry PHI:
:func:`validate_event` admits only allow-listed field names with typed, pattern-checked values and
rejects text that looks like a person's name, a record number, a date, an e-mail or a phone number.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from medfed.core.errors import StoreError, ValidationError
from medfed.crypto.signing import SigningKey, canonical_json, key_fingerprint, sign_bytes
from medfed.security.audit_chain import (
    GENESIS,
    AuditEntry,
    Checkpoint,
    ParticipationReport,
    VerifyReport,
    compare_participation,
    read_jsonl,
    verify_chain,
    write_jsonl,
)
from medfed.security.audit_events import ALLOWED_FIELDS, AuditAction, AuditEvent, FieldKind, validate_event

__all__ = [
    "ALLOWED_FIELDS",
    "GENESIS",
    "AuditAction",
    "AuditEntry",
    "AuditEvent",
    "AuditLog",
    "Checkpoint",
    "FieldKind",
    "ParticipationReport",
    "VerifyReport",
    "compare_participation",
    "read_jsonl",
    "read_log",
    "validate_event",
    "verify_chain",
    "write_jsonl",
]


# --- the log -------------------------------------------------------------------------------


def _fields(text: str) -> dict[str, Any]:
    """Stored fields; text that is not a JSON object (a tampered row) is kept so its hash fails."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        value = None
    return value if isinstance(value, dict) else {"_unparseable": str(text)}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, at REAL NOT NULL, action TEXT NOT NULL,
    actor TEXT NOT NULL, fields TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_checkpoints (seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, at REAL NOT NULL,
    signer TEXT NOT NULL, signature TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'append-only'); END;
"""


class AuditLog:
    """The append-only log in the SQLite file ``path`` (coordinator or node)."""

    def __init__(
        self,
        path: Path,
        *,
        signer: SigningKey | None = None,
        clock: Callable[[], float] = time.time,
        checkpoint_every: int = 100,
    ) -> None:
        if checkpoint_every < 1:
            raise ValidationError(f"checkpoint_every must be >= 1, got {checkpoint_every}", where="audit log")
        self.path, self._signer, self._clock, self._every = path, signer, clock, checkpoint_every
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise StoreError(f"cannot open audit log {path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def append(self, event: AuditEvent) -> AuditEntry:
        """Validate and append ``event``; sign a checkpoint every ``checkpoint_every`` entries."""
        validate_event(event)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # one writer across processes too
            try:
                row = self._db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
                draft = AuditEntry(
                    seq=seq,
                    at=float(self._clock()),
                    action=event.action.value,
                    actor=event.actor,
                    fields=dict(event.fields),
                    prev=prev,
                    hash="",
                )
                entry = dataclasses.replace(draft, hash=draft.computed_hash())
                self._db.execute(
                    "INSERT INTO audit VALUES (?,?,?,?,?,?,?)",
                    (
                        entry.seq,
                        entry.at,
                        entry.action,
                        entry.actor,
                        canonical_json(dict(entry.fields)).decode(),
                        entry.prev,
                        entry.hash,
                    ),
                )
                if self._signer is not None and seq % self._every == 0:
                    self._insert_checkpoint(seq, entry.hash)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return entry

    def _insert_checkpoint(self, seq: int, head: str) -> Checkpoint:
        if self._signer is None:
            raise ValidationError("this audit log has no signing key", where=str(self.path))
        unsigned = Checkpoint(
            seq=seq, hash=head, at=float(self._clock()), signer=key_fingerprint(self._signer.public_pem), signature=""
        )
        sig = sign_bytes(self._signer.private_pem, unsigned.message()).hex()
        cp = Checkpoint(seq=seq, hash=head, at=unsigned.at, signer=unsigned.signer, signature=sig)
        self._db.execute(
            "INSERT OR REPLACE INTO audit_checkpoints VALUES (?,?,?,?,?)",
            (cp.seq, cp.hash, cp.at, cp.signer, cp.signature),
        )
        return cp

    def checkpoint(self) -> Checkpoint | None:
        """Sign the current head now (e.g. at shutdown or before an export); ``None`` if empty."""
        with self._lock:
            row = self._db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            return self._insert_checkpoint(int(row[0]), str(row[1])) if row else None

    def entries(self, *, since: int = 0) -> list[AuditEntry]:
        """Entries with ``seq > since``, in order."""
        with self._lock:
            return _select_entries(self._db, since)

    def checkpoints(self) -> list[Checkpoint]:
        with self._lock:
            return _select_checkpoints(self._db)

    def verify(self, public_pem: bytes | None) -> VerifyReport:
        return verify_chain(self.entries(), self.checkpoints(), public_pem)

    def export_jsonl(self, out: IO[str], *, since: int = 0) -> int:
        """Write entries (``seq > since``) then checkpoints as JSON lines for a SIEM; return the count."""
        return write_jsonl(self.entries(since=since), [c for c in self.checkpoints() if c.seq > since], out)


def _select_entries(db: sqlite3.Connection, since: int) -> list[AuditEntry]:
    rows = db.execute("SELECT * FROM audit WHERE seq > ? ORDER BY seq", (since,)).fetchall()
    return [
        AuditEntry(
            seq=r[0], at=r[1], action=str(r[2]), actor=str(r[3]), fields=_fields(r[4]), prev=str(r[5]), hash=str(r[6])
        )
        for r in rows
    ]


def _select_checkpoints(db: sqlite3.Connection) -> list[Checkpoint]:
    rows = db.execute("SELECT * FROM audit_checkpoints ORDER BY seq").fetchall()
    return [Checkpoint(seq=r[0], hash=str(r[1]), at=r[2], signer=str(r[3]), signature=str(r[4])) for r in rows]


def read_log(path: Path, *, since: int = 0) -> tuple[list[AuditEntry], list[Checkpoint]]:
    """Entries (``seq > since``) and checkpoints of the log at ``path``, opened read-only.

    Use this to verify or export: it changes nothing in the file (opening an :class:`AuditLog`
    would re-create dropped guards, altering the evidence).
    """
    if not path.is_file():
        raise StoreError(f"audit log {path}: no such file")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return _select_entries(db, since), _select_checkpoints(db)
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"audit log {path} is unreadable or not an audit log: {exc}") from None
