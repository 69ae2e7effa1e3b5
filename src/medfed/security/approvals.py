"""Site approval of jobs: a job reaches a site's data only after the site admin approved its spec.

Approval is by SHA-256 of the spec's exact text (the same digest as
:attr:`medfed.core.records.JobSpec.spec_hash`), so any change to the spec, even a comment, needs a
new approval. A site admin may instead set a **standing rule** ("task X on dataset Y for purpose Z
by researcher R") that covers every spec matching it. Approvals and rules can carry an expiry; an
approval is for one purpose. Everything lives in the node's own SQLite file (WAL) and every
decision is kept (table ``decisions``); with the node's audit log (:func:`open_site_approvals`),
every decision is also an ``approval.decided`` event in its hash chain, written in the same
transaction as the decision (who, spec hash or rule, outcome, reason; never PHI: a reason that
looks like an identifier is refused before anything changes).

**Dataset fingerprints.** An approval or a rule pins the content fingerprint (SHA-256 of the
files, :func:`medfed.data.sources.fingerprint`) of the dataset it covers: the tool that decides
(``medfed approvals approve --config site.toml``, the node page) passes it in; one that cannot see
the datasets leaves it to the node, which pins what it reads first after the decision. Before a
task touches data, :meth:`ApprovalStore.check` compares the current fingerprint with the pinned
ones: when no clearance matches, the job is refused (:class:`~medfed.core.errors.DatasetChanged`,
naming the dataset and both digests) and an approved spec goes back to pending, to be re-approved.
A standing rule names exactly one dataset, so it always pins that dataset's content at creation;
when the data changes, specs it covers need an approval by hash (or a new rule).

Approval is on by default (compare Fed-BioMed, where it defaults to off); a site turns it off
only by writing ``[policy] approval = "off"`` (:mod:`medfed.security.node_policy`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path

from medfed.core.errors import DatasetChanged, PermissionDenied, ValidationError
from medfed.security.approval_records import (
    Approval,
    ApprovalState,
    Clearance,
    StandingRule,
    approval_from_row,
    spec_digest,
)
from medfed.security.audit import AuditLog
from medfed.security.audit_events import AuditAction, AuditEvent, validate_event
from medfed.security.authz import Action, Principal, Resource, authorize
from medfed.security.node_policy import ANY, JobFacts
from medfed.security.sqlite import open_wal, transaction

__all__ = [
    "Approval", "ApprovalState", "ApprovalStore", "Clearance", "StandingRule", "open_site_approvals", "spec_digest",
]  # fmt: skip

AuditFn = Callable[[str, Mapping[str, str | int | float | bool]], None]
Fields = dict[str, str | int | float | bool]

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
CREATE TABLE IF NOT EXISTS pins (
    subject TEXT NOT NULL, dataset TEXT NOT NULL, fingerprint TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (subject, dataset)
);
"""
#: The files of a site's state directory that :func:`open_site_approvals` opens.
APPROVALS_FILE, AUDIT_FILE, AUDIT_KEY_FILE = "approvals.db", "audit.sqlite", "audit-signing.key"
_SPEC_COLUMNS = (
    "spec_hash, job_id, name, researcher, purpose, task, dataset, submitted, state, decided_by, decided_at,"
    " reason, expires"
)


