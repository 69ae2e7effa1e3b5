"""The secure-aggregation stage messages as schema-checked JSON payloads (no pickle).

What the coordinator sends a node in a stage task and what the node answers travels in the
``payload`` bytes of the task and result messages; the masked vector itself travels as a
``uint32`` tensor. Every decoder checks types and names every problem; bytes are base64.

Coordinator → node::

    {"stage": "keys",   "session": b64, "node": i, "threshold": t, "vector_size": L, "graph": {"1": [2, 3], ...}}
    {"stage": "shares", "session": b64, "node": i, "peers": [advert, ...]}
    {"stage": "mask",   "session": b64, "node": i, "inbox": [share, ...], "quantization": {...}, "contribution": {...}}
    {"stage": "unmask", "session": b64, "node": i, "survivors": [...], "dropped": [...]}

Node → coordinator: an advert (keys), a bundle (shares), ``{"node": i}`` (mask), revealed shares (unmask).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medfed.core.errors import ValidationError
from medfed.crypto.secagg_primitives import Share
from medfed.secagg.graph import NeighbourGraph
from medfed.secagg.messages import (
    EncryptedShare,
    KeyAdvertisement,
    RevealedShares,
    SecAggParams,
    ShareBundle,
    UnmaskRequest,
)
from medfed.secagg.quantize import QuantizationConfig, Rounding

__all__ = [
    "CLIENT_DP_PREFIX",
    "CONTRIBUTION_FORM",
    "CONTRIBUTION_MAX_WEIGHT",
    "MASKED_NAME",
    "WEIGHT_NAME",
    "ContributionForm",
    "MaskStage",
    "Stage",
    "StageHeader",
    "decode_advert",
    "decode_bundle",
    "decode_mask_stage",
    "decode_params",
    "decode_peers",
    "decode_revealed",
    "decode_stage",
    "decode_unmask",
    "encode_advert",
    "encode_bundle",
    "encode_keys_stage",
    "encode_mask_stage",
    "encode_revealed",
    "encode_shares_stage",
    "encode_unmask_stage",
]


#: Task-config keys the coordinator sets for the contribution path (the node strips them before the task).
CONTRIBUTION_FORM = "contribution.form"
CONTRIBUTION_MAX_WEIGHT = "contribution.max_weight"
#: Prefix of the client-level DP keys in a task config (``client_`` + DPAggregator.node_config keys).
CLIENT_DP_PREFIX = "client_"
#: Name of the 0-d weight tensor that ends a weighted contribution.
WEIGHT_NAME = "secagg/weight"
#: Name of the masked vector a node sends in place of its model.
MASKED_NAME = "secagg/masked"


class Stage(enum.StrEnum):
    KEYS = "keys"
    SHARES = "shares"
    MASK = "mask"
    UNMASK = "unmask"


class ContributionForm(enum.StrEnum):
    """What a node sums: its example-weighted model delta, or a DP-FedAvg contribution."""

    WEIGHTED = "weighted"
    DP = "dp"


@dataclass(frozen=True, slots=True, kw_only=True)
class StageHeader:
    """The fields every coordinator → node stage message carries."""

    stage: Stage
    session: bytes
    node: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MaskStage:
    """Stage 2's instructions: the shares addressed to the node and how to quantise."""

    header: StageHeader
    inbox: tuple[EncryptedShare, ...]
    quantization: QuantizationConfig
    form: ContributionForm
    max_weight: int


# --- low-level checked access ---------------------------------------------------------------


