"""Approval on by default, over the real mTLS runtime: a node started from its ``site.toml`` (no
``[policy]``) refuses a job its admin has not approved; ``medfed approvals`` decisions land in the
node's hash-chained audit log; a dataset edited after approval is refused and named until it is
re-approved; ``approval = "off"`` runs jobs unapproved, loudly."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.support import RESEARCHER, Cluster, Federation, NodeThread, job_toml, wait_job
from medfed.cli.config import load_node_config
from medfed.cli.main import main
from medfed.coordinator.app import start_coordinator
from medfed.coordinator.service import CoordinatorSettings
from medfed.core.errors import PermissionDenied
from medfed.crypto.aead import Keyring, generate_key
from medfed.node.fingerprints import dataset_fingerprint
from medfed.node.runtime import NodeRuntime
from medfed.security.audit import read_log
from medfed.security.authz import Principal, UserRole, role_actions
from medfed.security.provision import SIGNING_KEY
from medfed.security.users import UserStore

pytestmark = pytest.mark.timeout(200)
SITE = "alpha"
ADMIN = Principal(user_id="alpha-admin", role=UserRole.SITE_ADMIN, site=SITE)


@pytest.fixture
def signed(fed: Federation, tmp_path: Path) -> Iterator[Cluster]:
    """An in-process coordinator signing models with the kit's key, as ``medfed coordinator start``
    does: the nodes below come from their site.toml, so they verify every model against it."""
    settings = CoordinatorSettings(
        state_dir=tmp_path / "state", heartbeat_interval_s=1.0, signing_key=fed.kit("coordinator") / SIGNING_KEY
    )
    proc = start_coordinator(
        settings, address="127.0.0.1:0", tls=fed.server_tls(), crl_path=fed.kit("coordinator") / "crl.pem"
    )
    cluster = Cluster(fed=fed, proc=proc, state_dir=tmp_path / "state")
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def admin_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    """``medfed approvals ...`` as alpha's site admin (an API token from a real user store)."""
    key = generate_key("k1")
    monkeypatch.setenv("MEDFED_DATA_KEY", f"k1:{base64.b64encode(key.secret).decode()}")
    users = UserStore(tmp_path / "users.db", audit=lambda e, f: None, keyring=Keyring.single(key))
    users.add_user(ADMIN.user_id, ADMIN.role, "a long enough password", site=SITE)
    token = users.issue_token(ADMIN, scopes=role_actions(ADMIN.role), ttl_s=3600.0, label="test")
    users.close()
    monkeypatch.setenv("MEDFED_TOKEN", token.secret)
    yield Cli(tmp_path / "users.db", capsys)


