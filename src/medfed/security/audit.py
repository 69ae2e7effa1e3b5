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
import hashlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from medfed.core.errors import StoreError, ValidationError
from medfed.crypto.signing import SigningKey, canonical_json, key_fingerprint, sign_bytes, verify_bytes
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
    "validate_event",
    "verify_chain",
]

GENESIS = "0" * 64
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHECKPOINT_DOMAIN = "medfed-audit-checkpoint-v1"


# --- entries, checkpoints, verification ----------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    seq: int
    at: float
    action: str
    actor: str
    fields: Mapping[str, Any]
    prev: str
    hash: str

    def body(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at, "action": self.action, "actor": self.actor, "fields": dict(self.fields)}

    def computed_hash(self) -> str:
        return hashlib.sha256(bytes.fromhex(self.prev) + canonical_json(self.body())).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"type": "entry", **self.body(), "prev": self.prev, "hash": self.hash}


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """A signed statement: the chain's head at ``seq`` was ``hash``."""

    seq: int
    hash: str
    at: float
    signer: str
    signature: str  # hex

    def message(self) -> bytes:
        return canonical_json(
            {"domain": _CHECKPOINT_DOMAIN, "seq": self.seq, "hash": self.hash, "at": self.at, "signer": self.signer}
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "checkpoint",
            "seq": self.seq,
            "hash": self.hash,
            "at": self.at,
            "signer": self.signer,
            "signature": self.signature,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    """The outcome of :func:`verify_chain`; ``first_bad`` is ``(seq, why)`` of the first bad entry."""

    entries: int
    checkpoints: int
    unanchored: int  # entries after the last valid checkpoint: protected by the chain only
    first_bad: tuple[int, str] | None = None

    @property
    def ok(self) -> bool:
        return self.first_bad is None


def _chain_problems(entries: Iterable[AuditEntry]) -> tuple[list[tuple[int, str]], dict[int, str]]:
    problems: list[tuple[int, str]] = []
    heads: dict[int, str] = {}
    prev, expected = GENESIS, 1
    for e in entries:
        if e.seq > expected:
            problems.append((expected, f"missing: entries {expected}..{e.seq - 1} were deleted"))
        elif e.seq < expected:
            problems.append((e.seq, f"out of order or duplicated (found after entry {expected - 1})"))
        if not (_HEX64.fullmatch(e.hash) and _HEX64.fullmatch(e.prev)):
            problems.append((e.seq, "malformed hash fields: the entry was edited"))
        elif e.prev != prev:
            problems.append(
                (
                    e.seq,
                    "does not link to the entry before it: that entry was edited and re-hashed, "
                    "or an entry was deleted, inserted or reordered",
                )
            )
        elif e.computed_hash() != e.hash:
            problems.append((e.seq, "content does not match its hash: the entry was edited"))
        heads[e.seq] = e.hash
        prev, expected = e.hash, max(expected, e.seq + 1)
    return problems, heads


def verify_chain(
    entries: Iterable[AuditEntry], checkpoints: Sequence[Checkpoint], public_pem: bytes | None
) -> VerifyReport:
    """Check links, hashes and (with ``public_pem``) signed checkpoints; name the first bad entry.

    A checkpoint whose signature fails, or signed by another key, is itself a problem. A chain that
    was rewritten from entry k on (every hash recomputed) is caught at the next checkpoint at or
    after k; the report then names the checkpoint's range, since the exact entry cannot be known
    (unless a visible chain problem in that range names an entry more precisely).
    """
    entry_list = list(entries)
    chain, heads = _chain_problems(entry_list)
    problems = list(chain)
    last = entry_list[-1].seq if entry_list else 0
    anchored, previous = 0, 0
    signer = key_fingerprint(public_pem) if public_pem is not None else None
    for cp in sorted(checkpoints, key=lambda c: c.seq):
        if signer is not None:
            try:
                if cp.signer != signer:
                    raise StoreError("another signer")
                verify_bytes(public_pem or b"", cp.message(), bytes.fromhex(cp.signature))
            except (StoreError, ValueError):
                problems.append((cp.seq, f"checkpoint at entry {cp.seq}: signature invalid or by another key"))
                continue
        if cp.seq > last:
            problems.append((last + 1, f"truncated: a signed checkpoint covers entry {cp.seq}, the log ends at {last}"))
        elif heads.get(cp.seq) != cp.hash:
            # a visible chain problem inside the interval explains the mismatch more precisely
            if not any(previous < seq <= cp.seq for seq, _ in chain):
                problems.append(
                    (
                        previous + 1,
                        f"the chain up to entry {cp.seq} differs from its signed checkpoint: "
                        f"an entry in {previous + 1}..{cp.seq} was altered and the chain recomputed",
                    )
                )
        else:
            anchored = cp.seq
        previous = cp.seq
    first = min(problems, key=lambda p: p[0]) if problems else None
    return VerifyReport(
        entries=len(entry_list), checkpoints=len(checkpoints), unanchored=last - anchored, first_bad=first
    )


def _hex64(value: object) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ValueError("a hash must be 64 lowercase hex digits")
    return value


def _checkpoint_from_json(obj: Mapping[str, Any]) -> Checkpoint:
    signature = str(obj["signature"])
    bytes.fromhex(signature)
    return Checkpoint(
        seq=int(obj["seq"]),
        hash=_hex64(obj["hash"]),
        at=float(obj["at"]),
        signer=str(obj["signer"]),
        signature=signature,
    )


def _entry_from_json(obj: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(
        seq=int(obj["seq"]),
        at=float(obj["at"]),
        action=str(obj["action"]),
        actor=str(obj["actor"]),
        fields=dict(obj["fields"]),
        prev=str(obj["prev"]),
        hash=str(obj["hash"]),
    )


def read_jsonl(lines: Iterable[str], *, source: str = "audit export") -> tuple[list[AuditEntry], list[Checkpoint]]:
    """Parse an export of :meth:`AuditLog.export_jsonl`; a malformed line names its number."""
    entries, checkpoints = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if obj["type"] == "entry":
                entries.append(_entry_from_json(obj))
            elif obj["type"] == "checkpoint":
                checkpoints.append(_checkpoint_from_json(obj))
            else:
                raise ValueError(f"unknown type {obj['type']!r}")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValidationError(f"malformed line: {exc!r}", where=f"{source}, line {n}") from None
    return entries, checkpoints


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
            rows = self._db.execute("SELECT * FROM audit WHERE seq > ? ORDER BY seq", (since,)).fetchall()
        return [
            AuditEntry(seq=r[0], at=r[1], action=r[2], actor=r[3], fields=_fields(r[4]), prev=str(r[5]), hash=str(r[6]))
            for r in rows
        ]

    def checkpoints(self) -> list[Checkpoint]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM audit_checkpoints ORDER BY seq").fetchall()
        return [Checkpoint(seq=r[0], hash=r[1], at=r[2], signer=r[3], signature=r[4]) for r in rows]

    def verify(self, public_pem: bytes | None) -> VerifyReport:
        return verify_chain(self.entries(), self.checkpoints(), public_pem)

    def export_jsonl(self, out: IO[str], *, since: int = 0) -> int:
        """Write entries (``seq > since``) then checkpoints as JSON lines for a SIEM; return the count."""
        lines = [canonical_json(e.to_json()).decode() for e in self.entries(since=since)]
        lines += [canonical_json(c.to_json()).decode() for c in self.checkpoints() if c.seq > since]
        out.write("".join(line + "\n" for line in lines))
        return len(lines)


# --- a site checks the coordinator's record of its participation ---------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipationReport:
    site: str
    matched: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _results(entries: Iterable[AuditEntry], action: AuditAction, site: str | None) -> dict[tuple[str, int], str]:
    return {
        (str(e.fields.get("job_id")), int(e.fields.get("round", -1))): str(e.fields.get("update_sha256", ""))
        for e in entries
        if e.action == action.value and (site is None or e.fields.get("site") == site)
    }


def compare_participation(
    coordinator: Iterable[AuditEntry], local: Iterable[AuditEntry], *, site: str
) -> ParticipationReport:
    """Compare the coordinator's ``result.received`` entries for ``site`` with the site's own
    ``result.sent`` entries: results the site never sent, results the coordinator did not record,
    and updates whose digest differs are all reported."""
    theirs = _results(coordinator, AuditAction.RESULT_RECEIVED, site)
    mine = _results(local, AuditAction.RESULT_SENT, None)
    problems = [
        f"job {j} round {r}: the coordinator records a result this site never sent"
        for j, r in sorted(theirs.keys() - mine.keys())
    ]
    problems += [
        f"job {j} round {r}: this site sent a result the coordinator does not record"
        for j, r in sorted(mine.keys() - theirs.keys())
    ]
    problems += [
        f"job {j} round {r}: update digest differs (coordinator {theirs[j, r][:12]}, site {mine[j, r][:12]})"
        for j, r in sorted(theirs.keys() & mine.keys())
        if theirs[j, r] != mine[j, r]
    ]
    return ParticipationReport(site=site, matched=len(theirs.keys() & mine.keys()), problems=tuple(problems))
