"""medfed.security: federation identities on disk (startup kits, revocation, TLS material).

Builds on :mod:`medfed.crypto`'s PKI recipes; never imports ``cryptography`` itself.
"""

from medfed.security.plan import FederationPlan, UserPlan, parse_plan, validate_name
from medfed.security.provision import (
    ProvisionResult,
    add_site,
    add_user,
    provision,
    revoke,
)
from medfed.security.registry import IssuedIdentity
from medfed.security.tls import TlsMaterial, load_tls_material, preflight

__all__ = [
    "FederationPlan",
    "IssuedIdentity",
    "ProvisionResult",
    "TlsMaterial",
    "UserPlan",
    "add_site",
    "add_user",
    "load_tls_material",
    "parse_plan",
    "preflight",
    "provision",
    "revoke",
    "validate_name",
]
