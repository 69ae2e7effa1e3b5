"""The coordinator's side of a SecAgg+ round, as pure stages over frozen records.

The coordinator only relays and sums; it never holds a key that opens a share message, and it
learns a node's secret only by gathering ``threshold`` shares of it: the self-mask seed of a node
that sent its masked input, or the private mask key of one that dropped after sharing, never both
(honest nodes refuse, see :func:`medfed.secagg.node.reveal_shares`)::

    roster  = collect_keys(params, advertisements)        # U1
    routing = route_shares(roster, bundles)               # U2; routing.inbox(node) goes to each node
    total   = sum_masked(routing, masked_inputs)          # U3; streams, O(vector) memory
    request = unmask_request(total)                       # sent to every survivor
    result  = unmask(total, revealed_shares)              # Σ x_i over U3, mod 2^32
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from medfed.core.errors import ValidationError
from medfed.crypto.secagg_primitives import (
    KEY_BYTES,
    Share,
    agree,
    prg_words,
    public_key_of,
    shamir_combine,
)
from medfed.secagg.errors import SecAggError
from medfed.secagg.messages import (
    EncryptedShare,
    KeyAdvertisement,
    MaskedInput,
    RevealedShares,
    SecAggParams,
    ShareBundle,
    UnmaskRequest,
)
from medfed.secagg.node import MASK_SEED

__all__ = [
    "KeyRoster",
    "MaskedTotal",
    "ShareRouting",
    "collect_keys",
    "route_shares",
    "sum_masked",
    "unmask",
    "unmask_request",
]


@dataclass(frozen=True, slots=True)
class KeyRoster:
    """Stage 0 result: the advertisements of the nodes that answered (U1)."""

    params: SecAggParams
    adverts: Mapping[int, KeyAdvertisement]

    def view_for(self, node: int) -> tuple[KeyAdvertisement, ...]:
        """The advertisements relayed to ``node``: those of its neighbours in U1."""
        return tuple(self.adverts[j] for j in sorted(self.params.graph.neighbours(node)) if j in self.adverts)


@dataclass(frozen=True, slots=True)
class ShareRouting:
    """Stage 1 result: the nodes that sent their shares (U2) and each one's inbox."""

    roster: KeyRoster
    senders: frozenset[int]
    inboxes: Mapping[int, tuple[EncryptedShare, ...]]

    def inbox(self, node: int) -> tuple[EncryptedShare, ...]:
        """The sealed shares relayed to ``node``."""
        return self.inboxes.get(node, ())


@dataclass(frozen=True, slots=True)
class MaskedTotal:
    """Stage 2 result: the sum of the masked inputs mod 2^32 (read-only) and who sent them (U3)."""

    routing: ShareRouting
    survivors: frozenset[int]
    total: npt.NDArray[np.uint32]


def collect_keys(params: SecAggParams, adverts: Iterable[KeyAdvertisement]) -> KeyRoster:
    """Check the advertisements: known nodes, once each, 32-byte keys, no key used twice."""
    table: dict[int, KeyAdvertisement] = {}
    problems: list[str] = []
    for ad in adverts:
        if ad.node not in params.graph.adjacency or ad.node in table:
            problems.append(f"unexpected or repeated advertisement from node {ad.node}")
        elif len(ad.cipher_public) != KEY_BYTES or len(ad.mask_public) != KEY_BYTES:
            problems.append(f"node {ad.node} advertised malformed keys")
        else:
            table[ad.node] = ad
    keys = [k for ad in table.values() for k in (ad.cipher_public, ad.mask_public)]
    if len(set(keys)) != len(keys):
        problems.append("a public key was advertised twice")  # Bonawitz et al. 2017, Fig. 4, round 1
    if problems:
        raise ValidationError(problems, where="secagg advertisements")
    return KeyRoster(params=params, adverts=dict(sorted(table.items())))


def route_shares(roster: KeyRoster, bundles: Iterable[ShareBundle]) -> ShareRouting:
    """Check each bundle addresses exactly the sender's neighbours in U1, then sort shares into inboxes."""
    graph = roster.params.graph
    accepted: dict[int, ShareBundle] = {}
    problems: list[str] = []
    for bundle in bundles:
        sender = bundle.sender
        if sender not in roster.adverts or sender in accepted:
            problems.append(f"unexpected or repeated share bundle from node {sender}")
            continue
        recipients = [s.recipient for s in bundle.shares]
        expected = graph.neighbours(sender) & roster.adverts.keys()
        if any(s.sender != sender for s in bundle.shares) or sorted(recipients) != sorted(expected):
            problems.append(f"node {sender}'s bundle is not addressed to exactly its neighbours {sorted(expected)}")
            continue
        accepted[sender] = bundle
    if problems:
        raise ValidationError(problems, where="secagg share bundles")
    inboxes: dict[int, list[EncryptedShare]] = defaultdict(list)
    for bundle in accepted.values():
        for share in bundle.shares:
            if share.recipient in accepted:
                inboxes[share.recipient].append(share)
    return ShareRouting(
        roster=roster, senders=frozenset(accepted), inboxes={k: tuple(v) for k, v in sorted(inboxes.items())}
    )


