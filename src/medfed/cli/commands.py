"""What each ``medfed`` sub-command does."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from medfed.core.errors import ConfigError, JobError, MedfedError

log = logging.getLogger("medfed")


def dispatch(args: argparse.Namespace) -> int:
    from medfed.cli import consent_cmds, data_cmds, people_cmds, security_cmds, synth_cmds

    if getattr(args, "consent_handler", None) is not None:
        return consent_cmds.dispatch(args)
    if getattr(args, "people", None) is not None:
        return people_cmds.dispatch(args)
    if getattr(args, "security_handler", None) is not None:
        return security_cmds.dispatch(args)
    if getattr(args, "synth_handler", None) is not None:
        return synth_cmds.dispatch(args)
    if getattr(args, "query_handler", None) is not None:
        from medfed.cli import query_cmds

        return query_cmds.dispatch(args)
    if args.command in ("data", "catalog"):
        return data_cmds.run(args)
    handler = {
        "demo": _demo,
        "provision": _provision,
        "coordinator": _coordinator,
        "node": _node,
        "job": _job,
        "privacy": _privacy,
    }[args.command]
    return handler(args)


# --- demo ----------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from medfed.cli.demo import DemoOptions, run_demo

    opts = DemoOptions(workdir=args.workdir, rounds=args.rounds, strategy=args.strategy, report=args.report, dp=args.dp,
                       dashboard=args.dashboard, keep_open=args.keep_open, totp_code=args.totp_code)  # fmt: skip
    return run_demo(opts)


# --- privacy -------------------------------------------------------------------------------


def _privacy(args: argparse.Namespace) -> int:
    from medfed.privacy.accounting import calibrate_noise, epsilon

    if args.rows <= 0 or args.batch <= 0:
        raise ConfigError("--rows and --batch must be > 0")
    q = min(1.0, args.batch / args.rows)
    common = {"sampling_rate": q, "steps": args.steps, "delta": args.delta, "method": args.accountant}
    if args.action == "epsilon":
        eps = epsilon(noise_multiplier=args.noise, **common)
        plan = f"σ = {args.noise:g}, q = {q:.4g}, {args.steps} steps, {args.accountant}"
        print(f"ε = {eps:.4f} at δ = {args.delta:g} ({plan})")
    else:
        sigma = calibrate_noise(target_epsilon=args.target_epsilon, **common)
        print(f"σ = {sigma:.4f} reaches ε ≤ {args.target_epsilon:g} at δ = {args.delta:g} "
              f"(q = {q:.4g}, {args.steps} steps, {args.accountant})")  # fmt: skip
    return 0


# --- provision -----------------------------------------------------------------------------


def _provision(args: argparse.Namespace) -> int:
    from medfed.security.plan import parse_plan
    from medfed.security.provision import add_site, add_user, provision, revoke

    out: Path = args.out
    if args.add_site:
        ident = add_site(out, args.add_site)
        print(f"issued site {ident.name!r} (serial {ident.serial:x}); kit in {out / 'sites' / ident.name}")
    elif args.add_user:
        if not args.role:
            raise ConfigError("--add-user needs --role researcher|admin")
        ident = add_user(out, args.add_user, args.role)
        print(f"issued {args.role} {ident.name!r} (serial {ident.serial:x}); kit in {out / 'users' / ident.name}")
    elif args.revoke:
        ident = revoke(out, args.revoke)
        print(f"revoked {ident.name!r} (serial {ident.serial:x}); CRL rewritten in {out / 'coordinator' / 'crl.pem'}")
    else:
        if args.plan is None:
            raise ConfigError("give a federation plan (TOML), or one of --add-site, --add-user, --revoke")
        from medfed.cli.config import read_toml

        read_toml(args.plan)  # a clear error for a missing or malformed file
        result = provision(parse_plan(args.plan.read_text(), source_name=str(args.plan)), out)
        print(f"federation {result.federation!r} provisioned in {result.root}")
    return 0


# --- coordinator ---------------------------------------------------------------------------


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(3600):
        pass


def _coordinator(args: argparse.Namespace) -> int:
    from medfed.cli.config import load_server_tls
    from medfed.coordinator.alerting import ScanConfig
    from medfed.coordinator.app import start_coordinator
    from medfed.coordinator.service import CoordinatorSettings
    from medfed.report.html import write_job_report

    tls, crl = load_server_tls(args.kit)
    state: Path = args.state
    kit_key = args.kit / "signing.key"  # provisioned: its public half is in every kit

    def report(job_id: str, view: dict[str, Any]) -> None:
        if "query_result" in view:  # a query job: its runner wrote reports/query-<job_id>.html
            log.info("query job %s finished (%s); report %s", job_id, view["state"], state / "reports")
            return
        if "synthesis_result" in view:  # a synthesis job: its runner wrote reports/synthesis-<job_id>.csv
            log.info("synthesis job %s finished (%s); table in %s", job_id, view["state"], state / "reports")
            return
        path = write_job_report(view, state / "reports" / f"{job_id}.html")
        log.info("job %s finished (%s); report %s", job_id, view["state"], path)

    keyring = None
    # sealed at rest by default: --key-file, else the data key provisioning put in the kit (outside
    # the state directory); only a kit from an older release without one leaves them plaintext
    from medfed.security.provision import DATA_KEYS

    key_file: Path | None = args.key_file
    if key_file is None and (args.kit / DATA_KEYS).is_file():
        key_file = args.kit / DATA_KEYS
    if key_file is not None:
        from medfed.security.keys import read_keyring_file

        keyring = read_keyring_file(key_file, data_dirs=(state,))
        print(f"checkpoints and models are sealed at rest with {key_file}", flush=True)
    else:
        log.warning("no --key-file and no %s in the kit: checkpoints and models stay plaintext", DATA_KEYS)
    settings = CoordinatorSettings(
        state_dir=state,
        heartbeat_interval_s=args.heartbeat,
        keyring=keyring,
        signing_key=kit_key if kit_key.is_file() else None,
        alert_scan=ScanConfig(interval_s=args.alert_scan) if args.alert_scan > 0 else None,
    )
    users = _coordinator_users(args, state)
    https = getattr(args, "https", None)
    if https:
        from medfed.dashboard.server import parse_https_address

        parse_https_address(https)  # a malformed address fails before anything starts
    if https and users is None:
        raise ConfigError(
            f"--https {https}: the dashboard needs a user store for its logins "
            f"(--users PATH or {state / 'users.db'}; create one with medfed users add --users-db PATH)"
        )
    from medfed.transport.grpc_server import RequestPolicy

    requests = RequestPolicy(skew_s=args.request_skew)  # signed calls: the clock skew allowed
    proc = start_coordinator(
        settings, address=args.listen, tls=tls, crl_path=crl, on_job_finished=report, users=users, requests=requests
    )
    if proc.users is not None:
        print(f"people log in against {proc.users.path} (medfed login --config client.toml)", flush=True)
    dashboard = None
    try:
        if https and proc.users is not None:
            from medfed.dashboard.launch import start_dashboard

            dashboard = start_dashboard(proc.coordinator, proc.users, kit=args.kit, state_dir=state, address=https)
            print(f"dashboard at {dashboard.url}/ (HTTPS; password + TOTP)", flush=True)
        print(f"coordinator ready on port {proc.port}", flush=True)
        _wait_for_signal()
    finally:
        if dashboard is not None:
            dashboard.stop()
        proc.stop()
    return 0


def _coordinator_users(args: argparse.Namespace, state: Path) -> Any:
    """The user store opener for ``--users`` (or ``<state>/users.db`` when present), else ``None``.

    Its TOTP secrets are sealed under the ``--key-file`` keyring or ``$MEDFED_DATA_KEY``."""
    path: Path | None = getattr(args, "users", None)
    if path is None and (state / "users.db").is_file():
        path = state / "users.db"
    if path is None:
        return None
    if not path.is_file():
        raise ConfigError(f"--users {path}: no such user store (create it with medfed users add --users-db {path})")
    from medfed.coordinator.people import open_user_store
    from medfed.security.keys import load_keyring

    keyring = load_keyring(args.key_file, os.environ, data_dirs=(state, path.resolve().parent))
    return lambda audit: open_user_store(path, keyring=keyring, audit=audit)


# --- node ----------------------------------------------------------------------------------


def _node(args: argparse.Namespace) -> int:
    from medfed.cli.config import load_node_config

    cfg = load_node_config(args.config)
    if args.action == "check":
        return _node_check(cfg)
    if args.action == "budget":
        return _node_budget(cfg)
    from medfed.node.runtime import NodeRuntime
    from medfed.transport.grpc_client import GrpcCoordinatorLink

    problems = _identity_problems(cfg.tls.cert_pem, cfg.tls.ca_pem)
    if problems:
        raise ConfigError(f"{args.config}: this site's certificate would be refused: " + "; ".join(problems))
    runtime = NodeRuntime(cfg.settings, GrpcCoordinatorLink(cfg.coordinator, cfg.tls))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: runtime.stop())
    print(f"node {cfg.settings.site} dialling {cfg.coordinator}", flush=True)
    from medfed.cli.node_page_cmds import start_page

    stop_page = start_page(args, cfg)  # --page: the node's local page, in this process
    try:
        runtime.run()
    finally:
        if stop_page is not None:
            stop_page()
    return 0


def _node_budget(cfg: Any) -> int:
    """Each dataset's privacy budget at this site: total, used (open reservations included), left,
    and the ledger's history. Read locally; nothing is sent anywhere."""
    from rich.table import Table

    from medfed.cli.views import console
    from medfed.node.runtime import open_ledger

    ledger = open_ledger(cfg.settings)
    if ledger is None:
        print("this node keeps no privacy ledger (no state_dir)")
        return 0
    table = Table(title=f"Privacy budgets at site {cfg.settings.site}")
    for col in ("dataset", "ε total", "ε used", "ε left", "δ total", "δ used"):
        table.add_column(col, justify="right" if col != "dataset" else "left")
    for name in sorted(cfg.settings.datasets):
        status = ledger.status(name)
        if status is None:
            table.add_row(name, "no budget: DP jobs refused", "", "", "", "")
        else:
            table.add_row(name, *(f"{v:.4g}" for v in (status.epsilon_total, status.epsilon_used, status.epsilon_left)),
                          f"{status.delta_total:.3g}", f"{status.delta_used:.3g}")  # fmt: skip
    console.print(table)
    for name in sorted(cfg.settings.datasets):
        for e in ledger.events(name)[-20:]:
            when = dt.datetime.fromtimestamp(float(e["at"]), dt.UTC).strftime("%Y-%m-%d %H:%M:%S")  # type: ignore[arg-type]
            print(f"{when} {name} {e['action']:<10} job={e['job_id'] or '-'} ε={float(e['epsilon']):.4g} {e['detail']}")  # type: ignore[arg-type]
    ledger.close()
    return 0


