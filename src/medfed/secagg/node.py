"""The node's side of a SecAgg+ round, as pure stages: state and message in, new state and reply out.

A node keeps the state each stage returns and passes it to the next; a state is never reused
after its successor exists (the runtime persists the newest one). Keys and seeds are fresh per
round and drawn from the injected ``rng``. The node follows Bonawitz et al. 2017 (Fig. 4) with
the SecAgg+ neighbourhoods of Bell et al. 2020: two X25519 key pairs per round, one to encrypt
share messages (never revealed) and one whose pairwise agreements seed the masks (its private key
is Shamir-shared, so the coordinator can remove the masks of a node that drops after sharing).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from medfed.core.errors import ValidationError
from medfed.crypto.secagg_primitives import (
    KEY_BYTES,
    KeyPair,
    RandomBytes,
    Share,
    agree,
    decode_share,
    encode_share,
    generate_keypair,
    open_sealed,
    prg_words,
    seal,
    shamir_split,
    system_random,
)
from medfed.secagg.errors import SecAggError, UnmaskRefused
from medfed.secagg.messages import (
    EncryptedShare,
    KeyAdvertisement,
    MaskedInput,
    RevealedShares,
    SecAggParams,
    ShareBundle,
    UnmaskRequest,
)

__all__ = [
    "NodeKeys",
    "NodeMasked",
    "NodeShared",
    "ShareKind",
    "advertise",
    "mask_input",
    "reveal_shares",
    "share_keys",
]

#: HKDF purposes: the key that seals share messages, and the seed of a pairwise mask.
SHARE_KEY = b"share-key"
MASK_SEED = b"mask"


class ShareKind(enum.StrEnum):
    """Which secret of a node a share rebuilds."""

    SELF_MASK = "self-mask"  # the seed b_i: revealed when node i survived
    MASK_KEY = "mask-key"  # the private mask key: revealed when node i dropped after sharing


@dataclass(frozen=True, slots=True)
class NodeKeys:
    """Stage 0 state: the node's id, the round parameters and its two fresh key pairs."""

    params: SecAggParams
    node: int
    cipher: KeyPair
    mask: KeyPair


@dataclass(frozen=True, slots=True)
class NodeShared:
    """Stage 1 state: the neighbours' keys, the self-mask seed and the node's own shares."""

    keys: NodeKeys
    peers: Mapping[int, KeyAdvertisement]
    self_seed: bytes = field(repr=False)
    own_shares: tuple[Share, Share] = field(repr=False)


@dataclass(frozen=True, slots=True)
class NodeMasked:
    """Stage 2/3 state: shares held for each node (self-mask, mask-key), mask peers, what was revealed."""

    shared: NodeShared
    held: Mapping[int, tuple[Share, Share]] = field(repr=False)
    mask_peers: frozenset[int]
    revealed: Mapping[int, ShareKind] = field(default_factory=dict)


def advertise(
    params: SecAggParams, node: int, *, rng: RandomBytes = system_random
) -> tuple[NodeKeys, KeyAdvertisement]:
    """Stage 0: draw two key pairs and advertise their public halves."""
    if node not in params.graph.adjacency:
        raise ValidationError(f"node {node} is not in the round's graph {list(params.graph.nodes)}")
    keys = NodeKeys(params=params, node=node, cipher=generate_keypair(rng), mask=generate_keypair(rng))
    return keys, KeyAdvertisement(node=node, cipher_public=keys.cipher.public, mask_public=keys.mask.public)


def share_keys(
    keys: NodeKeys, peers: Iterable[KeyAdvertisement], *, rng: RandomBytes = system_random
) -> tuple[NodeShared, ShareBundle]:
    """Stage 1: Shamir-share the self-mask seed and the private mask key among the holders.

    ``peers`` are the advertisements of the node's neighbours that the coordinator relays. Each
    neighbour's pair of shares is sealed with the key agreed from the cipher key pairs.
    """
    params, me = keys.params, keys.node
    expected = params.graph.neighbours(me)
    table: dict[int, KeyAdvertisement] = {}
    for ad in peers:
        if ad.node not in expected or ad.node in table:
            raise SecAggError(f"node {me}: unexpected or repeated key advertisement from node {ad.node}")
        if len(ad.cipher_public) != KEY_BYTES or len(ad.mask_public) != KEY_BYTES:
            raise SecAggError(f"node {me}: malformed public keys from node {ad.node}")
        table[ad.node] = ad
    xs = sorted({me, *table})
    _need(len(xs), params.threshold, f"node {me}: {len(xs)} share holders (itself included) advertised keys")
    seed = rng(KEY_BYTES)
    seed_shares = shamir_split(seed, xs=xs, threshold=params.threshold, rng=rng)
    key_shares = shamir_split(keys.mask.private, xs=xs, threshold=params.threshold, rng=rng)
    sealed, own = [], (seed_shares[0], key_shares[0])
    for x, s_share, k_share in zip(xs, seed_shares, key_shares, strict=True):
        if x == me:
            own = (s_share, k_share)
            continue
        key = agree(keys.cipher.private, table[x].cipher_public, info=params.pair_info(me, x, SHARE_KEY))
        blob = seal(key, encode_share(s_share) + encode_share(k_share), associated_data=params.share_ad(me, x), rng=rng)
        sealed.append(EncryptedShare(sender=me, recipient=x, ciphertext=blob))
    state = NodeShared(keys=keys, peers=table, self_seed=seed, own_shares=own)
    return state, ShareBundle(sender=me, shares=tuple(sealed))


