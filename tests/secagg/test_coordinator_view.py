"""The coordinator's view: given every message it receives, one node's input stays hidden.

The coordinator sees advertisements (public keys), sealed share messages it relays, masked inputs
and the shares nodes reveal for unmasking. From these it may rebuild each survivor's self-mask
seed and each dropped node's mask key, and it does its best with them here, yet a single node's
masked input, even with every mask it can remove removed, still looks uniform, and no key it can
derive opens a share message.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from scipy import stats

from medfed.crypto.secagg_primitives import (
    DecryptionError,
    RandomBytes,
    agree,
    open_sealed,
    prg_words,
    shamir_combine,
)
from medfed.secagg import (
    KeyAdvertisement,
    MaskedInput,
    NeighbourGraph,
    NodeMasked,
    RevealedShares,
    SecAggParams,
    ShareBundle,
    advertise,
    collect_keys,
    mask_input,
    reveal_shares,
    route_shares,
    run_round,
    share_keys,
    sum_masked,
    unmask,
    unmask_request,
)
from medfed.secagg.node import MASK_SEED, SHARE_KEY

N, THRESHOLD, SIZE, TARGET, DROPPED = 5, 3, 1 << 16, 1, 5


def seeded(seed: int = 0) -> RandomBytes:
    return np.random.default_rng(seed).bytes


def looks_uniform(words: np.ndarray) -> bool:
    """Chi-square test of the byte histogram against uniform (255 d.o.f., p > 1e-6)."""
    counts = np.bincount(words.view(np.uint8), minlength=256)
    statistic = float(((counts - counts.mean()) ** 2 / counts.mean()).sum())
    return statistic < stats.chi2.ppf(1 - 1e-6, df=255)


class Round:
    """One round with the target node's input all zeros (the most structured input there is)."""

    def __init__(self) -> None:
        rng = seeded(11)
        self.params = SecAggParams(
            graph=NeighbourGraph.complete(range(1, N + 1)), threshold=THRESHOLD, vector_size=SIZE, session=b"j/1"
        )
        self.inputs = {i: np.full(SIZE, 0 if i == TARGET else i, dtype=np.uint32) for i in range(1, N + 1)}
        started = {i: advertise(self.params, i, rng=rng) for i in self.inputs}
        self.adverts = [ad for _, ad in started.values()]
        roster = collect_keys(self.params, self.adverts)
        shared = {i: share_keys(k, roster.view_for(i), rng=rng) for i, (k, _) in started.items()}
        self.bundles = [b for _, b in shared.values()]
        routing = route_shares(roster, self.bundles)
        masked = {i: mask_input(s, routing.inbox(i), self.inputs[i]) for i, (s, _) in shared.items()}
        self.states: dict[int, NodeMasked] = {i: st for i, (st, _) in masked.items()}
        self.masked = [m for i, (_, m) in masked.items() if i != DROPPED]
        self.total = sum_masked(routing, self.masked)
        request = unmask_request(self.total)
        self.revealed = [reveal_shares(self.states[i], request)[1] for i in sorted(request.survivors)]
        self.result = unmask(self.total, self.revealed)

    @property
    def view(self) -> list[KeyAdvertisement | ShareBundle | MaskedInput | RevealedShares]:
        return [*self.adverts, *self.bundles, *self.masked, *self.revealed]


@pytest.fixture(scope="module")
def played() -> Round:
    return Round()


def coordinator_secrets(r: Round) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """What the coordinator can rebuild from revealed shares: self-mask seeds and mask keys."""
    seeds, keys = defaultdict(list), defaultdict(list)
    for msg in r.revealed:
        for owner, share in msg.self_mask.items():
            seeds[owner].append(share)
        for owner, share in msg.mask_key.items():
            keys[owner].append(share)
    return (
        {j: shamir_combine(s, threshold=THRESHOLD) for j, s in seeds.items()},
        {j: shamir_combine(s, threshold=THRESHOLD) for j, s in keys.items()},
    )


def test_the_round_itself_is_correct(played: Round) -> None:
    expected = sum(int(played.inputs[i][0]) for i in range(1, N + 1) if i != DROPPED)
    assert np.all(played.result == expected)


