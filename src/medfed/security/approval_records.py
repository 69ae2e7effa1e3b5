"""The records of site approval (:mod:`medfed.security.approvals`): a spec's state and decision,
a standing rule, and the clearance a node gets for a job."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from medfed.security.node_policy import ANY, JobFacts

__all__ = ["Approval", "ApprovalState", "Clearance", "StandingRule", "approval_from_row", "spec_digest"]


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
    """Why a job may run here: an approval of its spec hash, or a standing rule; and the dataset
    fingerprint that decision pinned ('' when the dataset has none, e.g. a database)."""

    spec_hash: str
    approved_by: str
    rule_id: str = ""  # set when a standing rule covered the spec
    expires_at: float | None = None
    fingerprint: str = ""

    @property
    def subject(self) -> str:
        """What the dataset fingerprint is pinned to: the rule, or the spec's hash."""
        return f"rule:{self.rule_id}" if self.rule_id else self.spec_hash


def approval_from_row(row: tuple[object, ...]) -> Approval:
    """An :class:`Approval` from a row of the store's ``specs`` columns."""
    return Approval(
        spec_hash=str(row[0]), job_id=str(row[1]), name=str(row[2]), researcher=str(row[3]), purpose=str(row[4]),
        task=str(row[5]), dataset=str(row[6]), submitted_at=float(row[7]),  # type: ignore[arg-type]  # SQLite REAL
        state=ApprovalState(str(row[8])), decided_by=str(row[9]),
        decided_at=None if row[10] is None else float(row[10]),  # type: ignore[arg-type]  # SQLite REAL
        reason=str(row[11]), expires_at=None if row[12] is None else float(row[12]),  # type: ignore[arg-type]
    )  # fmt: skip
