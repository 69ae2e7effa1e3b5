"""Secure aggregation's price per round in the real runtime, against the plain round in the same run,
and Flower 1.42's SecAgg+ against its own plain round on the same workload (optional).

    .venv/bin/python benchmarks/secagg_round.py [--cells 10x100000,10x1000000,50x100000,50x1000000]
        [--rounds 5] [--degree 8] [--flower]

Per cell (N nodes × P float32 parameters): one coordinator and N node processes (the real
``python -m medfed`` CLI, gRPC over mutual TLS on loopback) run the ``identity`` task twice,
alternately: a plain FedAvg job and the same job with ``[secure_aggregation]`` (all four SecAgg+
stages: keys, key shares, masked fit, unmasking). ``round_s`` is the median of the coordinator's
fit-round durations over rounds 2..R (a secure round's duration spans all four stages).
Graph: complete for N <= degree + 1, else a random ``--degree``-regular Harary graph (SecAgg+).
The ratio secure ÷ plain is the issue's target (<= 1.3).

Flower (``--flower``): the same N SuperNodes and P parameters in deployment mode, the legacy
``DefaultWorkflow`` with its default fit workflow vs ``SecAggPlusWorkflow`` (``num_shares`` =
degree + 1 neighbours-with-self, ``reconstruction_threshold`` as medfed's default), ClientApp with
``secaggplus_mod``; each fit round timed inside the ServerApp. Runs from ``/tmp/flwr-venv``.

Results: a table on stdout and JSON in ``benchmarks/results/secagg_round.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _medfed_fed as fed  # noqa: E402 - benchmark helpers next to this file
import flower_peer  # noqa: E402

TARGET = 1.3


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", default="10x100000,10x1000000,50x100000,50x1000000")
    p.add_argument("--rounds", type=int, default=5, help="fit rounds per job (>= 2)")
    p.add_argument("--degree", type=int, default=8, help="SecAgg+ neighbours per node (even)")
    p.add_argument("--flower", action="store_true", help="also run Flower's SecAgg+ peer")
    p.add_argument("--flower-venv", type=Path, default=flower_peer.DEFAULT_VENV)
    return p.parse_args(argv)


def _cells(text: str) -> list[tuple[int, int]]:
    return [(int(n), int(float(p))) for n, p in (c.split("x") for c in text.split(","))]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    cells = _cells(args.cells)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="medfed-secagg-") as tmp:
        root = Path(tmp)
        port = fed.free_port()
        fed.provision_federation(root, max(n for n, _ in cells), port)
        launcher = fed.launcher_for("entry-point")
        for n, p in cells:
            spec = fed.CellSpec(n_nodes=n, n_params=p, rounds=args.rounds, timeout_s=900.0)
            secure = f"\n[secure_aggregation]\nneighbours = {args.degree if n > args.degree + 1 else 0}\n"
            got = fed.run_variants(root, port, spec, launcher, {"plain": "", "secure": secure})
            plain_s, secure_s = _median(got["plain"][2]), _median(got["secure"][2])
            row: dict[str, Any] = {
                "nodes": n,
                "params": p,
                "plain_round_s": plain_s,
                "secure_round_s": secure_s,
                "ratio": secure_s / plain_s,
                "secure_stages_s": {
                    stage: _median([a.get(f"secagg_{stage}_s", math.nan) for a in got["secure"][3]])
                    for stage in ("keys", "shares", "fit", "unmask")
                },
                "states": {k: v[0] for k, v in got.items()},
                "errors": {k: v[1] for k, v in got.items() if v[1]},
            }
            if args.flower:
                row["flower"] = flower_peer.run_secagg(
                    args.flower_venv, n_nodes=n, n_params=p, rounds=args.rounds, num_shares=min(n, args.degree + 1)
                )
            rows.append(row)
            _print_row(row)
    out = HERE / "results" / "secagg_round.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"\nwritten: {out}")
    return 0


def _print_row(row: dict[str, Any]) -> None:
    verdict = "meets" if row["ratio"] <= TARGET else "misses"
    line = (
        f"N={row['nodes']:>3} P={row['params']:>9,}  plain {row['plain_round_s']:.3f} s  "
        f"secure {row['secure_round_s']:.3f} s  ratio {row['ratio']:.2f}x ({verdict} <= {TARGET}x)"
    )
    line += "  stages " + " ".join(f"{k} {v:.3f}" for k, v in row["secure_stages_s"].items())
    fl = row.get("flower")
    if fl:
        line += (
            f"  | Flower plain {fl['plain_round_s']:.3f} s  SecAgg+ {fl['secure_round_s']:.3f} s  "
            f"ratio {fl['ratio']:.2f}x  "
            f"medfed secure ÷ Flower SecAgg+ {row['secure_round_s'] / fl['secure_round_s']:.3f}"
        )
    if row["errors"]:
        line += f"  errors: {row['errors']}"
    print(line, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
