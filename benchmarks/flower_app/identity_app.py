"""Flower 1.42 identity workload, the peer of medfed's ``identity`` task (see flower_peer.py).

ServerApp: P float32 parameters split into ``n-tensors`` arrays, ``num-rounds`` FedAvg training
rounds over every connected SuperNode (no evaluation rounds), each round timed from
``configure_train`` to the end of ``aggregate_train``; the timings go to ``out-path`` as JSON.
ClientApp: returns the arrays it received, weighted by ``num-examples`` = 1.

This module is copied into a generated Flower App directory and runs inside Flower's own
processes (the venv that has ``flwr``); medfed never imports it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

clientapp = ClientApp()
serverapp = ServerApp()


@clientapp.train()
def train(msg: Message, context: Context) -> Message:
    """Send back the received arrays unchanged (the identity task)."""
    content = RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord({"num-examples": 1})})
    return Message(content=content, reply_to=msg)


def _initial_arrays(n_params: int, n_tensors: int) -> ArrayRecord:
    parts = min(n_tensors, n_params)
    sizes = [n_params // parts + (1 if i < n_params % parts else 0) for i in range(parts)]
    return ArrayRecord([np.zeros(s, dtype=np.float32) for s in sizes])


@serverapp.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    n_nodes, rounds = int(cfg["num-nodes"]), int(cfg["num-rounds"])
    strategy = FedAvg(
        fraction_train=1.0, fraction_evaluate=0.0,
        min_train_nodes=n_nodes, min_available_nodes=n_nodes, min_evaluate_nodes=0,
    )  # fmt: skip
    arrays = _initial_arrays(int(cfg["n-params"]), int(cfg["n-tensors"]))
    durations: list[float] = []
    replies_ok: list[int] = []
    for rnd in range(1, rounds + 1):
        start = time.monotonic()
        replies = list(
            grid.send_and_receive(
                messages=strategy.configure_train(rnd, arrays, ConfigRecord(), grid), timeout=float(cfg["timeout-s"])
            )
        )
        new_arrays, _ = strategy.aggregate_train(rnd, replies)
        durations.append(time.monotonic() - start)
        replies_ok.append(sum(not r.has_error() for r in replies))
        if new_arrays is not None:
            arrays = new_arrays
    out = {"round_durations_s": durations, "replies_ok": replies_ok, "num_nodes": n_nodes}
    Path(str(cfg["out-path"])).write_text(json.dumps(out))
