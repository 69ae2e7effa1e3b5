"""medfed.crypto: safe recipes over ``cryptography``'s hazardous primitives.

The only package allowed to import ``cryptography.hazmat``; everything else uses these recipes.
"""

from medfed.crypto.pki import (
    CLOCK_SKEW,
    CertInfo,
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
