"""``medfed approvals``: a site admin decides which job specs may run on the site's data.

The commands work on the node's own files, on the machine that holds them: its approvals store
(``state_dir/approvals.db``) and its hash-chained audit log (``state_dir/audit.sqlite``), where
every decision becomes an ``approval.decided`` event (verify with ``medfed audit verify``). The
acting person is identified by an API token, as for the other people commands
(:mod:`medfed.cli.people_cmds`), and every decision is checked with
:func:`medfed.security.authz.authorize`.

Name the site by its ``--config site.toml`` (preferred): the site name, the state directory and
the datasets come from it, so an approval pins the content fingerprint of the dataset it covers
as the admin approves it, and ``list`` says whether each dataset still matches. With
``--approvals-db FILE --site NAME`` instead, the audit log is the one next to FILE and the node
pins the fingerprint when it next reads the dataset.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medfed.cli.people_cmds import _audit, _principal, _store, _when
from medfed.core.errors import ConfigError
from medfed.security.authz import Action, Principal, Resource, authorize

__all__ = ["register"]


def register(sub: Any) -> None:  # argparse's _SubParsersAction is private; typed loosely on purpose
    """Add ``approvals`` to the ``medfed`` parser (called by :func:`medfed.cli.people_cmds.register`)."""
    approvals = sub.add_parser("approvals", help="a site's approval of job specs (on by default at every site)")
    asub = approvals.add_subparsers(dest="action", required=True)
    lst = asub.add_parser("list", help="specs seen at this site (default: pending), with their datasets' state")
    lst.add_argument("--state", choices=["pending", "approved", "rejected", "all"], default="pending")
    show = asub.add_parser("show", help="a spec's text, decision and diff from the last approved one")
    approve = asub.add_parser("approve", help="approve a spec by hash (a prefix of 8+ hex digits)")
    approve.add_argument("--expires-days", type=float, help="the approval lapses after this many days")
    reject = asub.add_parser("reject", help="reject a spec, or withdraw its approval")
    for p in (show, approve, reject):
        p.add_argument("spec_hash")
    for p in (approve, reject):
        p.add_argument("--reason", required=p is reject, default="")
    rule = asub.add_parser("rule", help="standing rules: advance approval of every matching spec")
    rsub = rule.add_subparsers(dest="rule_action", required=True)
    radd = rsub.add_parser("add", help="cover task X on dataset Y for purpose Z by researcher R ('*' for any)")
    for key in ("task", "dataset", "purpose", "researcher", "reason"):
        radd.add_argument(f"--{key}", required=True)
    radd.add_argument("--expires-days", type=float, help="the rule lapses after this many days")
    rrevoke = rsub.add_parser("revoke", help="revoke a standing rule by id")
    rrevoke.add_argument("rule_id")
    rrevoke.add_argument("--reason", default="")
    for p in (lst, show, approve, reject, radd, rrevoke):
        p.add_argument("--config", type=Path, help="the site's site.toml (site, state directory, datasets)")
        p.add_argument("--approvals-db", type=Path, help="without --config: the node's approvals store (SQLite)")
        p.add_argument("--site", help="without --config: the site's name")
        p.add_argument("--users-db", type=Path, required=True)
        p.add_argument("--key-file", type=Path, help="keyring of the user store (default: $MEDFED_DATA_KEY)")
        p.set_defaults(people=_approvals)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Site:
    name: str
    state_dir: Path
    approvals_file: Path
    datasets: dict[str, Any] | None  # name -> DatasetConfig when site.toml was given
    fingerprints: Any = None  # a FingerprintCache: each dataset hashed once per command


def _site(args: argparse.Namespace) -> _Site:
    if args.config is not None:
        from medfed.cli.config import load_node_config

        settings = load_node_config(args.config).settings
        if args.site and args.site != settings.site:
            raise ConfigError(f"--site {args.site!r} is not the site of {args.config} ({settings.site!r})")
        state = settings.state_dir
        if state is None:  # load_node_config always sets one; kept for the type
            raise ConfigError(f"{args.config}: no [node] state_dir")
        from medfed.node.fingerprints import FingerprintCache

        return _Site(name=settings.site, state_dir=state, approvals_file=state / "approvals.db",
                     datasets=dict(settings.datasets), fingerprints=FingerprintCache())  # fmt: skip
    if args.approvals_db is None or not args.site:
        raise ConfigError("medfed approvals needs --config site.toml, or --approvals-db FILE and --site NAME")
    return _Site(name=args.site, state_dir=args.approvals_db.parent, approvals_file=args.approvals_db, datasets=None)


def _approvals(args: argparse.Namespace) -> int:
    from medfed.security.approvals import ApprovalState, open_site_approvals

    site = _site(args)  # a missing --config or --site is named before anyone is asked to log in
    me = _principal(_store(args))
    decision = authorize(me, Action.APPROVAL_READ, Resource.site(site.name))
    if decision.emergency:
        _audit("authz.emergency", {"user": me.user_id, "action": Action.APPROVAL_READ.value, "site": site.name})
    approvals = open_site_approvals(site.state_dir, site=site.name, note=_audit, approvals_file=site.approvals_file)
    try:
        if args.action == "rule":
            return _rule(args, approvals, me, site)
        if args.action == "list":
            _list(
                approvals, site, None if args.state == "all" else ApprovalState(args.state), rules=args.state == "all"
            )
            return 0
        return _decide(args, approvals, me, site)
    finally:
        approvals.close()


def _decide(args: argparse.Namespace, approvals: Any, me: Principal, site: _Site) -> int:
    a = approvals.find(args.spec_hash)
    if args.action == "show":
        print(
            f"spec {a.spec_hash}\nstate {a.state.value}" + (f" by {a.decided_by}: {a.reason}" if a.decided_by else "")
        )
        print(f"job {a.job_id} {a.name!r} by {a.researcher}; purpose {a.purpose!r}; expires {_when(a.expires_at)}")
        print(f"data: {_data_state(approvals.pins(a.spec_hash), a.dataset, site)}")
        print("---\n" + approvals.spec_text(a.spec_hash).rstrip("\n") + "\n---")
        diff = approvals.diff(a.spec_hash)
        print(diff if diff else "(no earlier approved spec of this job to compare with)")
    elif args.action == "approve":
        expires = None if args.expires_days is None else time.time() + args.expires_days * 86400
        pins = _fingerprints(site, a.dataset)
        a = approvals.approve(a.spec_hash, by=me, reason=args.reason, expires_at=expires, fingerprints=pins)
        print(f"approved {a.spec_hash[:16]} (job {a.name!r}) for purpose {a.purpose!r} until {_when(a.expires_at)}")
        print(_pinned_line(pins, a.dataset, site))
    else:
        a = approvals.reject(a.spec_hash, by=me, reason=args.reason)
        print(f"rejected {a.spec_hash[:16]} (job {a.name!r}): {a.reason}")
    return 0


def _list(approvals: Any, site: _Site, state: Any, *, rules: bool) -> None:
    for a in approvals.approvals(state):
        note = f"; {a.reason}" if a.reason and a.state.value == "pending" else ""
        print(f"{a.spec_hash[:16]}  {a.state.value:<8} job {a.job_id} {a.name!r} by {a.researcher}, "
              f"task {a.task} on {a.dataset} for {a.purpose!r}, submitted {_when(a.submitted_at)}, "
              f"expires {_when(a.expires_at)}{note}")  # fmt: skip
        if a.state.value != "rejected":  # a rejection pins nothing
            print(f"{'':18}data: {_data_state(approvals.pins(a.spec_hash), a.dataset, site)}")
    for r in approvals.rules() if rules else []:
        print(f"rule {r.rule_id}: {r.task} on {r.dataset} for {r.purpose!r} by {r.researcher}"
              f"{' (revoked)' if r.revoked else ''}, until {_when(r.expires_at)}; "
              f"data: {_data_state(approvals.pins(f'rule:{r.rule_id}'), r.dataset, site)}")  # fmt: skip


def _current(site: _Site, dataset: str) -> str | None:
    """The dataset's fingerprint now ('' for a database); ``None`` when unknown here."""
    if site.datasets is None or dataset not in site.datasets:
        return None
    return str(site.fingerprints.current(site.datasets[dataset]))


