"""``medfed users|login|approvals|alerts``: people, their tokens, site approvals and access alerts.

Wiring (in :mod:`medfed.cli.main`): ``register(sub)`` after the other sub-parsers, and in
``commands.dispatch``: ``if getattr(args, "people", None): return people_cmds.dispatch(args)``.

These commands work on the SQLite files directly, on the machine that holds them (the
coordinator's ``users.db``, a node's ``approvals.db``). The acting person is identified by an API
token (``$MEDFED_TOKEN``, or the file ``$MEDFED_TOKEN_FILE``, default ``~/.medfed/token``), which
``medfed login`` writes after a password + TOTP login; each command is checked with
:func:`medfed.security.authz.authorize`. The one exception is the bootstrap: the first user of an
empty store may be added without a token, and only as a federation admin.

``medfed login --config client.toml`` is different: it logs in at the coordinator (password +
TOTP over the person's mTLS certificate, the ``Login`` RPC) and keeps the session in
``client.session`` (0600) next to client.toml, where ``medfed job ...`` sends it with every call;
needed when the coordinator runs with a user store (``--users``).

Secrets never travel on the command line (``ps`` shows it): passwords are prompted for, or read
from standard input with ``--password-stdin`` (line 1 the password, line 2 the TOTP code).
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medfed.core.errors import ConfigError, PermissionDenied
from medfed.security.authz import Action, Principal, Resource, UserRole, authorize, role_actions

__all__ = ["dispatch", "register"]

audit_log = logging.getLogger("medfed.audit")
DEFAULT_TOKEN_FILE = Path("~/.medfed/token")
LOGIN_TOKEN_TTL_S = 12 * 3600.0


def _audit(event: str, fields: Mapping[str, str | int | float | bool]) -> None:
    """Until the lead wires the hash-chained audit log here, audit events go to this logger as JSON."""
    audit_log.info("%s %s", event, json.dumps(dict(fields), sort_keys=True))


def register(sub: Any) -> None:  # argparse's _SubParsersAction is private; typed loosely on purpose
    """Add ``users``, ``login``, ``approvals`` and ``alerts`` to the ``medfed`` parser."""
    users = sub.add_parser("users", help="people: add, list, TOTP enrolment, API tokens")
    usub = users.add_subparsers(dest="action", required=True)
    add = usub.add_parser("add", help="add a person (the first one, a federation admin, needs no token)")
    add.add_argument("user_id")
    add.add_argument("--role", required=True, choices=[r.value for r in UserRole])
    add.add_argument("--site", default="", help="the site a site admin administers")
    usub.add_parser("list", help="every person, role, TOTP and lock state")
    enrol = usub.add_parser("enrol-totp", help="print an otpauth:// URI; then --confirm CODE activates it")
    enrol.add_argument("user_id")
    enrol.add_argument("--confirm", metavar="CODE", help="a code from the app, to finish enrolment")
    token = usub.add_parser("token", help="API tokens").add_subparsers(dest="token_action", required=True)
    issue = token.add_parser("issue", help="a scoped, expiring token for a script (needs medfed login first)")
    issue.add_argument("--scope", action="append", required=True, choices=[a.value for a in Action])
    issue.add_argument("--ttl-days", type=float, default=30.0)
    issue.add_argument("--label", default="")
    revoke = token.add_parser("revoke", help="revoke a token by id (yours, or anyone's as federation admin)")
    revoke.add_argument("token_id")
    login = sub.add_parser(
        "login",
        help="password + TOTP login: at the coordinator (--config client.toml: a session next to it) or on a "
        "local user store (--users-db: a 12-hour token for these commands)",
    )
    login.add_argument("--user", help="user id (default: the name in client.toml)")
    login.add_argument("--config", type=Path, help="client.toml: log in at its coordinator over mTLS")
    login.add_argument(
        "--break-glass",
        action="store_true",
        help="emergency access for an admin (with --config): a short session, every call loudly audited",
    )
    login.add_argument("--reason", default="", help="why you break glass (10+ characters; sealed at the coordinator)")
    for p in (add, enrol, login):
        p.add_argument("--password-stdin", action="store_true", help="line 1: password; line 2: TOTP code")
    for p in (add, usub.choices["list"], enrol, issue, revoke, login):
        p.add_argument("--users-db", type=Path, required=p is not login, help="the user store (SQLite)")
        p.add_argument("--key-file", type=Path, help="keyring sealing TOTP secrets (default: $MEDFED_DATA_KEY)")
        p.set_defaults(people=_users)
    login.set_defaults(people=_login)
    from medfed.cli import approvals_cmds  # its own module; it uses this one's token helpers

    approvals_cmds.register(sub)
    from medfed.cli import alert_cmds  # its own module: the coordinator's alert store (--state), or --events here

    alert_cmds.register(sub)


def dispatch(args: argparse.Namespace) -> int:
    handler = args.people
    return int(handler(args))


# --- shared --------------------------------------------------------------------------------


def _store(args: argparse.Namespace) -> Any:
    from medfed.security.keys import load_keyring
    from medfed.security.users import UserStore

    path: Path = args.users_db
    keyring = load_keyring(args.key_file, os.environ, data_dirs=(path.resolve().parent,))
    return UserStore(path, audit=_audit, keyring=keyring)


def _secrets(args: argparse.Namespace, *, code: bool) -> tuple[str, str]:
    if args.password_stdin:
        lines = sys.stdin.read().splitlines()
        if not lines:
            raise ConfigError("--password-stdin: standard input is empty")
        return lines[0], (lines[1].strip() if code and len(lines) > 1 else "")
    password = getpass.getpass("password: ")
    return password, (input("TOTP code (blank if none): ").strip() if code else "")


def _token_file() -> Path:
    return Path(os.environ.get("MEDFED_TOKEN_FILE", str(DEFAULT_TOKEN_FILE))).expanduser()


def _principal(store: Any) -> Principal:
    secret = os.environ.get("MEDFED_TOKEN", "")
    if not secret:
        path = _token_file()
        if not path.is_file():
            raise PermissionDenied(f"not logged in: no token in $MEDFED_TOKEN or {path} (run medfed login)")
        secret = path.read_text().strip()
    principal: Principal = store.authenticate_token(secret)
    return principal


def _write_token(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # the mode of os.open applies only to a new file: an old 0644 one stays readable
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")


def _when(t: float | None) -> str:
    return "-" if t is None else dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- users, login --------------------------------------------------------------------------


def _users(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.action == "add":
        if store.users():
            authorize(_principal(store), Action.USER_MANAGE, Resource.federation())
        elif args.role != UserRole.FEDERATION_ADMIN:
            raise PermissionDenied("the first user of a store must be a federation_admin")
        password, _ = _secrets(args, code=False)
        user = store.add_user(args.user_id, UserRole(args.role), password, site=args.site)
        print(f"added {user.role.value} {user.user_id!r}" + (f" for site {user.site!r}" if user.site else ""))
    elif args.action == "list":
        authorize(_principal(store), Action.USER_MANAGE, Resource.federation())
        for u in store.users():
            state = "disabled" if u.disabled else "locked" if u.locked_until > time.time() else "active"
            print(f"{u.user_id:<20} {u.role.value:<17} {u.site or '-':<12} totp={'yes' if u.totp_enabled else 'no':<4}"
                  f" {state}")  # fmt: skip
    elif args.action == "enrol-totp":
        return _enrol(args, store)
    elif args.token_action == "issue":  # noqa: S105 - a sub-command's name, not a secret
        me = _principal(store)
        scopes = frozenset(Action(s) for s in args.scope)
        tok = store.issue_token(me, scopes=scopes, ttl_s=args.ttl_days * 86400, label=args.label)
        print(f"token {tok.token_id} (scopes {sorted(scopes)}, expires {_when(tok.expires_at)}); shown once:")
        print(tok.secret)
    else:
        store.revoke_token(args.token_id, by=_principal(store))
        print(f"revoked token {args.token_id}")
    return 0


def _enrol(args: argparse.Namespace, store: Any) -> int:
    from medfed.security.users import Credentials

    if args.confirm:
        store.confirm_totp(args.user_id, args.confirm)
        print(f"TOTP enrolled for {args.user_id!r}")
        return 0
    password, code = _secrets(args, code=store.user(args.user_id).totp_enabled)
    print(store.begin_totp(Credentials(user_id=args.user_id, password=password, code=code)))
    print(f"add it to an authenticator app, then: medfed users enrol-totp {args.user_id} --confirm CODE")
    return 0


def _login(args: argparse.Namespace) -> int:
    from medfed.security.users import Credentials

    if args.break_glass != bool(args.reason):
        raise ConfigError('medfed login: --break-glass needs --reason "...", and --reason goes with --break-glass')
    if args.config is not None:
        return _remote_login(args)
    if args.break_glass:
        raise ConfigError("medfed login --break-glass works at the coordinator: give --config client.toml")
    if args.users_db is None or not args.user:
        raise ConfigError("medfed login needs --config client.toml (the coordinator), or --users-db and --user")
    store = _store(args)
    password, code = _secrets(args, code=True)
    session = store.login(Credentials(user_id=args.user, password=password, code=code))
    me = session.principal
    store.logout(session.secret)  # the CLI keeps a token, not a session
    tok = store.issue_token(me, scopes=role_actions(me.role), ttl_s=LOGIN_TOKEN_TTL_S, label="medfed login")
    path = _token_file()
    _write_token(path, tok.secret)
    print(f"logged in as {me.role.value} {me.user_id!r}; token {tok.token_id} in {path} until {_when(tok.expires_at)}")
    return 0


def _remote_login(args: argparse.Namespace) -> int:
    """Password + TOTP at the coordinator, over this person's mTLS certificate; the session goes
    to ``client.session`` (0600) next to client.toml, where the job commands pick it up.
    With ``--break-glass --reason``: an admin's emergency session (short; every call audited)."""
    from medfed.cli.config import load_client_config, session_path
    from medfed.transport.grpc_client import ResearcherClient

    cfg = load_client_config(args.config)
    user = args.user or cfg.name
    if not user:
        raise ConfigError(f"{args.config}: no [client] name; give --user")
    password, code = _secrets(args, code=True)
    client = ResearcherClient(cfg.coordinator, cfg.tls)
    try:
        grant = client.login(user, password, code, break_glass_reason=args.reason)
    finally:
        client.close()
    path = session_path(args.config)
    _write_token(path, grant.session)
    if grant.emergency:
        print(f"BREAK GLASS: emergency session for {user!r}; every call is audited; it ends {_when(grant.expires_at)}")
    print(f"logged in at {cfg.coordinator} as {grant.role} {user!r}; session in {path} until {_when(grant.expires_at)}")
    return 0


