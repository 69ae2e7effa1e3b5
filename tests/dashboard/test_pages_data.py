"""The data behind the Privacy, Approvals, Audit and Catalog pages and the node's local page, without
a browser: refusal parsing against a real approvals store, budgets in catalog entries, the audit
search form, consent counts, and the node page's refusals (address, missing user store)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from medfed.core.errors import ConfigError, PermissionDenied, ValidationError
from medfed.crypto.aead import Keyring, generate_key
from medfed.dashboard.node_page import check_page_address, open_node_page
from medfed.dashboard.node_page_data import ConsentCounts, budget_views, dataset_views
from medfed.dashboard.pages.approvals import RefusalKind, parse_refusals
from medfed.dashboard.pages.audit import AuditQuery, parse_query
from medfed.data.catalog import CatalogColumn, CatalogEntry
from medfed.data.consent import ConsentRecord, ConsentRegistry, ConsentStatus
from medfed.node.ledger import PrivacyLedger
from medfed.node.runtime import DatasetConfig, NodeSettings
from medfed.security.approvals import ApprovalStore, spec_digest
from medfed.security.audit import AuditEntry
from medfed.security.authz import Principal, UserRole
from medfed.security.node_policy import JobFacts

SPEC = '[job]\nname = "gov"\ntask = "logistic_regression"\ndataset = "heart"\nrounds = 2\n'


def _facts(job_id: str, spec: str = SPEC) -> JobFacts:
    return JobFacts(job_id=job_id, name="gov", researcher="researcher", purpose="research",
                    task="logistic_regression", dataset="heart", rounds=2, spec_text=spec,
                    spec_hash=spec_digest(spec))  # fmt: skip


def _refusal(store: ApprovalStore, facts: JobFacts) -> str:
    with pytest.raises(PermissionDenied) as caught:
        store.check(facts)
    return str(caught.value)


def test_refusals_written_by_a_real_approvals_store_are_parsed_with_their_kind(tmp_path: Path) -> None:
    # Arrange: a site's store refuses a pending spec, then a rejected one
    store = ApprovalStore(tmp_path / "approvals.db", site="alpha", audit=lambda e, f: None)
    admin = Principal(user_id="keeper", role=UserRole.SITE_ADMIN, site="alpha")
    pending = _refusal(store, _facts("job1"))
    store.reject(spec_digest(SPEC), by=admin, reason="too many rounds")
    rejected = _refusal(store, _facts("job2"))
    # the coordinator sees them inside its round error: "<site>: site 'x', round 1: <message>; ..."
    job_error = (f"round 1 (fit) failed: errors: alpha: permission: site 'alpha', round 1: {rejected}; "
                 f"beta: permission: site 'beta', round 1: {pending}")  # fmt: skip

    # Act
    (first,) = parse_refusals(f"site 'alpha', round 1: {pending}")
    second, third = parse_refusals(job_error)

    # Assert
    assert (first.site, first.job_id, first.kind) == ("alpha", "job1", RefusalKind.PENDING)
    assert spec_digest(SPEC).startswith(first.spec_prefix) and len(first.spec_prefix) == 12
    assert (second.job_id, second.kind) == ("job2", RefusalKind.REJECTED)
    assert second.why == "rejected by keeper: too many rounds"
    assert (third.site, third.kind) == ("alpha", RefusalKind.PENDING)  # the message names its own site
    assert parse_refusals("site 'alpha', round 1: dataset 'heart' is not offered here") == []
    store.close()


def _entry(**budget: float) -> CatalogEntry:
    return CatalogEntry(site="alpha", dataset="heart", rows="80", columns=(CatalogColumn(name="age", type="float"),),
                        **budget)  # type: ignore[arg-type]  # only the budget keywords vary  # fmt: skip


def test_a_catalog_entry_carries_the_sites_budget_and_refuses_a_malformed_one() -> None:
    with_budget = _entry(epsilon_budget=4.0, delta_budget=1e-5)
    assert CatalogEntry.from_dict(json.loads(json.dumps(with_budget.to_dict()))) == with_budget
    assert "epsilon_budget" not in _entry().to_dict()  # entries without a budget keep their old shape
    for bad in (-1.0, "lots", float("nan"), True):
        raw = with_budget.to_dict() | {"epsilon_budget": bad}
        with pytest.raises(ValidationError, match="malformed catalog entry"):
            CatalogEntry.from_dict(raw)


def test_the_audit_search_form_lists_every_bad_field_at_once() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_query({"since": "yesterday", "until": "2026-13-40", "actor": "x" * 101})
    text = str(caught.value)
    assert "since" in text and "until" in text and "actor: too long" in text


def test_an_audit_query_matches_action_prefix_actor_job_and_whole_days() -> None:
    query = parse_query(
        {"action": "login", "actor": "auditor", "job": "", "since": "2026-01-02", "until": "2026-01-02"}
    )
    at = dt.datetime(2026, 1, 2, 23, 59, tzinfo=dt.UTC).timestamp()
    entry = AuditEntry(seq=1, at=at, action="login.failed", actor="auditor", fields={}, prev="0" * 64, hash="0" * 64)
    assert query.matches(entry)
    assert not query.matches(AuditEntry(seq=2, at=at + 120, action="login.failed", actor="auditor", fields={},
                                        prev="0" * 64, hash="0" * 64))  # fmt: skip
    assert not AuditQuery(job_id="j1").matches(entry)


def test_consent_counts_follow_each_patients_newest_decision() -> None:
    day = dt.date(2026, 1, 1)
    records = (
        ConsentRecord(patient_id="p1", purpose="*", status=ConsentStatus.PERMIT, date=day),
        ConsentRecord(patient_id="p1", purpose="*", status=ConsentStatus.DENY, date=day + dt.timedelta(days=3)),
        ConsentRecord(patient_id="p2", purpose="*", status=ConsentStatus.DENY, date=day),
        ConsentRecord(patient_id="p2", purpose="*", status=ConsentStatus.PERMIT, date=day + dt.timedelta(days=1)),
        ConsentRecord(patient_id="p3", purpose="research", status=ConsentStatus.PERMIT, date=day),
    )
    counts = ConsentCounts.of(ConsentRegistry(records=records))
    assert (counts.patients, counts.opted_in, counts.withdrawn, counts.decisions) == (3, 2, 1, 5)


def test_the_node_page_views_read_the_sites_files(tmp_path: Path) -> None:
    data = tmp_path / "heart"
    data.mkdir()
    (data / "train.csv").write_text("a,label\n1,0\n2,1\n3,0\n")
    (data / "test.csv").write_text("a,label\n4,1\n")
    datasets = {
        "heart": DatasetConfig(name="heart", path=data),
        "gone": DatasetConfig(name="gone", path=tmp_path / "x"),
    }
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("heart", epsilon=2.0, delta=1e-5)
    ledger.reserve("heart", "j1", epsilon=0.5, delta=1e-6)
    ledger.close()

    views = {v.name: v for v in dataset_views(datasets, tmp_path, on=dt.date(2026, 1, 1))}
    budgets = {b.dataset: b for b in budget_views(datasets, tmp_path / "ledger.sqlite")}

    assert views["heart"].rows == 4 and views["heart"].valid and len(views["heart"].fingerprint) == 64
    assert not views["gone"].valid and views["gone"].rows is None
    assert budgets["heart"].used_fraction == pytest.approx(0.25) and budgets["gone"].status is None
    assert [e["action"] for e in budgets["heart"].events] == ["reserve", "set-budget"]  # newest first


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "node.example.org"])
def test_the_node_page_refuses_a_non_loopback_address_unless_told(host: str) -> None:
    with pytest.raises(ConfigError, match="--page-public"):
        check_page_address(host, public=False)
    check_page_address(host, public=True)
    for loopback in ("127.0.0.1", "::1", "localhost"):
        check_page_address(loopback, public=False)


def test_the_node_page_refuses_to_start_without_the_sites_own_user_store(tmp_path: Path) -> None:
    keyring = Keyring.single(generate_key("k1"))
    with pytest.raises(ConfigError, match=r"users\.db.*medfed users add"):
        open_node_page(NodeSettings(site="alpha", state_dir=tmp_path), keyring=keyring)
    with pytest.raises(ConfigError, match="state_dir"):
        open_node_page(NodeSettings(site="alpha"), keyring=keyring)
    assert not (tmp_path / "users.db").exists()  # refusing created nothing


def test_the_store_finds_privacy_reports_refusals_and_successes_across_jobs(tmp_path: Path) -> None:
    from medfed.coordinator.store import Store
    from medfed.core.records import RoundRecord, SiteMetrics, TaskKind

    store = Store(tmp_path / "coordinator.sqlite")
    for job_id in ("j1", "j2"):
        store.add_job(job_id=job_id, name="n", owner="r", spec_toml=SPEC, spec_hash=spec_digest(SPEC), rounds=2)
    sites = (
        SiteMetrics(site="alpha", num_examples=0, metrics={}, error="site 'alpha' has not cleared job 'j1' (...)"),
        SiteMetrics(site="beta", num_examples=9, metrics={"privacy_epsilon_spent": 0.5, "note": 1.0}),
        SiteMetrics(site="gamma", num_examples=9, metrics={"eval_accuracy": 0.7}),
    )
    for rnd in (1, 2):
        record = RoundRecord(job_id="j1", round=rnd, kind=TaskKind.FIT, sites=sites, aggregated={}, duration_s=1.0)
        store.complete_round(record, checkpoint=None)

    reports = store.latest_site_reports("privacy_epsilon_spent")
    assert [(r["job_id"], r["round"], r["site"]) for r in reports] == [("j1", 2, "beta")]
    assert reports[0]["metrics"]["privacy_epsilon_spent"] == 0.5
    assert [e[:3] for e in store.site_errors("has not cleared job")] == [("j1", 1, "alpha"), ("j1", 2, "alpha")]
    assert store.sites_succeeded() == {"j1": {"beta", "gamma"}}
    store.close()


def test_a_tag_selected_jobs_spend_counts_against_each_sites_own_matched_dataset(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from medfed.coordinator.store import Store
    from medfed.core.records import RoundRecord, SiteMetrics, TaskKind
    from medfed.dashboard.pages.privacy import site_spends

    # Arrange: a DP job selecting by tag, matched to differently named datasets at two sites
    spec = SPEC.replace('dataset = "heart"', 'dataset = { tags = ["cardiology"] }')
    store = Store(tmp_path / "coordinator.sqlite")
    store.add_job(job_id="jt", name="n", owner="r", spec_toml=spec, spec_hash=spec_digest(spec), rounds=1)
    store.add_job(job_id="jn", name="n", owner="r", spec_toml=SPEC, spec_hash=spec_digest(SPEC), rounds=1)
    store.set_dataset_matches("jt", {"alpha": ["heart-a"], "beta": ["cardio"]})
    spent = {"privacy_epsilon_spent": 0.5, "privacy_epsilon_left": 2.5, "privacy_epsilon_total": 3.0}
    for job_id in ("jt", "jn"):
        sites = tuple(SiteMetrics(site=s, num_examples=9, metrics=spent) for s in ("alpha", "beta"))
        record = RoundRecord(job_id=job_id, round=1, kind=TaskKind.FIT, sites=sites, aggregated={}, duration_s=1.0)
        store.complete_round(record, checkpoint=None)

    # Act
    spends = site_spends(SimpleNamespace(store=store))  # type: ignore[arg-type]  # site_spends reads .store only

    # Assert: each site's own dataset, not the selector's label; a job by name keeps its name
    assert {(s.job_id, s.site): s.dataset for s in spends} == {
        ("jt", "alpha"): "heart-a",
        ("jt", "beta"): "cardio",
        ("jn", "alpha"): "heart",
        ("jn", "beta"): "heart",
    }
    store.close()


def test_the_node_page_hashes_a_dataset_again_only_when_its_files_changed(tmp_path: Path) -> None:
    from medfed.node.fingerprints import FingerprintCache, dataset_fingerprint

    data = tmp_path / "heart"
    data.mkdir()
    (data / "train.csv").write_text("a,label\n1,0\n2,1\n")
    (data / "test.csv").write_text("a,label\n4,1\n")
    datasets = {"heart": DatasetConfig(name="heart", path=data)}
    cache = FingerprintCache()

    first = dataset_views(datasets, tmp_path, on=dt.date(2026, 1, 1), fingerprints=cache)
    again = dataset_views(datasets, tmp_path, on=dt.date(2026, 1, 1), fingerprints=cache)
    (data / "test.csv").write_text("a,label\n4,1\n5,0\n")
    changed = dataset_views(datasets, tmp_path, on=dt.date(2026, 1, 1), fingerprints=cache)

    assert first[0].fingerprint == again[0].fingerprint and cache.computed == 2  # one hash per content
    assert changed[0].fingerprint == dataset_fingerprint(datasets["heart"]) != first[0].fingerprint
