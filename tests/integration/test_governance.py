"""Site governance over the real mTLS runtime: a site's ``[policy]`` and its admin's approval of
each job spec gate every task before it touches data; the node judges the spec text it received,
not the coordinator's labels."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from integration.support import RESEARCHER, Cluster, NodeThread, job_toml, wait_job
from medfed.cli.config import load_node_config
from medfed.core.errors import ConfigError, PermissionDenied
from medfed.core.params import Parameters
from medfed.core.records import TaskKind, TaskMessage
from medfed.node.governance import job_facts
from medfed.node.runtime import NodeRuntime, NodeSettings
from medfed.security.approvals import ApprovalState, ApprovalStore
from medfed.security.audit import read_log, verify_chain
from medfed.security.authz import Principal, UserRole
from medfed.security.node_policy import ApprovalMode, NodePolicy, parse_node_policy

SITES = ("alpha", "beta", "gamma")
POLICY = {
    "researchers": [RESEARCHER],
    "purposes": ["cardiology"],
    "tasks": ["logistic_regression"],
    "datasets": ["heart"],
}
pytestmark = pytest.mark.timeout(150)


def _spec(purpose: str, *, name: str = "gov") -> str:
    text = job_toml(name=name, rounds=2, min_nodes=3, retries=0, deadline_s=20.0)
    return text.replace("[job]\n", f'[job]\npurpose = "{purpose}"\n', 1)


def _governed_node(cluster: Cluster, site: str, state: Path, policy: NodePolicy) -> NodeThread:
    settings = NodeSettings(
        site=site, datasets={"heart": cluster.fed.dataset(site)}, poll_wait_s=1.0, backoff_initial_s=0.05,
        backoff_max_s=0.5, state_dir=state / site, policy=policy,
    )  # fmt: skip
    node = NodeThread(NodeRuntime(settings, cluster.link(site)))
    cluster.nodes.append(node)
    node.start()
    return node


def _start(cluster: Cluster, state: Path) -> None:
    for site in SITES:
        _governed_node(cluster, site, state, parse_node_policy(POLICY, site=site))
    cluster.wait_online(SITES)


def _store(state: Path, site: str) -> ApprovalStore:
    """A second connection to the node's approvals file, as ``medfed approvals`` opens it."""
    return ApprovalStore(state / site / "approvals.db", site=site, audit=lambda event, fields: None)


def test_an_unapproved_spec_is_refused_then_runs_once_each_site_approved_it(cluster: Cluster, tmp_path: Path) -> None:
    # Arrange
    state = tmp_path / "nodes"
    _start(cluster, state)
    client = cluster.client()
    spec = _spec("cardiology")
    digest = hashlib.sha256(spec.encode()).hexdigest()

    # Act 1: nobody approved the spec yet
    first = wait_job(client, client.submit_job(spec, "gov.toml")["job_id"], timeout_s=60)

    # Assert 1: refused before any data access, the spec recorded as pending at every site
    assert first["state"] == "failed"
    assert "awaits the site admin's approval" in first["error"], first["error"]
    assert first["completed_round"] == 0
    for site in SITES:
        store = _store(state, site)
        (pending,) = store.approvals(ApprovalState.PENDING)
        assert (pending.spec_hash, pending.researcher, pending.purpose) == (digest, RESEARCHER, "cardiology")
        assert store.spec_text(digest) == spec
        store.close()
        entries, checkpoints = read_log(state / site / "audit.sqlite")
        actions = [e.action for e in entries]
        assert "task.refused" in actions and "data.accessed" not in actions and "result.sent" not in actions
        assert verify_chain(entries, checkpoints, (state / site / "audit-signing.key.pub").read_bytes()).ok

    # Act 2: each site's admin approves the spec; the researcher resubmits the same text
    for site in SITES:
        store = _store(state, site)
        store.approve(digest, by=Principal(user_id=f"{site}-admin", role=UserRole.SITE_ADMIN, site=site), reason="ok")
        store.close()
    second = wait_job(client, client.submit_job(spec, "gov.toml")["job_id"], timeout_s=60)

    # Assert 2: it ran at every site
    assert second["state"] == "completed", second["error"]
    assert {s["site"] for s in second["site_metrics"]} == set(SITES)


def test_a_site_policy_refuses_a_purpose_it_does_not_allow_without_asking_its_admin(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Arrange
    state = tmp_path / "nodes"
    _start(cluster, state)
    client = cluster.client()

    # Act
    view = wait_job(client, client.submit_job(_spec("marketing"), "m.toml")["job_id"], timeout_s=60)

    # Assert: refused by the policy itself; nothing queued for approval
    assert view["state"] == "failed"
    assert "purpose 'marketing' is not allowed here" in view["error"], view["error"]
    for site in SITES:
        store = _store(state, site)
        assert store.approvals() == []
        store.close()


def _task(spec: str, **changes: object) -> TaskMessage:
    task = TaskMessage(
        task_id="t1", job_id="j1", round=1, kind=TaskKind.FIT, task="logistic_regression", dataset="heart", seed=0,
        config={}, parameters=Parameters.from_numpy({"w": np.zeros(1, np.float32)}), job_rounds=2, spec_toml=spec,
        owner=RESEARCHER,
    )  # fmt: skip
    return replace(task, **changes)  # type: ignore[arg-type]


def test_the_node_judges_the_spec_text_not_the_tasks_labels() -> None:
    spec = _spec("cardiology")
    facts = job_facts(_task(spec))
    assert (facts.purpose, facts.researcher, facts.spec_hash) == (
        "cardiology", RESEARCHER, hashlib.sha256(spec.encode()).hexdigest(),
    )  # fmt: skip
    with pytest.raises(PermissionDenied, match="carries no job spec"):
        job_facts(_task(""))
    with pytest.raises(PermissionDenied, match="dataset 'other'"):
        job_facts(_task(spec, dataset="other"))
    with pytest.raises(PermissionDenied, match="rounds '9'"):
        job_facts(_task(spec, job_rounds=9))
    with pytest.raises(PermissionDenied, match="does not parse"):
        job_facts(_task("[job]\nname = 1"))


def test_a_bad_policy_table_names_the_file_and_every_problem(cluster: Cluster) -> None:
    path = cluster.fed.site_toml("alpha")
    path.write_text(path.read_text() + '\n[policy]\nresearchers = ["x"]\npurposes = "cardiology"\n')
    with pytest.raises(ConfigError) as err:
        load_node_config(path)
    message = str(err.value)
    assert str(path) in message and "[policy]" in message
    assert "purposes must be a list" in message and "tasks is required" in message and "datasets is required" in message


def test_a_site_without_a_policy_table_still_requires_approval(cluster: Cluster) -> None:
    policy = load_node_config(cluster.fed.site_toml("alpha")).settings.policy
    assert policy == NodePolicy.approval_only("alpha") and policy.approval is ApprovalMode.REQUIRED
