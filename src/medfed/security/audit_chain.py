"""Audit records and their verification, without storage: entries, signed checkpoints, the chain
check that names the first bad entry, the JSON-lines format, and the participation comparison.

Pure functions over values, so a site can verify a coordinator's export without any database.
See :mod:`medfed.security.audit` for the log itself and the design.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from medfed.core.errors import StoreError, ValidationError
from medfed.crypto.signing import canonical_json, key_fingerprint, verify_bytes
from medfed.security.audit_events import AuditAction

__all__ = [
    "GENESIS",
    "AuditEntry",
    "Checkpoint",
    "ParticipationReport",
    "VerifyReport",
    "compare_participation",
    "read_jsonl",
    "verify_chain",
    "write_jsonl",
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
            except (StoreError, ValueError, TypeError):
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


def write_jsonl(entries: Iterable[AuditEntry], checkpoints: Iterable[Checkpoint], out: IO[str]) -> int:
    """Write entries then checkpoints as canonical JSON lines; return the number of lines."""
    lines = [canonical_json(e.to_json()).decode() for e in entries]
    lines += [canonical_json(c.to_json()).decode() for c in checkpoints]
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
