"""``python benchmarks/_medfed_cli.py MODULE:CLASS ARGS`` = ``python -m medfed ARGS`` with the
``identity`` task resolved to ``MODULE:CLASS``, whatever the installed entry point says.

Used by ``transport_speed.py --identity torch|torch-free`` to compare node memory with the torch
identity task (``medfed.learn.tasks:IdentityTask``) and the torch-free one
(``medfed.learn.identity:IdentityTask``). Only the lookup of the ``medfed.tasks`` group changes;
the coordinator and node code paths are the real CLI's.
"""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint, EntryPoints, entry_points

import medfed.learn.registry as registry


def _override(target: str) -> None:
    replacement = EntryPoint(name="identity", value=target, group=registry.GROUP)

    def lookup(*, group: str) -> EntryPoints:
        found = entry_points(group=group)
        if group != registry.GROUP:
            return found
        return EntryPoints([*(ep for ep in found if ep.name != "identity"), replacement])

    registry.entry_points = lookup  # type: ignore[assignment]  # benchmark-only lookup override


if __name__ == "__main__":
    _override(sys.argv[1])
    from medfed.cli.main import main

    sys.exit(main(sys.argv[2:]))
