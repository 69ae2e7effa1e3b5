"""A federated job end to end over real gRPC + mutual TLS on loopback, and the same job over the
in-memory twin of the transport (no sockets), which must give the same model."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from integration.support import FINISHED, SITE_DATA, TEST_ROWS, TRAIN_ROWS, Cluster, Federation, job_toml, wait_job
from medfed.coordinator.checkpoints import load_checkpoint
from medfed.coordinator.service import Coordinator, CoordinatorSettings
from medfed.core.params import Parameters
from medfed.core.records import Role
from medfed.node.runtime import NodeRuntime, NodeSettings
from medfed.transport.api import Peer
from medfed.transport.memory import MemoryLink

SITES = tuple(SITE_DATA)
JOB = job_toml(name="happy", rounds=3, min_nodes=3)
MODEL_SPEC = (("weight", "float32", (1, 13)), ("bias", "float32", (1,)))
SITE_METRIC_PREFIXES = ("eval_", "train_")
pytestmark = pytest.mark.timeout(120)


def _run_over_grpc(cluster: Cluster) -> tuple[dict, Parameters]:
    for site in SITES:
        cluster.node(site)
    cluster.wait_online(SITES)
    client = cluster.client()
    submitted = client.submit_job(JOB, "happy.toml")
    final = wait_job(client, submitted["job_id"], timeout_s=60)
    assert final["state"] == "completed", final["error"]
    return final, client.fetch_model(submitted["job_id"])


def test_three_nodes_fedavg_completes_and_the_model_is_fetchable(cluster: Cluster, heart: dict) -> None:
    view, model = _run_over_grpc(cluster)

    # Assert: every round ran with all three sites and was recorded
    assert view["completed_round"] == 3 and view["error"] == ""
    rounds = [(r["round"], r["kind"]) for r in view["round_metrics"]]
    assert rounds == [(1, "fit"), (2, "fit"), (3, "fit"), (4, "evaluate")]
    for r in view["round_metrics"]:
        agg = r["aggregated"]
        assert agg["sites_ok"] == 3 and agg["sites_failed"] == 0
        assert 0.0 <= agg["mean/eval_accuracy"] <= 1.0
        assert np.isfinite(agg["mean/eval_loss"])
    per_round: dict[tuple[int, str], set[str]] = {}
    for s in view["site_metrics"]:
        per_round.setdefault((s["round"], s["kind"]), set()).add(s["site"])
        assert s["error"] == ""
        assert s["num_examples"] == (TRAIN_ROWS if s["kind"] == "fit" else TEST_ROWS)
    assert all(sites == set(SITES) for sites in per_round.values()) and len(per_round) == 4

    # only aggregates reached the coordinator: named scalar metrics per site and round, and the
    # 14 model parameters; no site's row values appear anywhere in the record
    for s in view["site_metrics"]:
        assert set(s) == {"round", "kind", "site", "num_examples", "metrics", "error"}
        assert len(s["metrics"]) <= 8
        for name, value in s["metrics"].items():
            assert name.startswith(SITE_METRIC_PREFIXES) and isinstance(value, float), (name, value)
    for r in view["round_metrics"]:
        assert all(isinstance(v, float) for v in r["aggregated"].values())
    text = json.dumps(view)
    for data in heart.values():
        row = [f"{v:.5f}" for v in data.x_train[0] if abs(v) > 0.01]
        assert not any(v in text for v in row)
    assert model.size == 14

    # the model: right names, dtypes and shapes, finite, equal to the last checkpoint and file
    assert model.spec() == MODEL_SPEC
    assert all(np.all(np.isfinite(a)) for _, a in model)
    store = cluster.coordinator.store
    rnd, path, digest = store.latest_checkpoint(view["job_id"])
    assert rnd == 3
    assert load_checkpoint(Path(path), digest)[0].allclose(model, atol=0, rtol=0)
    with np.load(cluster.state_dir / "models" / f"{view['job_id']}.npz", allow_pickle=False) as npz:
        assert Parameters.from_numpy({k: npz[k] for k in npz.files}).allclose(model, atol=0, rtol=0)


def _run_in_memory(state_dir: Path, fed: Federation) -> tuple[dict, Parameters]:
    coordinator = Coordinator(CoordinatorSettings(state_dir=state_dir, heartbeat_interval_s=0.3))
    coordinator.start()
    runtimes = [
        NodeRuntime(
            NodeSettings(site=s, datasets={"heart": fed.dataset(s)}, poll_wait_s=0.5),
            MemoryLink(coordinator, s),
        )
        for s in SITES
    ]
    threads = [threading.Thread(target=r.run, daemon=True) for r in runtimes]
    try:
        for t in threads:
            t.start()
        researcher = Peer(name="researcher", role=Role.RESEARCHER)
        job_id = coordinator.submit_job(researcher, JOB, "happy.toml")["job_id"]
        view = coordinator.wait_job(job_id, timeout_s=60)
        assert view["state"] in FINISHED, "in-memory job did not finish in 60s"
        assert view["state"] == "completed", view["error"]
        assert all(r.link.closed is False for r in runtimes)  # nodes still serving: no socket involved
        return view, coordinator.fetch_model(researcher, job_id)
    finally:
        for r in runtimes:
            r.stop()
        for t in threads:
            t.join(10)
        coordinator.stop()
        coordinator.store.close()


def test_memory_twin_gives_the_same_model_as_grpc(cluster: Cluster, fed: Federation, tmp_path: Path) -> None:
    # Arrange / Act: the same job, same seed, over both transports
    grpc_view, over_grpc = _run_over_grpc(cluster)
    memory_view, in_memory = _run_in_memory(tmp_path / "memory-state", fed)

    # Assert: bit-identical. Results may arrive in another order, but the coordinator sums them
    # in float64 before rounding to float32, so the order cannot show in the model.
    assert in_memory.spec() == over_grpc.spec() == MODEL_SPEC
    assert in_memory.allclose(over_grpc, atol=0, rtol=0)

    # and every site saw the same models: per-site metrics of every round agree
    def metrics(view: dict) -> dict:
        return {(s["round"], s["kind"], s["site"]): s["metrics"] for s in view["site_metrics"]}

    assert metrics(memory_view) == metrics(grpc_view)