class ApprovalStore:
    """A site's approvals and standing rules in its SQLite file.

    ``audit`` receives operator notes (a spec arrived); ``audit_log``, when given, receives every
    decision as an ``approval.decided`` event (use :func:`open_site_approvals` at a site).
    """

    def __init__(
        self,
        path: Path,
        *,
        site: str,
        audit: AuditFn,
        clock: Callable[[], float] = time.time,
        audit_log: AuditLog | None = None,
    ) -> None:
        self.path, self.site = path, site
        self._audit, self._clock, self._log = audit, clock, audit_log
        self._owns_log = False
        self._lock = threading.Lock()
        self._db = open_wal(path, SCHEMA, what="approvals store")

    def close(self) -> None:
        with self._lock:
            self._db.close()
        if self._log is not None and self._owns_log:
            self._log.close()

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

    def check(self, facts: JobFacts, *, fingerprint: str = "") -> Clearance:
        """Clear the job to run here, or raise :class:`PermissionDenied` saying why not.

        The node calls this before any task touches data, with the current ``fingerprint`` of the
        dataset the task reads ('' when it has none). An unknown spec is recorded as pending; a
        clearance whose pinned fingerprint differs does not count, and when none is left because the
        data changed, :class:`DatasetChanged` names the dataset and the spec goes back to pending.
        """
        approval, now = self.submit(facts), self._clock()
        candidates = [  # a rejection of this very spec outweighs a rule that would cover it
            Clearance(spec_hash=facts.spec_hash, approved_by=r.created_by, rule_id=r.rule_id, expires_at=r.expires_at)
            for r in self.rules()
            if r.covers(facts, now=now) and approval.state is not ApprovalState.REJECTED
        ]
        refuse = f"site {self.site!r} has not cleared job {facts.job_id!r} (spec {facts.spec_hash[:12]}…): "
        why = _why_not(approval, facts, now)
        if not why:
            candidates.insert(0, Clearance(spec_hash=facts.spec_hash, approved_by=approval.decided_by,
                                           expires_at=approval.expires_at))  # fmt: skip
        if not fingerprint and candidates:
            return candidates[0]
        stale = []
        for clearance in candidates:
            pinned = self._pin_or_get(clearance.subject, facts.dataset, fingerprint)
            if pinned == fingerprint:
                return dataclasses.replace(clearance, fingerprint=fingerprint)
            stale.append(pinned)
        was = self.pins(facts.spec_hash).get(facts.dataset, fingerprint)
        if approval.state is ApprovalState.PENDING and was != fingerprint:
            stale.append(was)  # an approval the data outgrew, awaiting re-approval
        if not stale:
            raise PermissionDenied(refuse + why)
        changed = f"dataset {facts.dataset} changed since approval (was {stale[0][:12]}…, now {fingerprint[:12]}…)"
        self._outgrown(approval, changed)
        raise DatasetChanged(refuse + changed + "; the spec awaits re-approval (medfed approvals list)")

    def _pin_or_get(self, subject: str, dataset: str, fingerprint: str) -> str:
        """The fingerprint pinned to ``subject`` for ``dataset``; pins ``fingerprint`` when none is."""
        with self._tx() as db:
            row = db.execute(
                "SELECT fingerprint FROM pins WHERE subject=? AND dataset=?", (subject, dataset)
            ).fetchone()
            if row is not None:
                return str(row[0])
            db.execute("INSERT INTO pins VALUES (?,?,?,?)", (subject, dataset, fingerprint, self._clock()))
        return fingerprint

    def _outgrown(self, approval: Approval, why: str) -> None:
        """An approved spec whose dataset changed goes back to pending (kept in ``decisions``); a
        pending one (a rule covered it) is marked with the change."""
        now = self._clock()
        if approval.state is ApprovalState.PENDING:
            with self._tx() as db:
                db.execute("UPDATE specs SET reason=? WHERE spec_hash=?", (why, approval.spec_hash))
            return
        with self._tx() as db:
            db.execute(
                "UPDATE specs SET state=?, decided_by='', decided_at=?, reason=?, expires=NULL WHERE spec_hash=?",
                (ApprovalState.PENDING.value, now, why, approval.spec_hash),
            )
            db.execute(
                "INSERT INTO decisions VALUES (?,?,?,?,?)",
                (now, approval.spec_hash, ApprovalState.PENDING.value, f"node:{self.site}", why),
            )
        self._audit("approval.outgrown", {"site": self.site, "spec": approval.spec_hash})

    # --- the site admin's side ------------------------------------------------------------

    def approve(
        self,
        spec_hash: str,
        *,
        by: Principal,
        reason: str = "",
        expires_at: float | None = None,
        fingerprints: Mapping[str, str] | None = None,
    ) -> Approval:
        """Approve a spec (by hash) for the purpose it was submitted with, optionally until ``expires_at``.

        ``fingerprints`` (dataset → fingerprint, as the decider saw the data) are pinned to the
        approval; without them the node pins what it reads first after this approval.
        """
        if problems := _expiry_problems(expires_at, self._clock()):
            raise ValidationError(problems, where=f"approval of {spec_hash[:12]}…")
        pins = {d: f for d, f in (fingerprints or {}).items() if f}  # '' : a dataset without one (a database)
        return self._decide(spec_hash, ApprovalState.APPROVED, by=by, reason=reason, expires_at=expires_at, pins=pins)

    def reject(self, spec_hash: str, *, by: Principal, reason: str) -> Approval:
        """Reject a spec (or withdraw an approval); a reason is mandatory."""
        if not reason.strip():
            raise ValidationError("a rejection needs a reason", where=f"rejection of {spec_hash[:12]}…")
        return self._decide(spec_hash, ApprovalState.REJECTED, by=by, reason=reason, expires_at=None, pins={})

    def _decide(
        self,
        spec_hash: str,
        state: ApprovalState,
        *,
        by: Principal,
        reason: str,
        expires_at: float | None,
        pins: Mapping[str, str],
    ) -> Approval:
        self._authorize(by)
        current = self.get(spec_hash)
        fields: Fields = {"spec_hash": spec_hash, "task": current.task, "dataset": current.dataset,
                          "purpose": current.purpose}  # fmt: skip
        if len(pins) == 1:
            fields["fingerprint"] = next(iter(pins.values()))
        event = self._decision_event(by, state.value, reason, fields)
        now = self._clock()
        with self._tx() as db:
            db.execute(
                "UPDATE specs SET state=?, decided_by=?, decided_at=?, reason=?, expires=? WHERE spec_hash=?",
                (state.value, by.user_id, now, reason, expires_at, spec_hash),
            )
            db.execute("INSERT INTO decisions VALUES (?,?,?,?,?)", (now, spec_hash, state.value, by.user_id, reason))
            db.execute("DELETE FROM pins WHERE subject=?", (spec_hash,))
            db.executemany("INSERT INTO pins VALUES (?,?,?,?)", [(spec_hash, d, f, now) for d, f in pins.items()])
            self._record(event)
        self._audit(f"approval.{state.value}", {"site": self.site, "spec": spec_hash, "by": by.user_id})
        return self.get(spec_hash)

    def _decision_event(self, by: Principal, outcome: str, reason: str, fields: Fields) -> AuditEvent | None:
        """The ``approval.decided`` event, validated before anything changes (a PHI-like reason is refused)."""
        if self._log is None:
            return None
        details: Fields = {"site": self.site, "user": by.user_id, "outcome": outcome, **fields}
        if reason.strip():
            details["reason"] = reason.strip()
        event = AuditEvent(action=AuditAction.APPROVAL_DECIDED, actor=by.user_id, fields=details)
        validate_event(event)
        return event

    def _record(self, event: AuditEvent | None) -> None:
        # called inside the store's transaction: a decision the audit log cannot take is rolled back
        if event is not None and self._log is not None:
            self._log.append(event)

    def _authorize(self, by: Principal) -> None:
        decision = authorize(by, Action.APPROVAL_DECIDE, Resource.site(self.site))
        if decision.emergency:  # never reached with today's matrix; kept so a future change cannot slip by
            raise PermissionDenied("approvals cannot be decided under break glass")

    def add_rule(self, rule: StandingRule, *, by: Principal, fingerprint: str = "") -> StandingRule:
        """Add a standing rule; ``rule.rule_id`` and ``created_*`` are filled in here. ``fingerprint``
        pins the rule's one dataset as the decider saw it (else the node pins it at first use)."""
        self._authorize(by)
        problems = [
            f"{k} must not be empty" for k in ("task", "dataset", "purpose", "researcher") if not getattr(rule, k)
        ]
        problems += [
            f"{k} {ANY!r}: a standing rule names one {k} (only researcher may be {ANY!r}), so it can pin the data"
            for k in ("task", "dataset", "purpose")
            if getattr(rule, k) == ANY
        ]
        if not rule.reason.strip():
            problems.append("a standing rule needs a reason")
        problems += _expiry_problems(rule.expires_at, self._clock())
        if problems:
            raise ValidationError(problems, where=f"standing rule at site {self.site!r}")
        rule_id, now = secrets.token_hex(4), self._clock()
        fields: Fields = {"approval_id": rule_id, "task": rule.task, "dataset": rule.dataset, "purpose": rule.purpose}
        if fingerprint:
            fields["fingerprint"] = fingerprint
        event = self._decision_event(by, "rule-added", rule.reason, fields)
        with self._tx() as db:
            db.execute(
                "INSERT INTO rules VALUES (?,?,?,?,?,?,?,?,?,NULL)",
                (rule_id, rule.task, rule.dataset, rule.purpose, rule.researcher, by.user_id, now, rule.expires_at,
                 rule.reason),
            )  # fmt: skip
            if fingerprint:
                db.execute("INSERT INTO pins VALUES (?,?,?,?)", (f"rule:{rule_id}", rule.dataset, fingerprint, now))
            self._record(event)
        self._audit("approval.rule_added", {"site": self.site, "rule": rule_id, "by": by.user_id,
                                            "task": rule.task, "dataset": rule.dataset})  # fmt: skip
        return next(r for r in self.rules() if r.rule_id == rule_id)

    def revoke_rule(self, rule_id: str, *, by: Principal, reason: str = "") -> None:
        self._authorize(by)
        event = self._decision_event(by, "rule-revoked", reason, {"approval_id": rule_id})
        with self._tx() as db:
            if not db.execute("UPDATE rules SET revoked=? WHERE rule_id=?", (self._clock(), rule_id)).rowcount:
                raise ValidationError(f"no standing rule {rule_id!r} at site {self.site!r}")
            self._record(event)
        self._audit("approval.rule_revoked", {"site": self.site, "rule": rule_id, "by": by.user_id})

    def pins(self, subject: str) -> dict[str, str]:
        """Dataset → fingerprint pinned to ``subject`` (a spec hash, or ``rule:<id>``)."""
        with self._lock:
            rows = self._db.execute("SELECT dataset, fingerprint FROM pins WHERE subject=?", (subject,)).fetchall()
        return {str(d): str(f) for d, f in rows}

    # --- reading --------------------------------------------------------------------------

    def get(self, spec_hash: str) -> Approval:
        with self._lock:
            row = self._db.execute(f"SELECT {_SPEC_COLUMNS} FROM specs WHERE spec_hash=?", (spec_hash,)).fetchone()  # noqa: S608 - constant columns
        if row is None:
            raise ValidationError(f"no spec {spec_hash!r} at site {self.site!r}")
        return approval_from_row(row)

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
        return [approval_from_row(r) for r in rows]

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


