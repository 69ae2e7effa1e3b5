"""``medfed demo``: a throw-away federation of the four Fed-Heart-Disease hospitals.

It provisions a PKI, writes each hospital's rows into that site's own directory only, gives each
site a standing rule for the demo's own job (approval is on by default at every site: the demo
acts as each hospital's admin and prints the rules it created), starts a coordinator and four node
processes that talk gRPC over mutual TLS on 127.0.0.1, runs a federated
logistic regression with a progress bar, and prints federated vs local-only vs pooled accuracy
beside FLamby's published figures. The local-only and pooled baselines are computed in this
process from the same public data set, as references: in a real federation they do not exist.

With ``--dashboard`` the coordinator also serves the web dashboard on loopback HTTPS, with demo
logins (``demo_dashboard``); ``--keep-open`` keeps the federation up after the job until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from medfed.cli.views import console, watch_job
from medfed.core.errors import ConfigError, JobError, TransportError
from medfed.core.params import Parameters

if TYPE_CHECKING:
    from medfed.cli.demo_dashboard import DemoPeople
    from medfed.security.approvals import StandingRule

SITES = ("cleveland", "hungary", "switzerland", "va_long_beach")
#: FLamby's published Fed-Heart-Disease accuracies (mean over the 4 test sets, 5 seeds).
FLAMBY = {
    "fedavg": 0.685, "fedprox": 0.685, "fedadam": 0.726, "fedyogi": 0.731, "fedadagrad": 0.731, "pooled": 0.735,
    "local cleveland": 0.722, "local hungary": 0.629, "local switzerland": 0.567, "local va_long_beach": 0.637,
}  # fmt: skip
DEMO_STRATEGY = "fedyogi"


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoOptions:
    workdir: Path | None
    rounds: int = 15
    strategy: str = ""
    report: Path = Path("medfed-demo-report.html")
    dp: bool = False
    dashboard: str = ""  # HOST:PORT (loopback): serve the dashboard there; "" for none
    keep_open: bool = False  # after the job, keep the federation (and dashboard) up until Ctrl-C
    totp_code: str = ""  # a demo person: print their TOTP code (from --workdir) and do nothing else


#: With ``--dp``: DP-SGD noise of the demo job, and each hospital's total budget for its data.
DP_NOISE, DP_BUDGET = 2.0, 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _plan(port: int) -> str:
    sites = "\n".join(f'[[sites]]\nname = "{s}"\n' for s in SITES)
    return (
        f'[federation]\nname = "demo"\ncoordinator_host = "127.0.0.1"\ncoordinator_port = {port}\n'
        f'validity_days = 7\n\n{sites}\n[[users]]\nname = "researcher"\nrole = "researcher"\n'
    )


def job_toml(strategy: str, rounds: int, *, dp: bool = False) -> str:
    """The demo's job spec, with the tuned defaults for ``strategy``."""
    from medfed.data.heart import FEATURES, HEART_DEFAULTS

    defaults = HEART_DEFAULTS.get(strategy, {"strategy": {}, "task": {}})
    task = {"input_dim": len(FEATURES), **defaults["task"]}
    lines = [
        "[job]", f'name = "heart-{strategy}"', 'task = "logistic_regression"', 'dataset = "heart"',
        f"rounds = {rounds}", "seed = 0", "", "[strategy]", f'name = "{strategy}"',
        *(f"{k} = {_toml_value(v)}" for k, v in defaults["strategy"].items()),
        "", "[task_options]", *(f"{k} = {_toml_value(v)}" for k, v in task.items()),
        "", "[rounds]", "min_nodes = 3", "deadline_s = 60",
    ]  # fmt: skip
    if dp:
        lines += ["", "[privacy]", f"noise_multiplier = {DP_NOISE}", "clip_norm = 1.0", "delta = 1e-5"]
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return repr(v)