def _fingerprints(site: _Site, dataset: str) -> dict[str, str]:
    current = _current(site, dataset)
    return {dataset: current} if current else {}


def _data_state(pins: dict[str, str], dataset: str, site: _Site) -> str:
    """Whether ``dataset`` still holds what the decision pinned."""
    pinned = pins.get(dataset, "")
    current = _current(site, dataset)
    if not pinned:
        if current == "":
            return f"{dataset} is read from a database: no fingerprint to pin"
        return f"{dataset} not pinned yet (the node pins it when it next reads the dataset)"
    if current is None:
        return f"{dataset} pinned at {pinned[:12]}… (give --config site.toml to compare with the data now)"
    if current == pinned:
        return f"{dataset} unchanged since the decision ({pinned[:12]}…)"
    return f"{dataset} CHANGED since the decision (was {pinned[:12]}…, now {current[:12]}…): re-approval needed"


def _pinned_line(pins: dict[str, str], dataset: str, site: _Site) -> str:
    if pins:
        return f"dataset {dataset}: fingerprint {pins[dataset][:12]}… pinned"
    if site.datasets is None:
        return f"dataset {dataset}: no --config, so the node pins its fingerprint when it next reads it"
    if dataset in site.datasets:
        return f"dataset {dataset}: read from a database, no fingerprint to pin"
    return f"dataset {dataset}: not declared in this site.toml, nothing pinned"


def _rule(args: argparse.Namespace, approvals: Any, me: Principal, site: _Site) -> int:
    from medfed.security.approvals import StandingRule

    if args.rule_action == "revoke":
        approvals.revoke_rule(args.rule_id, by=me, reason=args.reason)
        print(f"revoked standing rule {args.rule_id}")
        return 0
    expires = None if args.expires_days is None else time.time() + args.expires_days * 86400
    draft = StandingRule(
        rule_id="", task=args.task, dataset=args.dataset, purpose=args.purpose, researcher=args.researcher,
        created_by="", created_at=0.0, expires_at=expires, reason=args.reason,
    )  # fmt: skip
    pins = _fingerprints(site, args.dataset)
    added = approvals.add_rule(draft, by=me, fingerprint=pins.get(args.dataset, ""))
    print(f"standing rule {added.rule_id}: {added.task} on {added.dataset} for {added.purpose!r} by {added.researcher}"
          f" until {_when(added.expires_at)}")  # fmt: skip
    print(_pinned_line(pins, args.dataset, site))
    return 0
