"""The CA's record of issued identities, kept in ``ca/serials.json``.

Serials are stored as hex strings (``"0x…"``): they are 159-bit numbers, which JSON tools that
read numbers as doubles (JavaScript, ``jq``) would round.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, replace
from typing import Any

from medfed.core.errors import ConfigError
from medfed.core.records import Role

__all__ = ["IssuedIdentity", "Registry"]

_FORMAT = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedIdentity:
    """One certificate the federation's CA issued.

    Attributes
    ----------
    name, role : str, Role
        The subject's common name and organisational unit.
    serial : int
        The certificate serial (what a CRL lists).
    issued_at, not_after : datetime
        When it was issued and when it expires (UTC).
    kit : str
        The kit directory relative to the federation directory, e.g. ``sites/cleveland``.
    revoked_at : datetime or None
        When it was revoked, if it was.
    """

    name: str
    role: Role
    serial: int
    issued_at: dt.datetime
    not_after: dt.datetime
    kit: str
    revoked_at: dt.datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.value,
            "serial": f"{self.serial:#x}",
            "issued_at": self.issued_at.isoformat(),
            "not_after": self.not_after.isoformat(),
            "kit": self.kit,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> IssuedIdentity:
        revoked = raw.get("revoked_at")
        return cls(
            name=str(raw["name"]),
            role=Role(raw["role"]),
            serial=int(str(raw["serial"]), 16),
            issued_at=dt.datetime.fromisoformat(raw["issued_at"]),
            not_after=dt.datetime.fromisoformat(raw["not_after"]),
            kit=str(raw["kit"]),
            revoked_at=dt.datetime.fromisoformat(revoked) if revoked else None,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Registry:
    """Federation facts and every identity issued, oldest first."""

    federation: str
    coordinator: str
    validity_days: int
    crl_number: int = 1
    identities: tuple[IssuedIdentity, ...] = ()

    def active(self, name: str) -> IssuedIdentity | None:
        """The unrevoked identity called ``name``, if any."""
        for identity in self.identities:
            if identity.name == name and not identity.revoked:
                return identity
        return None

    def latest(self, name: str) -> IssuedIdentity | None:
        """The most recently issued identity called ``name``, revoked or not."""
        matches = [i for i in self.identities if i.name == name]
        return matches[-1] if matches else None

    def revoked_serials(self) -> dict[int, dt.datetime]:
        """Serial to revocation time, for :func:`medfed.crypto.build_crl`."""
        return {i.serial: i.revoked_at for i in self.identities if i.revoked_at is not None}

    def with_identity(self, identity: IssuedIdentity) -> Registry:
        return replace(self, identities=(*self.identities, identity))

    def with_revocation(self, serial: int, when: dt.datetime) -> Registry:
        identities = tuple(replace(i, revoked_at=when) if i.serial == serial else i for i in self.identities)
        return replace(self, identities=identities, crl_number=self.crl_number + 1)

    def to_json(self) -> bytes:
        doc = {
            "format": _FORMAT,
            "federation": self.federation,
            "coordinator": self.coordinator,
            "validity_days": self.validity_days,
            "crl_number": self.crl_number,
            "identities": [i.to_dict() for i in self.identities],
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, *, source: str) -> Registry:
        """Parse ``serials.json``; :class:`ConfigError` names ``source`` if it is malformed."""
        try:
            doc = json.loads(data)
            if doc.get("format") != _FORMAT:
                raise ValueError(f"unsupported format {doc.get('format')!r}")
            return cls(
                federation=str(doc["federation"]),
                coordinator=str(doc["coordinator"]),
                validity_days=int(doc["validity_days"]),
                crl_number=int(doc["crl_number"]),
                identities=tuple(IssuedIdentity.from_dict(i) for i in doc["identities"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{source}: not a medfed identity registry: {exc!r}") from None
