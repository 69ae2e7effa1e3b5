"""A DP job that ends without its final evaluation gives each site's unspent reservation back.

Over real mTLS: sites that ran some rounds of a job that then failed (a third site refused it, not
approved) or was cancelled keep exactly the ε the accountant gives for the rounds they ran, and
release the rest of the whole job's hold; a site that was offline when the job ended releases when
it comes back (a restarted node, same state directory).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.support import (
    RESEARCHER,
    Cluster,
    Federation,
    NodeThread,
    job_toml,
    start_cluster,
    wait_job,
    wait_until,
)
from medfed.core.errors import PermissionDenied, ValidationError
from medfed.core.records import PrivacySpec
from medfed.node.ledger import JobSpend, PrivacyLedger
from medfed.node.privacy import dp_sgd_epsilon
from medfed.node.runtime import NodeRuntime, NodeSettings
from medfed.security.audit import read_log
from medfed.security.node_policy import parse_node_policy
from medfed.transport.api import Hello

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
LOCAL_STEPS, BATCH = 5, 8
SPEC = PrivacySpec(noise_multiplier=1.0, delta=1e-6)


@pytest.fixture
def cluster(fed: Federation, tmp_path: Path) -> Iterator[Cluster]:
    """A 2 s heartbeat: in-process DP nodes share one GIL with the PLD accountant (test_privacy)."""
    c = start_cluster(fed, tmp_path / "state", heartbeat_s=2.0)
    try:
        yield c
    finally:
        c.close()


def _dp_job(*, rounds: int, min_nodes: int, name: str) -> str:
    options = {"input_dim": 13, "local_steps": LOCAL_STEPS, "batch_size": BATCH, "lr": 0.05}
    spec = job_toml(name=name, rounds=rounds, task_options=options, min_nodes=min_nodes, retries=0, deadline_s=120.0)
    return spec + "\n[privacy]\nnoise_multiplier = 1.0\nclip_norm = 1.0\ndelta = 1e-6\n"


def _node(cluster: Cluster, site: str, state: Path, *, approval_required: bool = False) -> NodeThread:
    ds = dataclasses.replace(cluster.fed.dataset(site), epsilon_budget=100.0, delta_budget=1e-5)
    policy = None
    if approval_required:  # a site whose admin approved nothing: it refuses every job
        table = {"researchers": [RESEARCHER], "purposes": ["research"], "tasks": ["logistic_regression"]}
        policy = parse_node_policy(table | {"datasets": ["heart"]}, site=site)
    settings = NodeSettings(
        site=site, datasets={"heart": ds}, poll_wait_s=1.0, backoff_initial_s=0.05, backoff_max_s=0.5,
        state_dir=state / site, policy=policy, release_check_s=1.0,
    )  # fmt: skip
    node = NodeThread(NodeRuntime(settings, cluster.link(site)))
    cluster.nodes.append(node)
    node.start()
    return node


def _account(state: Path, site: str, job_id: str) -> tuple[JobSpend | None, float, list[dict[str, object]]]:
    """(the job's account, ε the dataset has used, the ledger's events), from a second connection."""
    ledger = PrivacyLedger(state / site / "ledger.sqlite")
    try:
        status = ledger.status("heart")
        return ledger.job("heart", job_id), status.epsilon_used if status else 0.0, ledger.events("heart")
    finally:
        ledger.close()


def _closed(state: Path, site: str, job_id: str) -> JobSpend:
    def check() -> JobSpend | None:
        job = _account(state, site, job_id)[0]
        return job if job is not None and not job.open else None

    return wait_until(check, timeout_s=60, what=f"site {site} to release job {job_id}", interval_s=0.2)


def _accountant(cluster: Cluster, site: str, steps: int) -> float:
    """What the accountant says ``steps`` DP-SGD steps (and one noised accuracy per fit round) cost."""
    n_train = len(cluster.fed.dataset(site).path.joinpath("train.csv").read_text().splitlines()) - 1
    return dp_sgd_epsilon(SPEC, sampling_rate=BATCH / n_train, steps=steps) + SPEC.eval_epsilon * (steps // LOCAL_STEPS)


def _assert_released(cluster: Cluster, state: Path, site: str, job_id: str, *, outcome: str) -> JobSpend:
    job = _closed(state, site, job_id)
    _, used, events = _account(state, site, job_id)
    assert job.steps >= LOCAL_STEPS and job.steps % LOCAL_STEPS == 0
    assert job.epsilon_spent == pytest.approx(_accountant(cluster, site, job.steps))  # real spend stays
    assert used == pytest.approx(job.epsilon_spent)  # nothing of the job's hold is left
    assert job.epsilon_reserved > job.epsilon_spent  # there was an unspent rest to give back
    (close,) = [e for e in events if e["job_id"] == job_id and e["action"] == "close"]
    assert close["epsilon"] == pytest.approx(job.epsilon_reserved - job.epsilon_spent)
    assert close["detail"] == f"released; job {outcome}"
    entries, _ = read_log(state / site / "audit.sqlite")
    (audited,) = [e.fields for e in entries if e.action == "budget.released" and e.fields["job_id"] == job_id]
    assert audited["outcome"] == outcome and audited["dataset"] == "heart"
    assert float(audited["epsilon"]) == pytest.approx(float(close["epsilon"]))  # type: ignore[arg-type]
    return job


def test_a_job_a_third_site_refuses_gives_the_unspent_hold_back(cluster: Cluster, tmp_path: Path) -> None:
    # Arrange: alpha and beta run the job; gamma's admin approved nothing
    state = tmp_path / "nodes"
    _node(cluster, "alpha", state)
    _node(cluster, "beta", state)
    _node(cluster, "gamma", state, approval_required=True)
    cluster.wait_online(("alpha", "beta", "gamma"))
    client = cluster.client()

    # Act
    job_id = client.submit_job(_dp_job(rounds=4, min_nodes=3, name="refused"), "dp.toml")["job_id"]
    view = wait_job(client, job_id, timeout_s=150)

    # Assert: the job failed in round 1; the sites that ran it keep round 1's ε, nothing more
    assert view["state"] == "failed" and "approval" in view["error"], view["error"]
    for site in ("alpha", "beta"):
        job = _assert_released(cluster, state, site, job_id, outcome="failed")
        assert job.steps == LOCAL_STEPS
    gamma, used, _ = _account(state, "gamma", job_id)
    assert gamma is None and used == 0.0  # refused before any reservation


def test_a_cancelled_job_gives_the_unspent_hold_back(cluster: Cluster, tmp_path: Path) -> None:
    # Arrange
    state = tmp_path / "nodes"
    _node(cluster, "alpha", state)
    _node(cluster, "beta", state)
    cluster.wait_online(("alpha", "beta"))
    client = cluster.client()
    job_id = client.submit_job(_dp_job(rounds=40, min_nodes=2, name="long"), "dp.toml")["job_id"]
    wait_until(lambda: client.get_job(job_id)["completed_round"] >= 1, timeout_s=120, what="round 1")

    # Act
    client.cancel_job(job_id)
    view = wait_job(client, job_id, timeout_s=60)

    # Assert
    assert view["state"] == "cancelled", view
    for site in ("alpha", "beta"):
        job = _assert_released(cluster, state, site, job_id, outcome="cancelled")
        assert job.steps < 40 * LOCAL_STEPS


def test_a_site_offline_when_the_job_ended_releases_when_it_comes_back(cluster: Cluster, tmp_path: Path) -> None:
    # Arrange: both sites run round 1, then beta's node stops
    state = tmp_path / "nodes"
    _node(cluster, "alpha", state)
    beta = _node(cluster, "beta", state)
    cluster.wait_online(("alpha", "beta"))
    client = cluster.client()
    job_id = client.submit_job(_dp_job(rounds=40, min_nodes=2, name="offline"), "dp.toml")["job_id"]
    wait_until(lambda: client.get_job(job_id)["completed_round"] >= 1, timeout_s=120, what="round 1")
    beta.runtime.stop()
    beta.join(60.0)

    # Act 1: the job is cancelled while beta is away
    client.cancel_job(job_id)
    assert wait_job(client, job_id, timeout_s=60)["state"] == "cancelled"
    _assert_released(cluster, state, "alpha", job_id, outcome="cancelled")

    # Assert 1: beta still holds the whole job's reservation
    held, used, _ = _account(state, "beta", job_id)
    assert held is not None and held.open and used == pytest.approx(held.epsilon_reserved)

    # Act 2: beta's node starts again on the same state directory
    _node(cluster, "beta", state)

    # Assert 2: it asked at registration and gave the unspent rest back
    job = _assert_released(cluster, state, "beta", job_id, outcome="cancelled")
    assert job.steps == held.steps  # it ran nothing more


def test_only_nodes_may_ask_and_a_malformed_question_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    node = cluster.link("alpha")
    node.register(Hello(version="t", datasets=("heart",)))

    with pytest.raises(PermissionDenied):
        cluster.link(RESEARCHER).jobs_ended(("abc",))
    with pytest.raises(ValidationError, match="not an id"):
        node.jobs_ended(("../etc",))
    assert node.jobs_ended(("nosuchjob1",)) == {}  # unknown: no answer, the node keeps its hold
