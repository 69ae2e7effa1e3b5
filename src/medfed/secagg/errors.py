"""Errors of the secure-aggregation protocol, placed in medfed's one exception tree::

    MedfedError
    ├── JobError
    │   └── SecAggError        the round cannot be unmasked (too few survivors or shares, bad messages)
    └── PermissionDenied
        └── UnmaskRefused      a node refuses a request that would let the coordinator unmask it

Both keep their parent's ``kind``, so they travel between node and coordinator as the parent.
"""

from __future__ import annotations

from medfed.core.errors import JobError, PermissionDenied

__all__ = ["SecAggError", "UnmaskRefused"]


class SecAggError(JobError):
    """A secure-aggregation round cannot go on: too few nodes or shares, or malformed messages."""


class UnmaskRefused(PermissionDenied):
    """A node refused an unmasking request (e.g. both kinds of share for the same node)."""
