"""Ed25519 model signatures: digest canonical over names, dtypes, shapes and bytes; tamper tests."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medfed.core.errors import StoreError, ValidationError
from medfed.core.params import Parameters
from medfed.crypto.signing import (
    BAD_SIGNATURE,
    ModelSignature,
    PrivacySpent,
    Provenance,
    SigningKey,
    canonical_json,
    generate_signing_key,
    model_digest,
    sign_bytes,
    sign_model,
    verify_bytes,
    verify_model,
)

JOB_HASH = "ab" * 32
_KEY = generate_signing_key()  # module-level: Hypothesis tests cannot take function fixtures


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return generate_signing_key()


def _model() -> Parameters:
    rng = np.random.default_rng(0)
    return Parameters.from_numpy({"w": rng.normal(size=(13, 1)), "b": np.zeros(1)}, dtype="float32")


def _provenance() -> Provenance:
    return Provenance(
        job_id="3f2a9c",
        job_hash=JOB_HASH,
        rounds=15,
        sites=("alpha", "beta"),
        privacy_spent={"alpha": PrivacySpent(epsilon=1.2, delta=1e-5)},
    )


def test_sign_and_verify_round_trip_through_json(key: SigningKey) -> None:
    sig = sign_model(_model(), _provenance(), key)
    shipped = ModelSignature.from_json_bytes(sig.to_json_bytes())

    provenance = verify_model(_model(), shipped, key.public_pem)

    assert provenance.rounds == 15 and provenance.job_hash == JOB_HASH
    assert provenance.privacy_spent["alpha"].epsilon == 1.2


def test_unsigned_model_is_refused(key: SigningKey) -> None:
    with pytest.raises(StoreError, match="signature check failed"):
        verify_model(_model(), None, key.public_pem)


def test_altered_weights_are_refused(key: SigningKey) -> None:
    sig = sign_model(_model(), _provenance(), key)
    w = _model()["w"].copy()
    w[3, 0] = np.nextafter(w[3, 0], np.float32(np.inf))  # one ulp
    altered = Parameters.from_numpy({"w": w, "b": np.zeros(1, dtype="float32")})

    with pytest.raises(StoreError) as err:
        verify_model(altered, sig, key.public_pem)
    assert str(err.value) == BAD_SIGNATURE


@pytest.mark.parametrize(
    "change",
    [
        lambda m: Parameters.from_numpy({"b": m["b"], "w": m["w"]}),  # order
        lambda m: Parameters.from_numpy({"w2": m["w"], "b": m["b"]}),  # name
        lambda m: Parameters.from_numpy({"w": m["w"].reshape(1, 13), "b": m["b"]}),  # shape
        lambda m: Parameters.from_numpy({"w": m["w"].astype("float64"), "b": m["b"]}),  # dtype
    ],
    ids=["order", "name", "shape", "dtype"],
)
def test_digest_covers_structure(change: object) -> None:
    model = _model()
    assert model_digest(change(model)) != model_digest(model)  # type: ignore[operator]


def test_digest_is_byte_order_independent() -> None:
    native = _model()
    big = Parameters.from_numpy({n: a.astype(a.dtype.newbyteorder(">")) for n, a in native})
    assert model_digest(big) == model_digest(native)


def test_altered_provenance_or_other_signer_is_refused(key: SigningKey) -> None:
    sig = sign_model(_model(), _provenance(), key)
    lied = Provenance(
        job_id="3f2a9c",
        job_hash=JOB_HASH,
        rounds=15,
        sites=("alpha", "beta"),
        privacy_spent={"alpha": PrivacySpent(epsilon=0.1, delta=1e-5)},
    )
    forged = ModelSignature(model_sha256=sig.model_sha256, provenance=lied, signer=sig.signer, signature=sig.signature)
    impostor = generate_signing_key()

    with pytest.raises(StoreError, match="signature check failed"):
        verify_model(_model(), forged, key.public_pem)
    with pytest.raises(StoreError, match="signature check failed"):
        verify_model(_model(), sign_model(_model(), _provenance(), impostor), key.public_pem)


@settings(max_examples=40, deadline=None)
@given(position=st.integers(min_value=0, max_value=63), bit=st.integers(min_value=0, max_value=7))
def test_any_signature_bit_flip_is_refused(position: int, bit: int) -> None:
    key = _KEY
    sig = sign_model(_model(), _provenance(), key)
    raw = bytearray(sig.signature)
    raw[position] ^= 1 << bit
    bad = ModelSignature(
        model_sha256=sig.model_sha256, provenance=sig.provenance, signer=sig.signer, signature=bytes(raw)
    )
    with pytest.raises(StoreError):
        verify_model(_model(), bad, key.public_pem)


def test_raw_signatures_and_bad_inputs(key: SigningKey) -> None:
    sig = sign_bytes(key.private_pem, b"checkpoint")
    verify_bytes(key.public_pem, b"checkpoint", sig)
    with pytest.raises(StoreError):
        verify_bytes(key.public_pem, b"checkpoinT", sig)
    with pytest.raises(ValidationError, match="unreadable public key"):
        verify_bytes(b"not a pem", b"x", sig)
    with pytest.raises(ValidationError, match="malformed model signature"):
        ModelSignature.from_json_bytes(b'{"format": "medfed-model-signature-v1"}')
    with pytest.raises(ValidationError, match="job_hash"):
        Provenance(job_id="j", job_hash="nothex", rounds=1, sites=("a",))
    with pytest.raises(ValidationError, match="not in the job"):
        Provenance(
            job_id="j",
            job_hash=JOB_HASH,
            rounds=1,
            sites=("a",),
            privacy_spent={"b": PrivacySpent(epsilon=1.0, delta=0.0)},
        )


def test_canonical_json_is_deterministic_and_strict() -> None:
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'.encode()
    with pytest.raises(ValidationError):
        canonical_json({"x": float("nan")})
