"""Flower 1.42 SecAgg+ workload, the peer of medfed's ``benchmarks/secagg_round.py``.

ServerApp: P float32 parameters in ``n-tensors`` arrays and N SuperNodes; first ``num-rounds``
plain fit rounds (the legacy ``DefaultWorkflow`` with its default fit workflow), then the same
number with ``SecAggPlusWorkflow`` (``num-shares``, ``reconstruction-threshold``), each fit round
timed around the fit workflow; the timings go to ``out-path`` as JSON.
ClientApp: a NumPyClient that returns the parameters it received with 1 example; the
``secaggplus_mod`` handles the SecAgg+ stages (plain fit messages bypass it).

Copied into a generated Flower App directory and run inside Flower's own processes; medfed never
imports it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context, Message, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.default_workflows import default_fit_workflow


class IdentityClient(NumPyClient):
    def fit(self, parameters: Any, config: Any) -> tuple[Any, int, dict[str, Any]]:
        return parameters, 1, {}


def _client_fn(context: Context) -> Any:
    return IdentityClient().to_client()


def _secagg_when_asked(msg: Message, ctxt: Context, call_next: Any) -> Message:
    """SecAgg+ for the messages of a SecAgg+ round; plain fit rounds go straight to the client."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


clientapp = ClientApp(client_fn=_client_fn, mods=[_secagg_when_asked])
serverapp = ServerApp()


class _Timed:
    def __init__(self, inner: Any) -> None:
        self.inner, self.durations = inner, []

    def __call__(self, grid: Grid, context: Context) -> None:
        start = time.monotonic()
        self.inner(grid, context)
        self.durations.append(time.monotonic() - start)


@serverapp.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    n_nodes, rounds = int(cfg["num-nodes"]), int(cfg["num-rounds"])
    n_params, n_tensors = int(cfg["n-params"]), int(cfg["n-tensors"])
    parts = min(n_tensors, n_params)
    sizes = [n_params // parts + (1 if i < n_params % parts else 0) for i in range(parts)]
    initial = ndarrays_to_parameters([np.zeros(s, dtype=np.float32) for s in sizes])
    shares = int(cfg["num-shares"])
    threshold = max(shares // 2 + 1, math.ceil(2 * shares / 3))
    out: dict[str, Any] = {"num_nodes": n_nodes, "num_shares": shares, "reconstruction_threshold": threshold}
    for mode in ("plain", "secagg"):
        strategy = FedAvg(
            fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n_nodes, min_available_clients=n_nodes,
            min_evaluate_clients=0, initial_parameters=initial,
        )  # fmt: skip
        legacy = LegacyContext(context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
        inner = (
            default_fit_workflow
            if mode == "plain"
            else SecAggPlusWorkflow(
                num_shares=shares, reconstruction_threshold=threshold, timeout=float(cfg["timeout-s"])
            )
        )
        timed = _Timed(inner)
        DefaultWorkflow(fit_workflow=timed)(grid, legacy)
        out[mode] = timed.durations
    Path(str(cfg["out-path"])).write_text(json.dumps(out))
