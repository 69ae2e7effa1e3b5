"""Keyed pseudonyms: HMAC-SHA256 of an identifier under a site-local secret key (RFC 2104).

A site keeps patient identifiers it must look up later (consent decisions) as pseudonyms, so its
files at rest hold no identifier: the same id always maps to the same pseudonym under one key, and
without the key a pseudonym cannot be reversed or even confirmed by hashing guessed ids (which a
plain SHA-256 of a medical record number would allow: record numbers are few and guessable).
"""

from __future__ import annotations

import hashlib
import hmac
import os

from medfed.core.errors import ValidationError

__all__ = ["KEY_BYTES", "PREFIX", "Pseudonymizer", "new_pseudonym_key"]

KEY_BYTES = 32
#: Marks a stored value as a pseudonym (and the scheme: HMAC-SHA256, version 1).
PREFIX = "h1:"


def new_pseudonym_key() -> bytes:
    """A fresh random key (32 bytes from the OS's CSPRNG)."""
    return os.urandom(KEY_BYTES)


class Pseudonymizer:
    """``pseudonym(value) = "h1:" + hex(HMAC-SHA256(key, UTF-8 value))``."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValidationError(f"a pseudonym key has {KEY_BYTES} bytes, got {len(key)}", where="pseudonym key")
        self._key = key

    def __call__(self, value: str) -> str:
        return PREFIX + hmac.new(self._key, value.encode("utf-8"), hashlib.sha256).hexdigest()

    @property
    def fingerprint(self) -> str:
        """Identifies the key (SHA-256 of a fixed label under it), without revealing it."""
        return hmac.new(self._key, b"medfed pseudonym key fingerprint", hashlib.sha256).hexdigest()[:16]

    @staticmethod
    def is_pseudonym(value: str) -> bool:
        return value.startswith(PREFIX) and len(value) == len(PREFIX) + 64
