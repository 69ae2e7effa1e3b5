"""Transport speed: seconds per round of medfed's identity task over real mTLS on loopback, against
the floor measured in the same run, with peak memory per process; optionally Flower 1.42's peer.

    .venv/bin/python benchmarks/transport_speed.py [--quick] [--flower]

Per cell (N nodes × P float32 parameters): a fresh coordinator and N node processes (the real
``python -m medfed`` CLI, gRPC over mutual TLS on 127.0.0.1), one FedAvg job of the ``identity``
task, ``--rounds`` fit rounds. Reported:

* ``round_s``: median of the job view's ``round_metrics[*].duration_s`` over fit rounds 2..R (round
  1 includes connection warm-up and the first task import). The coordinator's round timer runs
  from dispatch to the last result folded into the streaming mean; it excludes the strategy step
  and the checkpoint write that follow.
* ``cycle_s``: median interval between consecutive fit-round completions (coordinator SQLite,
  rounds 2..R): the full cost of a round, checkpoint (npz + fsync) included.
* ``floor_s`` = 2·N·P·4 bytes ÷ loopback TCP bandwidth (1 GiB pushed through one socket, same run)
  + best-of-3 numpy weighted sum of N float32 arrays of P elements (same run).
* peak RSS (VmHWM) per node process (max and median over nodes) and of the coordinator; the sum
  of PSS over all processes at the end of the job; the peak of the sampled total RSS.

Results: a table on stdout and JSON in ``benchmarks/results/transport_speed.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _floor  # noqa: E402 - benchmark helpers next to this file
import _medfed_fed as fed  # noqa: E402
import flower_peer  # noqa: E402

FULL = ([2, 10, 50], [10_000, 1_000_000, 10_000_000])
QUICK = ([2, 10], [10_000, 1_000_000])
#: Issue targets.
TARGET_RATIO = (10, 1_000_000, 5.0)
MEMORY_BUDGET_MIB = 24 * 1024
FLOWER_ISSUE_S = 18.0  # the issue's Flower deployment-mode figure at N=10, P=1e6


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N in {2, 10}, P in {1e4, 1e6}")
    p.add_argument("--flower", action="store_true", help="also run Flower 1.42's deployment-mode peer")
    p.add_argument("--flower-rounds", type=int, default=5, help="training rounds of each Flower run")
    p.add_argument("--flower-venv", type=Path, default=flower_peer.DEFAULT_VENV)
    p.add_argument("--flower-cells", default="", help="NxP list for Flower, e.g. 10x1000000,2x10000 (default: 10x1e6)")
    p.add_argument("--rounds", type=int, default=8, help="fit rounds per job (>= 2)")
    p.add_argument("--big-rounds", type=int, default=3, help="fit rounds when N×P >= 1e8 (10×1e7, 50×1e7)")
    p.add_argument("--nodes", default="", help="override N, comma-separated")
    p.add_argument("--params", default="", help="override P, comma-separated")
    p.add_argument(
        "--identity",
        choices=sorted(fed.IDENTITY_TARGETS),
        default="entry-point",
        help="which identity implementation the processes run (default: the installed entry point)",
    )
    p.add_argument(
        "--compare-torch",
        action="store_true",
        help="also run the smallest P at the largest N with the torch identity task, for memory",
    )
    p.add_argument("--heartbeat", type=float, default=1.0, help="coordinator --heartbeat seconds")
    p.add_argument("--timeout", type=float, default=600.0, help="bound on each job, seconds")
    p.add_argument("--workdir", type=Path, help="keep the federation and logs here")
    p.add_argument("--out", type=Path, default=HERE / "results" / "transport_speed.json")
    args = p.parse_args(argv)
    if args.rounds < 2 or args.big_rounds < 2:
        p.error("--rounds and --big-rounds must be >= 2 (round 1 is excluded as warm-up)")
    return args


def _grid(args: argparse.Namespace) -> tuple[list[int], list[int]]:
    nodes, params = QUICK if args.quick else FULL
    if args.nodes:
        nodes = [int(x) for x in args.nodes.split(",")]
    if args.params:
        params = [int(float(x)) for x in args.params.split(",")]
    return nodes, params


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _cell(
    root: Path, port: int, n: int, p: int, args: argparse.Namespace, bandwidth: float, identity: str
) -> dict[str, Any]:
    rounds = args.big_rounds if n * p >= 100_000_000 else args.rounds
    sum_s = _floor.weighted_sum_seconds(n, p)
    floor = _floor.floor_seconds(n, p, bandwidth, sum_s)
    spec = fed.CellSpec(n_nodes=n, n_params=p, rounds=rounds, heartbeat_s=args.heartbeat, timeout_s=args.timeout)
    try:
        r = fed.run_cell(root, port, spec, fed.launcher_for(identity))
    except (TimeoutError, RuntimeError) as exc:
        return {"nodes": n, "params": p, "rounds": rounds, "identity": identity, "state": "error", "error": str(exc),
                "floor_s": floor, "weighted_sum_s": sum_s}  # fmt: skip
    round_s, cycle_s = _median(r.durations_s[1:]), _median(r.cycles_s)
    return {
        "nodes": n, "params": p, "rounds": rounds, "identity": identity, "state": r.state, "error": r.error,
        "round_s": round_s, "cycle_s": cycle_s, "round1_s": r.durations_s[0] if r.durations_s else None,
        "round_min_s": min(r.durations_s[1:], default=float("nan")),
        "durations_s": r.durations_s, "cycles_s": r.cycles_s,
        "floor_s": floor, "weighted_sum_s": sum_s, "bytes_per_round": 2 * n * p * 4,
        "ratio": round_s / floor, "cycle_ratio": cycle_s / floor,
        "node_hwm_max_mib": max(r.node_hwm_mib, default=0.0), "node_hwm_median_mib": _median(r.node_hwm_mib),
        "coordinator_hwm_mib": r.coordinator_hwm_mib, "pss_total_mib": r.pss_total_mib,
        "sampled_peak_total_rss_mib": r.sampled_peak_total_mib, "startup_s": r.startup_s, "job_s": r.job_s,
        "coordinator_cpu_s": r.coordinator_cpu_s, "nodes_cpu_s": r.nodes_cpu_s,
    }  # fmt: skip


def _print_row(c: dict[str, Any]) -> None:
    if c["state"] != "completed":
        print(f"{c['nodes']:>4} {c['params']:>9.0e}  {c['state']}: {c['error'][:200]}", flush=True)
        return
    print(
        f"{c['nodes']:>4} {c['params']:>9.0e} {c['rounds']:>3} {c['round_s']:>9.3f} {c['cycle_s']:>9.3f} "
        f"{c['floor_s']:>9.4f} {c['ratio']:>7.1f} {c['cycle_ratio']:>7.1f} {c['node_hwm_max_mib']:>8.0f} "
        f"{c['coordinator_hwm_mib']:>8.0f} {c['pss_total_mib']:>9.0f}  {c['identity']}",
        flush=True,
    )


HEADER = (
    f"{'N':>4} {'P':>9} {'R':>3} {'round_s':>9} {'cycle_s':>9} {'floor_s':>9} {'ratio':>7} {'cyc/fl':>7} "
    f"{'node_MiB':>8} {'coord_MiB':>8} {'PSS_MiB':>9}  identity"
)


def _flower(args: argparse.Namespace, medfed_cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    wanted = [tuple(int(float(v)) for v in c.split("x")) for c in args.flower_cells.split(",") if c] or [
        (10, 1_000_000)
    ]
    out = []
    for n, p in wanted:
        print(f"flower: {n} SuperNodes × {p:.0e} parameters, {args.flower_rounds} rounds (deployment mode)", flush=True)
        res = flower_peer.run_flower(n, p, rounds=args.flower_rounds, venv=args.flower_venv, timeout_s=args.timeout)
        mine = next(
            (c for c in medfed_cells if c["nodes"] == n and c["params"] == p and c["state"] == "completed"), None
        )
        row = {"nodes": n, "params": p, **asdict(res), "round_s": res.median_s}
        if mine is not None and res.ok:
            row["medfed_over_flower"] = mine["round_s"] / res.median_s
            row["medfed_cycle_over_flower"] = mine["cycle_s"] / res.median_s
        out.append(row)
        if res.ok:
            ratio = row.get("medfed_over_flower")
            print(
                f"flower {n}x{p:.0e}: {res.median_s:.3f} s/round (rounds 2..), "
                f"superlink {res.superlink_hwm_mib:.0f} MiB, "
                f"supernode max {max(res.supernode_hwm_mib, default=0):.0f} MiB"
                + (f"; medfed/flower = {ratio:.3f}" if ratio is not None else ""),
                flush=True,
            )
        else:
            print(f"flower {n}x{p:.0e}: failed: {res.error}", flush=True)
    return out


def _verdicts(cells: list[dict[str, Any]]) -> dict[str, Any]:
    n, p, limit = TARGET_RATIO
    cells = [c for c in cells if not c.get("comparison")]
    target = next((c for c in cells if c["nodes"] == n and c["params"] == p and c["state"] == "completed"), None)
    biggest = max((c for c in cells if c["state"] == "completed"), key=lambda c: c["nodes"], default=None)
    out: dict[str, Any] = {}
    if target is not None:
        out["n10_p1e6_within_5x_floor"] = target["ratio"] <= limit
        out["n10_p1e6_ratio"] = target["ratio"]
    if biggest is not None:
        worst = max((c for c in cells if c["nodes"] == biggest["nodes"] and c["state"] == "completed"),
                    key=lambda c: c["pss_total_mib"])  # fmt: skip
        out[f"n{worst['nodes']}_fits_24gib"] = worst["pss_total_mib"] < MEMORY_BUDGET_MIB
        out[f"n{worst['nodes']}_pss_total_mib"] = worst["pss_total_mib"]
    return out


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    nodes, params = _grid(args)
    started = time.monotonic()
    bandwidth = max(_floor.loopback_bandwidth() for _ in range(3))
    print(f"loopback TCP: {bandwidth / 1e9:.2f} GB/s (best of 3 × 1 GiB, one connection); identity task = "
          f"{fed.installed_identity()} (--identity {args.identity})", flush=True)  # fmt: skip
    cells: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        root = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medfed-transport-")))
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "federation").exists():
            fed.provision_federation(root, max(nodes), fed.free_port())
        port = fed.provisioned_port(root)
        print(HEADER, flush=True)
        for n in nodes:
            for p in params:
                cells.append(_cell(root, port, n, p, args, bandwidth, args.identity))
                _print_row(cells[-1])
        if args.compare_torch:
            cells.append(_cell(root, port, max(nodes), min(params), args, bandwidth, "torch") | {"comparison": True})
            _print_row(cells[-1])
    flower = _flower(args, cells) if args.flower else []
    result = {
        "machine": {
            "python": platform.python_version(),
            "cpus": __import__("os").cpu_count(),
            "platform": platform.platform(),
        },
        "loopback_bytes_per_s": bandwidth,
        "identity_entry_point": fed.installed_identity(),
        "measured": "round_s = median fit-round duration_s, rounds 2..R; cycle_s = median completion-to-completion",
        "cells": cells,
        "flower": flower,
        "verdicts": _verdicts(cells),
        "wall_s": time.monotonic() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print(f"verdicts: {result['verdicts']}")
    print(f"wrote {args.out} in {result['wall_s']:.0f}s")
    return 0 if all(c["state"] == "completed" for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
