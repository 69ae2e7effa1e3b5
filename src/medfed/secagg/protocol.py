"""SecAgg+ end to end: the stages of :mod:`~medfed.secagg.node` and :mod:`~medfed.secagg.coordinator`
played in one process, for tests, simulations and benchmarks.

The runtime wires the same stages over the wire instead (node middleware on one side, the round
loop on the other); :func:`run_round` only shows the order and what each party receives.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from medfed.core.errors import ValidationError
from medfed.crypto.secagg_primitives import RandomBytes, system_random
from medfed.secagg.coordinator import collect_keys, route_shares, sum_masked, unmask, unmask_request
from medfed.secagg.graph import NeighbourGraph
from medfed.secagg.messages import CoordinatorMessage, SecAggParams
from medfed.secagg.node import advertise, mask_input, reveal_shares, share_keys

__all__ = ["RoundOutcome", "run_round"]


@dataclass(frozen=True, slots=True)
class RoundOutcome:
    """What a round produced and what the coordinator saw.

    Attributes
    ----------
    total : numpy.ndarray
        Σ x_i over the survivors, ``uint32`` (mod 2^32).
    survivors : frozenset[int]
        The nodes whose inputs are in the sum.
    coordinator_view : tuple
        Every message the coordinator received, in arrival order.
    """

    total: npt.NDArray[np.uint32]
    survivors: frozenset[int]
    coordinator_view: tuple[CoordinatorMessage, ...]


def run_round(
    inputs: Sequence[npt.ArrayLike],
    *,
    threshold: int,
    dropouts_after_masking: Collection[int] = (),
    neighbours: NeighbourGraph | None = None,
    rng: RandomBytes = system_random,
) -> RoundOutcome:
    """Play every role of one round in-process; node ``i`` (1-based) holds ``inputs[i - 1]``.

    ``dropouts_after_masking`` are nodes that vanish after masking (their masked inputs never
    arrive); ``neighbours`` defaults to the complete graph. Raises
    :class:`~medfed.secagg.errors.SecAggError` when the survivors cannot be unmasked.
    """
    vectors = [np.asarray(v) for v in inputs]
    graph = neighbours if neighbours is not None else NeighbourGraph.complete(range(1, len(vectors) + 1))
    problems: list[str] = []
    if graph.nodes != tuple(range(1, len(vectors) + 1)):
        problems.append(f"the graph's nodes must be 1..{len(vectors)}, got {list(graph.nodes)}")
    if any(v.dtype != np.uint32 or v.ndim != 1 or v.shape != vectors[0].shape for v in vectors):
        problems.append("inputs must be 1-D uint32 arrays of one length")
    if not set(dropouts_after_masking) <= set(graph.nodes):
        problems.append(f"dropouts {sorted(set(dropouts_after_masking) - set(graph.nodes))} are not nodes")
    if problems:
        raise ValidationError(problems, where="run_round")
    params = SecAggParams(graph=graph, threshold=threshold, vector_size=vectors[0].size, session=b"run_round")
    view: list[CoordinatorMessage] = []

    started = [advertise(params, node, rng=rng) for node in graph.nodes]
    view.extend(ad for _, ad in started)
    roster = collect_keys(params, [ad for _, ad in started])

    shared = [share_keys(keys, roster.view_for(keys.node), rng=rng) for keys, _ in started]
    view.extend(bundle for _, bundle in shared)
    routing = route_shares(roster, [bundle for _, bundle in shared])

    masked = [mask_input(state, routing.inbox(b.sender), vectors[b.sender - 1]) for state, b in shared]
    arrived = [msg for _, msg in masked if msg.node not in dropouts_after_masking]
    view.extend(arrived)
    total = sum_masked(routing, arrived)

    request = unmask_request(total)
    revealed = [reveal_shares(state, request)[1] for state, msg in masked if msg.node in request.survivors]
    view.extend(revealed)
    return RoundOutcome(total=unmask(total, revealed), survivors=request.survivors, coordinator_view=tuple(view))
