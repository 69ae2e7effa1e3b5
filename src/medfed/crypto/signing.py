"""Ed25519 signatures: signed models with provenance, and signed bytes for audit checkpoints.

A model's digest is SHA-256 over a domain tag and, for every parameter in order, its name,
dtype, shape and raw little-endian bytes, each length-prefixed -- so two different models can
never produce the same byte stream (no ambiguity between names and data). The signature covers
the canonical JSON (RFC 8785 style: sorted keys, no spaces, UTF-8) of that digest and the model's
:class:`Provenance` (job hash, rounds, sites, privacy spent per site).

Keys travel as PEM (PKCS#8 private, SubjectPublicKeyInfo public). Every verification failure is
one opaque :class:`~medfed.core.errors.StoreError`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medfed.core.errors import StoreError, ValidationError
from medfed.core.params import Parameters

__all__ = [
    "BAD_SIGNATURE",
    "ModelSignature",
    "PrivacySpent",
    "Provenance",
    "SigningKey",
    "canonical_json",
    "generate_signing_key",
    "key_fingerprint",
    "model_digest",
    "sign_bytes",
    "sign_model",
    "verify_bytes",
    "verify_model",
]

BAD_SIGNATURE = "signature check failed: unsigned, altered, or signed by another key"
_DOMAIN = b"medfed-model-v1\x00"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no whitespace, UTF-8, no NaN/inf."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"not canonical JSON: {exc}", where="canonical_json") from None


# --- keys and raw signatures ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningKey:
    """An Ed25519 key pair as PEM bytes (the private half is kept out of ``repr``)."""

    private_pem: bytes = field(repr=False)
    public_pem: bytes


def generate_signing_key() -> SigningKey:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return SigningKey(private_pem=private, public_pem=public)


def _private(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"unreadable private key: {exc}", where="signing key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValidationError(f"expected an Ed25519 key, got {type(key).__name__}", where="signing key")
    return key


def _public(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"unreadable public key: {exc}", where="verify key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValidationError(f"expected an Ed25519 key, got {type(key).__name__}", where="verify key")
    return key


def key_fingerprint(public_pem: bytes) -> str:
    """SHA-256 (hex) of the raw 32-byte public key: names a key in signatures and logs."""
    raw = _public(public_pem).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def sign_bytes(private_pem: bytes, message: bytes) -> bytes:
    """An Ed25519 signature (64 bytes) over ``message``."""
    return _private(private_pem).sign(message)


def verify_bytes(public_pem: bytes, message: bytes, signature: bytes) -> None:
    """Raise :class:`StoreError` (:data:`BAD_SIGNATURE`) unless ``signature`` is valid."""
    try:
        _public(public_pem).verify(signature, message)
    except InvalidSignature:
        raise StoreError(BAD_SIGNATURE) from None


# --- models --------------------------------------------------------------------------------


def model_digest(params: Parameters) -> str:
    """SHA-256 (hex) over names, dtypes, shapes and little-endian bytes of every parameter."""
    h = hashlib.sha256(_DOMAIN)
    h.update(struct.pack("<Q", len(params)))
    for name, arr in params:
        for part in (name.encode(), arr.dtype.name.encode()):
            h.update(struct.pack("<Q", len(part)) + part)
        h.update(struct.pack("<Q", arr.ndim) + struct.pack(f"<{arr.ndim}Q", *arr.shape))
        little = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        h.update(struct.pack("<Q", little.nbytes))
        h.update(little.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacySpent:
    """The (ε, δ) a site spent on the job."""

    epsilon: float
    delta: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Provenance:
    """Where a model came from: the job spec's hash, rounds run, sites, privacy spent per site."""

    job_id: str
    job_hash: str
    rounds: int
    sites: tuple[str, ...]
    privacy_spent: Mapping[str, PrivacySpent] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not _HEX64.match(self.job_hash):
            problems.append(f"job_hash must be 64 lowercase hex digits, got {self.job_hash!r}")
        if self.rounds < 0:
            problems.append(f"rounds must be >= 0, got {self.rounds}")
        if unknown := sorted(set(self.privacy_spent) - set(self.sites)):
            problems.append(f"privacy spent by sites not in the job: {unknown}")
        for site, spent in self.privacy_spent.items():
            if not (math.isfinite(spent.epsilon) and spent.epsilon >= 0 and 0 <= spent.delta < 1):
                problems.append(f"site {site!r}: privacy spent ε={spent.epsilon}, δ={spent.delta} is not valid")
        if problems:
            raise ValidationError(problems, where="provenance")

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "job_hash": self.job_hash,
            "rounds": self.rounds,
            "sites": sorted(self.sites),
            "privacy_spent": {s: {"epsilon": p.epsilon, "delta": p.delta} for s, p in self.privacy_spent.items()},
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Provenance:
        try:
            spent = {
                s: PrivacySpent(epsilon=float(p["epsilon"]), delta=float(p["delta"]))
                for s, p in dict(obj.get("privacy_spent", {})).items()
            }
            return cls(
                job_id=str(obj["job_id"]),
                job_hash=str(obj["job_hash"]),
                rounds=int(obj["rounds"]),
                sites=tuple(str(s) for s in obj["sites"]),
                privacy_spent=spent,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValidationError(f"malformed provenance: {exc!r}", where="provenance") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSignature:
    """What ships next to a model: its digest, its provenance, the signer's key fingerprint and
    the Ed25519 signature over the canonical JSON of the first three."""

    model_sha256: str
    provenance: Provenance
    signer: str
    signature: bytes

    def signed_message(self) -> bytes:
        return _message(self.model_sha256, self.provenance, self.signer)

    def to_json_bytes(self) -> bytes:
        body = {
            "format": "medfed-model-signature-v1",
            "model_sha256": self.model_sha256,
            "provenance": self.provenance.to_json(),
            "signer": self.signer,
            "signature": base64.b64encode(self.signature).decode(),
        }
        return canonical_json(body)

    @classmethod
    def from_json_bytes(cls, data: bytes) -> ModelSignature:
        try:
            obj = json.loads(data)
            if obj.get("format") != "medfed-model-signature-v1":
                raise ValueError(f"unknown format {obj.get('format')!r}")
            return cls(
                model_sha256=str(obj["model_sha256"]),
                provenance=Provenance.from_json(obj["provenance"]),
                signer=str(obj["signer"]),
                signature=base64.b64decode(obj["signature"], validate=True),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValidationError(f"malformed model signature: {exc}", where="model signature") from None


def _message(model_sha256: str, provenance: Provenance, signer: str) -> bytes:
    return canonical_json(
        {
            "domain": "medfed-model-v1",
            "model_sha256": model_sha256,
            "provenance": provenance.to_json(),
            "signer": signer,
        }
    )


def sign_model(params: Parameters, provenance: Provenance, key: SigningKey) -> ModelSignature:
    """Sign a model and its provenance with the coordinator's Ed25519 key."""
    digest, signer = model_digest(params), key_fingerprint(key.public_pem)
    sig = sign_bytes(key.private_pem, _message(digest, provenance, signer))
    return ModelSignature(model_sha256=digest, provenance=provenance, signer=signer, signature=sig)


def verify_model(params: Parameters, signature: ModelSignature | None, public_pem: bytes) -> Provenance:
    """The model's provenance if ``signature`` is a valid signature of ``params`` by ``public_pem``.

    Raises
    ------
    StoreError
        Unsigned (``None``), altered model or provenance, or another signer: one opaque message.
    """
    if signature is None or signature.signer != key_fingerprint(public_pem):
        raise StoreError(BAD_SIGNATURE)
    if model_digest(params) != signature.model_sha256:
        raise StoreError(BAD_SIGNATURE)
    verify_bytes(public_pem, signature.signed_message(), signature.signature)
    return signature.provenance
