"""The frozen values of a SecAgg+ round: its parameters and every message between node and coordinator.

Stages (Bonawitz et al. 2017, Fig. 4; Bell et al. 2020, Fig. 2) and what travels::

    0 advertise keys   node → coordinator   KeyAdvertisement        two X25519 public keys
                       coordinator → node   its neighbours' KeyAdvertisements
    1 share keys       node → coordinator   ShareBundle             one EncryptedShare per neighbour
                       coordinator → node   the EncryptedShares addressed to it
    2 masked input     node → coordinator   MaskedInput             y = x + self mask ± pairwise masks
    3 unmask           coordinator → node   UnmaskRequest           who survived, who dropped
                       node → coordinator   RevealedShares          self-mask shares or mask-key shares

Every node-to-coordinator message is a :data:`CoordinatorMessage`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from medfed.core.errors import ValidationError
from medfed.crypto.secagg_primitives import Share
from medfed.secagg.graph import NeighbourGraph

__all__ = [
    "CoordinatorMessage",
    "EncryptedShare",
    "KeyAdvertisement",
    "MaskedInput",
    "RevealedShares",
    "SecAggParams",
    "ShareBundle",
    "UnmaskRequest",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class SecAggParams:
    """What every party of a round agrees on before it starts.

    Attributes
    ----------
    graph : NeighbourGraph
        The round's nodes and who masks with whom (complete graph = SecAgg, Harary = SecAgg+).
    threshold : int
        Shares needed to rebuild a node's secret. Must exceed half of every node's holders: a
        coordinator that lies about who dropped then cannot gather ``threshold`` shares of both
        kinds for one node (Bonawitz et al. 2017, §4), and at most the number of holders.
    vector_size : int
        Length of every node's ``uint32`` input vector.
    session : bytes
        Binds keys and ciphertexts to one job and round (e.g. ``b"job-id/round-3"``).
    """

    graph: NeighbourGraph
    threshold: int
    vector_size: int
    session: bytes = b""

    def __post_init__(self) -> None:
        problems: list[str] = []
        low, high = self.graph.max_holders // 2 + 1, self.graph.min_holders
        if not low <= self.threshold <= high:
            problems.append(
                f"threshold must be in {low}..{high} (more than half of, and at most, each node's share holders), "
                f"got {self.threshold}"
            )
        if self.vector_size < 0:
            problems.append(f"vector_size must be >= 0, got {self.vector_size}")
        if problems:
            raise ValidationError(problems, where="secagg params")

    def pair_info(self, a: int, b: int, purpose: bytes) -> bytes:
        """HKDF ``info`` for the key of the pair {a, b}: the same for both orders."""
        lo, hi = sorted((a, b))
        return b"medfed-secagg/" + purpose + b"/" + struct.pack(">II", lo, hi) + self.session

    def share_ad(self, sender: int, recipient: int) -> bytes:
        """AES-GCM associated data of the share message from ``sender`` to ``recipient``."""
        return b"medfed-secagg/share/" + struct.pack(">II", sender, recipient) + self.session


@dataclass(frozen=True, slots=True)
class KeyAdvertisement:
    """Stage 0: a node's two public keys: one to encrypt share messages, one for pairwise masks."""

    node: int
    cipher_public: bytes
    mask_public: bytes


@dataclass(frozen=True, slots=True)
class EncryptedShare:
    """Stage 1: the shares of ``sender``'s secrets for ``recipient``, sealed with their pairwise key.

    The coordinator relays it and cannot read it.
    """

    sender: int
    recipient: int
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class ShareBundle:
    """Stage 1: everything one node sends: one :class:`EncryptedShare` per neighbour."""

    sender: int
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True, slots=True)
class MaskedInput:
    """Stage 2: a node's masked vector ``x + PRG(b) + Σ ±PRG(s_ij) mod 2^32`` (read-only)."""

    node: int
    vector: npt.NDArray[np.uint32]

    def __post_init__(self) -> None:
        if self.vector.dtype != np.uint32 or self.vector.ndim != 1:
            raise ValidationError(f"masked vector must be 1-D uint32, got {self.vector.dtype} {self.vector.shape}")
        self.vector.flags.writeable = False


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """Stage 3: the coordinator's claim of who sent a masked input and who dropped after sharing."""

    survivors: frozenset[int]
    dropped: frozenset[int]


@dataclass(frozen=True, slots=True)
class RevealedShares:
    """Stage 3: a node's answer: shares of survivors' self-mask seeds, of dropped nodes' mask keys."""

    node: int
    self_mask: Mapping[int, Share] = field(default_factory=dict)
    mask_key: Mapping[int, Share] = field(default_factory=dict)


#: Everything the coordinator receives from nodes in a round.
CoordinatorMessage = KeyAdvertisement | ShareBundle | MaskedInput | RevealedShares