# --- alerts --------------------------------------------------------------------------------


def _alerts(args: argparse.Namespace) -> int:
    from medfed.security.access_anomaly import AccessAnomalyDetector, DetectorConfig, alert_fields, parse_access_events

    me = _principal(_store(args))
    if authorize(me, Action.ALERT_READ, Resource.site(args.site)).emergency:
        _audit("authz.emergency", {"user": me.user_id, "action": Action.ALERT_READ.value, "site": args.site})
    try:
        with args.events.open(encoding="utf-8") as f:
            events = parse_access_events(f, where=str(args.events))
    except OSError as exc:
        raise ConfigError(f"cannot read {args.events}: {exc.strerror}") from None
    if not events:
        raise ConfigError(f"{args.events}: no access events")
    cut = min(e.at for e in events) + args.baseline_days * 86400
    baseline, recent = [e for e in events if e.at < cut], [e for e in events if e.at >= cut]
    detector = AccessAnomalyDetector.fit(baseline, config=DetectorConfig(seed=args.seed))
    alerts = detector.alerts(recent)
    for alert in alerts:
        _audit("security.access_alert", {"site": args.site, **alert_fields(alert)})
        if args.json:
            print(json.dumps(alert_fields(alert), sort_keys=True))
        else:
            print(f"{_when(alert.window_start)}  {alert.user:<16} {','.join(alert.kinds)}")
            for reason in alert.reasons:
                print(f"    {reason}")
    if not args.json:
        print(f"{len(alerts)} alerts in {len(recent)} events after a baseline of {len(baseline)}")
    return 0
