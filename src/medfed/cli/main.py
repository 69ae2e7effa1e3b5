"""``medfed``: the command line. Parses arguments, loads configuration, calls the layers below.

Exit codes: 0 success, 1 a medfed error (message on stderr), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from medfed import __version__
from medfed.core.errors import MedfedError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medfed", description="Federated learning for healthcare sites.")
    p.add_argument("--version", action="version", version=f"medfed {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the four-hospital Fed-Heart-Disease demo federation")
    demo.add_argument("--workdir", type=Path, help="keep the federation here (default: a temporary directory)")
    demo.add_argument("--rounds", type=int, default=15)
    demo.add_argument("--strategy", default="", help="override the demo's strategy (default: tuned best)")
    demo.add_argument("--report", type=Path, default=Path("medfed-demo-report.html"))
    demo.add_argument("--dp", action="store_true", help="DP-SGD at every hospital, charged to its budget ledger")
    demo.add_argument("--dashboard", nargs="?", const="127.0.0.1:0", default="", metavar="127.0.0.1:PORT",
                      help="serve the dashboard (HTTPS, loopback; default any free port) with demo logins")  # fmt: skip
    demo.add_argument("--keep-open", action="store_true", help="after the job, keep the federation up until Ctrl-C")
    demo.add_argument("--totp-code", default="", metavar="USER", help="print a demo person's TOTP code (--workdir)")

    prov = sub.add_parser("provision", help="create a federation's PKI and startup kits, or change it")
    prov.add_argument("plan", type=Path, nargs="?", help="federation plan (TOML) for a new federation")
    prov.add_argument("--out", type=Path, required=True, help="the federation directory")
    change = prov.add_mutually_exclusive_group()
    change.add_argument("--add-site", metavar="NAME", help="issue a kit for a new site")
    change.add_argument("--add-user", metavar="NAME", help="issue a kit for a person (needs --role)")
    change.add_argument("--revoke", metavar="NAME", help="revoke a site's or person's certificate")
    prov.add_argument("--role", choices=["researcher", "admin"], help="role for --add-user")

    coord = sub.add_parser("coordinator", help="run the coordinator")
    csub = coord.add_subparsers(dest="action", required=True)
    cstart = csub.add_parser("start")
    cstart.add_argument("--kit", type=Path, required=True, help="the coordinator's startup kit directory")
    cstart.add_argument("--state", type=Path, required=True, help="state directory (SQLite, checkpoints, reports)")
    cstart.add_argument("--listen", default="127.0.0.1:50443", help="host:port for nodes and people (mTLS)")
    cstart.add_argument("--heartbeat", type=float, default=5.0, help="node heartbeat interval in seconds")
    cstart.add_argument(
        "--request-skew",
        type=float,
        default=120.0,
        help="refuse a signed call whose time is more than this many seconds from ours (replay window)",
    )
    cstart.add_argument(
        "--https",
        metavar="HOST:PORT",
        help="also serve the web dashboard over HTTPS (TLS 1.2+, the kit's certificate) on HOST:PORT, e.g. "
        "127.0.0.1:8443; needs a user store (--users): people log in with password + TOTP",
    )
    cstart.add_argument("--alert-scan", type=float, default=60.0, help="scan for security alerts every N s (0: off)")
    cstart.add_argument(
        "--key-file", type=Path, help="keyring (medfed keys generate) to encrypt checkpoints and models at rest"
    )
    cstart.add_argument(
        "--users",
        type=Path,
        help="user store (medfed users add --users-db): people then log in (medfed login --config) and the role "
        "matrix decides each call; default: <state>/users.db if it exists, else certificates alone",
    )

    node = sub.add_parser("node", help="run or check a site's node")
    nsub = node.add_subparsers(dest="action", required=True)
    for name in ("start", "check", "budget"):
        n = nsub.add_parser(name)
        n.add_argument("--config", type=Path, required=True, help="the site's site.toml")
    from medfed.cli import node_page_cmds  # --page: the node's local page

    node_page_cmds.add_arguments(nsub.choices["start"])

    priv = sub.add_parser("privacy", help="DP accounting: ε of a DP-SGD plan, or σ for a target ε")
    psub = priv.add_subparsers(dest="action", required=True)
    for name, what in (("epsilon", "ε of a DP-SGD plan"), ("calibrate", "smallest σ reaching a target ε")):
        pp = psub.add_parser(name, help=what)
        pp.add_argument("--rows", type=int, required=True, help="training rows at the site")
        pp.add_argument("--batch", type=int, required=True, help="expected batch size (q = batch / rows)")
        pp.add_argument("--steps", type=int, required=True, help="DP-SGD steps in total (rounds × local steps)")
        pp.add_argument("--delta", type=float, default=1e-5)
        pp.add_argument("--accountant", default="pld", choices=["pld", "rdp"])
        if name == "epsilon":
            pp.add_argument("--noise", type=float, required=True, help="noise multiplier σ")
        else:
            pp.add_argument("--target-epsilon", type=float, required=True)

    job = sub.add_parser("job", help="submit and follow jobs")
    jsub = job.add_subparsers(dest="action", required=True)
    submit = jsub.add_parser("submit")
    submit.add_argument("spec", type=Path)
    submit.add_argument("--watch", action="store_true")
    for name in ("status", "watch", "cancel"):
        j = jsub.add_parser(name)
        j.add_argument("job_id")
    result = jsub.add_parser("result")
    result.add_argument("job_id")
    result.add_argument("--out", type=Path, help="write the final model here (.npz, no pickle)")
    result.add_argument("--json", action="store_true", help="print the full job view as JSON")
    jsub.add_parser("list")
    from medfed.cli.client import add_client_args  # --config client.toml, --token-file

    for j in (submit, result, *(jsub.choices[n] for n in ("status", "watch", "cancel", "list"))):
        add_client_args(j)

    # each area registers its own commands: data/catalog, users/login/approvals/alerts, audit/backup/keys, synth
    from medfed.cli import consent_cmds, data_cmds, people_cmds, security_cmds, synth_cmds

    data_cmds.register(sub)
    consent_cmds.register(sub)
    people_cmds.register(sub)
    security_cmds.register(sub)
    synth_cmds.register(sub)
    from medfed.cli import query_cmds

    query_cmds.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        from medfed.cli import commands

        return commands.dispatch(args)
    except MedfedError as exc:
        print(f"medfed: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