class _Reader:
    def __init__(self, payload: bytes, where: str) -> None:
        self.where = where
        self.problems: list[str] = []
        try:
            doc = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValidationError(f"not a JSON stage message: {exc}", where=where) from None
        if not isinstance(doc, dict):
            raise ValidationError("a stage message must be a JSON object", where=where)
        self.doc: dict[str, Any] = doc

    def int(self, obj: Mapping[str, Any], key: str, *, lo: int = 0) -> int:
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            self.problems.append(f"{key} must be an integer >= {lo}, got {value!r}")
            return lo
        return value

    def num(self, obj: Mapping[str, Any], key: str) -> float:
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problems.append(f"{key} must be a number, got {value!r}")
            return 1.0
        return float(value)

    def bytes(self, obj: Mapping[str, Any], key: str) -> bytes:
        value = obj.get(key)
        if not isinstance(value, str):
            self.problems.append(f"{key} must be base64 text, got {type(value).__name__}")
            return b""
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            self.problems.append(f"{key} is not valid base64")
            return b""

    def list(self, obj: Mapping[str, Any], key: str) -> list[Any]:
        value = obj.get(key)
        if not isinstance(value, list):
            self.problems.append(f"{key} must be a list, got {type(value).__name__}")
            return []
        return value

    def obj(self, value: Any, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.problems.append(f"{what} must be an object, got {type(value).__name__}")
            return {}
        return value

    def done(self) -> None:
        if self.problems:
            raise ValidationError(self.problems, where=self.where)


def _decimal(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also admits e.g. "²", which ``int`` refuses), short enough
    for ``int`` (Python refuses more than 4,300 digits)."""
    return text.isascii() and text.isdigit() and len(text) <= 4000


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _dump(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _header(stage: Stage, session: bytes, node: int) -> dict[str, Any]:
    return {"stage": stage.value, "session": _b64(session), "node": node}


def decode_stage(payload: bytes, *, where: str = "secagg stage") -> StageHeader:
    """The stage, session and node of a coordinator → node stage message."""
    r = _Reader(payload, where)
    try:
        stage = Stage(str(r.doc.get("stage")))
    except ValueError:
        raise ValidationError(
            f"unknown stage {r.doc.get('stage')!r}, allowed {[s.value for s in Stage]}", where=where
        ) from None
    header = StageHeader(stage=stage, session=r.bytes(r.doc, "session"), node=r.int(r.doc, "node", lo=1))
    r.done()
    return header


# --- stage 0: keys ----------------------------------------------------------------------------


def encode_keys_stage(params: SecAggParams, node: int) -> bytes:
    graph = {str(n): sorted(params.graph.neighbours(n)) for n in params.graph.nodes}
    doc = _header(Stage.KEYS, params.session, node) | {
        "threshold": params.threshold,
        "vector_size": params.vector_size,
        "graph": graph,
    }
    return _dump(doc)


def decode_params(payload: bytes, *, where: str = "secagg keys stage") -> SecAggParams:
    """The round's :class:`SecAggParams` from a keys-stage message."""
    header = decode_stage(payload, where=where)
    r = _Reader(payload, where)
    graph_doc = r.obj(r.doc.get("graph"), "graph")
    adjacency: dict[int, frozenset[int]] = {}
    for key, peers in graph_doc.items():
        if not _decimal(key) or not isinstance(peers, list) or not all(type(p) is int for p in peers):
            r.problems.append(f"graph entry {key!r} must map a node id to a list of node ids")
            continue
        adjacency[int(key)] = frozenset(peers)
    threshold = r.int(r.doc, "threshold", lo=1)
    size = r.int(r.doc, "vector_size")
    r.done()
    if header.stage is not Stage.KEYS:
        raise ValidationError(f"expected a keys stage, got {header.stage.value!r}", where=where)
    return SecAggParams(graph=NeighbourGraph(adjacency), threshold=threshold, vector_size=size, session=header.session)


def encode_advert(ad: KeyAdvertisement) -> bytes:
    return _dump({"node": ad.node, "cipher_public": _b64(ad.cipher_public), "mask_public": _b64(ad.mask_public)})


def _advert(r: _Reader, doc: Any) -> KeyAdvertisement:
    obj = r.obj(doc, "key advertisement")
    return KeyAdvertisement(
        node=r.int(obj, "node", lo=1),
        cipher_public=r.bytes(obj, "cipher_public"),
        mask_public=r.bytes(obj, "mask_public"),
    )


def decode_advert(payload: bytes, *, where: str = "key advertisement") -> KeyAdvertisement:
    r = _Reader(payload, where)
    ad = _advert(r, r.doc)
    r.done()
    return ad


# --- stage 1: shares ----------------------------------------------------------------------------


def encode_shares_stage(session: bytes, node: int, peers: tuple[KeyAdvertisement, ...]) -> bytes:
    doc = _header(Stage.SHARES, session, node) | {"peers": [json.loads(encode_advert(ad)) for ad in peers]}
    return _dump(doc)


def decode_peers(payload: bytes, *, where: str = "secagg shares stage") -> tuple[KeyAdvertisement, ...]:
    r = _Reader(payload, where)
    peers = tuple(_advert(r, d) for d in r.list(r.doc, "peers"))
    r.done()
    return peers


def _enc_share(share: EncryptedShare) -> dict[str, Any]:
    return {"sender": share.sender, "recipient": share.recipient, "ciphertext": _b64(share.ciphertext)}


def _dec_share(r: _Reader, doc: Any) -> EncryptedShare:
    obj = r.obj(doc, "encrypted share")
    return EncryptedShare(
        sender=r.int(obj, "sender", lo=1),
        recipient=r.int(obj, "recipient", lo=1),
        ciphertext=r.bytes(obj, "ciphertext"),
    )


def encode_bundle(bundle: ShareBundle) -> bytes:
    return _dump({"sender": bundle.sender, "shares": [_enc_share(s) for s in bundle.shares]})


def decode_bundle(payload: bytes, *, where: str = "share bundle") -> ShareBundle:
    r = _Reader(payload, where)
    bundle = ShareBundle(
        sender=r.int(r.doc, "sender", lo=1), shares=tuple(_dec_share(r, s) for s in r.list(r.doc, "shares"))
    )
    r.done()
    return bundle


# --- stage 2: mask --------------------------------------------------------------------------------


def encode_mask_stage(stage: MaskStage) -> bytes:
    q = stage.quantization
    doc = _header(Stage.MASK, stage.header.session, stage.header.node) | {
        "inbox": [_enc_share(s) for s in stage.inbox],
        "quantization": {"clip": q.clip, "max_summands": q.max_summands, "bits": q.bits},
        "contribution": {"form": stage.form.value, "max_weight": stage.max_weight},
    }
    return _dump(doc)


def decode_mask_stage(payload: bytes, *, where: str = "secagg mask stage") -> MaskStage:
    header = decode_stage(payload, where=where)
    r = _Reader(payload, where)
    inbox = tuple(_dec_share(r, s) for s in r.list(r.doc, "inbox"))
    q = r.obj(r.doc.get("quantization"), "quantization")
    c = r.obj(r.doc.get("contribution"), "contribution")
    clip, summands, bits = r.num(q, "clip"), r.int(q, "max_summands", lo=1), r.int(q, "bits", lo=2)
    max_weight = r.int(c, "max_weight", lo=1)
    try:
        form = ContributionForm(str(c.get("form")))
    except ValueError:
        r.problems.append(f"contribution.form must be one of {[f.value for f in ContributionForm]}")
        form = ContributionForm.WEIGHTED
    r.done()
    if header.stage is not Stage.MASK:
        raise ValidationError(f"expected a mask stage, got {header.stage.value!r}", where=where)
    config = QuantizationConfig(clip=clip, max_summands=summands, bits=bits, rounding=Rounding.STOCHASTIC)
    return MaskStage(header=header, inbox=inbox, quantization=config, form=form, max_weight=max_weight)


# --- stage 3: unmask --------------------------------------------------------------------------------


def encode_unmask_stage(session: bytes, node: int, request: UnmaskRequest) -> bytes:
    doc = _header(Stage.UNMASK, session, node) | {
        "survivors": sorted(request.survivors),
        "dropped": sorted(request.dropped),
    }
    return _dump(doc)


def _ids(r: _Reader, key: str) -> frozenset[int]:
    values = r.list(r.doc, key)
    if not all(type(v) is int and v >= 1 for v in values):
        r.problems.append(f"{key} must be a list of node ids")
        return frozenset()
    return frozenset(values)


def decode_unmask(payload: bytes, *, where: str = "secagg unmask stage") -> UnmaskRequest:
    r = _Reader(payload, where)
    request = UnmaskRequest(survivors=_ids(r, "survivors"), dropped=_ids(r, "dropped"))
    r.done()
    return request


def _enc_shamir(share: Share) -> dict[str, Any]:
    return {"x": share.x, "ys": [str(y) for y in share.ys], "length": share.length}


def _dec_shamir(r: _Reader, doc: Any) -> Share:
    obj = r.obj(doc, "share")
    ys_raw = r.list(obj, "ys")
    if not all(isinstance(y, str) and _decimal(y) for y in ys_raw):
        r.problems.append("share ys must be decimal strings")
        ys_raw = []
    return Share(x=r.int(obj, "x", lo=1), ys=tuple(int(y) for y in ys_raw), length=r.int(obj, "length"))


def encode_revealed(revealed: RevealedShares) -> bytes:
    doc = {
        "node": revealed.node,
        "self_mask": {str(k): _enc_shamir(v) for k, v in sorted(revealed.self_mask.items())},
        "mask_key": {str(k): _enc_shamir(v) for k, v in sorted(revealed.mask_key.items())},
    }
    return _dump(doc)


def decode_revealed(payload: bytes, *, where: str = "revealed shares") -> RevealedShares:
    r = _Reader(payload, where)
    tables: list[dict[int, Share]] = []
    for key in ("self_mask", "mask_key"):
        table: dict[int, Share] = {}
        for owner, share in r.obj(r.doc.get(key), key).items():
            if not _decimal(owner):
                r.problems.append(f"{key} owner {owner!r} is not a node id")
                continue
            table[int(owner)] = _dec_shamir(r, share)
        tables.append(table)
    revealed = RevealedShares(node=r.int(r.doc, "node", lo=1), self_mask=tables[0], mask_key=tables[1])
    r.done()
    return revealed
