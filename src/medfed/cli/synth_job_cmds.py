"""``medfed synth submit|result``: federated synthesis jobs, as the person logged in.

A synthesis job is a job file with a ``[synthesis]`` table instead of a task (see
``docs/synthetic-data.md``). ``submit`` checks that the table is there, sends the file to the
coordinator and, with ``--wait``, follows the job and prints each site's rows and ε and each
left-out site's reason; ``--out`` writes the combined table (CSV). ``result`` does the same for a
job already submitted (``medfed job result`` prints it too).

Both talk to the coordinator through :func:`medfed.cli.client.coordinator_client`: the person's
API token (``--token-file``, ``$MEDFED_TOKEN``) or login session (``medfed login --config``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from medfed.cli.client import add_client_args, coordinator_client
from medfed.core.errors import ConfigError, JobError

__all__ = ["print_synthesis", "register"]

FINISHED = ("completed", "failed", "cancelled")


def register(ssub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``submit`` and ``result`` to ``medfed synth``'s sub-parsers."""
    s = ssub.add_parser("submit", help="submit a synthesis job (a job file with a [synthesis] table)")
    s.add_argument("spec", type=Path)
    s.add_argument("--wait", action="store_true", help="wait for the job and print its sites and reasons")
    s.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait with --wait")
    s.add_argument("--out", type=Path, help="with --wait: write the combined synthetic table (CSV) here")
    s.set_defaults(synth_handler=_submit)
    r = ssub.add_parser("result", help="print a synthesis job's result; --out writes its combined table")
    r.add_argument("job_id")
    r.add_argument("--out", type=Path, help="write the combined synthetic table (CSV) here")
    r.set_defaults(synth_handler=_result)
    for p in (s, r):
        add_client_args(p)


def _spec_text(spec: Path) -> str:
    """The job file's text, refused here when it has no ``[synthesis]`` table (a training or query job)."""
    from medfed.cli.config import read_toml

    doc = read_toml(spec)
    if not isinstance(doc.get("synthesis"), dict):
        raise ConfigError(
            f"{spec}: no [synthesis] table: this is not a synthesis job "
            "(submit training jobs with medfed job submit, queries with medfed query submit)"
        )
    return spec.read_text(encoding="utf-8")


def _submit(args: argparse.Namespace) -> int:
    text = _spec_text(args.spec)
    with coordinator_client(args) as client:
        view = client.submit_job(text, str(args.spec))
        print(f"synthesis job {view['job_id']} submitted ({view['name']}, spec sha256 {view['spec_hash'][:12]})")
        if not args.wait:
            return 0
        deadline = time.monotonic() + args.timeout
        while view["state"] not in FINISHED:
            if time.monotonic() > deadline:
                raise JobError(f"synthesis job {view['job_id']} still {view['state']} after {args.timeout:.0f}s")
            time.sleep(0.2)
            view = client.get_job(view["job_id"])
    print_synthesis(view, args.out)
    return 0


def _result(args: argparse.Namespace) -> int:
    with coordinator_client(args) as client:
        view = client.get_job(args.job_id)
    print_synthesis(view, args.out)
    return 0


def print_synthesis(view: dict[str, Any], out: Path | None) -> None:
    """Print a synthesis job's sites and reasons; with ``out``, write its combined table (CSV).

    Raises
    ------
    JobError
        The job has no synthesis result (not finished, failed, or not a synthesis job).
    """
    from medfed.coordinator.synthesis import describe, result_from_json
    from medfed.security.fsio import atomic_write

    if "synthesis_result" not in view:
        reason = view.get("error") or "no synthesis result"
        raise JobError(f"job {view.get('job_id')} is {view.get('state')}: {reason}")
    outcome = result_from_json(view["synthesis_result"])
    print(f"job {view['job_id']} ({view['name']}): {view['state']}")
    print("\n".join(describe(outcome)))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, outcome.combined.to_csv(index=False).encode("utf-8"))
        print(f"combined synthetic table written to {out}")
