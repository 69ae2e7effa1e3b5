"""Federation PKI recipes: a root CA, TLS identities, revocation lists and pre-flight checks.

Every key is ECDSA P-256 and every signature ECDSA with SHA-256, because gRPC's TLS stack
(BoringSSL) accepts that everywhere; Ed25519 certificates are not usable for TLS there.
Keys and certificates travel as PEM bytes (PKCS#8 for keys), so callers outside ``medfed.crypto``
never touch ``cryptography.hazmat``. Nothing here reads files or the clock implicitly: time is
the ``now`` argument (timezone-aware), defaulting to the current UTC time only where documented.

Certificate profile (RFC 5280):

- root CA: ``CN=<federation> root CA, O=<federation>``; BasicConstraints ``CA:TRUE, pathlen:0``;
  KeyUsage ``keyCertSign, cRLSign``.
- leaf: ``CN=<name>, OU=<role>, O=<federation>``; BasicConstraints ``CA:FALSE``; KeyUsage
  ``digitalSignature``; ExtendedKeyUsage ``clientAuth`` (plus ``serverAuth`` for the coordinator);
  SubjectAlternativeName with the name as a DNS name plus any DNS names and IP addresses asked for.
- serials are 159-bit random numbers (CA/B Forum baseline: at least 64 bits of entropy).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medfed.core.errors import AuthenticationError, ValidationError
from medfed.core.records import Role
from medfed.crypto.certcheck import (
    CertInfo,
    as_utc,
    check_identity,
    describe_certificate,
    key_matches_certificate,
    parse_certificate,
)

__all__ = [
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

#: ``notBefore`` is backdated by this much so a peer whose clock runs a little behind still
#: accepts a certificate minted a moment ago.
CLOCK_SKEW = dt.timedelta(minutes=5)

_MAX_CN = 64  # ub-common-name, RFC 5280 appendix A.1


@dataclass(frozen=True, slots=True, kw_only=True)
class Credential:
    """A certificate and its private key, both PEM: what a CA or a TLS peer holds.

    Attributes
    ----------
    cert_pem : bytes
        The X.509 certificate, PEM.
    key_pem : bytes
        The unencrypted PKCS#8 private key, PEM (kept out of ``repr``).
    """

    cert_pem: bytes
    key_pem: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentitySpec:
    """What to put in a leaf certificate.

    Attributes
    ----------
    name : str
        Subject common name; also always the first DNS name of the SubjectAlternativeName.
    role : Role
        Subject organisational unit; ``Role.COORDINATOR`` also gets ``serverAuth``.
    dns_names, ip_addresses : tuple of str
        Extra SubjectAlternativeName entries (a coordinator's host names and addresses).
    validity_days : int
        Lifetime from ``now``; clamped so it never outlives the issuing CA.
    """

    name: str
    role: Role
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    validity_days: int = 365

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.name or len(self.name) > _MAX_CN:
            problems.append(f"name must have 1 to {_MAX_CN} characters, got {self.name!r}")
        if not isinstance(self.role, Role):
            problems.append(f"role must be one of {[r.value for r in Role]}, got {self.role!r}")
        if self.validity_days < 1:
            problems.append(f"validity_days must be >= 1, got {self.validity_days!r}")
        for ip in self.ip_addresses:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                problems.append(f"not an IP address: {ip!r}")
        if problems:
            raise ValidationError(problems, where="identity")


# --- creation -----------------------------------------------------------------------------------


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def create_ca(federation: str, *, validity_days: int = 3650, now: dt.datetime | None = None) -> Credential:
    """Create a self-signed root CA for a federation.

    Parameters
    ----------
    federation : str
        Federation name; the CA subject is ``CN=<federation> root CA, O=<federation>``.
    validity_days : int
        Lifetime of the CA; leaves issued later never outlive it.
    now : datetime, optional
        Issue time (timezone-aware); the current UTC time if omitted.
    """
    if not federation or len(federation) + len(" root CA") > _MAX_CN:
        raise ValidationError(f"federation name must have 1 to 56 characters, got {federation!r}")
    if validity_days < 1:
        raise ValidationError(f"validity_days must be >= 1, got {validity_days!r}")
    start = as_utc(now)
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{federation} root CA"),
        ]
    )
    usage = _key_usage(digital_signature=False, cert_sign=True)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(start + dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Credential(cert_pem=_cert_pem(cert), key_pem=_key_pem(key))


def _key_usage(*, digital_signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _san(spec: IdentitySpec) -> x509.SubjectAlternativeName:
    dns = list(dict.fromkeys((spec.name, *spec.dns_names)))
    ips = list(dict.fromkeys(ipaddress.ip_address(ip) for ip in spec.ip_addresses))
    entries: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    entries += [x509.IPAddress(ip) for ip in ips]
    return x509.SubjectAlternativeName(entries)


def _load_ca(ca: Credential) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = parse_certificate(ca.cert_pem, what="CA certificate")
    try:
        key = serialization.load_pem_private_key(ca.key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"CA key is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValidationError(f"CA key must be ECDSA P-256, got {type(key).__name__}")
    if key.public_key() != cert.public_key():
        raise ValidationError("CA key does not belong to the CA certificate")
    return cert, key


def _leaf_subject(spec: IdentitySpec, ca_cert: x509.Certificate) -> x509.Name:
    org = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return x509.Name(
        [
            *org,
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, spec.role.value),
            x509.NameAttribute(NameOID.COMMON_NAME, spec.name),
        ]
    )


def _with_leaf_extensions(
    builder: x509.CertificateBuilder,
    spec: IdentitySpec,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
) -> x509.CertificateBuilder:
    purposes = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if spec.role is Role.COORDINATOR:
        purposes.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
        .add_extension(_san(spec), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(aki, critical=False)
    )


def issue_certificate(ca: Credential, spec: IdentitySpec, *, now: dt.datetime | None = None) -> Credential:
    """Issue a TLS leaf certificate and a fresh P-256 key for one identity.

    Parameters
    ----------
    ca : Credential
        The issuing CA (from :func:`create_ca`).
    spec : IdentitySpec
        Name, role, extra SubjectAlternativeName entries and lifetime.
    now : datetime, optional
        Issue time (timezone-aware); the current UTC time if omitted. Pass a past or future
        time to mint certificates that are expired or not yet valid.
    """
    ca_cert, ca_key = _load_ca(ca)
    start = as_utc(now)
    not_after = min(start + dt.timedelta(days=spec.validity_days), ca_cert.not_valid_after_utc)
    key = _new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_leaf_subject(spec, ca_cert))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(not_after)
    )
    cert = _with_leaf_extensions(builder, spec, key, ca_cert).sign(ca_key, hashes.SHA256())
    return Credential(cert_pem=_cert_pem(cert), key_pem=_key_pem(key))


# --- revocation ---------------------------------------------------------------------------------


def build_crl(
    ca: Credential,
    revoked_serials: Iterable[int] | Mapping[int, dt.datetime],
    now: dt.datetime | None = None,
    *,
    number: int = 1,
    next_update_days: int = 365,
) -> bytes:
    """Build a CRL signed by the CA, PEM.

    Parameters
    ----------
    ca : Credential
        The CA that issued the revoked certificates.
    revoked_serials : iterable of int, or mapping of serial to revocation time
        The serials to list; with a plain iterable each is dated ``now``.
    now : datetime, optional
        ``thisUpdate`` (timezone-aware); the current UTC time if omitted.
    number : int
        The CRL number; should grow with every new CRL (RFC 5280 §5.2.3).
    next_update_days : int
        Days until ``nextUpdate``.
    """
    ca_cert, ca_key = _load_ca(ca)
    start = as_utc(now)
    if not isinstance(revoked_serials, Mapping):
        revoked_serials = dict.fromkeys(revoked_serials, start)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(start)
        .next_update(start + dt.timedelta(days=next_update_days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    for serial, when in sorted(revoked_serials.items()):
        entry = x509.RevokedCertificateBuilder().serial_number(serial)
        builder = builder.add_revoked_certificate(entry.revocation_date(as_utc(when)).build())
    crl = builder.sign(ca_key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


def load_crl(pem: bytes, ca_cert_pem: bytes) -> frozenset[int]:
    """The revoked serials of a CRL, after checking the CA signed it.

    Raises
    ------
    ValidationError
        ``pem`` or ``ca_cert_pem`` is not PEM of the right kind.
    AuthenticationError
        The CRL was not issued and signed by this CA (tampered, or from another federation).
    """
    ca_cert = parse_certificate(ca_cert_pem, what="CA certificate")
    try:
        crl = x509.load_pem_x509_crl(pem)
    except ValueError as exc:
        raise ValidationError(f"not a PEM certificate revocation list: {exc}") from None
    public_key = ca_cert.public_key()
    if crl.issuer != ca_cert.subject or not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise AuthenticationError("revocation list was not issued by this federation's CA")
    if not crl.is_signature_valid(public_key):
        raise AuthenticationError("revocation list signature does not verify against the CA")
    return frozenset(entry.serial_number for entry in crl)
