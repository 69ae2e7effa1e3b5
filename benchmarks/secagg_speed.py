"""SecAgg+ speed: per-node and coordinator time of the pure protocol stages, in one process.

    .venv/bin/python benchmarks/secagg_speed.py [--params 1000000] [--nodes 10] [--degree 4] [--repeats 3]

For P parameters and N nodes (one in ten drops after masking), reported as the best of
``--repeats`` runs, in milliseconds:

* ``quantize``: one node's float32 update to uint32 (stochastic rounding);
* ``plain sum``: N uint32 vectors summed in place, the floor of any aggregation;
* ``mask, one node``: node 1's stage 2 (open the relayed shares, self mask + one PRG per neighbour);
* ``coordinator sum``: the streaming sum of the masked inputs;
* ``coordinator unmask``: rebuild secrets and remove masks (one PRG per survivor plus one per
  (dropped, surviving neighbour) pair);
* ``whole round``: every role of every node played sequentially in this one process.

Graphs: the complete graph (SecAgg) and a Harary graph of ``--degree`` (SecAgg+).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from medfed.secagg import (
    NeighbourGraph,
    QuantizationConfig,
    SecAggParams,
    advertise,
    collect_keys,
    mask_input,
    quantize,
    reveal_shares,
    route_shares,
    share_keys,
    sum_masked,
    unmask,
    unmask_request,
)


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def one_round(params: SecAggParams, inputs: list[np.ndarray], dropped: set[int]) -> dict[str, float]:
    """Play a round, timing node 1's stages and the coordinator's."""
    t: dict[str, float] = {}
    clock = time.perf_counter
    c0 = clock()
    started = [advertise(params, i) for i in params.graph.nodes]
    roster = collect_keys(params, [ad for _, ad in started])
    shared = [share_keys(k, roster.view_for(k.node)) for k, _ in started]
    routing = route_shares(roster, [b for _, b in shared])
    masked = []
    for state, bundle in shared:
        m0 = clock()
        masked.append(mask_input(state, routing.inbox(bundle.sender), inputs[bundle.sender - 1]))
        if bundle.sender == 1:
            t["mask"] = clock() - m0
    s0 = clock()
    total = sum_masked(routing, [m for _, m in masked if m.node not in dropped])
    request = unmask_request(total)
    t["sum"] = clock() - s0
    revealed = [reveal_shares(st, request)[1] for st, m in masked if m.node in request.survivors]
    u0 = clock()
    unmask(total, revealed)
    t["unmask"] = clock() - u0
    t["round"] = clock() - c0
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--degree", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n, p = args.nodes, args.params
    rng = np.random.default_rng(0)
    floats = [rng.normal(0, 0.1, p).astype(np.float32) for _ in range(n)]
    config = QuantizationConfig(clip=1.0, max_summands=n)
    inputs = [quantize(x, config) for x in floats]
    dropped = set(range(1, n + 1, 10)) - {1} or {n}

    print(f"SecAgg+ stages, P={p:,} parameters, N={n} nodes, dropped after masking: {sorted(dropped)}")
    print(f"  quantize (one node)      {best_ms(lambda: quantize(floats[0], config), args.repeats):8.1f} ms")

    def plain() -> None:
        acc = np.zeros(p, np.uint32)
        for x in inputs:
            np.add(acc, x, out=acc)

    print(f"  plain sum (N vectors)    {best_ms(plain, args.repeats):8.1f} ms")
    graphs = {
        "complete (SecAgg)": NeighbourGraph.complete(range(1, n + 1)),
        f"Harary k={args.degree} (SecAgg+)": NeighbourGraph.harary(range(1, n + 1), degree=args.degree),
    }
    for name, graph in graphs.items():
        params = SecAggParams(graph=graph, threshold=graph.max_holders // 2 + 1, vector_size=p, session=b"bench")
        runs = [one_round(params, inputs, dropped) for _ in range(args.repeats)]
        best = {k: 1e3 * min(r[k] for r in runs) for k in runs[0]}
        print(f"  {name}")
        print(f"    mask, one node          {best['mask']:8.1f} ms  ({len(graph.neighbours(1))} pairwise masks)")
        print(f"    coordinator sum         {best['sum']:8.1f} ms")
        print(f"    coordinator unmask      {best['unmask']:8.1f} ms")
        print(f"    whole round, all roles  {best['round']:8.1f} ms  (in one process, sequential)")


if __name__ == "__main__":
    main()