def _expiry_problems(expires_at: float | None, now: float) -> list[str]:
    """An expiry must be a finite time after ``now`` (SQLite stores NaN as NULL: no expiry at all)."""
    if expires_at is None:
        return []
    if not math.isfinite(expires_at):
        return [f"expiry {expires_at!r} is not a time"]
    return [f"expiry {expires_at!r} is in the past"] if expires_at <= now else []


def _why_not(approval: Approval, facts: JobFacts, now: float) -> str:
    """Why ``approval`` does not clear ``facts``'s job now ('' when it does)."""
    if approval.state is ApprovalState.PENDING:
        return "its spec awaits the site admin's approval (medfed approvals list)"
    if approval.state is ApprovalState.REJECTED:
        return f"rejected by {approval.decided_by}: {approval.reason}"
    if approval.expires_at is not None and now >= approval.expires_at:
        return f"the approval expired at {approval.expires_at:.0f}"
    if approval.purpose != facts.purpose:
        return f"approved for purpose {approval.purpose!r}, not {facts.purpose!r}"
    return ""


def open_site_approvals(
    state_dir: Path,
    *,
    site: str,
    note: AuditFn,
    clock: Callable[[], float] = time.time,
    approvals_file: Path | None = None,
) -> ApprovalStore:
    """A site's approvals (``state_dir/approvals.db``, or ``approvals_file``) writing each decision
    into the site's own audit log (``state_dir/audit.sqlite``, checkpoints signed by
    ``state_dir/audit-signing.key``): what ``medfed approvals`` and the node page open. Closing the
    store closes the log."""
    from medfed.security.provision import open_signing_key  # the PKI recipes: only where a site is opened

    log = AuditLog(state_dir / AUDIT_FILE, signer=open_signing_key(state_dir / AUDIT_KEY_FILE), clock=clock)
    path = approvals_file or state_dir / APPROVALS_FILE
    try:
        store = ApprovalStore(path, site=site, audit=note, clock=clock, audit_log=log)
    except BaseException:
        log.close()
        raise
    store._owns_log = True
    return store
