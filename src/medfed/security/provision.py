"""Startup kits: a federation directory with a root CA and one TLS identity per party.

Layout written by :func:`provision` (keys are ``0600``, the ``ca/`` directory ``0700``)::

    <out_dir>/
      ca/ca.pem  ca/ca.key  ca/crl.pem  ca/serials.json
      coordinator/ca.pem  cert.pem  key.pem  crl.pem  signing.key  signing.key.pub  data.keys
      sites/<name>/ca.pem  cert.pem  key.pem  site.toml  coordinator-signing.pub
      users/<name>/ca.pem  cert.pem  key.pem  client.toml  coordinator-signing.pub

Each kit directory is what one party receives (out of band). The CA key never leaves ``ca/``.
Every file is written atomically; a new federation is built in a staging directory and renamed
into place, so a failed run leaves nothing behind. :func:`add_site`, :func:`add_user` and
:func:`revoke` take an advisory lock on ``ca/.lock`` and touch only the files they must.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from medfed.core.errors import ConfigError, StoreError, ValidationError
from medfed.core.records import Role
from medfed.crypto import (
    Credential,
    IdentitySpec,
    build_crl,
    create_ca,
    describe_certificate,
    issue_certificate,
)
from medfed.crypto.signing import SigningKey, generate_signing_key, sign_bytes, verify_bytes
from medfed.security.fsio import PRIVATE, PUBLIC, atomic_write, exclusive_lock
from medfed.security.keys import generate_keyring_file
from medfed.security.plan import (
    COORDINATOR_NAME,
    USER_ROLES,
    FederationPlan,
    validate_name,
)
from medfed.security.registry import IssuedIdentity, Registry

__all__ = [
    "COORDINATOR_PUB",
    "DATA_KEYS",
    "SIGNING_KEY",
    "ProvisionResult",
    "add_site",
    "add_user",
    "open_signing_key",
    "provision",
    "revoke",
]

PathLike = str | os.PathLike[str]
#: The coordinator's Ed25519 key in its kit (``.pub`` beside it), and its public half in every other kit.
SIGNING_KEY = "signing.key"
#: The coordinator's AES-256 keyring (checkpoints and models sealed at rest), kept in its kit: outside
#: the state directory, owner-only.
DATA_KEYS = "data.keys"
COORDINATOR_PUB = "coordinator-signing.pub"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProvisionResult:
    """What :func:`provision` created.

    Attributes
    ----------
    root : Path
        The federation directory.
    federation : str
        The federation name.
    ca_fingerprint : str
        SHA-256 of the root CA certificate (hex); share it out of band so sites can check
        the ``ca.pem`` in their kit.
    identities : tuple of IssuedIdentity
        The coordinator, then sites, then users.
    """

    root: Path
    federation: str
    ca_fingerprint: str
    identities: tuple[IssuedIdentity, ...]

    def kit(self, name: str) -> Path:
        """The kit directory of the identity called ``name`` (the latest, if re-issued)."""
        for identity in reversed(self.identities):
            if identity.name == name:
                return self.root / identity.kit
        raise ConfigError(f"no identity called {name!r} in federation {self.federation!r}")


def _moment(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        now = dt.datetime.now(dt.UTC)
    elif now.tzinfo is None:
        raise ConfigError(f"now must be timezone-aware, got naive {now.isoformat()}")
    return now.astimezone(dt.UTC).replace(microsecond=0)


def _q(text: str) -> str:
    """A TOML basic string (names and addresses here are plain ASCII, validated upstream)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_TLS_TABLE = '[tls]\nca = "ca.pem"\ncert = "cert.pem"\nkey = "key.pem"\n'


def _site_toml(name: str, registry: Registry) -> str:
    return (
        f"# medfed node configuration for site {_q(name)} of federation {_q(registry.federation)}.\n"
        "# Start the node with: medfed node start --config site.toml\n"
        "# Paths are relative to this file. Keep key.pem private (mode 0600).\n\n"
        f"[site]\nname = {_q(name)}\ncoordinator = {_q(registry.coordinator)}\n\n"
        f"{_TLS_TABLE}\n"
        "# Declare the data this site offers, one table per dataset, for example:\n"
        "# [datasets.heart]\n"
        '# kind = "csv"\n'
        '# path = "data/heart"   # a directory holding train.csv and test.csv\n'
        '# label = "label"       # the outcome column; every other column is a numeric feature\n'
    )


def _client_toml(name: str, role: Role, registry: Registry) -> str:
    return (
        f"# medfed CLI identity {_q(name)} of federation {_q(registry.federation)}.\n"
        "# Paths are relative to this file. Keep key.pem private (mode 0600).\n\n"
        f"[client]\nname = {_q(name)}\nrole = {_q(role.value)}\n"
        f"coordinator = {_q(registry.coordinator)}\n\n"
        f"{_TLS_TABLE}"
    )


def _kit_path(name: str, role: Role) -> str:
    if role is Role.COORDINATOR:
        return COORDINATOR_NAME
    return f"sites/{name}" if role is Role.NODE else f"users/{name}"