def _identity_problems(cert_pem: bytes, ca_pem: bytes) -> list[str]:
    from medfed.crypto.pki import check_identity

    return check_identity(cert_pem, ca_pem, now=dt.datetime.now(dt.UTC))


def _declared_check(name: str, decl: Any, state_dir: Path | None) -> bool:
    from medfed.core.errors import DataError, ValidationError
    from medfed.node.datasets import local_profile, read_registry

    try:
        profile = local_profile(decl, read_registry(state_dir), on=dt.datetime.now(dt.UTC).date())
    except (DataError, ValidationError) as exc:
        print(f"dataset {name}: not offered to jobs: {exc}")
        return False
    tags = f", tags: {', '.join(decl.tags)} (jobs may select it by them)" if decl.tags else ""
    print(f"dataset {name}: ok ({decl.format.value}, {profile.rows} rows, {profile.excluded} excluded by policy){tags}")
    return True


def _policy_check(settings: Any) -> None:
    """A warning, not a failure: ``approval = "off"`` is the site's written choice (and audited)."""
    from medfed.security.node_policy import ApprovalMode

    policy = settings.policy
    if policy is None or policy.approval is ApprovalMode.OFF:
        print('policy: WARNING approval = "off" in [policy]: every job the policy admits runs on this site\'s '
              "data without the site admin's approval (each node start records it in the audit log)")  # fmt: skip
    else:
        print("policy: ok (every job needs the site admin's approval or a standing rule: medfed approvals list; "
              f"approvals in {settings.state_dir / 'approvals.db'})")  # fmt: skip
        _approvals_summary(settings)


