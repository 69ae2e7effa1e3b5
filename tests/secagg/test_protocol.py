"""Tests for the SecAgg+ stages: unmasked sums equal plain sums, dropouts, thresholds, refusals."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import medfed.secagg
from medfed.core.errors import MedfedError, ValidationError
from medfed.core.params import Parameters
from medfed.crypto.secagg_primitives import DecryptionError, RandomBytes
from medfed.secagg import (
    EncryptedShare,
    MaskedInput,
    NeighbourGraph,
    QuantizationConfig,
    SecAggError,
    SecAggParams,
    UnmaskRefused,
    UnmaskRequest,
    advertise,
    collect_keys,
    dequantize_parameters,
    dequantize_sum,
    mask_input,
    quantize,
    quantize_parameters,
    reveal_shares,
    route_shares,
    run_round,
    share_keys,
    sum_masked,
    unmask,
    unmask_request,
)


def seeded(seed: int = 0) -> RandomBytes:
    return np.random.default_rng(seed).bytes


def random_inputs(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    gen = np.random.default_rng(seed)
    return [gen.integers(0, 2**32, size=size, dtype=np.uint32) for _ in range(n)]


def plain_sum(inputs: list[np.ndarray], nodes: frozenset[int]) -> np.ndarray:
    total = np.zeros(inputs[0].size, dtype=np.uint64)
    for node in nodes:
        total += inputs[node - 1]
    return (total % 2**32).astype(np.uint32)


Case = tuple[NeighbourGraph, int, frozenset[int], int]
SHAPES = st.lists(st.lists(st.integers(1, 4), max_size=3), min_size=1, max_size=3)


@st.composite
def rounds(draw: st.DrawFn, *, complete: bool) -> Case:
    """A graph over nodes 1..n (3..12), a valid threshold, up to n - t dropouts and a seed."""
    n = draw(st.integers(3, 12))
    seed = draw(st.integers(0, 2**32))
    degree = n - 1 if complete else draw(st.sampled_from([n - 1, *range(2, n - 1, 2)]))
    graph = NeighbourGraph.harary(range(1, n + 1), degree=degree, rng=seeded(seed))
    t = draw(st.integers(graph.max_holders // 2 + 1, graph.min_holders))
    count = draw(st.integers(0, n - t))
    dropped = draw(st.lists(st.integers(1, n), min_size=count, max_size=count, unique=True))
    return graph, t, frozenset(dropped), seed


def check_round(case: Case, shapes: list[list[int]]) -> None:
    """Quantise random float updates, run the round, and compare with the plain sum of survivors."""
    graph, t, dropped, seed = case
    n = len(graph.nodes)
    gen = np.random.default_rng(seed)
    updates = [
        Parameters.from_numpy({f"p{k}": gen.uniform(-1, 1, size=s) for k, s in enumerate(shapes)}) for _ in range(n)
    ]
    config = QuantizationConfig(clip=1.0, max_summands=n)
    inputs = [quantize_parameters(u, config, rng=seeded(seed + i)) for i, u in enumerate(updates)]
    survivors = frozenset(graph.nodes) - dropped
    recoverable = all(len(graph.holders(j) & survivors) >= t for j in graph.nodes)
    event(f"recoverable={recoverable} dropped={bool(dropped)}")

    if not recoverable:  # SecAgg+: some neighbourhood lost too many holders
        with pytest.raises(SecAggError, match="threshold"):
            run_round(inputs, threshold=t, dropouts_after_masking=dropped, neighbours=graph, rng=seeded(seed))
        return
    outcome = run_round(inputs, threshold=t, dropouts_after_masking=dropped, neighbours=graph, rng=seeded(seed))

    assert outcome.survivors == survivors
    assert np.array_equal(outcome.total, plain_sum(inputs, survivors))  # exact, mod 2^32
    got = dequantize_parameters(outcome.total, config, like=updates[0], count=len(survivors))
    want = [sum(updates[i - 1].arrays[k] for i in survivors) for k in range(len(shapes))]
    bound = config.sum_error_bound(len(survivors))
    assert all(np.max(np.abs(g - w), initial=0.0) <= bound for g, w in zip(got.arrays, want, strict=True))


@settings(max_examples=40, deadline=None)
@given(case=rounds(complete=True), shapes=SHAPES)
def test_unmasked_sum_equals_the_plain_sum(case: Case, shapes: list[list[int]]) -> None:
    # Complete graph (SecAgg): any n - t dropouts are always recoverable.
    assert all(len(case[0].holders(j)) == len(case[0].nodes) for j in case[0].nodes)
    check_round(case, shapes)


@settings(max_examples=40, deadline=None)
@given(case=rounds(complete=False), shapes=SHAPES)
def test_secagg_plus_unmasks_the_plain_sum_or_says_why_not(case: Case, shapes: list[list[int]]) -> None:
    check_round(case, shapes)


def test_complete_graph_survives_up_to_n_minus_t_dropouts() -> None:
    inputs = random_inputs(7, 100)

    outcome = run_round(inputs, threshold=4, dropouts_after_masking={1, 4, 7})

    assert np.array_equal(outcome.total, plain_sum(inputs, frozenset({2, 3, 5, 6})))


def test_fewer_than_threshold_survivors_is_a_clear_error() -> None:
    with pytest.raises(SecAggError, match="only 3 nodes sent masked inputs, fewer than the threshold 4"):
        run_round(random_inputs(6, 10), threshold=4, dropouts_after_masking={1, 2, 3})


def test_threshold_must_exceed_half_of_the_holders() -> None:
    graph = NeighbourGraph.complete(range(1, 7))
    with pytest.raises(ValidationError, match=r"threshold must be in 4\.\.6"):
        SecAggParams(graph=graph, threshold=3, vector_size=1)
    with pytest.raises(ValidationError):
        SecAggParams(graph=graph, threshold=7, vector_size=1)


def test_harary_graph_is_regular_symmetric_and_seeded() -> None:
    graph = NeighbourGraph.harary(range(1, 21), degree=6, rng=seeded(5))

    assert all(len(graph.neighbours(i)) == 6 for i in graph.nodes)
    assert graph == NeighbourGraph.harary(range(1, 21), degree=6, rng=seeded(5))
    assert graph != NeighbourGraph.harary(range(1, 21), degree=6, rng=seeded(6))
    with pytest.raises(ValidationError, match="even"):
        NeighbourGraph.harary(range(1, 21), degree=5)
    with pytest.raises(ValidationError, match="symmetric"):
        NeighbourGraph({1: frozenset({2}), 2: frozenset()})


class Stages:
    """Plays a round stage by stage so a test can drop nodes or misbehave at any point."""

    def __init__(self, n: int, threshold: int, size: int = 16, seed: int = 0) -> None:
        self.rng = seeded(seed)
        self.inputs = random_inputs(n, size, seed)
        self.params = SecAggParams(
            graph=NeighbourGraph.complete(range(1, n + 1)), threshold=threshold, vector_size=size, session=b"job/1"
        )

    def play(
        self, *, silent_at_sharing: frozenset[int] = frozenset(), silent_at_masking: frozenset[int] = frozenset()
    ) -> Stages:
        started = {i: advertise(self.params, i, rng=self.rng) for i in self.params.graph.nodes}
        self.roster = collect_keys(self.params, [ad for _, ad in started.values()])
        shared = {i: share_keys(k, self.roster.view_for(i), rng=self.rng) for i, (k, _) in started.items()}
        self.routing = route_shares(self.roster, [b for i, (_, b) in shared.items() if i not in silent_at_sharing])
        self.masked = {
            i: mask_input(s, self.routing.inbox(i), self.inputs[i - 1])
            for i, (s, _) in shared.items()
            if i in self.routing.senders
        }
        self.total = sum_masked(self.routing, [m for i, (_, m) in self.masked.items() if i not in silent_at_masking])
        return self


def test_nodes_that_vanish_before_masking_are_simply_left_out() -> None:
    s = Stages(6, threshold=4).play(silent_at_sharing=frozenset({2}), silent_at_masking=frozenset({5}))
    request = unmask_request(s.total)

    revealed = [reveal_shares(s.masked[i][0], request)[1] for i in sorted(request.survivors)]

    assert request == UnmaskRequest(survivors=frozenset({1, 3, 4, 6}), dropped=frozenset({5}))
    assert np.array_equal(unmask(s.total, revealed), plain_sum(s.inputs, request.survivors))


def test_a_node_refuses_both_kinds_of_share_for_one_node() -> None:
    s = Stages(5, threshold=3).play()
    state = s.masked[1][0]
    everyone = frozenset(range(1, 6))

    with pytest.raises(UnmaskRefused, match=r"claimed both survived and dropped"):
        reveal_shares(state, UnmaskRequest(survivors=everyone, dropped=frozenset({3})))

    # Split across two requests: first "3 dropped" (mask-key share), then "3 survived" (self-mask share).
    state, first = reveal_shares(state, UnmaskRequest(survivors=everyone - {3}, dropped=frozenset({3})))
    assert set(first.mask_key) == {3}
    with pytest.raises(UnmaskRefused, match=r"already revealed for nodes \[3\]"):
        reveal_shares(state, UnmaskRequest(survivors=everyone, dropped=frozenset()))
    state, again = reveal_shares(state, UnmaskRequest(survivors=everyone - {3}, dropped=frozenset({3})))
    assert again == first  # repeating the same request is harmless


def test_a_node_refuses_to_be_called_dropped_or_to_unmask_a_tiny_sum() -> None:
    s = Stages(5, threshold=3).play()
    with pytest.raises(UnmaskRefused, match="not listed as a survivor"):
        reveal_shares(s.masked[1][0], UnmaskRequest(survivors=frozenset({2, 3, 4, 5}), dropped=frozenset({1})))
    with pytest.raises(UnmaskRefused, match="only 2 of this node's holders survived"):
        reveal_shares(s.masked[1][0], UnmaskRequest(survivors=frozenset({1, 2}), dropped=frozenset({3, 4, 5})))


def test_forged_or_misrouted_share_messages_are_detected() -> None:
    started = {i: advertise(Stages(4, 3).params, i) for i in range(1, 5)}
    params = started[1][0].params
    roster = collect_keys(params, [ad for _, ad in started.values()])
    shared = {i: share_keys(k, roster.view_for(i)) for i, (k, _) in started.items()}
    inbox = route_shares(roster, [b for _, b in shared.values()]).inbox(1)
    x = np.zeros(params.vector_size, np.uint32)

    flipped = replace(inbox[0], ciphertext=inbox[0].ciphertext[:-1] + b"\x00")
    with pytest.raises(DecryptionError):
        mask_input(shared[1][0], (flipped, *inbox[1:]), x)
    # A share sealed for node 1 by node 2, passed off as coming from node 3.
    relabelled = EncryptedShare(sender=3, recipient=1, ciphertext=inbox[0].ciphertext)
    with pytest.raises(DecryptionError):
        mask_input(shared[1][0], (relabelled, inbox[2]), x)
    with pytest.raises(SecAggError, match="repeated"):
        mask_input(shared[1][0], (inbox[0], inbox[0]), x)


def test_the_coordinator_validates_what_it_receives() -> None:
    s = Stages(4, threshold=3).play()
    some = s.masked[1][1]

    with pytest.raises(ValidationError, match="repeated masked input"):
        sum_masked(s.routing, [some, some])
    with pytest.raises(ValidationError, match="shape"):
        sum_masked(s.routing, [MaskedInput(node=1, vector=np.zeros(3, np.uint32))])
    ad = s.roster.adverts[1]
    with pytest.raises(ValidationError, match="advertised twice"):
        collect_keys(s.params, [ad, replace(ad, node=2)])
    request = unmask_request(s.total)
    revealed = [reveal_shares(s.masked[i][0], request)[1] for i in (1, 2)]
    with pytest.raises(SecAggError, match="self-mask seed of node 3: 2 shares, threshold 3"):
        unmask(s.total, revealed)


def test_public_api_is_listed_and_errors_join_the_tree() -> None:
    for name in medfed.secagg.__all__:
        assert hasattr(medfed.secagg, name), name
    assert issubclass(SecAggError, MedfedError) and issubclass(UnmaskRefused, MedfedError)


def test_narrow_quantisation_sums_correctly_through_the_mod_2_32_protocol() -> None:
    # 2^16 divides 2^32, so the protocol's mod-2^32 sum reduces to the mod-2^16 sum.
    config = QuantizationConfig(clip=1.0, max_summands=5, bits=16)
    updates = [np.linspace(-1, 1, 50) * (i + 1) / 5 for i in range(5)]
    inputs = [quantize(u, config, rng=seeded(i)) for i, u in enumerate(updates)]

    outcome = run_round(inputs, threshold=3, dropouts_after_masking={2}, rng=seeded(9))
    got = dequantize_sum(outcome.total, config, count=4)

    assert np.max(np.abs(got - (updates[0] + updates[2] + updates[3] + updates[4]))) <= config.sum_error_bound(4)