def _issue(root: Path, ca: Credential, registry: Registry, spec: IdentitySpec, now: dt.datetime) -> Registry:
    """Issue ``spec``, write its kit, and return the registry with it recorded."""
    cred = issue_certificate(ca, spec, now=now)
    info = describe_certificate(cred.cert_pem)
    kit = _kit_path(spec.name, spec.role)
    directory = root / kit
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "ca.pem", ca.cert_pem)
    atomic_write(directory / "key.pem", cred.key_pem, mode=PRIVATE)
    atomic_write(directory / "cert.pem", cred.cert_pem)
    coordinator_pub = root / COORDINATOR_NAME / f"{SIGNING_KEY}.pub"
    if spec.role is not Role.COORDINATOR and coordinator_pub.is_file():  # verifies signed models
        atomic_write(directory / COORDINATOR_PUB, coordinator_pub.read_bytes())
    if spec.role is Role.NODE:
        atomic_write(directory / "site.toml", _site_toml(spec.name, registry).encode())
    elif spec.role in USER_ROLES:
        atomic_write(
            directory / "client.toml",
            _client_toml(spec.name, spec.role, registry).encode(),
        )
    issued = IssuedIdentity(
        name=spec.name,
        role=spec.role,
        serial=info.serial,
        issued_at=now,
        not_after=info.not_after,
        kit=kit,
    )
    return registry.with_identity(issued)


def _write_crl(root: Path, ca: Credential, registry: Registry, now: dt.datetime) -> None:
    days = max(registry.validity_days, 1)
    crl = build_crl(
        ca,
        registry.revoked_serials(),
        now,
        number=registry.crl_number,
        next_update_days=days,
    )
    atomic_write(root / "ca" / "crl.pem", crl)
    atomic_write(root / COORDINATOR_NAME / "crl.pem", crl)


def _refuse_existing(target: Path) -> None:
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise ConfigError(f"{target} exists and is not a directory; refusing to overwrite it")
    if target.is_dir() and any(target.iterdir()):
        raise ConfigError(
            f"{target} already exists and is not empty; refusing to overwrite a federation "
            "(use add_site/add_user/revoke to change one, or choose a new directory)"
        )


def _coordinator_spec(plan: FederationPlan) -> IdentitySpec:
    hosts = dict.fromkeys((plan.coordinator_host, "localhost", *plan.extra_hosts))
    ips, dns = [], []
    for host in hosts:
        try:
            ips.append(str(ipaddress.ip_address(host)))
        except ValueError:  # not an IP literal, so a DNS name (the plan validated it)
            dns.append(host)
    return IdentitySpec(
        name=COORDINATOR_NAME,
        role=Role.COORDINATOR,
        dns_names=tuple(dns),
        ip_addresses=tuple(ips),
        validity_days=plan.validity_days,
    )


def _build(plan: FederationPlan, root: Path, now: dt.datetime) -> ProvisionResult:
    ca = create_ca(plan.name, validity_days=plan.ca_validity_days, now=now)
    (root / "ca").mkdir(mode=0o700)
    atomic_write(root / "ca" / "ca.pem", ca.cert_pem)
    atomic_write(root / "ca" / "ca.key", ca.key_pem, mode=PRIVATE)
    registry = Registry(
        federation=plan.name,
        coordinator=plan.coordinator_address,
        validity_days=plan.validity_days,
    )
    registry = _issue(root, ca, registry, _coordinator_spec(plan), now)
    open_signing_key(root / COORDINATOR_NAME / SIGNING_KEY)  # signs models and audit checkpoints
    generate_keyring_file(root / COORDINATOR_NAME / DATA_KEYS, f"{now:%Y-%m}")  # seals checkpoints and models
    specs = [IdentitySpec(name=s, role=Role.NODE, validity_days=plan.validity_days) for s in plan.sites]
    specs += [IdentitySpec(name=u.name, role=u.role, validity_days=plan.validity_days) for u in plan.users]
    for spec in specs:
        registry = _issue(root, ca, registry, spec, now)
    _write_crl(root, ca, registry, now)
    atomic_write(root / "ca" / "serials.json", registry.to_json())
    return ProvisionResult(
        root=root,
        federation=plan.name,
        ca_fingerprint=describe_certificate(ca.cert_pem).sha256_fingerprint,
        identities=registry.identities,
    )


