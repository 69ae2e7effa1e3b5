"""Site approval of job specs: by hash, standing rules, expiry, purpose, diff, persistence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from medfed.core.config import parse_job_spec
from medfed.core.errors import PermissionDenied, ValidationError
from medfed.security.approvals import ApprovalState, ApprovalStore, StandingRule, spec_digest
from medfed.security.authz import Principal, UserRole
from medfed.security.node_policy import JobFacts

SPEC = """[job]
name = "heart-lr"
task = "logistic_regression"
dataset = "heart"
rounds = 5
"""
SAM = Principal(user_id="sam", role=UserRole.SITE_ADMIN, site="cleveland")
OTHER_SITE = Principal(user_id="hal", role=UserRole.SITE_ADMIN, site="hungary")


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def facts(text: str = SPEC, *, purpose: str = "cardiology", researcher: str = "alice", job_id: str = "j1") -> JobFacts:
    spec = parse_job_spec(text)
    return JobFacts.from_spec(spec, job_id=job_id, researcher=researcher, purpose=purpose)


@pytest.fixture
def store(tmp_path: Path) -> ApprovalStore:
    return ApprovalStore(tmp_path / "approvals.db", site="cleveland", audit=lambda n, f: None, clock=Clock())


def test_spec_hash_is_the_job_specs_own() -> None:
    f = facts()
    assert f.spec_hash == spec_digest(SPEC) == parse_job_spec(SPEC).spec_hash


def test_unapproved_spec_is_refused_then_approved(store: ApprovalStore) -> None:
    f = facts()
    with pytest.raises(PermissionDenied, match="awaits the site admin"):
        store.check(f)
    assert [a.state for a in store.approvals(ApprovalState.PENDING)] == [ApprovalState.PENDING]
    store.approve(f.spec_hash, by=SAM, reason="IRB 2024-17")
    clearance = store.check(f)
    assert clearance.approved_by == "sam" and clearance.rule_id == ""


def test_changed_spec_needs_new_approval_and_diff_shows_the_change(store: ApprovalStore) -> None:
    store.submit(facts())
    store.approve(facts().spec_hash, by=SAM)
    changed = SPEC.replace("rounds = 5", "rounds = 50")
    f2 = facts(changed, job_id="j2")
    with pytest.raises(PermissionDenied, match="awaits"):
        store.check(f2)
    diff = store.diff(f2.spec_hash)
    assert "-rounds = 5\n" in diff and "+rounds = 50\n" in diff
    assert store.diff(facts().spec_hash) == ""


def test_rejection_needs_reason_and_is_explained(store: ApprovalStore) -> None:
    f = facts()
    store.submit(f)
    with pytest.raises(ValidationError, match="reason"):
        store.reject(f.spec_hash, by=SAM, reason=" ")
    store.reject(f.spec_hash, by=SAM, reason="no IRB approval on file")
    with pytest.raises(PermissionDenied, match="rejected by sam: no IRB approval on file"):
        store.check(f)


def test_only_this_sites_admin_may_decide(store: ApprovalStore) -> None:
    f = facts()
    store.submit(f)
    for who in (OTHER_SITE, Principal(user_id="alice", role=UserRole.RESEARCHER),
                Principal(user_id="root", role=UserRole.FEDERATION_ADMIN),
                Principal(user_id="sam", role=UserRole.SITE_ADMIN, site="hungary", emergency=True)):  # fmt: skip
        with pytest.raises(PermissionDenied):
            store.approve(f.spec_hash, by=who)
    assert store.get(f.spec_hash).state is ApprovalState.PENDING


def test_expiry_and_purpose(store: ApprovalStore) -> None:
    clock = store._clock
    assert isinstance(clock, Clock)
    f = facts()
    store.submit(f)
    with pytest.raises(ValidationError, match="past"):
        store.approve(f.spec_hash, by=SAM, expires_at=clock.t - 1)
    store.approve(f.spec_hash, by=SAM, expires_at=clock.t + 3600)
    with pytest.raises(PermissionDenied, match="approved for purpose 'cardiology', not 'marketing'"):
        store.check(facts(purpose="marketing"))
    store.check(f)
    clock.t += 3600
    with pytest.raises(PermissionDenied, match="expired"):
        store.check(f)


def test_standing_rule_covers_matching_specs_only(store: ApprovalStore) -> None:
    rule = StandingRule(
        rule_id="", task="logistic_regression", dataset="heart", purpose="cardiology", researcher="alice",
        created_by="", created_at=0, expires_at=None, reason="programme grant",
    )  # fmt: skip
    added = store.add_rule(rule, by=SAM)
    clearance = store.check(facts(SPEC.replace("rounds = 5", "rounds = 7")))
    assert clearance.rule_id == added.rule_id
    for other in (facts(researcher="bob"), facts(purpose="sales")):
        with pytest.raises(PermissionDenied):
            store.check(other)
    store.revoke_rule(added.rule_id, by=SAM)
    with pytest.raises(PermissionDenied):
        store.check(facts(SPEC.replace("rounds = 5", "rounds = 7")))


def test_claimed_hash_must_match_the_text(store: ApprovalStore) -> None:
    f = facts()
    forged = JobFacts(**{**{k: getattr(f, k) for k in f.__slots__}, "spec_text": SPEC + "# more\n"})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="hashes to"):
        store.check(forged)


def test_decisions_persist_across_reopen(tmp_path: Path) -> None:
    s1 = ApprovalStore(tmp_path / "a.db", site="cleveland", audit=lambda n, f: None)
    f = facts()
    s1.submit(f)
    s1.approve(f.spec_hash, by=SAM, reason="ok")
    s1.close()
    s2 = ApprovalStore(tmp_path / "a.db", site="cleveland", audit=lambda n, f: None)
    assert s2.check(f).approved_by == "sam"
    assert s2.find(f.spec_hash[:10]).state is ApprovalState.APPROVED


@pytest.mark.parametrize("expiry", [math.nan, math.inf])
def test_an_expiry_that_is_not_a_time_is_refused_not_stored_as_none(store: ApprovalStore, expiry: float) -> None:
    # SQLite keeps NaN as NULL: accepted, `--expires-days nan` would approve or add a rule for ever
    f = facts()
    store.submit(f)
    rule = StandingRule(
        rule_id="", task="logistic_regression", dataset="heart", purpose="cardiology", researcher="alice",
        created_by="", created_at=0, expires_at=expiry, reason="programme grant",
    )  # fmt: skip

    with pytest.raises(ValidationError, match="not a time"):
        store.approve(f.spec_hash, by=SAM, expires_at=expiry)
    with pytest.raises(ValidationError, match="not a time"):
        store.add_rule(rule, by=SAM)

    assert store.get(f.spec_hash).state is ApprovalState.PENDING
    assert store.rules() == []
