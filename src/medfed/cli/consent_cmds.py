"""``medfed consent import|list|withdraw``: the site's consent registry, in the node's state_dir.

Decisions are appended to the node's consent store (never rewritten), so the history stays
auditable; the node reads the store afresh for every job, so a withdrawal counts from the next
job. Each change is recorded in the node's audit log (``state_dir/audit.sqlite``) with counts
only: patient identifiers never enter the audit trail. ``list`` shows counts per status unless
``--patient`` asks about one patient, which only a site admin at the node can do.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
from pathlib import Path
from typing import Any

from medfed.core.errors import ConfigError


def register(sub: Any) -> None:  # argparse's _SubParsersAction is private
    """Add ``consent`` (import, list, withdraw) to ``medfed``'s sub-parsers."""
    consent = sub.add_parser("consent", help="the site's patient consent registry (opt-outs, withdrawals)")
    csub = consent.add_subparsers(dest="action", required=True)
    imp = csub.add_parser("import", help="append decisions from a CSV (patient_id,purpose,status,date) or FHIR Consent")
    imp.add_argument("source", type=Path, help="a .csv, or a FHIR bundle / .ndjson / directory of Consent resources")
    imp.set_defaults(consent_handler=_import)
    lst = csub.add_parser("list", help="decisions per status (or what holds for one patient)")
    lst.add_argument("--patient", default="", help="show what holds for this patient id, per purpose")
    lst.add_argument("--on", default="", help="the day to evaluate (YYYY-MM-DD; default: today, UTC)")
    lst.add_argument("--ids", action="store_true", help="also list the stored patient pseudonyms (HMAC-SHA256)")
    lst.set_defaults(consent_handler=_list)
    wd = csub.add_parser("withdraw", help="a patient withdraws consent (from today, or --on)")
    wd.add_argument("patient", help="the patient id as the site's datasets carry it")
    wd.add_argument("--purpose", default="*", help="withdraw for this purpose only (default: every purpose)")
    wd.add_argument("--on", default="", help="effective day (YYYY-MM-DD; default: today, UTC)")
    wd.set_defaults(consent_handler=_withdraw)
    for p in (imp, lst, wd):
        p.add_argument("--config", type=Path, required=True, help="the site's site.toml (its [node] state_dir)")


def dispatch(args: argparse.Namespace) -> int:
    handler = args.consent_handler
    return int(handler(args))


def _state_dir(args: argparse.Namespace) -> Path:
    from medfed.cli.config import load_node_config

    state = load_node_config(args.config).settings.state_dir
    if state is None:
        raise ConfigError(f"{args.config}: the node has no state_dir for its consent registry")
    state.mkdir(parents=True, exist_ok=True)
    return state


def _day(text: str) -> dt.date:
    if not text:
        return dt.datetime.now(dt.UTC).date()
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--on {text!r} is not a date (YYYY-MM-DD)") from None


def _audit(state: Path, args: argparse.Namespace, *, outcome: str, count: int, purpose: str = "") -> None:
    from medfed.security.audit import AuditLog
    from medfed.security.audit_events import AuditAction, AuditEvent
    from medfed.security.provision import open_signing_key

    site = load_site_name(args.config)
    fields: dict[str, str | int | float | bool] = {"site": site, "resource": "consent", "outcome": outcome}
    fields["count"] = count
    if re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", purpose.lower()):  # a token the audit vocabulary accepts
        fields["purpose"] = purpose.lower()
    # the node's own log and signing key (as medfed.node.governance opens them): one chain, signed checkpoints
    log = AuditLog(state / "audit.sqlite", signer=open_signing_key(state / "audit-signing.key"))
    try:
        # no consent-specific action in the vocabulary yet: a change to who may be used
        log.append(AuditEvent(action=AuditAction.USER_CHANGED, actor=f"{site}-admin", fields=fields))
    finally:
        log.close()


def load_site_name(config: Path) -> str:
    from medfed.cli.config import load_node_config

    return load_node_config(config).settings.site.lower()


def _import(args: argparse.Namespace) -> int:
    from medfed.data.consent import ConsentStore, read_consent_csv, read_consent_fhir

    src: Path = args.source
    registry = read_consent_csv(src) if src.suffix.lower() == ".csv" else read_consent_fhir(src)
    state = _state_dir(args)
    store = ConsentStore(state / "consent.sqlite")
    try:
        n = store.add(registry.records, source=src.name, at=dt.datetime.now(dt.UTC))
        summary = store.summary()
    finally:
        store.close()
    _audit(state, args, outcome="imported", count=n)
    print(f"imported {n} consent decision(s) from {src}; the registry now holds {_counts(summary)}")
    return 0


def _withdraw(args: argparse.Namespace) -> int:
    from medfed.data.consent import ConsentRecord, ConsentStatus, ConsentStore

    patient = str(args.patient).strip()
    if not patient:
        raise ConfigError("withdraw: the patient id is empty")
    day = _day(args.on)
    record = ConsentRecord(patient_id=patient, purpose=args.purpose, status=ConsentStatus.DENY, date=day)
    state = _state_dir(args)
    store = ConsentStore(state / "consent.sqlite")
    try:
        store.add([record], source="withdraw", at=dt.datetime.now(dt.UTC))
    finally:
        store.close()
    _audit(state, args, outcome="withdrawn", count=1, purpose=args.purpose)
    what = "every purpose" if args.purpose == "*" else f"purpose {args.purpose!r}"
    print(f"withdrawal recorded for {what} from {day.isoformat()}; it applies from the next job")
    return 0


def _list(args: argparse.Namespace) -> int:
    from medfed.data.consent import ConsentStore

    state = _state_dir(args)
    store = ConsentStore(state / "consent.sqlite")
    try:
        summary, registry = store.summary(), store.registry()
    finally:
        store.close()
    if not args.patient:
        print(f"consent registry {state / 'consent.sqlite'}: {_counts(summary)}")
        if args.ids:  # the stored ids are keyed pseudonyms (HMAC-SHA256), never the raw ids
            for pseudonym in sorted({r.patient_id for r in registry.records}):
                print(pseudonym)
        return 0
    day = _day(args.on)
    purposes = registry.purposes_of(args.patient)  # the store holds pseudonyms: the id asked about is hashed
    if not purposes:
        print(f"no decision recorded for this patient: the default ({registry.default.value}) holds")
        return 0
    for purpose in purposes:
        print(f"{purpose}: {registry.decision(args.patient, purpose, day).value} on {day.isoformat()}")
    return 0


def _counts(summary: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(summary.items())) or "no decisions"