def _approvals_summary(settings: Any) -> None:
    """How many specs await this site's admin, how many because their dataset changed, and the rules."""
    from medfed.security.approvals import ApprovalState, ApprovalStore

    path = settings.state_dir / "approvals.db"
    if not path.is_file():
        return
    store = ApprovalStore(path, site=settings.site, audit=lambda event, fields: None)
    try:
        pending = store.approvals(ApprovalState.PENDING)
        rules = [r for r in store.rules() if not r.revoked]
    finally:
        store.close()
    changed = sum("changed since approval" in a.reason for a in pending)
    print(f"approvals: {len(pending)} spec(s) pending ({changed} because a dataset changed since approval), "
          f"{len(rules)} standing rule(s)")  # fmt: skip


def _node_check(cfg: Any) -> int:
    from medfed.data.tabular import load_csv_dataset
    from medfed.transport.grpc_client import GrpcCoordinatorLink

    ok = True
    problems = _identity_problems(cfg.tls.cert_pem, cfg.tls.ca_pem)
    print(f"certificate: {'ok' if not problems else '; '.join(problems)}")
    ok &= not problems
    _policy_check(cfg.settings)
    for name, ds in cfg.settings.datasets.items():
        if ds.decl is not None:  # declared (csv, parquet, fhir, omop): validated as jobs and the catalog read it
            ok &= _declared_check(name, ds.decl, cfg.settings.state_dir)
            continue
        try:
            data = load_csv_dataset(ds.path, label=ds.label)
            print(
                f"dataset {name}: ok ({len(data.y_train)} train / {len(data.y_test)} test rows, "
                f"{data.n_features} features)"
            )
        except MedfedError as exc:
            ok = False
            print(f"dataset {name}: {exc}")
    link = GrpcCoordinatorLink(cfg.coordinator, cfg.tls, timeout_s=5.0)
    try:
        # a heartbeat authenticates us without registering: a running node is not disturbed
        known = link.heartbeat()
        state = "this site's node is connected" if known else "no node of this site is connected now"
        print(f"coordinator {cfg.coordinator}: ok (TLS identity accepted; {state})")
    except MedfedError as exc:
        ok = False
        print(f"coordinator {cfg.coordinator}: {exc}")
    finally:
        link.close()
    return 0 if ok else 1