class Cli:
    def __init__(self, users_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.users_db, self.capsys = users_db, capsys

    def __call__(self, *argv: str, site_toml: Path) -> str:
        self.capsys.readouterr()
        code = main(["approvals", *argv, "--config", str(site_toml), "--users-db", str(self.users_db)])
        out, err = self.capsys.readouterr()
        assert code == 0, err
        return out


def _node(cluster: Cluster, site: str = SITE) -> NodeThread:
    """The node as ``medfed node start --config site.toml`` builds it, dialling the cluster."""
    node = NodeThread(NodeRuntime(load_node_config(cluster.fed.site_toml(site)).settings, cluster.link(site)))
    cluster.nodes.append(node)
    node.start()
    cluster.wait_online([site])
    return node


def _spec(name: str = "approve-me") -> str:
    return job_toml(name=name, rounds=1, min_nodes=1, retries=0, deadline_s=20.0, sites=(SITE,))


def _run(cluster: Cluster, spec: str) -> dict[str, object]:
    client = cluster.client()
    return wait_job(client, client.submit_job(spec, "job.toml")["job_id"], timeout_s=90)


def _state(cluster: Cluster) -> Path:
    state = load_node_config(cluster.fed.site_toml(SITE)).settings.state_dir
    assert state is not None
    return state


def _actions(state: Path) -> list[tuple[str, dict[str, object]]]:
    entries, _ = read_log(state / "audit.sqlite")
    return [(e.action, dict(e.fields)) for e in entries]


def _verify(state: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    code = main(["audit", "verify", "--log", str(state / "audit.sqlite"),
                 "--public-key", str(state / "audit-signing.key.pub")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def test_a_site_without_a_policy_refuses_an_unapproved_job_until_its_admin_approves_it_on_the_cli(
    signed: Cluster, admin_cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange: alpha from its provisioned site.toml, which has no [policy]
    toml = signed.fed.site_toml(SITE)
    assert "[policy]" not in toml.read_text()
    _node(signed)
    spec = _spec()
    digest = hashlib.sha256(spec.encode()).hexdigest()

    # Act 1
    first = _run(signed, spec)

    # Assert 1: refused before any data access; the spec awaits the admin
    assert first["state"] == "failed" and "awaits the site admin's approval" in str(first["error"]), first["error"]
    state = _state(signed)
    actions = _actions(state)
    assert ("node.started", {"site": SITE, "outcome": "approval-required"}) in actions
    assert any(a == "task.refused" and f["outcome"] == "not-cleared" for a, f in actions)
    assert not any(a == "data.accessed" for a, _ in actions)
    assert digest[:16] in admin_cli("list", site_toml=toml)

    # Act 2: the site admin approves it on the CLI; the researcher submits the same text again
    out = admin_cli("approve", digest[:12], "--reason", "irb protocol reviewed", "--expires-days", "30",
                    site_toml=toml)  # fmt: skip
    second = _run(signed, spec)

    # Assert 2: it ran; the decision and the data's fingerprint are in the node's verified chain
    assert second["state"] == "completed", second["error"]
    now = dataset_fingerprint(load_node_config(toml).settings.datasets["heart"])
    assert f"fingerprint {now[:12]}… pinned" in out and "for purpose 'research'" in out
    decided = [f for a, f in _actions(state) if a == "approval.decided"]
    assert decided == [{"site": SITE, "user": ADMIN.user_id, "outcome": "approved", "spec_hash": digest,
                        "reason": "irb protocol reviewed", "task": "logistic_regression", "dataset": "heart",
                        "purpose": "research", "fingerprint": now}]  # fmt: skip
    accessed = [f for a, f in _actions(state) if a == "data.accessed"]
    assert accessed and all(f["spec_hash"] == digest and f["fingerprint"] == now for f in accessed)
    assert "heart unchanged since the decision" in admin_cli("list", "--state", "approved", site_toml=toml)
    assert "ok" in _verify(state, capsys).lower()


def test_a_dataset_edited_after_approval_is_refused_and_named_until_it_is_re_approved(
    signed: Cluster, admin_cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange: an approved job that ran once
    toml = signed.fed.site_toml(SITE)
    _node(signed)
    spec = _spec("fingerprinted")
    digest = hashlib.sha256(spec.encode()).hexdigest()
    assert _run(signed, spec)["state"] == "failed"  # recorded as pending
    admin_cli("approve", digest[:12], "--reason", "reviewed", site_toml=toml)
    assert _run(signed, spec)["state"] == "completed"
    data = load_node_config(toml).settings.datasets["heart"]
    before = dataset_fingerprint(data)

    # Act: someone edits the data (one more row), and the same job is submitted again
    train = data.path / "train.csv"
    lines = train.read_text().splitlines(keepends=True)
    train.write_text("".join([*lines, lines[-1]]))
    after = dataset_fingerprint(data)
    refused = _run(signed, spec)

    # Assert: refused, naming the dataset and both digests; audited; listed for re-approval
    assert refused["state"] == "failed"
    assert f"dataset heart changed since approval (was {before[:12]}…, now {after[:12]}…)" in str(refused["error"])
    state = _state(signed)
    changed = [f for a, f in _actions(state) if a == "task.refused" and f["outcome"] == "dataset-changed"]
    assert changed and changed[0]["dataset"] == "heart" and changed[0]["fingerprint"] == after
    listing = admin_cli("list", site_toml=toml)
    assert digest[:16] in listing and "pending" in listing
    assert re.search(rf"heart CHANGED since the decision \(was {before[:12]}…, now {after[:12]}…\)", listing)
    capsys.readouterr()
    main(["node", "check", "--config", str(toml)])  # the kit names another port: only the local lines matter
    assert "approvals: 1 spec(s) pending (1 because a dataset changed since approval)" in capsys.readouterr().out

    # Act / Assert: re-approval pins the new content and the job runs again
    out = admin_cli("approve", digest[:12], "--reason", "new extract reviewed", site_toml=toml)
    assert f"fingerprint {after[:12]}… pinned" in out
    assert _run(signed, spec)["state"] == "completed"
    outcomes = [f["outcome"] for a, f in _actions(state) if a == "approval.decided"]
    assert outcomes == ["approved", "approved"]
    _verify(state, capsys)


def test_approval_off_runs_jobs_unapproved_and_is_audited_and_warned(
    signed: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange: the site writes approval off (with its lists)
    toml = signed.fed.site_toml(SITE)
    toml.write_text(toml.read_text() + '\n[policy]\nresearchers = ["*"]\npurposes = ["research"]\n'
                    'tasks = ["logistic_regression"]\ndatasets = ["heart"]\napproval = "off"\n')  # fmt: skip
    _node(signed)

    # Act
    view = _run(signed, _spec("unapproved"))
    capsys.readouterr()
    main(["node", "check", "--config", str(toml)])
    check = capsys.readouterr().out

    # Assert: it ran with no approval; the start said so in the audit log; node check warns
    assert view["state"] == "completed", view["error"]
    started = [f for a, f in _actions(_state(signed)) if a == "node.started"]
    assert started and started[-1]["outcome"] == "approval-off" and "approval is off" in str(started[-1]["reason"])
    assert 'policy: WARNING approval = "off"' in check
    assert not (_state(signed) / "approvals.db").exists()


def test_cli_rejections_and_rules_are_audited_and_the_chain_verifies(
    fed: Federation, admin_cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange: a spec the node recorded as pending
    from medfed.core.config import parse_job_spec
    from medfed.security.approvals import open_site_approvals
    from medfed.security.node_policy import JobFacts

    toml = fed.site_toml(SITE)
    state = load_node_config(toml).settings.state_dir
    assert state is not None
    spec = parse_job_spec(_spec("rejected-one"))
    node = open_site_approvals(state, site=SITE, note=lambda e, f: None)
    node.submit(JobFacts.from_spec(spec, job_id="j1", researcher=RESEARCHER, purpose=spec.purpose))
    node.close()
    rule = ["--task", "logistic_regression", "--dataset", "heart", "--purpose", "research", "--researcher", RESEARCHER]

    # Act
    rejected = admin_cli("reject", spec.spec_hash[:12], "--reason", "too many rounds for this cohort", site_toml=toml)
    out = admin_cli("rule", "add", *rule, "--reason", "programme grant", "--expires-days", "90", site_toml=toml)
    rule_id = out.split()[2].rstrip(":")
    listing = admin_cli("list", "--state", "all", site_toml=toml)
    admin_cli("rule", "revoke", rule_id, "--reason", "grant ended", site_toml=toml)

    # Assert: the rule pinned the data; every decision is in the node's log; the chain verifies
    now = dataset_fingerprint(load_node_config(toml).settings.datasets["heart"])
    assert f"rejected {spec.spec_hash[:16]}" in rejected
    assert f"fingerprint {now[:12]}… pinned" in out and f"rule {rule_id}" in listing
    assert "heart unchanged since the decision" in listing
    decided = [f for a, f in _actions(state) if a == "approval.decided"]
    assert [(f["outcome"], f.get("approval_id", f.get("spec_hash")), f.get("reason")) for f in decided] == [
        ("rejected", spec.spec_hash, "too many rounds for this cohort"),
        ("rule-added", rule_id, "programme grant"), ("rule-revoked", rule_id, "grant ended"),
    ]  # fmt: skip
    assert decided[0]["user"] == ADMIN.user_id and decided[1]["fingerprint"] == now
    _verify(state, capsys)


def test_the_demo_covers_its_own_job_with_a_pinned_standing_rule_at_each_hospital(tmp_path: Path) -> None:
    """``medfed demo`` runs with no human: each hospital's admin (played by the demo) covers the
    demo's job spec with a standing rule; approval itself stays on."""
    from medfed.cli import demo
    from medfed.core.config import parse_job_spec
    from medfed.security.approvals import open_site_approvals
    from medfed.security.node_policy import ApprovalMode, JobFacts

    # Arrange
    root = tmp_path / "demo"
    demo._prepare(root, 50999, dp=False)

    # Act
    rules = demo._standing_rules(root)

    # Assert: the demo's job clears at every site through its rule, pinned to the site's own data
    spec = parse_job_spec(demo.job_toml(demo.DEMO_STRATEGY, 15))
    assert [site for site, _, _ in rules] == list(demo.SITES)
    for site, rule, digest in rules:
        settings = load_node_config(root / "federation" / "sites" / site / "site.toml").settings
        assert settings.policy is not None and settings.policy.approval is ApprovalMode.REQUIRED
        assert digest == dataset_fingerprint(settings.datasets["heart"])
        assert settings.state_dir is not None
        store = open_site_approvals(settings.state_dir, site=site, note=lambda e, f: None)
        try:
            facts = JobFacts.from_spec(spec, job_id="j1", researcher="researcher", purpose=spec.purpose)
            clearance = store.check(facts, fingerprint=digest)
            assert (clearance.rule_id, clearance.fingerprint) == (rule.rule_id, digest)
            other = JobFacts.from_spec(spec, job_id="j2", researcher="mallory", purpose=spec.purpose)
            with pytest.raises(PermissionDenied, match="awaits the site admin's approval"):
                store.check(other, fingerprint=digest)
        finally:
            store.close()
