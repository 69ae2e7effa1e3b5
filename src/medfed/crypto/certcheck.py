"""Reading certificates: summaries and pre-flight identity checks.

Separate from :mod:`medfed.crypto.pki` (which mints certificates) so the checks a peer runs
before and after a refused TLS handshake stay small and readable.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from medfed.core.errors import ValidationError
from medfed.core.records import Role

__all__ = [
    "CertInfo",
    "as_utc",
    "check_identity",
    "describe_certificate",
    "key_matches_certificate",
    "parse_certificate",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class CertInfo:
    """A readable summary of a certificate (for logs, the CLI and error messages).

    ``role`` is ``None`` when the subject has no organisational unit naming a :class:`Role`
    (a CA, or a certificate medfed did not issue). ``sha256_fingerprint`` is lowercase hex of
    the DER encoding. ``san`` lists DNS names, then IP addresses, as strings.
    """

    common_name: str
    role: Role | None
    federation: str
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    subject: str
    issuer: str
    sha256_fingerprint: str
    san: tuple[str, ...]
    is_ca: bool


def as_utc(now: dt.datetime | None) -> dt.datetime:
    """``now`` as an aware UTC time truncated to seconds (X.509 times carry no fraction)."""
    if now is None:
        now = dt.datetime.now(dt.UTC)
    elif now.tzinfo is None:
        raise ValidationError(f"now must be timezone-aware, got naive {now.isoformat()}")
    return now.astimezone(dt.UTC).replace(microsecond=0)


def parse_certificate(pem: bytes, *, what: str = "certificate") -> x509.Certificate:
    """Load a PEM certificate; :class:`ValidationError` naming ``what`` if it is not one."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ValidationError(f"{what} is not a PEM X.509 certificate: {exc}") from None


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


def _san_values(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return san.get_values_for_type(x509.DNSName), ips


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def describe_certificate(pem: bytes) -> CertInfo:
    """Summarise a PEM certificate.

    Raises
    ------
    ValidationError
        ``pem`` is not a PEM X.509 certificate.
    """
    cert = parse_certificate(pem)
    ou = _attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    dns, ips = _san_values(cert)
    return CertInfo(
        common_name=_attr(cert.subject, NameOID.COMMON_NAME),
        role=Role(ou) if ou in {r.value for r in Role} else None,
        federation=_attr(cert.subject, NameOID.ORGANIZATION_NAME),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sha256_fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        san=(*dns, *ips),
        is_ca=_is_ca(cert),
    )


def key_matches_certificate(cert_pem: bytes, key_pem: bytes) -> bool:
    """Whether a PEM private key belongs to a PEM certificate (False if either is unreadable)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return False
    return key.public_key() == cert.public_key()


def _when(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _signature_problem(cert: x509.Certificate, ca: x509.Certificate) -> str | None:
    if cert.issuer != ca.subject:
        return (
            f"not signed by this federation's CA: issued by {cert.issuer.rfc4514_string()!r}, "
            f"expected {ca.subject.rfc4514_string()!r}"
        )
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return (
            "not signed by this federation's CA: the issuer name matches but the signature "
            "does not verify (a different CA with the same name, or a tampered certificate)"
        )
    return None


def _validity_problems(cert: x509.Certificate, now: dt.datetime, what: str) -> list[str]:
    if now > cert.not_valid_after_utc:
        return [f"{what} expired on {_when(cert.not_valid_after_utc)} (now {_when(now)})"]
    if now < cert.not_valid_before_utc:
        return [f"{what} not valid before {_when(cert.not_valid_before_utc)} (now {_when(now)})"]
    return []


def _dns_match(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):  # RFC 6125 §6.4.3: a wildcard covers one left-most label
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def _host_problem(cert: x509.Certificate, host: str) -> str | None:
    dns, ips = _san_values(cert)
    try:
        matched = str(ipaddress.ip_address(host.strip("[]"))) in ips
    except ValueError:
        wanted = host.rstrip(".").lower()
        matched = any(_dns_match(d.lower(), wanted) for d in dns)
    if matched:
        return None
    return f"host name mismatch: certificate is for {[*dns, *ips]}, not {host!r}"


def check_identity(
    cert_pem: bytes,
    ca_pem: bytes,
    *,
    now: dt.datetime,
    revoked: frozenset[int] = frozenset(),
    expected_host: str | None = None,
) -> list[str]:
    """Every reason a peer would refuse this certificate; empty when it would be accepted.

    Used before connecting (and after a refused handshake) to turn TLS's terse failures into
    messages a site admin can act on.

    Parameters
    ----------
    cert_pem, ca_pem : bytes
        The certificate to check and the federation's CA certificate, PEM.
    now : datetime
        The time to check validity at (timezone-aware).
    revoked : frozenset of int
        Revoked serials (from :func:`load_crl`).
    expected_host : str, optional
        A host name or IP address the certificate must cover (for the coordinator).
    """
    moment = as_utc(now)
    try:
        cert = parse_certificate(cert_pem)
        ca = parse_certificate(ca_pem, what="CA certificate")
    except ValidationError as exc:
        return list(exc.problems)
    problems = _validity_problems(ca, moment, "the CA certificate")
    signature = _signature_problem(cert, ca)
    problems += [signature] if signature else []
    problems += _validity_problems(cert, moment, "certificate")
    if cert.serial_number in revoked:
        problems.append(f"certificate revoked (serial {cert.serial_number:#x})")
    if _is_ca(cert):
        problems.append("certificate is a CA certificate, not an identity")
    host = _host_problem(cert, expected_host) if expected_host else None
    problems += [host] if host else []
    return problems