def sum_masked(routing: ShareRouting, inputs: Iterable[MaskedInput]) -> MaskedTotal:
    """Add the masked inputs as they stream in (one accumulator, O(vector) memory)."""
    size = routing.roster.params.vector_size
    total = np.zeros(size, dtype=np.uint32)
    seen: set[int] = set()
    for msg in inputs:
        if msg.node not in routing.senders or msg.node in seen:
            raise ValidationError(f"unexpected or repeated masked input from node {msg.node}", where="secagg")
        if msg.vector.shape != (size,):
            raise ValidationError(f"node {msg.node}'s masked input has shape {msg.vector.shape}, expected ({size},)")
        np.add(total, msg.vector, out=total)
        seen.add(msg.node)
    total.flags.writeable = False
    return MaskedTotal(routing=routing, survivors=frozenset(seen), total=total)


def unmask_request(total: MaskedTotal) -> UnmaskRequest:
    """Who survived (sent a masked input) and who dropped after sharing; aborts below the threshold."""
    params, survivors = total.routing.roster.params, total.survivors
    if len(survivors) < params.threshold:
        raise SecAggError(
            f"only {len(survivors)} nodes sent masked inputs, fewer than the threshold {params.threshold}: "
            "the round cannot be unmasked"
        )
    # SecAgg+: each secret needs `threshold` surviving holders among its owner's neighbourhood.
    short = [j for j in sorted(total.routing.senders) if len(params.graph.holders(j) & survivors) < params.threshold]
    if short:
        raise SecAggError(
            f"nodes {short} have fewer than the threshold {params.threshold} of their share holders among the "
            f"{len(survivors)} survivors: the round cannot be unmasked"
        )
    return UnmaskRequest(survivors=survivors, dropped=total.routing.senders - survivors)


def unmask(total: MaskedTotal, revealed: Iterable[RevealedShares]) -> npt.NDArray[np.uint32]:
    """Rebuild the secrets from the revealed shares and remove every mask: Σ x_i over survivors mod 2^32.

    Raises :class:`~medfed.secagg.errors.SecAggError` naming every node whose secret cannot be
    rebuilt (too few shares, inconsistent shares, or a key that does not match its advertisement).
    """
    request = unmask_request(total)
    params, adverts = total.routing.roster.params, total.routing.roster.adverts
    seeds, keys = _gather(params, request, revealed)
    problems: list[str] = []
    out = total.total.copy()
    for node in sorted(request.survivors):
        seed = _rebuild(seeds[node], params.threshold, f"self-mask seed of node {node}", problems)
        if seed is not None:
            np.subtract(out, prg_words(seed, params.vector_size), out=out)
    for node in sorted(request.dropped):
        key = _rebuild(keys[node], params.threshold, f"mask key of dropped node {node}", problems)
        if key is None:
            continue
        if public_key_of(key) != adverts[node].mask_public:
            problems.append(f"the rebuilt mask key of dropped node {node} does not match its advertisement")
            continue
        for peer in sorted(params.graph.neighbours(node) & request.survivors):
            seed = agree(key, adverts[peer].mask_public, info=params.pair_info(node, peer, MASK_SEED))
            # The survivor added the mask if its id is smaller, else subtracted it: undo that.
            op = np.subtract if peer < node else np.add
            op(out, prg_words(seed, params.vector_size), out=out)
    if problems:
        raise SecAggError("cannot unmask the round: " + "; ".join(problems))
    out.flags.writeable = False
    return out


def _gather(
    params: SecAggParams, request: UnmaskRequest, revealed: Iterable[RevealedShares]
) -> tuple[dict[int, list[Share]], dict[int, list[Share]]]:
    """Sort revealed shares by owner, accepting only a survivor's shares at its own point."""
    seeds: dict[int, list[Share]] = defaultdict(list)
    keys: dict[int, list[Share]] = defaultdict(list)
    seen: set[int] = set()
    problems: list[str] = []
    for msg in revealed:
        r = msg.node
        if r not in request.survivors or r in seen:
            problems.append(f"unexpected or repeated revealed shares from node {r}")
            continue
        seen.add(r)
        for owners, wanted, into in ((msg.self_mask, request.survivors, seeds), (msg.mask_key, request.dropped, keys)):
            for owner, share in owners.items():
                if owner not in wanted or r not in params.graph.holders(owner) or share.x != r:
                    problems.append(f"node {r} revealed a share of node {owner} it cannot hold")
                else:
                    into[owner].append(share)
    if problems:
        raise SecAggError("; ".join(problems))
    return seeds, keys


def _rebuild(shares: list[Share], threshold: int, what: str, problems: list[str]) -> bytes | None:
    if len(shares) < threshold:
        problems.append(f"{what}: {len(shares)} shares, threshold {threshold}")
        return None
    try:
        secret = shamir_combine(shares, threshold=threshold)
    except ValidationError as exc:
        problems.append(f"{what}: {exc}")
        return None
    if len(secret) != KEY_BYTES:
        problems.append(f"{what}: rebuilt {len(secret)} bytes, expected {KEY_BYTES}")
        return None
    return secret
