"""The vocabulary of audit events and the contract that keeps PHI out of them.

An event is an action (:class:`AuditAction`), an actor and a few details. Details may use only the
keys of :data:`ALLOWED_FIELDS`, each with a typed value; names must be lower-case tokens, and the
one free-text key (``reason``) is short and checked for anything that looks like an identifier
of a person (HIPAA Safe Harbor, 45 CFR 164.514(b)(2)): a name, a record number, a date, an e-mail
address or a phone number. The check is a guard against mistakes in medfed's own code, which
writes every event; it is not a de-identification tool for arbitrary text.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from medfed.core.errors import ValidationError

__all__ = ["ALLOWED_FIELDS", "AuditAction", "AuditEvent", "FieldKind", "validate_event"]


class AuditAction(enum.StrEnum):
    """What happened. Coordinator and node share the vocabulary."""

    JOB_SUBMITTED = "job.submitted"
    JOB_CANCELLED = "job.cancelled"
    JOB_FINISHED = "job.finished"
    JOB_APPROVED = "job.approved"
    JOB_REJECTED = "job.rejected"
    TASK_DISPATCHED = "task.dispatched"
    TASK_REFUSED = "task.refused"
    RESULT_SENT = "result.sent"  # node: this site sent an update
    RESULT_RECEIVED = "result.received"  # coordinator: an update arrived from a site
    ROUND_COMPLETED = "round.completed"
    MODEL_SIGNED = "model.signed"
    MODEL_REFUSED = "model.refused"
    DATA_ACCESSED = "data.accessed"
    DATA_EXPORTED = "data.exported"
    BUDGET_SPENT = "budget.spent"
    BUDGET_RELEASED = "budget.released"  # node: an ended job's unspent reservation went back to the budget
    LOGIN_SUCCEEDED = "login.succeeded"
    LOGIN_FAILED = "login.failed"
    LOGOUT = "logout"
    BREAK_GLASS = "access.break_glass"
    PERMISSION_DENIED = "access.denied"
    REQUEST_REFUSED = "request.refused"  # coordinator: an unsigned, altered, stale or replayed API call
    USER_CHANGED = "user.changed"
    KEY_ROTATED = "key.rotated"
    BACKUP_CREATED = "backup.created"
    BACKUP_RESTORED = "backup.restored"
    ALERT_RAISED = "alert.raised"
    APPROVAL_DECIDED = "approval.decided"  # node: a site admin approved, rejected, added or revoked a rule
    NODE_STARTED = "node.started"  # node: a site started, with its approval mode (outcome)


class FieldKind(enum.Enum):
    NAME = "name"  # lower-case token: site, user, dataset, role, purpose ...
    ID = "id"  # opaque machine identifier (job ids, token ids)
    HEX = "hex"  # a SHA-256 digest
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    IP = "ip"
    TEXT = "text"  # a short machine-written reason; checked for identifier-like text


#: The only keys an event's ``fields`` may use, and the kind of value each holds.
ALLOWED_FIELDS: Mapping[str, FieldKind] = {
    **{
        k: FieldKind.NAME
        for k in (
            "site",
            "user",
            "dataset",
            "task",
            "role",
            "purpose",
            "outcome",
            "rule",
            "strategy",
            "key_id",
            "resource",
            "kind",
            "method",
        )
    },
    **{k: FieldKind.ID for k in ("job_id", "token_id", "approval_id", "session_id", "alert_id")},
    **{k: FieldKind.HEX for k in ("spec_hash", "model_sha256", "update_sha256", "archive_sha256", "fingerprint")},
    **{k: FieldKind.INT for k in ("round", "rows", "count", "bytes", "files", "attempts")},
    **{k: FieldKind.FLOAT for k in ("epsilon", "delta", "score", "duration_s")},
    **{k: FieldKind.BOOL for k in ("mfa", "ok")},
    "source": FieldKind.IP,
    "reason": FieldKind.TEXT,
}

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_HEX = re.compile(r"[0-9a-f]{64}")
_TEXT_CHARS = re.compile(r"[\w .,;:()=<>/'%+-]*")
#: Identifier-looking text (HIPAA Safe Harbor 164.514(b)(2) categories that text could carry).
_PHI_PATTERNS = {
    "an e-mail address": re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+"),
    "a social security number": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    "a phone number": re.compile(r"\(?\b\d{3}\)?[-. ]\d{3}[-. ]\d{4}\b"),
    "a date": re.compile(r"\b(\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.]\d{1,2}[/.]\d{2,4})\b"),
    "a record number (6+ digits)": re.compile(r"\d{6,}"),
    "a person's name": re.compile(r"\b[A-Z][a-z]+,? (?:[A-Z]\. )?[A-Z][a-z]+\b"),
    "a record-number label": re.compile(r"\b(mrn|ssn|dob|patient[ _-]?id)\b", re.IGNORECASE),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    """One thing to record: what, who, and allow-listed details (never PHI)."""

    action: AuditAction
    actor: str
    fields: Mapping[str, str | int | float | bool] = field(default_factory=dict)


def _phi_problems(key: str, text: str) -> list[str]:
    return [
        f"{key}: looks like {what}; audit events never carry PHI" for what, p in _PHI_PATTERNS.items() if p.search(text)
    ]


def _value_problems(key: str, kind: FieldKind, value: object) -> list[str]:
    if kind in (FieldKind.INT, FieldKind.FLOAT, FieldKind.BOOL):
        want = {FieldKind.INT: (int,), FieldKind.FLOAT: (int, float), FieldKind.BOOL: (bool,)}[kind]
        if not isinstance(value, want) or (kind is not FieldKind.BOOL and isinstance(value, bool)):
            return [f"{key}: expected {kind.value}, got {type(value).__name__}"]
        if isinstance(value, float) and not math.isfinite(value):
            return [f"{key}: must be finite"]
        return []
    if not isinstance(value, str):
        return [f"{key}: expected a string ({kind.value}), got {type(value).__name__}"]
    if kind is FieldKind.IP:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return [f"{key}: not an IP address"]
        return []
    if kind in (FieldKind.NAME, FieldKind.TEXT) and (phi := _phi_problems(key, value)):
        return phi
    pattern = {FieldKind.NAME: _NAME, FieldKind.ID: _ID, FieldKind.HEX: _HEX, FieldKind.TEXT: _TEXT_CHARS}[kind]
    if not pattern.fullmatch(value) or (kind is FieldKind.TEXT and len(value) > 200):
        return [f"{key}: not a valid {kind.value} value"]  # the value itself is not echoed: it may be PHI
    return []


def validate_event(event: AuditEvent) -> None:
    """Raise :class:`ValidationError` listing every problem unless the event is PHI-free by contract."""
    problems = _value_problems("actor", FieldKind.NAME, event.actor)
    if not isinstance(event.action, AuditAction):
        problems.append(f"action must be an AuditAction, allowed: {[a.value for a in AuditAction]}")
    for key, value in event.fields.items():
        kind = ALLOWED_FIELDS.get(key)
        if kind is None:
            problems.append(f"field {key!r} is not allowed; allowed: {sorted(ALLOWED_FIELDS)}")
        else:
            problems += _value_problems(key, kind, value)
    if problems:
        raise ValidationError(problems, where=f"audit event {getattr(event.action, 'value', event.action)}")
