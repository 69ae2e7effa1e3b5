"""``medfed approvals``: a site admin decides which job specs may run on the site's data.

The commands work on the node's own files, on the machine that holds them: its approvals store
(``state_dir/approvals.db``). The acting person is identified by an API token, as for the other
people commands (:mod:`medfed.cli.people_cmds`), and every decision is checked with
:func:`medfed.security.authz.authorize`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from medfed.cli.people_cmds import _audit, _principal, _store, _when
from medfed.security.authz import Action, Principal, Resource, authorize

__all__ = ["register"]


def register(sub: Any) -> None:  # argparse's _SubParsersAction is private; typed loosely on purpose
    """Add ``approvals`` to the ``medfed`` parser (called by :func:`medfed.cli.people_cmds.register`)."""
    approvals = sub.add_parser("approvals", help="a site's approval of job specs")
    asub = approvals.add_subparsers(dest="action", required=True)
    lst = asub.add_parser("list", help="specs seen at this site (default: pending)")
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
    radd.add_argument("--expires-days", type=float)
    rrevoke = rsub.add_parser("revoke", help="revoke a standing rule by id")
    rrevoke.add_argument("rule_id")
    for p in (lst, show, approve, reject, radd, rrevoke):
        p.add_argument("--approvals-db", type=Path, required=True, help="the node's approvals store (SQLite)")
        p.add_argument("--site", required=True)
        p.add_argument("--users-db", type=Path, required=True)
        p.add_argument("--key-file", type=Path, help="keyring of the user store (default: $MEDFED_DATA_KEY)")
        p.set_defaults(people=_approvals)


def _approvals(args: argparse.Namespace) -> int:
    from medfed.security.approvals import ApprovalState, ApprovalStore

    me = _principal(_store(args))
    approvals = ApprovalStore(args.approvals_db, site=args.site, audit=_audit)
    decision = authorize(me, Action.APPROVAL_READ, Resource.site(args.site))
    if decision.emergency:
        _audit("authz.emergency", {"user": me.user_id, "action": Action.APPROVAL_READ.value, "site": args.site})
    if args.action == "rule":
        return _rule(args, approvals, me)
    if args.action == "list":
        state = None if args.state == "all" else ApprovalState(args.state)
        for a in approvals.approvals(state):
            print(f"{a.spec_hash[:16]}  {a.state.value:<8} job {a.job_id} {a.name!r} by {a.researcher}, "
                  f"task {a.task} on {a.dataset} for {a.purpose!r}, submitted {_when(a.submitted_at)}")  # fmt: skip
        for r in approvals.rules() if args.state == "all" else []:
            print(f"rule {r.rule_id}: {r.task} on {r.dataset} for {r.purpose!r} by {r.researcher}"
                  f"{' (revoked)' if r.revoked else ''}, until {_when(r.expires_at)}")  # fmt: skip
        return 0
    a = approvals.find(args.spec_hash)
    if args.action == "show":
        print(
            f"spec {a.spec_hash}\nstate {a.state.value}" + (f" by {a.decided_by}: {a.reason}" if a.decided_by else "")
        )
        print(f"job {a.job_id} {a.name!r} by {a.researcher}; purpose {a.purpose!r}; expires {_when(a.expires_at)}")
        print("---\n" + approvals.spec_text(a.spec_hash).rstrip("\n") + "\n---")
        diff = approvals.diff(a.spec_hash)
        print(diff if diff else "(no earlier approved spec of this job to compare with)")
    elif args.action == "approve":
        expires = None if args.expires_days is None else time.time() + args.expires_days * 86400
        a = approvals.approve(a.spec_hash, by=me, reason=args.reason, expires_at=expires)
        print(f"approved {a.spec_hash[:16]} (job {a.name!r}) until {_when(a.expires_at)}")
    else:
        a = approvals.reject(a.spec_hash, by=me, reason=args.reason)
        print(f"rejected {a.spec_hash[:16]} (job {a.name!r}): {a.reason}")
    return 0


def _rule(args: argparse.Namespace, approvals: Any, me: Principal) -> int:
    from medfed.security.approvals import StandingRule

    if args.rule_action == "revoke":
        approvals.revoke_rule(args.rule_id, by=me)
        print(f"revoked standing rule {args.rule_id}")
        return 0
    expires = None if args.expires_days is None else time.time() + args.expires_days * 86400
    draft = StandingRule(
        rule_id="", task=args.task, dataset=args.dataset, purpose=args.purpose, researcher=args.researcher,
        created_by="", created_at=0.0, expires_at=expires, reason=args.reason,
    )  # fmt: skip
    added = approvals.add_rule(draft, by=me)
    print(f"standing rule {added.rule_id}: {added.task} on {added.dataset} for {added.purpose!r} by {added.researcher}")
    return 0
