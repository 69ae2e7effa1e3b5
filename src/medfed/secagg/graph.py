"""The neighbour graph of a SecAgg+ round: who masks with whom and who holds whose shares.

SecAgg (Bonawitz et al. 2017) uses the complete graph: every pair of nodes shares a pairwise mask
and every node holds a share of every other node's secrets, O(n²) work. SecAgg+ (Bell et al. 2020,
§3) replaces it by a random k-regular Harary graph with k = O(log n): nodes sit on a ring in a
random order and each is joined to the k/2 nearest on either side, so work per node is O(k).

The *holders* of node ``i`` are its neighbours plus ``i`` itself: they receive the Shamir shares
of ``i``'s secrets, and the share point of a holder is its node id (ids are ints >= 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from medfed.core.errors import ValidationError
from medfed.crypto.secagg_primitives import RandomBytes, system_random

__all__ = ["NeighbourGraph"]

_MAX_ID = (1 << 32) - 1


@dataclass(frozen=True, slots=True)
class NeighbourGraph:
    """An undirected graph over round-local node ids (ints in 1..2^32-1) without self loops.

    Build one with :meth:`complete` or :meth:`harary`; the constructor checks symmetry.
    """

    adjacency: Mapping[int, frozenset[int]]

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.adjacency:
            problems.append("the graph has no nodes")
        for node, peers in self.adjacency.items():
            if not 1 <= node <= _MAX_ID:
                problems.append(f"node id {node} is outside 1..{_MAX_ID}")
            if node in peers:
                problems.append(f"node {node} is its own neighbour")
            for peer in peers:
                if node not in self.adjacency.get(peer, frozenset()):
                    problems.append(f"edge {node}-{peer} is not symmetric (or {peer} is not a node)")
        if problems:
            raise ValidationError(problems, where="neighbour graph")

    @classmethod
    def complete(cls, nodes: Iterable[int]) -> NeighbourGraph:
        """Every node is the neighbour of every other (the original SecAgg)."""
        ids = frozenset(nodes)
        return cls({i: ids - {i} for i in sorted(ids)})

    @classmethod
    def harary(cls, nodes: Iterable[int], *, degree: int, rng: RandomBytes = system_random) -> NeighbourGraph:
        """A random ``degree``-regular Harary graph (SecAgg+, Bell et al. 2020, §3.1).

        ``degree`` must be even and at least 2; at ``degree >= n - 1`` this is the complete graph.
        """
        order = sorted(set(nodes))
        n = len(order)
        if degree >= n - 1:
            return cls.complete(order)
        if degree < 2 or degree % 2:
            raise ValidationError(f"Harary degree must be even and >= 2 (or >= n-1), got {degree}")
        _shuffle(order, rng)
        half = degree // 2
        adjacency = {
            order[p]: frozenset(order[(p + d) % n] for d in range(-half, half + 1) if d != 0) for p in range(n)
        }
        return cls(dict(sorted(adjacency.items())))

    @property
    def nodes(self) -> tuple[int, ...]:
        """The node ids, ascending."""
        return tuple(sorted(self.adjacency))

    def neighbours(self, node: int) -> frozenset[int]:
        """The nodes that ``node`` shares a pairwise mask with."""
        return self.adjacency[node]

    def holders(self, node: int) -> frozenset[int]:
        """The nodes that hold shares of ``node``'s secrets: its neighbours and itself."""
        return self.adjacency[node] | {node}

    @property
    def max_holders(self) -> int:
        """The largest number of share holders of any node."""
        return 1 + max(len(p) for p in self.adjacency.values())

    @property
    def min_holders(self) -> int:
        """The smallest number of share holders of any node."""
        return 1 + min(len(p) for p in self.adjacency.values())


def _shuffle(items: list[int], rng: RandomBytes) -> None:
    """Fisher–Yates shuffle in place, with unbiased draws from ``rng``."""
    for i in range(len(items) - 1, 0, -1):
        j = _below(i + 1, rng)
        items[i], items[j] = items[j], items[i]


def _below(bound: int, rng: RandomBytes) -> int:
    """A uniform int in ``[0, bound)`` by rejection sampling on 8-byte draws."""
    limit = (1 << 64) - (1 << 64) % bound
    while True:
        value = int.from_bytes(rng(8), "big")
        if value < limit:
            return value % bound