def provision(plan: FederationPlan, out_dir: PathLike, *, now: dt.datetime | None = None) -> ProvisionResult:
    """Create a federation directory: root CA, CRL and one kit per coordinator, site and user.

    Parameters
    ----------
    plan : FederationPlan
        From :func:`medfed.security.plan.parse_plan`.
    out_dir : path
        Must not exist, or be an empty directory.
    now : datetime, optional
        Issue time (timezone-aware); the current UTC time if omitted.

    Raises
    ------
    ConfigError
        ``out_dir`` exists and is not empty (an existing federation is never overwritten).
    """
    target = Path(out_dir)
    _refuse_existing(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.staging-"))
    try:
        result = _build(plan, staging, _moment(now))
        _refuse_existing(target)
        if target.is_dir():
            target.rmdir()
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return replace(result, root=target)


def _load(root: Path) -> tuple[Credential, Registry]:
    ca_dir = root / "ca"
    try:
        registry = Registry.from_json((ca_dir / "serials.json").read_bytes(), source=str(ca_dir / "serials.json"))
        ca = Credential(
            cert_pem=(ca_dir / "ca.pem").read_bytes(),
            key_pem=(ca_dir / "ca.key").read_bytes(),
        )
    except FileNotFoundError as exc:
        raise ConfigError(f"{root} is not a medfed federation directory: missing {exc.filename}") from None
    return ca, registry


def _locked(root: Path) -> contextlib.AbstractContextManager[None]:
    """The federation's advisory lock (``ca/.lock``)."""
    if not (root / "ca").is_dir():
        raise ConfigError(f"{root} is not a medfed federation directory: missing {root / 'ca'}")
    return exclusive_lock(root / "ca" / ".lock")


def _add(root: Path, spec: IdentitySpec, now: dt.datetime | None) -> IssuedIdentity:
    if spec.name == COORDINATOR_NAME:
        raise ConfigError(f"{COORDINATOR_NAME!r} is reserved for the coordinator")
    moment = _moment(now)
    with _locked(root):
        ca, registry = _load(root)
        existing = registry.active(spec.name)
        if existing is not None:
            raise ConfigError(
                f"{spec.name!r} already has an identity ({existing.role.value}, serial "
                f"{existing.serial:#x}, kit {existing.kit}); revoke it before issuing a new one"
            )
        spec = replace(spec, validity_days=registry.validity_days)
        registry = _issue(root, ca, registry, spec, moment)
        atomic_write(root / "ca" / "serials.json", registry.to_json())
        return registry.identities[-1]


def add_site(out_dir: PathLike, name: str, *, now: dt.datetime | None = None) -> IssuedIdentity:
    """Issue an identity for a new site from the existing CA; other kits are left untouched.

    Raises
    ------
    ConfigError
        Invalid name, not a federation directory, or the name already has an active identity
        (revoke it first to re-issue).
    """
    validate_name(name, "site name")
    return _add(Path(out_dir), IdentitySpec(name=name, role=Role.NODE), now)


def add_user(out_dir: PathLike, name: str, role: Role | str, *, now: dt.datetime | None = None) -> IssuedIdentity:
    """Issue a CLI identity for a person (role ``researcher`` or ``admin``).

    Raises
    ------
    ConfigError
        Invalid name or role, not a federation directory, or the name is already in use.
    """
    validate_name(name, "user name")
    allowed = [r.value for r in USER_ROLES]
    if str(role) not in allowed:
        raise ConfigError(f"user role must be one of {allowed}, got {role!r}")
    return _add(Path(out_dir), IdentitySpec(name=name, role=Role(str(role))), now)


def revoke(out_dir: PathLike, name: str, now: dt.datetime | None = None) -> IssuedIdentity:
    """Revoke the identity called ``name``: record it, then rewrite both CRLs atomically.

    Idempotent: revoking an already revoked name reissues the CRL and returns the record.
    The coordinator must reload ``coordinator/crl.pem`` to refuse the revoked peer.

    Raises
    ------
    ConfigError
        Unknown name, not a federation directory, or the coordinator (re-provision instead).
    """
    validate_name(name, "name")
    if name == COORDINATOR_NAME:
        raise ConfigError("the coordinator's identity cannot be revoked; re-provision the federation")
    root, moment = Path(out_dir), _moment(now)
    with _locked(root):
        ca, registry = _load(root)
        target = registry.active(name) or registry.latest(name)
        if target is None:
            known = sorted({i.name for i in registry.identities} - {COORDINATOR_NAME})
            raise ConfigError(f"no identity called {name!r} in this federation (known: {known})")
        registry = registry.with_revocation(target.serial, target.revoked_at or moment)
        atomic_write(root / "ca" / "serials.json", registry.to_json())
        _write_crl(root, ca, registry, moment)
    return next(i for i in registry.identities if i.serial == target.serial)


def open_signing_key(path: Path) -> SigningKey:
    """The Ed25519 key pair at ``path`` (private, 0600) and ``path.pub``; created on first use.

    The same layout as ``medfed keys signing --out``, so an operator may provision the key
    beforehand and this only reads it. A public half that does not match is refused.
    """
    pub = path.with_name(path.name + ".pub")
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fresh = generate_signing_key()
            atomic_write(path, fresh.private_pem, mode=PRIVATE)
            atomic_write(pub, fresh.public_pem, mode=PUBLIC)
        key = SigningKey(private_pem=path.read_bytes(), public_pem=pub.read_bytes())
    except OSError as exc:
        raise ConfigError(f"signing key {path}: {exc.strerror or exc}") from None
    probe = b"medfed signing key pair check"
    try:
        verify_bytes(key.public_pem, probe, sign_bytes(key.private_pem, probe))
    except (StoreError, ValidationError) as exc:
        raise ConfigError(f"signing key {path} and {pub} are not one key pair: {exc}") from None
    return key