def mask_input(
    shared: NodeShared, inbox: Iterable[EncryptedShare], vector: npt.ArrayLike
) -> tuple[NodeMasked, MaskedInput]:
    """Stage 2: open the shares relayed to this node, then mask ``vector`` (uint32, mod 2^32).

    The node masks with exactly the neighbours whose shares reached it: the coordinator relays
    to every node of the sharing set, so both ends of a pair agree (Bonawitz et al. 2017, §4).
    Raises :class:`~medfed.crypto.secagg_primitives.DecryptionError` for a forged share message.
    """
    keys = shared.keys
    params, me = keys.params, keys.node
    x = np.asarray(vector)
    if x.dtype != np.uint32 or x.shape != (params.vector_size,):
        raise ValidationError(
            f"node {me}: input must be uint32 of shape ({params.vector_size},), got {x.dtype} {x.shape}"
        )
    held: dict[int, tuple[Share, Share]] = {me: shared.own_shares}
    for msg in inbox:
        sender = msg.sender
        if msg.recipient != me or sender not in shared.peers or sender in held:
            raise SecAggError(f"node {me}: unexpected or repeated share message from node {sender}")
        key = agree(
            keys.cipher.private, shared.peers[sender].cipher_public, info=params.pair_info(me, sender, SHARE_KEY)
        )
        plain = open_sealed(key, msg.ciphertext, associated_data=params.share_ad(sender, me))
        half = len(plain) // 2
        pair = (decode_share(plain[:half]), decode_share(plain[half:]))
        if any(s.x != me for s in pair):
            raise SecAggError(f"node {me}: share from node {sender} is not at this node's point")
        held[sender] = pair
    _need(len(held), params.threshold, f"node {me}: {len(held)} share holders (itself included) completed sharing")
    peers = frozenset(held) - {me}
    y = x.astype(np.uint32, copy=True)
    np.add(y, prg_words(shared.self_seed, params.vector_size), out=y)
    for peer in sorted(peers):
        seed = agree(keys.mask.private, shared.peers[peer].mask_public, info=params.pair_info(me, peer, MASK_SEED))
        # The smaller id adds the pairwise mask and the larger subtracts it, so each pair cancels.
        op = np.add if me < peer else np.subtract
        op(y, prg_words(seed, params.vector_size), out=y)
    return NodeMasked(shared=shared, held=held, mask_peers=peers), MaskedInput(node=me, vector=y)


def reveal_shares(state: NodeMasked, request: UnmaskRequest) -> tuple[NodeMasked, RevealedShares]:
    """Stage 3: reveal self-mask shares of survivors and mask-key shares of dropped nodes.

    Refuses (:class:`~medfed.secagg.errors.UnmaskRefused`) any request that would give the
    coordinator both kinds of share of one node, now or together with an earlier request, that
    calls this node dropped, or that leaves fewer than ``threshold`` of its holders surviving.
    """
    me, params = state.shared.keys.node, state.shared.keys.params
    problems: list[str] = []
    both = request.survivors & request.dropped
    if both:
        problems.append(f"nodes {sorted(both)} are claimed both survived and dropped")
    if me not in request.survivors:
        problems.append(f"node {me} sent its masked input but is not listed as a survivor")
    alive = len(({me} | state.mask_peers) & request.survivors)
    if alive < params.threshold:
        problems.append(f"only {alive} of this node's holders survived, threshold is {params.threshold}")
    wanted = {j: ShareKind.SELF_MASK for j in request.survivors & state.held.keys()}
    wanted |= {j: ShareKind.MASK_KEY for j in request.dropped & state.held.keys() if j not in wanted}
    conflicts = sorted(j for j, kind in wanted.items() if state.revealed.get(j, kind) is not kind)
    if conflicts:
        problems.append(f"the other kind of share was already revealed for nodes {conflicts}")
    if problems:
        raise UnmaskRefused(f"node {me} refuses to unmask: " + "; ".join(problems))
    reply = RevealedShares(
        node=me,
        self_mask={j: state.held[j][0] for j, k in wanted.items() if k is ShareKind.SELF_MASK},
        mask_key={j: state.held[j][1] for j, k in wanted.items() if k is ShareKind.MASK_KEY},
    )
    new_state = NodeMasked(
        shared=state.shared, held=state.held, mask_peers=state.mask_peers, revealed={**state.revealed, **wanted}
    )
    return new_state, reply


def _need(have: int, threshold: int, what: str) -> None:
    if have < threshold:
        raise SecAggError(f"{what}, fewer than the threshold {threshold}: the round cannot be unmasked")
