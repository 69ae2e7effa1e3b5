"""``python benchmarks/_medfed_cli.py ARGS`` = ``python -m medfed ARGS`` with the ``identity`` task
resolved to the torch-free :mod:`medfed.learn.identity`, whatever the installed entry point says.

Used by ``transport_speed.py --identity torch-free`` to measure node memory with and without
torch before the entry point is switched. Only the lookup of the ``medfed.tasks`` group changes;
the coordinator and node code paths are the real CLI's.
"""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint, EntryPoints, entry_points

import medfed.learn.registry as registry

TORCH_FREE = EntryPoint(name="identity", value="medfed.learn.identity:IdentityTask", group=registry.GROUP)


def _entry_points(*, group: str) -> EntryPoints:
    found = entry_points(group=group)
    if group != registry.GROUP:
        return found
    return EntryPoints([*(ep for ep in found if ep.name != "identity"), TORCH_FREE])


registry.entry_points = _entry_points  # type: ignore[assignment]  # benchmark-only lookup override

if __name__ == "__main__":
    from medfed.cli.main import main

    sys.exit(main(sys.argv[1:]))