def _standing_rules(root: Path) -> list[tuple[str, StandingRule, str]]:
    """Each site's admin (played by the demo) covers the demo's job with a standing rule: task
    ``logistic_regression`` on ``heart`` for the default purpose by the demo's researcher, the
    dataset's fingerprint pinned. Returns (site, rule, fingerprint) per site."""
    from medfed.cli.config import load_node_config
    from medfed.core.records import DEFAULT_PURPOSE
    from medfed.node.fingerprints import dataset_fingerprint
    from medfed.security.approvals import StandingRule, open_site_approvals
    from medfed.security.authz import Principal, UserRole

    made = []
    for site in SITES:
        settings = load_node_config(root / "federation" / "sites" / site / "site.toml").settings
        if settings.state_dir is None:  # load_node_config always sets one
            raise JobError(f"demo site {site} has no state directory")
        digest = dataset_fingerprint(settings.datasets["heart"])
        store = open_site_approvals(settings.state_dir, site=site, note=lambda event, fields: None)
        try:
            rule = store.add_rule(
                StandingRule(rule_id="", task="logistic_regression", dataset="heart", purpose=DEFAULT_PURPOSE,
                             researcher="researcher", created_by="", created_at=0.0, expires_at=None,
                             reason="medfed demo: the demo job on this site's heart data"),
                by=Principal(user_id=f"{site}-admin", role=UserRole.SITE_ADMIN, site=site), fingerprint=digest,
            )  # fmt: skip
        finally:
            store.close()
        made.append((site, rule, digest))
    return made


def _print_rules(rules: list[tuple[str, StandingRule, str]]) -> None:
    table = Table(title="Site approval (on by default): the standing rule each hospital's admin gave the demo job")
    for col in ("hospital", "rule", "covers", "heart data fingerprint"):
        table.add_column(col)
    for site, rule, digest in rules:
        covers = f"{rule.task} on {rule.dataset} for {rule.purpose!r} by {rule.researcher}"
        table.add_row(site, rule.rule_id, covers, digest[:16] + "…")
    console.print(table)


def _prepare(root: Path, port: int, *, dp: bool) -> None:
    from medfed.data.heart import load_fed_heart_disease, write_site_csv
    from medfed.security.plan import parse_plan
    from medfed.security.provision import provision

    provision(parse_plan(_plan(port), source_name="demo plan"), root / "federation")
    for site, data in load_fed_heart_disease().items():
        kit = root / "federation" / "sites" / site
        write_site_csv(site, data, kit / "data")  # writes data/<site>/{train,test}.csv
        text = (kit / "site.toml").read_text()
        text += f'\n[datasets.heart]\nkind = "csv"\npath = "data/{site}"\nlabel = "label"\n'
        if dp:
            text += f"epsilon_budget = {DP_BUDGET}\ndelta_budget = 1e-5\n"
        text += "\n[node]\npoll_wait_s = 5.0\nbackoff_max_s = 2.0\n"
        (kit / "site.toml").write_text(text)


