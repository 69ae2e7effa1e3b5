"""Site approval of jobs: a job reaches a site's data only after the site admin approved its spec.

Approval is by SHA-256 of the spec's exact text (the same digest as
:attr:`medfed.core.records.JobSpec.spec_hash`), so any change to the spec, even a comment, needs a
new approval. A site admin may instead set a **standing rule** ("task X on dataset Y for purpose Z
by researcher R") that covers every spec matching it. Approvals and rules can carry an expiry; an
approval is for one purpose. Everything lives in the node's own SQLite file (WAL) and every
decision is kept (table ``decisions``) and sent to the audit callable.

Approval is on by default and cannot be turned off (compare Fed-BioMed, where it defaults to off).
"""

from __future__ import annotations

import difflib
import enum
import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from medfed.core.errors import PermissionDenied, ValidationError
from medfed.security.authz import Action, Principal, Resource, authorize
from medfed.security.node_policy import ANY, JobFacts
from medfed.security.sqlite import open_wal, transaction

__all__ = ["Approval", "ApprovalState", "ApprovalStore", "Clearance", "StandingRule", "spec_digest"]

AuditFn = Callable[[str, Mapping[str, str | int | float | bool]], None]

SCHEMA = """
CREATE TABLE IF NOT EXISTS specs (
    spec_hash TEXT PRIMARY KEY, job_id TEXT NOT NULL, name TEXT NOT NULL, researcher TEXT NOT NULL,
    purpose TEXT NOT NULL, task TEXT NOT NULL, dataset TEXT NOT NULL, spec_text TEXT NOT NULL,
    submitted REAL NOT NULL, state TEXT NOT NULL, decided_by TEXT NOT NULL DEFAULT '',
    decided_at REAL, reason TEXT NOT NULL DEFAULT '', expires REAL
);
CREATE TABLE IF NOT EXISTS decisions (
    at REAL NOT NULL, spec_hash TEXT NOT NULL, state TEXT NOT NULL, by TEXT NOT NULL, reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rules (
    rule_id TEXT PRIMARY KEY, task TEXT NOT NULL, dataset TEXT NOT NULL, purpose TEXT NOT NULL,
    researcher TEXT NOT NULL, created_by TEXT NOT NULL, created REAL NOT NULL, expires REAL,
    reason TEXT NOT NULL, revoked REAL
);
"""
_SPEC_COLUMNS = (
    "spec_hash, job_id, name, researcher, purpose, task, dataset, submitted, state, decided_by, decided_at,"
    " reason, expires"
)


def spec_digest(spec_text: str) -> str:
    """SHA-256 of the spec's exact text (UTF-8): what an approval refers to."""
    return hashlib.sha256(spec_text.encode()).hexdigest()


