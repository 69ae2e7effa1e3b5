"""``medfed alerts list``: security alerts, from the coordinator's alert store or an access log.

Two modes:

* ``--state DIR`` reads the alerts a coordinator raised (``DIR/alerts.sqlite``: unusual access in its
  audit log, nodes sending anomalous updates), newest first, filtered by ``--kind`` and ``--since``.
  It only reads; whoever can read the coordinator's state directory can read its alerts (the
  alerts are also ``alert.raised`` events in the coordinator's audit log).
* ``--events FILE`` runs the access detector over an access log of JSON lines (the first
  ``--baseline-days`` are the baseline), checked against the user store's token like the other
  people commands (:mod:`medfed.cli.people_cmds`). With ``--relations DIR`` it explains each patient
  access by the hospital's relationship tables (:mod:`medfed.security.access_explain`) and lists the
  unexplained and rule-hit cases, best first, up to ``--budget``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from medfed.core.errors import ConfigError

__all__ = ["register"]


def register(sub: Any) -> None:  # argparse's _SubParsersAction is private; typed loosely on purpose
    """Add ``alerts list`` to the ``medfed`` parser (dispatched as a people command)."""
    alerts = sub.add_parser("alerts", help="security alerts: the coordinator's alert store, or detect over a log")
    lst = alerts.add_subparsers(dest="action", required=True).add_parser(
        "list", help="list the coordinator's alerts (--state) or detect over an access log (--events)"
    )
    mode = lst.add_mutually_exclusive_group(required=True)
    mode.add_argument("--state", type=Path, help="the coordinator's state directory (reads DIR/alerts.sqlite)")
    mode.add_argument("--events", type=Path, help="access events as JSON lines (detect now)")
    lst.add_argument("--kind", help="--state: only alerts of this kind (e.g. failed_logins, norm_outlier)")
    lst.add_argument("--since-hours", type=float, help="--state: only alerts of the last N hours")
    lst.add_argument("--limit", type=int, default=500, help="--state: at most this many (default 500)")
    lst.add_argument("--baseline-days", type=float, help="--events: the first N days are the normal baseline")
    lst.add_argument("--site", help="--events: the site whose log this is (for authorisation)")
    lst.add_argument("--seed", type=int, default=0, help="--events: the detector's seed")
    lst.add_argument("--users-db", type=Path, help="--events: the user store (SQLite)")
    lst.add_argument("--key-file", type=Path, help="--events: keyring of the user store (default: $MEDFED_DATA_KEY)")
    lst.add_argument("--relations", type=Path, help="--events: relationship tables (explanation-based auditing)")
    lst.add_argument("--budget", type=int, default=50, help="--relations: review at most N cases (default 50)")
    lst.add_argument("--json", action="store_true", help="one JSON object per alert")
    lst.set_defaults(people=_list)


def _list(args: argparse.Namespace) -> int:
    if args.relations is not None and args.events is None:
        raise ConfigError("alerts list --relations explains an access log: give it with --events FILE")
    if args.events is not None:
        needed = ("site", "users_db") if args.relations is not None else ("baseline_days", "site", "users_db")
        missing = [f"--{n.replace('_', '-')}" for n in needed if getattr(args, n) is None]
        if missing:
            raise ConfigError(f"alerts list --events also needs {', '.join(missing)}")
        from medfed.cli import people_cmds

        if args.relations is not None:
            return _explained(args)
        # the detector-over-a-log mode lives with the people commands' token checks
        return int(people_cmds._alerts(args))
    return _from_store(args)


def _explained(args: argparse.Namespace) -> int:
    """Explanation-based auditing of ``--events`` against ``--relations``; with ``--baseline-days`` the
    anomaly detector runs first. Cases go to the audit log and stdout like the detector's alerts."""
    from medfed.cli import people_cmds
    from medfed.security.access_anomaly import parse_access_events
    from medfed.security.access_explain import Explanation, case_fields, explain, load_relations, rank_cases
    from medfed.security.authz import Action, Resource, authorize

    if args.budget < 1:
        raise ConfigError(f"--budget must be >= 1, got {args.budget}")
    if args.baseline_days is not None:
        people_cmds._alerts(args)  # checks the token and authorisation itself
    else:
        me = people_cmds._principal(people_cmds._store(args))
        if authorize(me, Action.ALERT_READ, Resource.site(args.site)).emergency:
            people_cmds._audit("authz.emergency", {"user": me.user_id, "action": Action.ALERT_READ.value,
                                                   "site": args.site})  # fmt: skip
    relations = load_relations(args.relations)
    try:
        with args.events.open(encoding="utf-8") as f:
            events = parse_access_events(f, where=str(args.events))
    except OSError as exc:
        raise ConfigError(f"cannot read {args.events}: {exc.strerror}") from None
    cases = explain(events, relations)
    ranked = rank_cases(cases)
    for case in ranked[: args.budget]:
        fields = case_fields(case)
        people_cmds._audit("security.access_alert", {"site": args.site, **fields})
        if args.json:
            print(json.dumps(fields, sort_keys=True))
            continue
        print(f"{_when(case.day_start)[:10]}  {case.user:<16} patient {case.patient}  {fields['kinds']}"
              f"  score {case.score:.2f}  ({case.accesses} accesses)")  # fmt: skip
        for reason in case.reasons:
            print(f"    {reason}")
    if not args.json:
        explained = sum(c.accesses for c in cases if c.explanation is not Explanation.NONE)
        total = sum(c.accesses for c in cases)
        print(f"{min(len(ranked), args.budget)} of {len(ranked)} flagged cases shown; "
              f"{explained} of {total} patient accesses explained by a relationship")  # fmt: skip
    return 0


def _from_store(args: argparse.Namespace) -> int:
    from medfed.security.alerts import AlertStore

    path = args.state / "alerts.sqlite"
    if not path.is_file():
        raise ConfigError(f"{path}: no alert store (is {args.state} a coordinator's state directory?)")
    if args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    since = 0.0 if args.since_hours is None else time.time() - args.since_hours * 3600.0
    store = AlertStore(path)
    try:
        alerts = store.list(since=since, kind=args.kind, limit=args.limit)
    finally:
        store.close()
    for a in alerts:
        if args.json:
            print(json.dumps(a.as_dict(), sort_keys=True))
            continue
        where = f" job {a.job_id} round {a.round}" if a.job_id else ""
        print(f"{_when(a.at)}  {a.source.value:<7} {a.subject:<16} {a.kind}{where}  score {a.score:.3g}")
        print(f"    {a.reason}")
    if not args.json:
        print(f"{len(alerts)} alert(s) in {path}")
    return 0


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
