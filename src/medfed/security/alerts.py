"""The coordinator's store of security alerts (``state_dir/alerts.sqlite``), read by the CLI and dashboard.

Alerts come from two sources (:class:`AlertSource`): the access detector over the coordinator's own
audit log (:mod:`medfed.security.access_anomaly`: failed-login bursts, off-hours use, new networks,
unusual volume or scope) and the aggregation anomaly detector (a node sending anomalous updates).
Each alert has a stable id derived from what it is about, so a scanner that looks at the same
window twice adds it once (:meth:`AlertStore.add` returns ``False`` for a duplicate).

An alert carries no PHI: the same allow-list spirit as audit events. ``subject`` is a user or site
name, ``reason`` a short machine-written explanation checked by the audit log's identifier patterns
(:func:`safe_reason`), ``kind`` one or more alert kinds joined by commas.
"""

from __future__ import annotations

import enum
import hashlib
import math
import threading
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from medfed.core.errors import StoreError, ValidationError
from medfed.security.audit_events import AuditAction, AuditEvent, validate_event
from medfed.security.sqlite import open_wal, transaction

__all__ = ["AlertSource", "AlertStore", "StoredAlert", "alert_id", "safe_reason"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY, at REAL NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL,
    score REAL NOT NULL, reason TEXT NOT NULL, source TEXT NOT NULL, job_id TEXT NOT NULL DEFAULT '',
    round INTEGER NOT NULL DEFAULT 0, added REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_at ON alerts (at);
"""

_MAX_REASON = 200


class AlertSource(enum.StrEnum):
    """Where an alert came from."""

    ACCESS = "access"  # people's use of the coordinator (its audit log)
    UPDATES = "updates"  # a node's model updates (aggregation anomaly detection)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredAlert:
    """One alert as stored and shown.

    Parameters
    ----------
    alert_id
        Stable id (:func:`alert_id`): the same finding gets the same id.
    at
        When the finding happened (start of the access window; for updates, when it was found).
    kind
        Alert kinds, comma-joined (e.g. ``"failed_logins"`` or ``"off_hours,new_source"``).
    subject
        The user (access) or site (updates) the alert is about.
    score
        Isolation Forest score for access alerts (lower is stranger, 0 when no forest ran); the
        robust z-score of the update norm for update alerts.
    reason
        Why, in one short PHI-free sentence.
    source
        :class:`AlertSource` value.
    job_id, round
        The job and round of an update alert (empty / 0 for access alerts).
    """

    alert_id: str
    at: float
    kind: str
    subject: str
    score: float
    reason: str
    source: AlertSource
    job_id: str = ""
    round: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not self.alert_id or not self.alert_id.isalnum():
            problems.append("alert_id must be a non-empty alphanumeric id")
        if not math.isfinite(self.at) or not math.isfinite(self.score):
            problems.append("at and score must be finite numbers")
        if not self.kind or not self.subject:
            problems.append("kind and subject must not be empty")
        if not isinstance(self.source, AlertSource):
            problems.append(f"source must be an AlertSource, allowed: {[s.value for s in AlertSource]}")
        if self.round < 0:
            problems.append(f"round must be >= 0, got {self.round}")
        try:
            validate_event(AuditEvent(action=AuditAction.ALERT_RAISED, actor="coordinator",
                                      fields={"user": self.subject, "reason": self.reason}))  # fmt: skip
        except ValidationError as exc:
            problems.append(f"subject or reason is not PHI-free by the audit contract: {exc}")
        if problems:
            raise ValidationError(problems, where=f"alert {self.alert_id or '?'}")

    def as_dict(self) -> dict[str, str | float | int]:
        """JSON-ready fields (``medfed alerts list --json``, the dashboard)."""
        return {
            "alert_id": self.alert_id, "at": self.at, "kind": self.kind, "subject": self.subject,
            "score": self.score, "reason": self.reason, "source": self.source.value, "job_id": self.job_id,
            "round": self.round,
        }  # fmt: skip


def alert_id(source: AlertSource, *parts: str | int | float) -> str:
    """A stable id for a finding: the first 24 hex digits of SHA-256 over its source and parts."""
    text = "|".join([source.value, *(repr(p) if isinstance(p, float) else str(p) for p in parts)])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ .,;:()=<>/'%+-")


def safe_reason(text: str, *, fallback: str) -> str:
    """``text`` made fit for the audit log's ``reason`` field (allowed characters, ≤ 200 characters,
    no identifier-like text); ``fallback`` (which must itself be fit) when it cannot be."""
    cleaned = "".join(c if c in _ALLOWED else ("" if c in '[]{}"' else " ") for c in text)
    cleaned = " ".join(cleaned.split())
    if len(cleaned) > _MAX_REASON:
        cleaned = cleaned[: _MAX_REASON - 3].rstrip() + "..."
    for candidate in (cleaned, fallback):
        try:
            validate_event(AuditEvent(action=AuditAction.ALERT_RAISED, actor="coordinator",
                                      fields={"reason": candidate}))  # fmt: skip
        except ValidationError:
            continue
        return candidate
    raise ValidationError("the fallback reason is not fit for the audit log", where="alert reason")


class AlertStore:
    """Alerts in the SQLite file ``path`` (WAL; safe to share between threads and processes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_wal(path, _SCHEMA, what="alert store")
        self._lock = threading.Lock()

    def add(self, alert: StoredAlert, *, now: float | None = None) -> bool:
        """Store ``alert``; ``False`` (and nothing changes) when an alert with its id is already there."""
        added = alert.at if now is None else now
        with transaction(self._db, self._lock) as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO alerts VALUES (?,?,?,?,?,?,?,?,?,?)",
                (alert.alert_id, alert.at, alert.kind, alert.subject, alert.score, alert.reason,
                 alert.source.value, alert.job_id, alert.round, added),
            )  # fmt: skip
            return cur.rowcount == 1

    def list(
        self,
        *,
        since: float = 0.0,
        kind: str | None = None,
        limit: int = 500,
        subjects: Collection[str] | None = None,
    ) -> list[StoredAlert]:
        """Alerts with ``at >= since``, newest first; ``kind`` keeps those that include that kind,
        ``subjects`` those about one of them (filtered before ``limit``, so others' alerts cannot
        crowd them out)."""
        if limit < 1:
            raise ValidationError(f"limit must be >= 1, got {limit}", where="alert store")
        sql = "SELECT alert_id, at, kind, subject, score, reason, source, job_id, round FROM alerts WHERE at >= ?"
        args: list[str | float | int] = [since]
        if kind:
            sql += " AND (',' || kind || ',') LIKE ? ESCAPE '\\'"
            args.append("%," + kind.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ",%")
        if subjects is not None:
            sql += f" AND subject IN ({','.join('?' * len(subjects))})"
            args.extend(subjects)
        sql += " ORDER BY at DESC, alert_id LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        try:
            return [
                StoredAlert(alert_id=str(r[0]), at=float(r[1]), kind=str(r[2]), subject=str(r[3]), score=float(r[4]),
                            reason=str(r[5]), source=AlertSource(r[6]), job_id=str(r[7]), round=int(r[8]))
                for r in rows
            ]  # fmt: skip
        except (ValueError, ValidationError) as exc:
            raise StoreError(f"alert store {self.path} holds a malformed alert: {exc}") from None

    def kinds(self, *, subjects: Collection[str] | None = None) -> tuple[str, ...]:
        """Every kind the stored alerts carry (about ``subjects`` when given), sorted."""
        sql, args = "SELECT DISTINCT kind FROM alerts", list(subjects or ())
        if subjects is not None:
            sql += f" WHERE subject IN ({','.join('?' * len(args))})"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return tuple(sorted({k for (joined,) in rows for k in str(joined).split(",") if k}))

    def close(self) -> None:
        with self._lock:
            self._db.close()