class ApprovalState(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True, kw_only=True)
class Approval:
    """One spec seen at this site and the site admin's current decision on it."""

    spec_hash: str
    job_id: str
    name: str
    researcher: str
    purpose: str
    task: str
    dataset: str
    submitted_at: float
    state: ApprovalState
    decided_by: str = ""
    decided_at: float | None = None
    reason: str = ""
    expires_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StandingRule:
    """A site admin's advance approval of every spec with this task, dataset, purpose and researcher."""

    rule_id: str
    task: str
    dataset: str
    purpose: str
    researcher: str  # a user id, or "*" for any researcher
    created_by: str
    created_at: float
    expires_at: float | None
    reason: str
    revoked: bool = False

    def covers(self, facts: JobFacts, *, now: float) -> bool:
        return (
            not self.revoked
            and (self.expires_at is None or now < self.expires_at)
            and (self.task, self.dataset, self.purpose) == (facts.task, facts.dataset, facts.purpose)
            and self.researcher in (ANY, facts.researcher)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Clearance:
    """Why a job may run here: an approval of its spec hash, or a standing rule."""

    spec_hash: str
    approved_by: str
    rule_id: str = ""  # set when a standing rule covered the spec
    expires_at: float | None = None


class ApprovalStore:
    """A site's approvals and standing rules in its SQLite file."""

    def __init__(self, path: Path, *, site: str, audit: AuditFn, clock: Callable[[], float] = time.time) -> None:
        self.path, self.site = path, site
        self._audit, self._clock = audit, clock
        self._lock = threading.Lock()
        self._db = open_wal(path, SCHEMA, what="approvals store")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db, self._lock)

    # --- the node's side ------------------------------------------------------------------

    def submit(self, facts: JobFacts) -> Approval:
        """Record a spec the node received (pending until decided); idempotent per spec hash."""
        if spec_digest(facts.spec_text) != facts.spec_hash:
            raise ValidationError(
                f"job {facts.job_id!r}: the spec text hashes to {spec_digest(facts.spec_text)[:12]}…, "
                f"not the claimed {facts.spec_hash[:12]}…",
                where=f"site {self.site!r} approvals",
            )
        with self._tx() as db:
            if db.execute("SELECT 1 FROM specs WHERE spec_hash=?", (facts.spec_hash,)).fetchone() is None:
                db.execute(
                    "INSERT INTO specs (spec_hash, job_id, name, researcher, purpose, task, dataset, spec_text,"
                    " submitted, state) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (facts.spec_hash, facts.job_id, facts.name, facts.researcher, facts.purpose, facts.task,
                     facts.dataset, facts.spec_text, self._clock(), ApprovalState.PENDING.value),
                )  # fmt: skip
                self._audit("approval.pending", {"site": self.site, "job": facts.job_id, "spec": facts.spec_hash})
        return self.get(facts.spec_hash)

    def check(self, facts: JobFacts) -> Clearance:
        """Clear the job to run here, or raise :class:`PermissionDenied` saying why not.

        The node calls this before any task touches data. An unknown spec is recorded as pending.
        """
        approval, now = self.submit(facts), self._clock()
        for rule in self.rules():
            if rule.covers(facts, now=now):
                return Clearance(spec_hash=facts.spec_hash, approved_by=rule.created_by, rule_id=rule.rule_id,
                                 expires_at=rule.expires_at)  # fmt: skip
        refuse = f"site {self.site!r} has not cleared job {facts.job_id!r} (spec {facts.spec_hash[:12]}…): "
        if approval.state is ApprovalState.PENDING:
            raise PermissionDenied(refuse + "its spec awaits the site admin's approval (medfed approvals list)")
        if approval.state is ApprovalState.REJECTED:
            raise PermissionDenied(refuse + f"rejected by {approval.decided_by}: {approval.reason}")
        if approval.expires_at is not None and now >= approval.expires_at:
            raise PermissionDenied(refuse + f"the approval expired at {approval.expires_at:.0f}")
        if approval.purpose != facts.purpose:
            raise PermissionDenied(refuse + f"approved for purpose {approval.purpose!r}, not {facts.purpose!r}")
        return Clearance(spec_hash=facts.spec_hash, approved_by=approval.decided_by, expires_at=approval.expires_at)

    # --- the site admin's side ------------------------------------------------------------

    def approve(self, spec_hash: str, *, by: Principal, reason: str = "", expires_at: float | None = None) -> Approval:
        """Approve a spec (by hash) for the purpose it was submitted with, optionally until ``expires_at``."""
        if expires_at is not None and expires_at <= self._clock():
            raise ValidationError(f"expiry {expires_at!r} is in the past", where=f"approval of {spec_hash[:12]}…")
        return self._decide(spec_hash, ApprovalState.APPROVED, by=by, reason=reason, expires_at=expires_at)

    def reject(self, spec_hash: str, *, by: Principal, reason: str) -> Approval:
        """Reject a spec (or withdraw an approval); a reason is mandatory."""
        if not reason.strip():
            raise ValidationError("a rejection needs a reason", where=f"rejection of {spec_hash[:12]}…")
        return self._decide(spec_hash, ApprovalState.REJECTED, by=by, reason=reason, expires_at=None)

    def _decide(
        self, spec_hash: str, state: ApprovalState, *, by: Principal, reason: str, expires_at: float | None
    ) -> Approval:
        self._authorize(by)
        now = self._clock()
        with self._tx() as db:
            changed = db.execute(
                "UPDATE specs SET state=?, decided_by=?, decided_at=?, reason=?, expires=? WHERE spec_hash=?",
                (state.value, by.user_id, now, reason, expires_at, spec_hash),
            ).rowcount
            if not changed:
                raise ValidationError(f"no spec {spec_hash!r} at site {self.site!r}")
            db.execute("INSERT INTO decisions VALUES (?,?,?,?,?)", (now, spec_hash, state.value, by.user_id, reason))
        self._audit(f"approval.{state.value}", {"site": self.site, "spec": spec_hash, "by": by.user_id})
        return self.get(spec_hash)

    def _authorize(self, by: Principal) -> None:
        decision = authorize(by, Action.APPROVAL_DECIDE, Resource.site(self.site))
        if decision.emergency:  # never reached with today's matrix; kept so a future change cannot slip by
            raise PermissionDenied("approvals cannot be decided under break glass")

    def add_rule(self, rule: StandingRule, *, by: Principal) -> StandingRule:
        """Add a standing rule; ``rule.rule_id`` and ``created_*`` are filled in here."""
        self._authorize(by)
        problems = [
            f"{k} must not be empty" for k in ("task", "dataset", "purpose", "researcher") if not getattr(rule, k)
        ]
        if not rule.reason.strip():
            problems.append("a standing rule needs a reason")
        if rule.expires_at is not None and rule.expires_at <= self._clock():
            problems.append(f"expiry {rule.expires_at!r} is in the past")
        if problems:
            raise ValidationError(problems, where=f"standing rule at site {self.site!r}")
        rule_id, now = secrets.token_hex(4), self._clock()
        with self._tx() as db:
            db.execute(
                "INSERT INTO rules VALUES (?,?,?,?,?,?,?,?,?,NULL)",
                (rule_id, rule.task, rule.dataset, rule.purpose, rule.researcher, by.user_id, now, rule.expires_at,
                 rule.reason),
            )  # fmt: skip
        self._audit("approval.rule_added", {"site": self.site, "rule": rule_id, "by": by.user_id,
                                            "task": rule.task, "dataset": rule.dataset})  # fmt: skip
        return next(r for r in self.rules() if r.rule_id == rule_id)

    def revoke_rule(self, rule_id: str, *, by: Principal) -> None:
        self._authorize(by)
        with self._tx() as db:
            if not db.execute("UPDATE rules SET revoked=? WHERE rule_id=?", (self._clock(), rule_id)).rowcount:
                raise ValidationError(f"no standing rule {rule_id!r} at site {self.site!r}")
        self._audit("approval.rule_revoked", {"site": self.site, "rule": rule_id, "by": by.user_id})

    # --- reading --------------------------------------------------------------------------

    def get(self, spec_hash: str) -> Approval:
        with self._lock:
            row = self._db.execute(f"SELECT {_SPEC_COLUMNS} FROM specs WHERE spec_hash=?", (spec_hash,)).fetchone()  # noqa: S608 - constant columns
        if row is None:
            raise ValidationError(f"no spec {spec_hash!r} at site {self.site!r}")
        return _approval(row)

    def find(self, prefix: str) -> Approval:
        """The one spec whose hash starts with ``prefix`` (at least 8 hex digits), as the CLI shows them."""
        if len(prefix) < 8:
            raise ValidationError(f"spec hash prefix {prefix!r} is too short (8 hex digits at least)")
        with self._lock:
            rows = self._db.execute("SELECT spec_hash FROM specs WHERE spec_hash LIKE ?", (prefix + "%",)).fetchall()
        if len(rows) != 1:
            raise ValidationError(f"{len(rows)} specs at site {self.site!r} match {prefix!r}; give more digits")
        return self.get(rows[0][0])

    def approvals(self, state: ApprovalState | None = None) -> list[Approval]:
        query = f"SELECT {_SPEC_COLUMNS} FROM specs"  # noqa: S608 - constant columns
        with self._lock:
            if state is None:
                rows = self._db.execute(query + " ORDER BY submitted").fetchall()
            else:
                rows = self._db.execute(query + " WHERE state=? ORDER BY submitted", (state.value,)).fetchall()
        return [_approval(r) for r in rows]

    def rules(self) -> list[StandingRule]:
        with self._lock:
            rows = self._db.execute(
                "SELECT rule_id, task, dataset, purpose, researcher, created_by, created, expires, reason, revoked"
                " FROM rules ORDER BY created"
            ).fetchall()
        return [
            StandingRule(rule_id=r[0], task=r[1], dataset=r[2], purpose=r[3], researcher=r[4], created_by=r[5],
                         created_at=r[6], expires_at=r[7], reason=r[8], revoked=r[9] is not None)
            for r in rows
        ]  # fmt: skip

    def spec_text(self, spec_hash: str) -> str:
        with self._lock:
            row = self._db.execute("SELECT spec_text FROM specs WHERE spec_hash=?", (spec_hash,)).fetchone()
        if row is None:
            raise ValidationError(f"no spec {spec_hash!r} at site {self.site!r}")
        return str(row[0])

    def diff(self, spec_hash: str) -> str:
        """A unified diff from the last approved spec of the same job name (or, failing that, the same
        researcher, task and dataset) to this spec; empty when there is nothing to compare with."""
        current = self.get(spec_hash)
        with self._lock:
            row = self._db.execute(
                "SELECT spec_hash, spec_text FROM specs WHERE state=? AND spec_hash<>? AND"
                " (name=? OR (researcher=? AND task=? AND dataset=?)) ORDER BY (name=?) DESC, decided_at DESC LIMIT 1",
                (ApprovalState.APPROVED.value, spec_hash, current.name, current.researcher, current.task,
                 current.dataset, current.name),
            ).fetchone()  # fmt: skip
        if row is None:
            return ""
        lines = difflib.unified_diff(
            row[1].splitlines(keepends=True),
            self.spec_text(spec_hash).splitlines(keepends=True),
            fromfile=f"approved {row[0][:12]}",
            tofile=f"{current.state.value} {spec_hash[:12]}",
        )
        return "".join(lines)


def _approval(row: tuple[object, ...]) -> Approval:
    return Approval(
        spec_hash=str(row[0]), job_id=str(row[1]), name=str(row[2]), researcher=str(row[3]), purpose=str(row[4]),
        task=str(row[5]), dataset=str(row[6]), submitted_at=float(row[7]),  # type: ignore[arg-type]  # SQLite REAL
        state=ApprovalState(str(row[8])), decided_by=str(row[9]),
        decided_at=None if row[10] is None else float(row[10]),  # type: ignore[arg-type]  # SQLite REAL
        reason=str(row[11]), expires_at=None if row[12] is None else float(row[12]),  # type: ignore[arg-type]
    )  # fmt: skip