# --- jobs ----------------------------------------------------------------------------------


def _job(args: argparse.Namespace) -> int:
    from medfed.cli.client import client_config_path, coordinator_client
    from medfed.cli.views import print_job, print_job_list, watch_job

    with coordinator_client(args) as client:  # the person's token or login session (cli/client.py)
        if args.action == "submit":
            try:
                text = args.spec.read_text()
            except OSError as exc:
                raise ConfigError(f"{args.spec}: {exc.strerror or exc}") from None
            view = client.submit_job(text, str(args.spec))
            print(f"job {view['job_id']} submitted ({view['name']}, spec sha256 {view['spec_hash'][:12]})")
            if args.watch:
                return _exit_for(watch_job(client, view["job_id"]))
        elif args.action == "status":
            print_job(client.get_job(args.job_id), detail=False)
        elif args.action == "watch":
            return _exit_for(watch_job(client, args.job_id))
        elif args.action == "cancel":
            print_job(client.cancel_job(args.job_id), detail=False)
        elif args.action == "list":
            print_job_list(client.list_jobs())
        elif args.action == "result":
            view = client.get_job(args.job_id)
            if args.json:
                print(json.dumps(view, indent=2, sort_keys=True))
            elif "query_result" in view:  # a query job: its tables, not training curves
                from medfed.cli.query_cmds import print_query

                print_query(view)
            elif "synthesis_result" in view:  # a synthesis job: the combined table, not a model
                from medfed.cli.synth_job_cmds import print_synthesis

                print_synthesis(view, args.out)
                return 0
            else:
                print_job(view, detail=True)
            if args.out:
                _save_model(client, args.job_id, args.out, kit=client_config_path(args).parent)
    return 0


def _save_model(client: Any, job_id: str, out: Path, *, kit: Path) -> None:
    """Download, verify against the coordinator's public key in the kit, then write the model and
    its signature (``<out stem>.sig.json``). A kit with the key refuses an unsigned or altered model."""
    from medfed.coordinator.audit_hooks import signature_path
    from medfed.coordinator.checkpoints import save_model
    from medfed.crypto.signing import ModelSignature, verify_model
    from medfed.security.fsio import atomic_write
    from medfed.security.provision import COORDINATOR_PUB

    params, signed = client.fetch_signed_model(job_id)
    pub = kit / COORDINATOR_PUB
    if pub.is_file():
        signature = ModelSignature.from_json_bytes(signed) if signed else None
        prov = verify_model(params, signature, pub.read_bytes())  # StoreError: nothing is written
        note = f"signature verified ({pub.name}): spec {prov.job_hash[:12]}…, {prov.rounds} rounds"
        note += f", sites {list(prov.sites)}"
    else:
        note = f"signature NOT verified: no {COORDINATOR_PUB} in {kit}"
    digest = save_model(out, params)
    if signed:
        atomic_write(signature_path(out), signed)
        note += f"; signature and provenance in {signature_path(out)}"
    print(f"model written to {out} (sha256 {digest[:16]}…); {note}")


def _exit_for(view: dict[str, Any]) -> int:
    if view["state"] == "completed":
        return 0
    raise JobError(f"job {view['job_id']} {view['state']}: {view.get('error', '')}")


__all__ = ["dispatch"]
