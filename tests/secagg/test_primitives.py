"""Tests for the SecAgg crypto recipes: key agreement, PRG, sealed share messages, Shamir sharing."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medfed.core.errors import ValidationError
from medfed.crypto.secagg_primitives import (
    SHAMIR_PRIME,
    DecryptionError,
    RandomBytes,
    Share,
    agree,
    decode_share,
    encode_share,
    generate_keypair,
    open_sealed,
    prg_words,
    public_key_of,
    seal,
    shamir_combine,
    shamir_split,
)


def seeded(seed: int = 0) -> RandomBytes:
    return np.random.default_rng(seed).bytes


# --- key agreement -------------------------------------------------------------------------------


def test_agreement_is_symmetric_and_bound_to_info() -> None:
    a, b = generate_keypair(), generate_keypair()

    ab = agree(a.private, b.public, info=b"x")
    ba = agree(b.private, a.public, info=b"x")

    assert ab == ba and len(ab) == 32
    assert agree(a.private, b.public, info=b"y") != ab
    assert public_key_of(a.private) == a.public


def test_injected_rng_makes_keys_reproducible() -> None:
    assert generate_keypair(seeded(1)) == generate_keypair(seeded(1))
    assert generate_keypair(seeded(1)) != generate_keypair(seeded(2))


def test_low_order_or_malformed_public_keys_are_refused() -> None:
    a = generate_keypair()
    with pytest.raises(ValidationError, match="invalid"):
        agree(a.private, bytes(32), info=b"")  # the identity point: all-zero shared secret
    with pytest.raises(ValidationError, match="32 bytes"):
        agree(a.private, bytes(31), info=b"")


# --- PRG -----------------------------------------------------------------------------------------


def test_prg_is_deterministic_per_seed_and_differs_between_seeds() -> None:
    s1, s2 = bytes(32), bytes(31) + b"\x01"

    w = prg_words(s1, 1000)

    assert w.dtype == np.uint32 and w.shape == (1000,)
    assert np.array_equal(w, prg_words(s1, 1000))
    assert np.array_equal(w[:10], prg_words(s1, 10))  # a prefix of the same stream
    assert not np.array_equal(w, prg_words(s2, 1000))
    assert prg_words(s1, 0).shape == (0,)


def test_prg_rejects_bad_seeds() -> None:
    with pytest.raises(ValidationError):
        prg_words(bytes(16), 4)
    with pytest.raises(ValidationError):
        prg_words(bytes(32), -1)


def test_prg_speed_sanity() -> None:
    seed = bytes(range(32))
    prg_words(seed, 1_000_000)
    t0 = time.perf_counter()
    words = prg_words(seed, 1_000_000)
    elapsed = time.perf_counter() - t0
    print(f"PRG: 1e6 uint32 words in {elapsed * 1e3:.2f} ms")  # informative, not asserted
    assert words.size == 1_000_000
    assert abs(float(words.mean()) / 2**32 - 0.5) < 0.01


# --- sealed share messages -----------------------------------------------------------------------


def test_seal_round_trips_and_every_failure_is_one_opaque_error() -> None:
    key, other = bytes(range(32)), bytes(32)
    blob = seal(key, b"share", associated_data=b"1->2")

    assert open_sealed(key, blob, associated_data=b"1->2") == b"share"
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    attempts = [
        (other, blob, b"1->2"),  # wrong key
        (key, blob, b"1->3"),  # mis-addressed
        (key, tampered, b"1->2"),  # tampered
        (key, blob[:10], b"1->2"),  # truncated
        (bytes(5), blob, b"1->2"),  # malformed key
    ]
    messages = set()
    for k, b, ad in attempts:
        with pytest.raises(DecryptionError) as info:
            open_sealed(k, b, associated_data=ad)
        messages.add(str(info.value))
    assert len(messages) == 1


def test_seal_uses_fresh_nonces() -> None:
    key = bytes(range(32))
    assert seal(key, b"m", associated_data=b"") != seal(key, b"m", associated_data=b"")


# --- Shamir --------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=0, max_size=70),
    n=st.integers(1, 12),
    data=st.data(),
)
def test_any_threshold_shares_rebuild_the_secret(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, 2**32 - 1), min_size=n, max_size=n, unique=True))
    shares = shamir_split(secret, xs=xs, threshold=t, rng=seeded(n))
    subset = data.draw(st.permutations(shares))[:t]

    assert shamir_combine(subset, threshold=t) == secret
    assert all(decode_share(encode_share(s)) == s for s in shares)


def test_fewer_than_threshold_shares_is_a_clear_error() -> None:
    shares = shamir_split(bytes(range(32)), xs=[1, 2, 3, 4, 5], threshold=3)
    with pytest.raises(ValidationError, match="need 3 shares to reconstruct the secret, got 2"):
        shamir_combine(shares[:2], threshold=3)


def test_one_share_below_threshold_fits_every_secret() -> None:
    # t = 2: the share y1 = s + a*x1 is consistent with any other secret s' (slope (y1 - s')/x1), so
    # a second share at x = 2 can be completed to rebuild s': one share says nothing about s.
    secret, other = b"\x07" * 15, b"\x09" * 15
    first = shamir_split(secret, xs=[1, 2], threshold=2, rng=seeded(3))[0]
    s_other = int.from_bytes(other, "big")
    slope = (first.ys[0] - s_other) * pow(first.x, -1, SHAMIR_PRIME) % SHAMIR_PRIME
    completing = Share(x=2, ys=((s_other + 2 * slope) % SHAMIR_PRIME,), length=15)

    assert shamir_combine([first, completing], threshold=2) == other


def test_threshold_one_and_threshold_n() -> None:
    secret = b"s" * 32
    one = shamir_split(secret, xs=[1, 2, 3], threshold=1)
    full = shamir_split(secret, xs=[1, 2, 3], threshold=3)

    assert all(shamir_combine([s], threshold=1) == secret for s in one)
    assert shamir_combine(full[::-1], threshold=3) == secret


def test_bad_split_arguments_are_all_reported() -> None:
    with pytest.raises(ValidationError) as info:
        shamir_split(b"x", xs=[0, 2, 2], threshold=4)
    assert len(info.value.problems) == 3


def test_combine_rejects_repeated_points_and_mixed_secrets() -> None:
    a = shamir_split(b"a" * 32, xs=[1, 2], threshold=2)
    b = shamir_split(b"b" * 20, xs=[1, 2], threshold=2)
    with pytest.raises(ValidationError, match="repeated"):
        shamir_combine([a[0], a[0]], threshold=2)
    with pytest.raises(ValidationError, match="different lengths"):
        shamir_combine([a[0], b[1]], threshold=2)


def test_share_decoding_rejects_garbage() -> None:
    good = encode_share(Share(x=3, ys=(1, 2, 3), length=32))
    with pytest.raises(ValidationError):
        decode_share(good[:-1])
    with pytest.raises(ValidationError):
        decode_share(b"\x00")
    with pytest.raises(ValidationError, match="outside the field"):
        decode_share(good[:6] + SHAMIR_PRIME.to_bytes(16, "big") + good[22:])
