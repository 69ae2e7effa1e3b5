"""``medfed query submit|result``: federated queries as jobs, their results as tables and HTML.

A query file is a job file with a ``[query]`` table instead of a task (see ``docs/analytics.md``)::

    [job]
    name = "age-adjusted-odds"
    dataset = "heart"

    [query]
    kind = "glm_stats"
    family = "logistic"
    outcome = "label"
    covariates = ["age", "sex"]
    where = ["age >= 40"]

``submit --wait`` follows the job and prints the result like ``result`` does: the combined tables
(:func:`medfed.cli.query_views.print_result`) and which sites refused and why; ``--html`` writes the
report page (Kaplan–Meier curves with their confidence bands).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from medfed.cli.client import add_client_args, coordinator_client
from medfed.cli.query_views import print_result
from medfed.coordinator.queries import result_from_json, write_report
from medfed.core.errors import ConfigError, JobError

__all__ = ["COMMANDS", "dispatch", "print_query", "register"]

COMMANDS = ("query",)
FINISHED = ("completed", "failed", "cancelled")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``query submit|result`` to the top-level sub-parsers."""
    query = sub.add_parser("query", help="federated queries: counts, statistics, survival curves, regression")
    qsub = query.add_subparsers(dest="action", required=True)
    s = qsub.add_parser("submit", help="submit a query file (a job file with a [query] table)")
    s.add_argument("spec", type=Path)
    s.add_argument("--wait", action="store_true", help="wait for the result and print it")
    s.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait with --wait")
    s.add_argument("--html", type=Path, help="with --wait: write the HTML report here")
    s.set_defaults(query_handler=_submit)
    r = qsub.add_parser("result", help="print a query job's result")
    r.add_argument("job_id")
    r.add_argument("--html", type=Path, help="also write the HTML report here")
    r.set_defaults(query_handler=_result)
    for p in (s, r):
        add_client_args(p)  # --config client.toml, --token-file (else the login session, else $MEDFED_TOKEN)


def dispatch(args: argparse.Namespace) -> int:
    handler: Any = args.query_handler
    return int(handler(args))


def _submit(args: argparse.Namespace) -> int:
    try:
        text = args.spec.read_text()
    except OSError as exc:
        raise ConfigError(f"{args.spec}: {exc.strerror or exc}") from None
    with coordinator_client(args) as client:
        view = client.submit_job(text, str(args.spec))
        print(f"query job {view['job_id']} submitted ({view['name']}, spec sha256 {view['spec_hash'][:12]})")
        if not args.wait:
            return 0
        deadline = time.monotonic() + args.timeout
        while view["state"] not in FINISHED:
            if time.monotonic() > deadline:
                raise JobError(f"query job {view['job_id']} still {view['state']} after {args.timeout:.0f}s")
            time.sleep(0.2)
            view = client.get_job(view["job_id"])
        print_query(view, html=args.html)
    return 0


def _result(args: argparse.Namespace) -> int:
    with coordinator_client(args) as client:
        print_query(client.get_job(args.job_id), html=args.html)
    return 0


def print_query(view: dict[str, Any], *, html: Path | None = None, console: Console | None = None) -> None:
    """Print a finished query job's result and refusals; raise :class:`JobError` if it has none."""
    out = console or Console()
    if view.get("state") != "completed" or "query_result" not in view:
        reason = view.get("error") or "no query result"
        raise JobError(f"query job {view.get('job_id')} is {view.get('state')}: {reason}")
    outcome = result_from_json(view["query_result"])
    print_result(outcome.result, console=out)
    if outcome.refusals:
        table = Table(title="sites left out")
        table.add_column("site")
        table.add_column("reason")
        for site, reason in sorted(outcome.refusals.items()):
            table.add_row(site, reason)
        out.print(table)
    out.print(f"{outcome.rounds} round(s) of questions to the sites")
    if html is not None:
        write_report(outcome, str(view.get("name") or view["job_id"]), html)
        out.print(f"report written to {html}")
