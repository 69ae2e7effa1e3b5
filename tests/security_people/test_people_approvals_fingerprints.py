"""Site approval pins each dataset's content: a changed dataset is refused, named and sent back to
pending; every decision is an ``approval.decided`` event in the site's hash-chained audit log."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from medfed.core.config import parse_job_spec
from medfed.core.errors import DatasetChanged, PermissionDenied, ValidationError
from medfed.security.approvals import ApprovalState, ApprovalStore, StandingRule, open_site_approvals
from medfed.security.audit import read_log, verify_chain
from medfed.security.authz import Principal, UserRole
from medfed.security.node_policy import JobFacts

SPEC = '[job]\nname = "heart-lr"\ntask = "logistic_regression"\ndataset = "heart"\nrounds = 5\n'
SAM = Principal(user_id="sam", role=UserRole.SITE_ADMIN, site="cleveland")
OLD, NEW = hashlib.sha256(b"rows v1").hexdigest(), hashlib.sha256(b"rows v2").hexdigest()


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def facts(text: str = SPEC, *, job_id: str = "j1") -> JobFacts:
    return JobFacts.from_spec(parse_job_spec(text), job_id=job_id, researcher="alice", purpose="cardiology")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ApprovalStore]:
    s = open_site_approvals(tmp_path / "state", site="cleveland", note=lambda n, f: None, clock=Clock())
    yield s
    s.close()


def _rule(**changes: object) -> StandingRule:
    fields: dict[str, object] = {
        "rule_id": "", "task": "logistic_regression", "dataset": "heart", "purpose": "cardiology",
        "researcher": "alice", "created_by": "", "created_at": 0.0, "expires_at": None, "reason": "programme grant",
    }  # fmt: skip
    return StandingRule(**(fields | changes))  # type: ignore[arg-type]


def test_an_approval_pins_the_dataset_and_a_changed_dataset_is_refused_named_and_pending(
    store: ApprovalStore,
) -> None:
    # Arrange: approved with the data as the admin saw it
    f = facts()
    store.submit(f)
    store.approve(f.spec_hash, by=SAM, reason="irb ok", fingerprints={"heart": OLD})
    assert store.check(f, fingerprint=OLD).fingerprint == OLD

    # Act: the data changed
    with pytest.raises(DatasetChanged) as err:
        store.check(f, fingerprint=NEW)

    # Assert: named with both digests; back to pending with the reason; the history keeps both
    assert f"dataset heart changed since approval (was {OLD[:12]}…, now {NEW[:12]}…)" in str(err.value)
    again = store.get(f.spec_hash)
    assert again.state is ApprovalState.PENDING and "dataset heart changed" in again.reason
    assert [a.spec_hash for a in store.approvals(ApprovalState.PENDING)] == [f.spec_hash]
    with pytest.raises(DatasetChanged):  # still named on the next job, not a generic "awaits"
        store.check(f, fingerprint=NEW)

    # Act / Assert: re-approval pins the new content and clears the job
    store.approve(f.spec_hash, by=SAM, reason="new extract reviewed", fingerprints={"heart": NEW})
    assert store.check(f, fingerprint=NEW).fingerprint == NEW
    assert store.pins(f.spec_hash) == {"heart": NEW}


def test_an_approval_made_without_the_data_is_pinned_at_first_use(store: ApprovalStore) -> None:
    f = facts()
    store.submit(f)
    store.approve(f.spec_hash, by=SAM)
    assert store.pins(f.spec_hash) == {}
    store.check(f, fingerprint=OLD)  # the node's first read after the approval
    assert store.pins(f.spec_hash) == {"heart": OLD}
    with pytest.raises(DatasetChanged, match="dataset heart changed since approval"):
        store.check(f, fingerprint=NEW)


def test_a_dataset_without_a_fingerprint_is_not_compared(store: ApprovalStore) -> None:
    f = facts()
    store.submit(f)
    store.approve(f.spec_hash, by=SAM, fingerprints={"heart": ""})  # a database: nothing to pin
    assert store.check(f).approved_by == "sam"
    assert store.pins(f.spec_hash) == {}


def test_a_standing_rule_pins_its_one_dataset_and_a_spec_approval_clears_after_a_change(
    store: ApprovalStore,
) -> None:
    # Arrange
    rule = store.add_rule(_rule(), by=SAM, fingerprint=OLD)
    f = facts()
    assert store.check(f, fingerprint=OLD).rule_id == rule.rule_id

    # Act / Assert: changed data: the rule no longer covers; the spec is listed with the reason
    with pytest.raises(DatasetChanged, match="changed since approval"):
        store.check(f, fingerprint=NEW)
    pending = store.get(f.spec_hash)
    assert pending.state is ApprovalState.PENDING and "dataset heart changed" in pending.reason

    # Act / Assert: the admin approves this spec for the new data; the stale rule does not block it
    store.approve(f.spec_hash, by=SAM, fingerprints={"heart": NEW})
    clearance = store.check(f, fingerprint=NEW)
    assert clearance.rule_id == "" and clearance.fingerprint == NEW


def test_a_rejection_outweighs_a_standing_rule(store: ApprovalStore) -> None:
    store.add_rule(_rule(), by=SAM)
    f = facts()
    store.submit(f)
    store.reject(f.spec_hash, by=SAM, reason="this spec asks for too many rounds")
    with pytest.raises(PermissionDenied, match="rejected by sam"):
        store.check(f, fingerprint=OLD)


def test_every_decision_is_an_approval_decided_event_in_the_verified_chain(tmp_path: Path) -> None:
    # Arrange
    state = tmp_path / "state"
    store = open_site_approvals(state, site="cleveland", note=lambda n, f: None)
    f = facts()
    store.submit(f)

    # Act
    store.approve(f.spec_hash, by=SAM, reason="irb ok", fingerprints={"heart": OLD})
    store.reject(f.spec_hash, by=SAM, reason="withdrawn by the irb")
    rule = store.add_rule(_rule(), by=SAM, fingerprint=OLD)
    store.revoke_rule(rule.rule_id, by=SAM, reason="grant ended")
    store.close()

    # Assert
    entries, checkpoints = read_log(state / "audit.sqlite")
    decided = [e.fields for e in entries if e.action == "approval.decided"]
    assert [d["outcome"] for d in decided] == ["approved", "rejected", "rule-added", "rule-revoked"]
    assert decided[0] == {
        "site": "cleveland", "user": "sam", "outcome": "approved", "spec_hash": f.spec_hash, "reason": "irb ok",
        "task": "logistic_regression", "dataset": "heart", "purpose": "cardiology", "fingerprint": OLD,
    }  # fmt: skip
    assert decided[2]["approval_id"] == decided[3]["approval_id"] == rule.rule_id and decided[2]["fingerprint"] == OLD
    assert all(e.actor == "sam" for e in entries if e.action == "approval.decided")
    assert verify_chain(entries, checkpoints, (state / "audit-signing.key.pub").read_bytes()).ok


def test_a_reason_that_looks_like_phi_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = open_site_approvals(state, site="cleveland", note=lambda n, f: None)
    f = facts()
    store.submit(f)
    with pytest.raises(ValidationError, match="looks like a phone number"):
        store.approve(f.spec_hash, by=SAM, reason="call 555-123-4567 first", fingerprints={"heart": OLD})
    assert store.get(f.spec_hash).state is ApprovalState.PENDING
    assert store.pins(f.spec_hash) == {}
    store.close()
    entries, _ = read_log(state / "audit.sqlite") if (state / "audit.sqlite").exists() else ([], [])
    assert [e for e in entries if e.action == "approval.decided"] == []


def test_a_store_without_an_audit_log_still_decides(tmp_path: Path) -> None:
    store = ApprovalStore(tmp_path / "a.db", site="cleveland", audit=lambda n, f: None)
    f = facts()
    store.submit(f)
    store.approve(f.spec_hash, by=SAM, reason="ok")  # a library store (tests, tools): no audit log given
    assert store.check(f, fingerprint=OLD).fingerprint == OLD
    assert not (tmp_path / "audit.sqlite").exists()


def test_a_rule_id_of_digits_only_is_audited_as_an_id_not_mistaken_for_a_record_number(
    store: ApprovalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("medfed.security.approvals.secrets.token_hex", lambda n: "12345678")
    assert store.add_rule(_rule(), by=SAM, fingerprint=OLD).rule_id == "12345678"
    store.revoke_rule("12345678", by=SAM)


def test_a_standing_rule_names_one_task_dataset_and_purpose(store: ApprovalStore) -> None:
    with pytest.raises(ValidationError) as err:
        store.add_rule(_rule(dataset="*", purpose="*"), by=SAM)
    assert "dataset '*': a standing rule names one dataset" in str(err.value)
    assert "purpose '*'" in str(err.value) and store.rules() == []
    assert store.add_rule(_rule(researcher="*"), by=SAM).researcher == "*"
