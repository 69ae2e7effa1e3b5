"""TLS material from a kit directory, and pre-flight checks before dialling or serving.

gRPC reports a refused handshake tersely ("handshake failed"); :func:`preflight` names the
reason (expired, revoked, wrong CA, wrong host, key does not match) before it happens.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from medfed.core.errors import AuthenticationError, ConfigError, ValidationError
from medfed.crypto import check_identity, key_matches_certificate, load_crl

__all__ = ["TlsMaterial", "load_tls_material", "preflight"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsMaterial:
    """PEM bytes for ``grpc.ssl_server_credentials`` / ``grpc.ssl_channel_credentials``.

    Attributes
    ----------
    ca_pem : bytes
        The federation's root CA certificate (the only trust anchor).
    cert_pem, key_pem : bytes
        This party's certificate and PKCS#8 private key (the key is kept out of ``repr``).
    crl_pem : bytes or None
        The CA's revocation list, where the kit has one (the coordinator's does).
    """

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    crl_pem: bytes | None = None


def load_tls_material(directory: str | os.PathLike[str]) -> TlsMaterial:
    """Read ``ca.pem``, ``cert.pem``, ``key.pem`` (and ``crl.pem`` if present) from a kit.

    Raises
    ------
    ConfigError
        A file is missing, or the key does not belong to the certificate.
    """
    root = Path(directory)
    missing = [name for name in ("ca.pem", "cert.pem", "key.pem") if not (root / name).is_file()]
    if missing:
        raise ConfigError(f"{root}: not a medfed TLS kit, missing {missing}")
    material = TlsMaterial(
        ca_pem=(root / "ca.pem").read_bytes(),
        cert_pem=(root / "cert.pem").read_bytes(),
        key_pem=(root / "key.pem").read_bytes(),
        crl_pem=(root / "crl.pem").read_bytes() if (root / "crl.pem").is_file() else None,
    )
    if not key_matches_certificate(material.cert_pem, material.key_pem):
        raise ConfigError(f"{root}: key.pem does not belong to cert.pem (or one is unreadable)")
    return material


def preflight(
    material: TlsMaterial,
    *,
    now: dt.datetime | None = None,
    expected_host: str | None = None,
) -> list[str]:
    """Every reason a peer would refuse ``material``'s certificate; empty when none.

    Checks the certificate against the kit's CA (signature, validity at ``now``, the CRL where
    the kit has one, ``expected_host``) and that the key belongs to the certificate.
    """
    moment = now if now is not None else dt.datetime.now(dt.UTC)
    problems: list[str] = []
    revoked: frozenset[int] = frozenset()
    if material.crl_pem is not None:
        try:
            revoked = load_crl(material.crl_pem, material.ca_pem)
        except (AuthenticationError, ValidationError) as exc:
            problems.append(f"crl.pem refused: {exc}")
    if not key_matches_certificate(material.cert_pem, material.key_pem):
        problems.append("the private key does not belong to the certificate")
    problems += check_identity(
        material.cert_pem,
        material.ca_pem,
        now=moment,
        revoked=revoked,
        expected_host=expected_host,
    )
    return problems
