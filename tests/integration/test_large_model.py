"""A ~1 GB model (2.7e8 float32 parameters in four tensors) over real gRPC + mutual TLS: one
PollTask down, one SubmitResult up, one FetchModel — no message-size ceiling, memory bounded.

A tiny CoordinatorAPI stands in for the coordinator so only the transport is measured.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from integration.support import Federation
from medfed.core.errors import PermissionDenied
from medfed.core.params import Parameters
from medfed.core.records import ResultMessage, ResultStatus, TaskKind, TaskMessage
from medfed.transport.api import Hello, Peer, PollOutcome, Welcome
from medfed.transport.grpc_client import GrpcCoordinatorLink, ResearcherClient
from medfed.transport.grpc_server import serve

N_PARAMS = 270_000_000  # 1.08 GB of float32
N_TENSORS = 4
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _big_model() -> Parameters:
    sizes = [N_PARAMS // N_TENSORS] * N_TENSORS
    arrays = []
    for i, size in enumerate(sizes):
        a = np.empty(size, dtype=np.float32)
        a[:] = i + 0.5  # cheap to fill; the ends and a stride are checked after the trip
        a[::1_000_003] = np.arange(a[::1_000_003].size, dtype=np.float32)
        arrays.append(a)
    return Parameters.from_arrays(tuple(f"tensor_{i}" for i in range(N_TENSORS)), tuple(arrays))


def _same(a: Parameters, b: Parameters) -> bool:
    return a.spec() == b.spec() and all(np.array_equal(x, y) for x, y in zip(a.arrays, b.arrays, strict=True))


@dataclass
class BigModelAPI:
    """Hands out one task carrying the model, keeps the result, serves the model for download."""

    model: Parameters
    received: list[ResultMessage] = field(default_factory=list)

    def register(self, peer: Peer, hello: Hello) -> Welcome:
        return Welcome(site=peer.name, heartbeat_interval_s=5.0, coordinator_version="test")

    def heartbeat(self, peer: Peer) -> bool:
        return True

    def poll(self, peer: Peer, wait_s: float) -> PollOutcome:
        task = TaskMessage(task_id="t1", job_id="big", round=1, kind=TaskKind.FIT, task="identity",
                           dataset="none", seed=0, config={}, parameters=self.model)  # fmt: skip
        return PollOutcome(task=task)

    def submit(self, peer: Peer, result: ResultMessage) -> None:
        self.received.append(result)

    def fetch_model(self, peer: Peer, job_id: str) -> Parameters:
        return self.model

    def model_signature(self, peer: Peer, job_id: str) -> bytes:
        return b""  # unsigned: this test measures transfer, not signatures

    def submit_job(self, peer: Peer, spec_toml: str, source_name: str) -> dict[str, Any]:
        raise PermissionDenied("not in this test")

    get_job = list_jobs = cancel_job = submit_job  # people-facing calls are not used here


class PeakRss:
    """Samples this process's resident memory every 20 ms (includes gRPC's C buffers)."""

    def __init__(self) -> None:
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def growth(self) -> int:
        return self.peak - self.base


@pytest.fixture
def big_server(fed: Federation) -> Iterator[tuple[BigModelAPI, int]]:
    if not hasattr(os, "sysconf") or not os.path.exists("/proc/self/statm"):
        pytest.skip("needs /proc to measure memory")
    api = BigModelAPI(_big_model())
    server, port = serve(api, address="127.0.0.1:0", tls=fed.server_tls(), revoked=frozenset)
    try:
        yield api, port
    finally:
        server.stop(None).wait(10)
        api.received.clear()
        gc.collect()


def test_a_1gb_model_goes_down_and_up_in_one_task_and_result(
    big_server: tuple[BigModelAPI, int], fed: Federation
) -> None:
    api, port = big_server
    model_bytes = api.model.nbytes
    link = GrpcCoordinatorLink(f"127.0.0.1:{port}", fed.tls("alpha"), timeout_s=60.0)
    try:
        with PeakRss() as rss:
            t0 = time.perf_counter()
            task = link.poll(1.0)
            down_s = time.perf_counter() - t0
            assert isinstance(task, TaskMessage)
            assert _same(task.parameters, api.model)

            result = ResultMessage(task_id=task.task_id, job_id=task.job_id, round=1, site="alpha",
                                   status=ResultStatus.OK, num_examples=1, parameters=task.parameters)  # fmt: skip
            t0 = time.perf_counter()
            link.submit(result)
            up_s = time.perf_counter() - t0
            del task, result
    finally:
        link.close()

    (got,) = api.received
    assert got.site == "alpha" and got.parameters is not None and _same(got.parameters, api.model)
    print(
        f"\n1 GB model: PollTask {down_s:.1f}s, SubmitResult {up_s:.1f}s, peak RSS growth {rss.growth / 2**30:.2f} GiB"
    )
    # one received copy on each side (task at the node, result at the server; measured 2.0x)
    # plus chunks in flight
    assert rss.growth < 2.5 * model_bytes


def test_a_1gb_model_is_fetched_in_one_call(big_server: tuple[BigModelAPI, int], fed: Federation) -> None:
    api, port = big_server
    client = ResearcherClient(f"127.0.0.1:{port}", fed.tls("researcher"), timeout_s=60.0)
    try:
        with PeakRss() as rss:
            t0 = time.perf_counter()
            model = client.fetch_model("big")
            fetch_s = time.perf_counter() - t0
        assert _same(model, api.model)
    finally:
        client.close()
    print(f"\n1 GB model: FetchModel {fetch_s:.1f}s, peak RSS growth {rss.growth / 2**30:.2f} GiB")
    # the client holds one copy, viewed in place by np.frombuffer (measured 1.0x)
    assert rss.growth < 1.5 * api.model.nbytes