def test_a_masked_input_is_indistinguishable_from_uniform(played: Round) -> None:
    target = next(m for m in played.masked if m.node == TARGET)

    assert looks_uniform(target.vector)
    assert not looks_uniform(played.inputs[TARGET] + np.arange(SIZE, dtype=np.uint32))  # the test can fail


def test_removing_every_mask_the_coordinator_can_still_leaves_noise(played: Round) -> None:
    seeds, keys = coordinator_secrets(played)
    assert TARGET in seeds and DROPPED in keys and TARGET not in keys  # never both kinds for one node
    by_node = {ad.node: ad for ad in played.adverts}
    y = next(m for m in played.masked if m.node == TARGET).vector.copy()

    y -= prg_words(seeds[TARGET], SIZE)  # the target's self mask
    seed = agree(keys[DROPPED], by_node[TARGET].mask_public, info=played.params.pair_info(TARGET, DROPPED, MASK_SEED))
    y -= prg_words(seed, SIZE)  # its pairwise mask with the dropped node (TARGET < DROPPED: it was added)

    assert looks_uniform(y)  # the pairwise masks with the surviving neighbours remain
    assert np.count_nonzero(y == 0) < 10


def test_the_coordinator_cannot_open_the_share_messages_it_relays(played: Round) -> None:
    _, keys = coordinator_secrets(played)
    by_node = {ad.node: ad for ad in played.adverts}
    sealed = [s for b in played.bundles for s in b.shares]
    assert sealed

    for share in sealed:
        ad = played.params.share_ad(share.sender, share.recipient)
        info = played.params.pair_info(share.sender, share.recipient, SHARE_KEY)
        guesses = [bytes(32), by_node[share.sender].cipher_public, by_node[share.recipient].cipher_public]
        guesses += [agree(k, by_node[p].cipher_public, info=info) for k in keys.values() for p in by_node]
        guesses += [agree(k, by_node[p].mask_public, info=info) for k in keys.values() for p in by_node]
        for key in guesses:
            with pytest.raises(DecryptionError):
                open_sealed(key, share.ciphertext, associated_data=ad)

    # The recipient, who holds the cipher key, can (so the attempts above could have succeeded).
    first = sealed[0]
    mine = played.states[first.recipient].shared.keys.cipher.private
    key = agree(
        mine,
        by_node[first.sender].cipher_public,
        info=played.params.pair_info(first.sender, first.recipient, SHARE_KEY),
    )
    assert open_sealed(key, first.ciphertext, associated_data=played.params.share_ad(first.sender, first.recipient))


def test_no_private_key_or_seed_appears_in_anything_the_coordinator_receives(played: Round) -> None:
    blob = bytearray()
    for msg in played.view:
        if isinstance(msg, KeyAdvertisement):
            blob += msg.cipher_public + msg.mask_public
        elif isinstance(msg, ShareBundle):
            blob += b"".join(s.ciphertext for s in msg.shares)
        elif isinstance(msg, MaskedInput):
            blob += msg.vector.tobytes()
        else:
            for share in [*msg.self_mask.values(), *msg.mask_key.values()]:
                blob += b"".join(y.to_bytes(16, "big") for y in share.ys)
    for state in played.states.values():
        keys = state.shared.keys
        for secret in (keys.cipher.private, keys.mask.private, state.shared.self_seed):
            assert secret not in blob


def test_run_round_reports_exactly_what_the_coordinator_received() -> None:
    inputs = [np.full(8, i, dtype=np.uint32) for i in range(1, 6)]

    outcome = run_round(inputs, threshold=3, dropouts_after_masking={2}, rng=seeded(4))

    kinds = [type(m).__name__ for m in outcome.coordinator_view]
    assert kinds == ["KeyAdvertisement"] * 5 + ["ShareBundle"] * 5 + ["MaskedInput"] * 4 + ["RevealedShares"] * 4
    assert {m.node for m in outcome.coordinator_view if isinstance(m, MaskedInput)} == {1, 3, 4, 5}
    assert np.all(outcome.total == 1 + 3 + 4 + 5)