@contextlib.contextmanager
def _processes(
    root: Path, port: int, people: DemoPeople | None = None, dashboard: str = ""
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The coordinator and the four nodes; with ``people`` the coordinator gets their user store
    and serves the dashboard on ``dashboard`` (its stdout, with the URL, goes to logs/coordinator.out)."""
    fed, logs = root / "federation", root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m", "medfed"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cmd = [*py, "coordinator", "start", "--kit", str(fed / "coordinator"), "--state", str(root / "state"),
               "--listen", f"127.0.0.1:{port}", "--heartbeat", "1"]  # fmt: skip
        out: Any = subprocess.DEVNULL
        env = None
        if people is not None:
            cmd += ["--users", str(people.users_db), "--https", dashboard]
            out = open(logs / "coordinator.out", "wb")  # noqa: SIM115 - the child owns it; closed on exit
            env = {**os.environ, **people.coordinator_env()}
        procs.append(subprocess.Popen(cmd, stdout=out, stderr=open(logs / "coordinator.log", "wb"), env=env))  # noqa: SIM115
        for site in SITES:
            cmd = [*py, "node", "start", "--config", str(fed / "sites" / site / "site.toml")]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(logs / f"{site}.log", "wb")))  # noqa: SIM115
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def _connect(
    root: Path, procs: list[subprocess.Popen[bytes]], people: DemoPeople | None = None, timeout_s: float = 180.0
) -> Any:
    from medfed.cli.config import load_client_config
    from medfed.transport.grpc_client import ResearcherClient

    cfg = load_client_config(root / "federation" / "users" / "researcher" / "client.toml")
    client = ResearcherClient(cfg.coordinator, cfg.tls, timeout_s=10.0)
    deadline = time.monotonic() + timeout_s
    if people is not None:  # a coordinator with a user store: every call needs a session (Login RPC)
        from medfed.cli.demo_dashboard import login_demo_client

        login_demo_client(client, people, deadline=deadline)
    while True:
        try:
            listing = client.list_jobs()
            if sum(s["online"] for s in listing["sites"]) == len(SITES):
                return client
        except TransportError:
            pass
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise JobError(f"a demo process exited early (code {dead[0].returncode}); see the logs in {root / 'logs'}")
        if time.monotonic() > deadline:
            raise JobError(f"the demo federation did not come up within {timeout_s:.0f}s; see {root / 'logs'}")
        time.sleep(0.3)


def run_demo(opts: DemoOptions) -> int:
    if opts.totp_code:  # medfed demo --workdir DIR --totp-code USER: no federation, just the code
        from medfed.cli.demo_dashboard import print_totp_code

        if opts.workdir is None:
            raise ConfigError("--totp-code needs --workdir (the demo's work directory it printed)")
        return print_totp_code(opts.workdir, opts.totp_code)
    if opts.dashboard:
        from medfed.cli.demo_dashboard import dashboard_address

        dashboard_address(opts.dashboard)  # a bad address fails before anything starts
    strategy = opts.strategy or DEMO_STRATEGY
    with contextlib.ExitStack() as stack:
        root = opts.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medfed-demo-")))
        root.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        console.print(f"[bold]medfed demo[/]: four hospitals of Fed-Heart-Disease, federation in {root}")
        _prepare(root, port, dp=opts.dp)
        _print_rules(_standing_rules(root))
        people = _demo_people(root, opts)
        procs = stack.enter_context(_processes(root, port, people, opts.dashboard))
        client = _connect(root, procs, people)  # logs in first: the person's login below cannot race it
        console.print("coordinator and 4 nodes are up (gRPC over mutual TLS on 127.0.0.1)")
        url = "" if people is None else _show_dashboard(root, people, procs[0])
        view = client.submit_job(job_toml(strategy, opts.rounds, dp=opts.dp), f"demo-{strategy}.toml")
        if url:
            console.print(f"watch job {view['job_id']} at {url}/jobs/{view['job_id']}", soft_wrap=True)
        final = watch_job(client, view["job_id"], timeout_s=600)
        model = client.fetch_model(view["job_id"]) if final["state"] == "completed" else None
        client.close()
        if final["state"] != "completed" or model is None:
            raise JobError(f"demo job {final['state']}: {final['error']}")
        comparison = comparison_table(final, strategy, model=model)
        _print_comparison(comparison)
        if opts.dp:
            _print_privacy(final)
        from medfed.report.html import write_job_report

        path = write_job_report(final, opts.report, comparison=comparison)
        console.print(f"report written to [bold]{path.resolve()}[/]")
        if people is not None:
            _publish_report(root, final, comparison)
        if opts.keep_open:
            from medfed.cli.demo_dashboard import wait_for_interrupt

            console.print("the federation stays up until Ctrl-C", soft_wrap=True)
            wait_for_interrupt()
            console.print("stopping the demo federation")
    return 0


def _demo_people(root: Path, opts: DemoOptions) -> DemoPeople | None:
    """With ``--dashboard``: the demo's user store and people (``demo_dashboard``); else ``None``."""
    if not opts.dashboard:
        return None
    from medfed.cli.demo_dashboard import create_demo_people

    return create_demo_people(root)


def _publish_report(root: Path, view: dict[str, Any], comparison: tuple[list[str], list[list[str]]]) -> None:
    """Give the dashboard's report link the demo's report, with the local-only and pooled references.

    The coordinator writes ``<state>/reports/<job>.html`` when the job ends, without baselines (it
    holds no rows). The demo computed them here from the public Fed-Heart-Disease splits, so once the
    coordinator's report is there (bounded wait) the demo replaces it, atomically, with its own: the
    same job view plus those rows, labelled as references."""
    from medfed.report.html import write_job_report

    target = root / "state" / "reports" / f"{view['job_id']}.html"
    deadline = time.monotonic() + 30.0
    while not target.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    write_job_report(view, target, comparison=comparison)


def _show_dashboard(root: Path, people: DemoPeople, coordinator: subprocess.Popen[bytes]) -> str:
    """Print how to log in to the dashboard; its URL."""
    from medfed.cli.demo_dashboard import dashboard_url, print_access

    url = dashboard_url(
        root / "logs" / "coordinator.out", deadline=time.monotonic() + 180.0, alive=lambda: coordinator.poll() is None
    )
    print_access(url, people, root)
    return url


def comparison_table(
    view: dict[str, Any], strategy: str, *, model: Parameters | None = None
) -> tuple[list[str], list[list[str]]]:
    """Rows: the federated model, each local-only model, the pooled model; columns: accuracy on
    each site's test split, their mean (FLamby's metric) and FLamby's published mean.

    With ``model`` (the federated model the researcher downloaded) its accuracy is computed here on
    the public test splits, like the references: in a DP job the sites release only noised
    accuracies. Without it, the sites' reported final accuracies are used.
    """
    from medfed.data.heart import HEART_DEFAULTS, load_fed_heart_disease
    from medfed.learn.simulate import pool, train_alone

    datasets = load_fed_heart_disease()
    final = max(r["round"] for r in view["round_metrics"])
    if model is not None:
        from medfed.learn.tasks import LogisticRegressionTask

        task = LogisticRegressionTask()
        fed = {site: task.evaluate(model, data, {})[1]["accuracy"] for site, data in datasets.items()}
    else:
        fed = {
            s["site"]: s["metrics"]["eval_accuracy"]
            for s in view["site_metrics"]
            if s["round"] == final and not s["error"] and "eval_accuracy" in s["metrics"]
        }
    defaults = HEART_DEFAULTS.get(strategy, {"task": {}})["task"]
    rows: list[tuple[str, dict[str, float], str]] = [(f"federated ({strategy})", fed, strategy)]
    options = {**defaults, "local_steps": int(defaults.get("local_steps", 100)) * len(view["round_metrics"])}
    for site, data in datasets.items():
        scores = train_alone(data, datasets, task_options=options, seed=0)
        rows.append((f"local-only {site}", {s: m["accuracy"] for s, m in scores.items()}, f"local {site}"))
    scores = train_alone(pool(datasets), datasets, task_options=options, seed=0)
    rows.append(("pooled (reference)", {s: m["accuracy"] for s, m in scores.items()}, "pooled"))
    headers = ["model", *SITES, "mean", "FLamby mean"]
    body = []
    for label, acc, key in rows:
        vals = [acc.get(s) for s in SITES]
        mean = sum(v for v in vals if v is not None) / max(1, sum(v is not None for v in vals))
        flamby = FLAMBY.get(key)
        body.append(
            [
                label,
                *("—" if v is None else f"{v:.3f}" for v in vals),
                f"{mean:.3f}",
                "—" if flamby is None else f"{flamby:.3f}",
            ]
        )
    return headers, body


def _print_comparison(comparison: tuple[list[str], list[list[str]]]) -> None:
    headers, rows = comparison
    table = Table(title="Test accuracy per hospital: federated vs local-only vs pooled")
    for h in headers:
        table.add_column(h, justify="right" if h != "model" else "left")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _print_privacy(view: dict[str, Any]) -> None:
    """What each hospital's node charged to its own ledger (it computed ε from its own data)."""
    final = max(r["round"] for r in view["round_metrics"])
    table = Table(title=f"Privacy spent per hospital (DP-SGD, noise {DP_NOISE}, δ = 1e-5; budget ε = {DP_BUDGET} each)")
    for col in ("hospital", "ε spent by this job", "ε left in the budget"):
        table.add_column(col, justify="right" if col != "hospital" else "left")
    for s in view["site_metrics"]:
        if s["round"] == final and not s["error"]:
            m = s["metrics"]
            table.add_row(s["site"], f"{m['privacy_epsilon_spent']:.2f}", f"{m['privacy_epsilon_left']:.2f}")
    console.print(table)
