"""Tests for medfed.crypto's PKI recipes: certificate profile, CRLs and pre-flight checks."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given, settings
from hypothesis import strategies as st

import medfed.crypto
from medfed.core.errors import AuthenticationError, ValidationError
from medfed.core.records import Role
from medfed.crypto import (
    CLOCK_SKEW,
    Credential,
    IdentitySpec,
    build_crl,
    check_identity,
    create_ca,
    describe_certificate,
    issue_certificate,
    key_matches_certificate,
    load_crl,
)

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ca() -> Credential:
    return create_ca("demo", validity_days=3650, now=NOW - dt.timedelta(days=1000))


@pytest.fixture(scope="module")
def coordinator(ca: Credential) -> Credential:
    spec = IdentitySpec(
        name="coordinator",
        role=Role.COORDINATOR,
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1", "::1"),
    )
    return issue_certificate(ca, spec, now=NOW)


@pytest.fixture(scope="module")
def site(ca: Credential) -> Credential:
    return issue_certificate(ca, IdentitySpec(name="cleveland", role=Role.NODE), now=NOW)


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_public_api_is_exported() -> None:
    assert sorted(medfed.crypto.__all__) == sorted(
        [
            "CLOCK_SKEW",
            "CertInfo",
            "Credential",
            "IdentitySpec",
            "build_crl",
            "check_identity",
            "create_ca",
            "describe_certificate",
            "issue_certificate",
            "key_matches_certificate",
            "load_crl",
        ]
    )
    for name in medfed.crypto.__all__:
        assert hasattr(medfed.crypto, name)


def test_ca_is_a_p256_sha256_ca(ca: Credential) -> None:
    cert = _cert(ca.cert_pem)

    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert constraints.critical and constraints.value.ca
    assert usage.key_cert_sign and usage.crl_sign
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)
    cert.verify_directly_issued_by(cert)  # self-signed


def test_leaf_chain_verifies(ca: Credential, site: Credential) -> None:
    cert = _cert(site.cert_pem)

    cert.verify_directly_issued_by(_cert(ca.cert_pem))  # raises if the signature is bad
    assert check_identity(site.cert_pem, ca.cert_pem, now=NOW) == []


def test_leaf_carries_name_role_and_client_auth(site: Credential) -> None:
    cert = _cert(site.cert_pem)
    info = describe_certificate(site.cert_pem)

    assert info.common_name == "cleveland"
    assert info.role is Role.NODE
    assert info.federation == "demo"
    assert info.san == ("cleveland",)
    assert not info.is_ca
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_coordinator_san_and_server_auth(coordinator: Credential) -> None:
    info = describe_certificate(coordinator.cert_pem)

    assert info.role is Role.COORDINATOR
    assert {"coordinator", "localhost", "127.0.0.1", "::1"} <= set(info.san)
    assert set(_eku(_cert(coordinator.cert_pem))) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }


def test_key_is_unencrypted_pkcs8_and_matches(site: Credential, ca: Credential) -> None:
    key = serialization.load_pem_private_key(site.key_pem, password=None)

    assert site.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, not SEC1
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key_matches_certificate(site.cert_pem, site.key_pem)
    assert not key_matches_certificate(site.cert_pem, ca.key_pem)
    assert not key_matches_certificate(b"junk", site.key_pem)
    assert "key_pem" not in repr(site)


def test_describe_certificate_fields(ca: Credential, site: Credential) -> None:
    info = describe_certificate(site.cert_pem)
    der = _cert(site.cert_pem).public_bytes(serialization.Encoding.DER)

    assert info.sha256_fingerprint == hashlib.sha256(der).hexdigest()
    assert info.not_before == NOW - CLOCK_SKEW
    assert info.not_after == NOW + dt.timedelta(days=365)
    assert info.issuer == "CN=demo root CA,O=demo"
    assert info.subject == "CN=cleveland,OU=node,O=demo"
    assert describe_certificate(ca.cert_pem).is_ca
    assert describe_certificate(ca.cert_pem).role is None


def test_serials_are_random_and_large(ca: Credential) -> None:
    serials = {
        describe_certificate(issue_certificate(ca, IdentitySpec(name="s", role=Role.NODE), now=NOW).cert_pem).serial
        for _ in range(5)
    }

    assert len(serials) == 5
    assert all(s.bit_length() > 64 for s in serials)


def test_leaf_never_outlives_its_ca(ca: Credential) -> None:
    spec = IdentitySpec(name="long", role=Role.NODE, validity_days=100_000)

    info = describe_certificate(issue_certificate(ca, spec, now=NOW).cert_pem)

    assert info.not_after == _cert(ca.cert_pem).not_valid_after_utc


def test_invalid_specs_are_refused() -> None:
    with pytest.raises(ValidationError) as err:
        IdentitySpec(name="", role=Role.NODE, ip_addresses=("not-an-ip",), validity_days=0)

    assert len(err.value.problems) == 3


def test_naive_time_is_refused(ca: Credential) -> None:
    with pytest.raises(ValidationError, match="timezone-aware"):
        issue_certificate(ca, IdentitySpec(name="x", role=Role.NODE), now=dt.datetime(2026, 1, 1))


def test_garbage_pem_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match=r"not a PEM X\.509 certificate"):
        describe_certificate(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


# --- check_identity --------------------------------------------------------------------------


def test_expired_certificate_is_named(ca: Credential) -> None:
    old = issue_certificate(ca, IdentitySpec(name="old", role=Role.NODE), now=NOW - dt.timedelta(days=400))

    problems = check_identity(old.cert_pem, ca.cert_pem, now=NOW)

    assert len(problems) == 1
    expiry = (NOW - dt.timedelta(days=35)).strftime("%Y-%m-%d")
    assert "expired on" in problems[0] and expiry in problems[0]


def test_not_yet_valid_certificate_is_named(ca: Credential) -> None:
    future = issue_certificate(ca, IdentitySpec(name="future", role=Role.NODE), now=NOW + dt.timedelta(days=10))

    problems = check_identity(future.cert_pem, ca.cert_pem, now=NOW)

    assert len(problems) == 1
    assert "not valid before" in problems[0]


def test_certificate_from_another_ca_is_named(site: Credential) -> None:
    stranger = create_ca("other", now=NOW)

    problems = check_identity(site.cert_pem, stranger.cert_pem, now=NOW)

    assert len(problems) == 1
    assert "not signed by this federation's CA" in problems[0]
    assert "CN=demo root CA" in problems[0]


def test_impostor_ca_with_the_same_name_is_caught(ca: Credential) -> None:
    impostor = create_ca("demo", now=NOW)  # same subject, different key
    forged = issue_certificate(impostor, IdentitySpec(name="cleveland", role=Role.NODE), now=NOW)

    problems = check_identity(forged.cert_pem, ca.cert_pem, now=NOW)

    assert len(problems) == 1
    assert "signature does not verify" in problems[0]


def test_revoked_certificate_is_named(ca: Credential, site: Credential) -> None:
    serial = describe_certificate(site.cert_pem).serial

    problems = check_identity(site.cert_pem, ca.cert_pem, now=NOW, revoked=frozenset({serial}))

    assert problems == [f"certificate revoked (serial {serial:#x})"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST", "::1", "[::1]"])
def test_coordinator_host_names_match(ca: Credential, coordinator: Credential, host: str) -> None:
    assert check_identity(coordinator.cert_pem, ca.cert_pem, now=NOW, expected_host=host) == []


@pytest.mark.parametrize("host", ["10.0.0.1", "evil.example.org", "coordinator.example.org"])
def test_host_name_mismatch_is_named(ca: Credential, coordinator: Credential, host: str) -> None:
    problems = check_identity(coordinator.cert_pem, ca.cert_pem, now=NOW, expected_host=host)

    assert len(problems) == 1
    assert "host name mismatch" in problems[0] and host in problems[0]


def test_every_problem_is_reported_at_once(ca: Credential) -> None:
    old = issue_certificate(ca, IdentitySpec(name="old", role=Role.NODE), now=NOW - dt.timedelta(days=400))
    serial = describe_certificate(old.cert_pem).serial

    problems = check_identity(
        old.cert_pem,
        ca.cert_pem,
        now=NOW,
        revoked=frozenset({serial}),
        expected_host="x.org",
    )

    assert len(problems) == 3


def test_ca_certificate_is_not_an_identity(ca: Credential) -> None:
    problems = check_identity(ca.cert_pem, ca.cert_pem, now=NOW)

    assert problems == ["certificate is a CA certificate, not an identity"]


def test_unreadable_certificate_is_a_problem_not_a_crash(ca: Credential) -> None:
    problems = check_identity(b"nope", ca.cert_pem, now=NOW)

    assert len(problems) == 1 and "not a PEM X.509 certificate" in problems[0]


# --- CRLs ------------------------------------------------------------------------------------


def test_crl_round_trip(ca: Credential, site: Credential) -> None:
    serial = describe_certificate(site.cert_pem).serial

    crl_pem = build_crl(ca, [serial], NOW)

    assert load_crl(crl_pem, ca.cert_pem) == frozenset({serial})
    assert load_crl(build_crl(ca, [], NOW), ca.cert_pem) == frozenset()


def test_crl_keeps_revocation_dates_and_number(ca: Credential) -> None:
    when = NOW - dt.timedelta(days=3)

    crl = x509.load_pem_x509_crl(build_crl(ca, {7: when, 9: NOW}, NOW, number=4))

    entry = crl.get_revoked_certificate_by_serial_number(7)
    assert entry is not None and entry.revocation_date_utc == when
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 4
    assert crl.last_update_utc == NOW


def _tamper_serial(crl_pem: bytes, serial: int) -> bytes:
    """Flip a bit of a revoked serial inside the signed part of the CRL."""
    der = x509.load_pem_x509_crl(crl_pem).public_bytes(serialization.Encoding.DER)
    content = serial.to_bytes(serial.bit_length() // 8 + 1, "big")  # DER INTEGER body
    at = der.index(content) + len(content) - 1
    forged = der[:at] + bytes([der[at] ^ 1]) + der[at + 1 :]
    return x509.load_der_x509_crl(forged).public_bytes(serialization.Encoding.PEM)


def test_tampered_crl_is_refused(ca: Credential, site: Credential) -> None:
    serial = describe_certificate(site.cert_pem).serial
    forged = _tamper_serial(build_crl(ca, [serial], NOW), serial)

    with pytest.raises(AuthenticationError, match="signature"):
        load_crl(forged, ca.cert_pem)


def test_crl_from_another_ca_is_refused(ca: Credential) -> None:
    impostor = create_ca("demo", now=NOW)
    stranger = create_ca("other", now=NOW)

    with pytest.raises(AuthenticationError):
        load_crl(build_crl(impostor, [1], NOW), ca.cert_pem)
    with pytest.raises(AuthenticationError, match="not issued by"):
        load_crl(build_crl(stranger, [1], NOW), ca.cert_pem)


def test_garbage_crl_is_a_validation_error(ca: Credential) -> None:
    with pytest.raises(ValidationError):
        load_crl(b"not a crl", ca.cert_pem)


def test_crl_needs_the_matching_ca_key(ca: Credential, site: Credential) -> None:
    mismatched = Credential(cert_pem=ca.cert_pem, key_pem=site.key_pem)

    with pytest.raises(ValidationError, match="does not belong"):
        build_crl(mismatched, [1], NOW)


@settings(max_examples=20, deadline=None)
@given(serials=st.frozensets(st.integers(min_value=1, max_value=2**159 - 1), max_size=6))
def test_crl_lists_exactly_the_revoked_serials(serials: frozenset[int]) -> None:
    ca = create_ca("prop", now=NOW)

    assert load_crl(build_crl(ca, serials, NOW), ca.cert_pem) == serials
