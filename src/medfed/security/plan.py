"""The federation plan: which coordinator, sites and users get an identity.

Parsed from TOML text (the CLI reads the file)::

    [federation]
    name = "demo"
    coordinator_host = "127.0.0.1"   # in the coordinator's certificate, with "localhost"
    coordinator_port = 50443
    validity_days = 365              # optional; leaf lifetime
    ca_validity_days = 3650          # optional; root CA lifetime
    extra_hosts = ["fl.example.org"] # optional; more names or addresses for the coordinator

    [[sites]]
    name = "cleveland"

    [[users]]
    name = "alice"
    role = "researcher"              # researcher or admin
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass
from typing import Any

from medfed.core.errors import ConfigError
from medfed.core.records import Role

__all__ = [
    "COORDINATOR_NAME",
    "USER_ROLES",
    "FederationPlan",
    "UserPlan",
    "format_address",
    "name_problems",
    "parse_plan",
    "validate_name",
]

#: The common name (and kit directory) of the coordinator's identity; no site or user may take it.
COORDINATOR_NAME = "coordinator"
#: Roles a person may hold; ``node`` and ``coordinator`` belong to machines.
USER_ROLES = (Role.RESEARCHER, Role.ADMIN)

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_FEDERATION_KEYS: dict[str, type] = {
    "name": str,
    "coordinator_host": str,
    "coordinator_port": int,
    "validity_days": int,
    "ca_validity_days": int,
    "extra_hosts": list,
}


def name_problems(name: object, what: str) -> list[str]:
    """Why ``name`` is not a valid site, user or federation name (empty if it is).

    A name is 1 to 63 lowercase letters, digits, ``-`` or ``_``, starting with a letter or digit:
    it becomes a directory name, a certificate common name and a DNS name.
    """
    if not isinstance(name, str):
        return [f"{what} must be a string, got {type(name).__name__}"]
    if _NAME.fullmatch(name):
        return []
    rule = "use 1 to 63 lowercase letters, digits, '-' or '_', starting with a letter or digit"
    return [f"{what} {name!r} is invalid: {rule}"]


def validate_name(name: object, what: str = "name") -> str:
    """Return ``name`` if valid, else raise :class:`ConfigError` explaining the rule."""
    problems = name_problems(name, what)
    if problems:
        raise ConfigError(problems[0])
    return str(name)


def _host_problems(host: object) -> list[str]:
    if not isinstance(host, str) or not host:
        return [f"coordinator host must be a non-empty string, got {host!r}"]
    try:
        ipaddress.ip_address(host)
        return []
    except ValueError:
        pass
    labels = host.lower().rstrip(".").split(".")
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return [f"coordinator host {host!r} is neither an IP address nor a valid DNS name"]
    return []


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (``[::1]:50443``)."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class UserPlan:
    """A person to issue a CLI identity for."""

    name: str
    role: Role


@dataclass(frozen=True, slots=True, kw_only=True)
class FederationPlan:
    """A validated federation plan; build one with :func:`parse_plan` or directly.

    Raises
    ------
    ConfigError
        Listing every problem found (bad names, duplicates, ports, lifetimes, roles).
    """

    name: str
    coordinator_host: str
    coordinator_port: int
    validity_days: int = 365
    ca_validity_days: int = 3650
    extra_hosts: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    users: tuple[UserPlan, ...] = ()

    def __post_init__(self) -> None:
        problems = name_problems(self.name, "federation name")
        for host in (self.coordinator_host, *self.extra_hosts):
            problems += _host_problems(host)
        if not 1 <= self.coordinator_port <= 65535:
            problems.append(f"coordinator_port must be 1..65535, got {self.coordinator_port!r}")
        if not 1 <= self.validity_days <= self.ca_validity_days:
            problems.append(
                f"validity_days must be 1..ca_validity_days ({self.ca_validity_days}), got {self.validity_days!r}"
            )
        problems += self._identity_problems()
        if problems:
            raise ConfigError("federation plan: " + "; ".join(problems))

    def _identity_problems(self) -> list[str]:
        problems: list[str] = []
        for site in self.sites:
            problems += name_problems(site, "site name")
        for user in self.users:
            problems += name_problems(user.name, "user name")
            if user.role not in USER_ROLES:
                allowed = [r.value for r in USER_ROLES]
                problems.append(f"user {user.name!r} role must be one of {allowed}")
        names = [*self.sites, *(u.name for u in self.users)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"names must be unique across sites and users, repeated: {dupes}")
        if COORDINATOR_NAME in names:
            problems.append(f"{COORDINATOR_NAME!r} is reserved for the coordinator")
        return problems

    @property
    def coordinator_address(self) -> str:
        """Where nodes and users dial the coordinator, ``host:port``."""
        return format_address(self.coordinator_host, self.coordinator_port)


def _get(table: dict[str, Any], key: str, kind: type, where: str, problems: list[str]) -> Any:
    value = table.get(key)
    if value is None or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    problems.append(f"{where}.{key} must be {kind.__name__}, got {value!r}")
    return None


def _entries(doc: dict[str, Any], key: str, problems: list[str]) -> list[dict[str, Any]]:
    entries = doc.get(key, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        problems.append(f"[[{key}]] must be an array of tables")
        return []
    for i, entry in enumerate(entries):
        allowed = {"name"} if key == "sites" else {"name", "role"}
        for extra in sorted(set(entry) - allowed):
            problems.append(f"{key}[{i}]: unknown key {extra!r} (allowed: {sorted(allowed)})")
    return entries


def _users(entries: list[dict[str, Any]], problems: list[str]) -> tuple[UserPlan, ...]:
    users = []
    for i, entry in enumerate(entries):
        role = entry.get("role")
        if role not in {r.value for r in USER_ROLES}:
            allowed = [r.value for r in USER_ROLES]
            problems.append(f"users[{i}].role must be one of {allowed}, got {role!r}")
            continue
        users.append(UserPlan(name=entry.get("name", ""), role=Role(role)))
    return tuple(users)


def _federation_fields(fed: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """The ``[federation]`` table's values, type-checked; absent optional keys left out."""
    problems += [f"federation: unknown key {k!r}" for k in sorted(set(fed) - set(_FEDERATION_KEYS))]
    for key in ("name", "coordinator_host", "coordinator_port"):
        if key not in fed:
            problems.append(f"federation.{key} is required")
    fields = {key: _get(fed, key, kind, "federation", problems) for key, kind in _FEDERATION_KEYS.items()}
    if fields["extra_hosts"] is not None:
        fields["extra_hosts"] = tuple(fields["extra_hosts"])
    return {key: value for key, value in fields.items() if value is not None}


def parse_plan(text: str, *, source_name: str = "<plan>") -> FederationPlan:
    """Parse a federation plan from TOML text.

    Raises
    ------
    ConfigError
        Naming ``source_name`` and every problem found.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source_name}: not valid TOML: {exc}") from None
    fed = doc.get("federation")
    if not isinstance(fed, dict):
        raise ConfigError(f"{source_name}: missing [federation] table")
    problems = [f"unknown table {k!r}" for k in sorted(set(doc) - {"federation", "sites", "users"})]
    fields = _federation_fields(fed, problems)
    sites = tuple(entry.get("name", "") for entry in _entries(doc, "sites", problems))
    users = _users(_entries(doc, "users", problems), problems)
    if problems:
        raise ConfigError(f"{source_name}: " + "; ".join(problems))
    try:
        return FederationPlan(**fields, sites=sites, users=users)
    except ConfigError as exc:
        raise ConfigError(f"{source_name}: {exc}") from None
