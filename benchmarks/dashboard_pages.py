"""How long each dashboard page takes to answer with 100 jobs and 50 sites in the store.

Builds a coordinator state through the store's own API (``Store.add_job``, ``complete_round`` with
per-site metrics, ``touch_node``; sites registered in the live registry), a user store with an
auditor (who may read every page), serves the real dashboard app over HTTPS on 127.0.0.1, logs in
through the login form, then times ``GET`` of each page (median of ``--repeats``), each as a ratio
against a static file from the same server in the same run (TLS, HTTP and the event loop are in
both; the ratio is what the page itself adds). Target: every page under one second.

    .venv/bin/python benchmarks/dashboard_pages.py [--jobs 100] [--sites 50] [--rounds 10] [--repeats 15]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import re
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from medfed.coordinator.service import Coordinator, CoordinatorSettings
from medfed.core.records import JobState, RoundRecord, SiteMetrics, TaskKind
from medfed.crypto.aead import Keyring, generate_key
from medfed.dashboard.app import create_app
from medfed.dashboard.pages import PAGE_MODULES, load_pages
from medfed.dashboard.server import serve_dashboard
from medfed.dashboard.web import DashboardContext
from medfed.security.authz import UserRole
from medfed.security.plan import parse_plan
from medfed.security.provision import provision
from medfed.security.users import AuthPolicy, Credentials, UserStore
from medfed.transport.api import Hello

PASSWORD = "benchmark password 1234"
TARGET_S = 1.0


def _spec(name: str, rounds: int) -> str:
    return (f'[job]\nname = "{name}"\ntask = "logistic_regression"\ndataset = "heart"\nrounds = {rounds}\n\n'
            '[strategy]\nname = "fedavg"\n\n[task_options]\ninput_dim = 13\n')  # fmt: skip


def populate(coordinator: Coordinator, *, jobs: int, sites: int, rounds: int) -> list[str]:
    """``jobs`` jobs (every 10th still running) with ``rounds`` fit + evaluate rounds each, over
    ``sites`` sites; returns the job ids."""
    store = coordinator.store
    names = [f"site-{i:02d}" for i in range(sites)]
    for site in names:
        store.touch_node(site, version="0.1.0", datasets=("heart",))
        coordinator.nodes.register(site, Hello(version="0.1.0", datasets=("heart",)), cert_expires=time.time() + 9e6)
    ids = []
    for j in range(jobs):
        job_id = uuid.uuid4().hex[:12]
        store.add_job(job_id=job_id, name=f"job-{j}", owner="researcher", spec_toml=_spec(f"job-{j}", rounds),
                      spec_hash=f"{j:064x}", rounds=rounds)  # fmt: skip
        for r in range(1, rounds + 1):
            for kind, key in ((TaskKind.FIT, "train_loss"), (TaskKind.EVALUATE, "eval_accuracy")):
                metrics = [SiteMetrics(site=s, num_examples=100, metrics={key: 0.5 + r / (4 * rounds)}) for s in names]
                record = RoundRecord(job_id=job_id, round=r, kind=kind, sites=tuple(metrics),
                                     aggregated={f"mean/{key}": 0.5 + r / (4 * rounds)}, duration_s=1.0)  # fmt: skip
                store.complete_round(record, checkpoint=None)
        store.set_job_state(job_id, JobState.RUNNING if j % 10 == 0 else JobState.COMPLETED)
        ids.append(job_id)
    return ids


class Browser:
    """An HTTPS client with the dashboard's cookies (one TLS connection, kept alive)."""

    def __init__(self, port: int, ca: Path) -> None:
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(cafile=str(ca)))
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: str = "") -> tuple[int, str]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if body:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=body or None, headers=headers)
        response = self.conn.getresponse()
        text = response.read().decode(errors="replace")
        for header in response.headers.get_all("set-cookie") or []:
            name, _, rest = header.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return response.status, text

    def login(self, user: str) -> None:
        _, page = self.request("GET", "/login")
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
        if csrf is None:
            raise SystemExit("no CSRF token on the login page")
        status, _ = self.request(
            "POST", "/login", f"csrf={csrf.group(1)}&user={user}&password={PASSWORD.replace(' ', '+')}&next=/"
        )
        if status != 303:
            raise SystemExit(f"login failed: HTTP {status}")


def timed(browser: Browser, path: str, repeats: int) -> tuple[float, int]:
    times, status = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        status, _ = browser.request("GET", path)
        times.append(time.perf_counter() - start)
    return statistics.median(times), status


@contextlib.contextmanager
def bench_coordinator(root: Path) -> Iterator[tuple[Coordinator, UserStore]]:
    """A provisioned federation under ``root`` with a coordinator (state in ``root/state``, kit in
    ``root/fed/coordinator``) and a user store holding a logged-in auditor; stopped on exit."""
    plan = ('[federation]\nname = "bench"\ncoordinator_host = "127.0.0.1"\ncoordinator_port = 50443\n\n'
            '[[sites]]\nname = "site-00"\n')  # fmt: skip
    provision(parse_plan(plan, source_name="bench plan"), root / "fed")
    coordinator = Coordinator(CoordinatorSettings(state_dir=root / "state"))
    cheap = AuthPolicy(argon2_time_cost=1, argon2_memory_kib=8192, argon2_parallelism=1)  # not what is timed
    users = UserStore(
        root / "users.db", audit=lambda e, f: None, keyring=Keyring.single(generate_key("k1")), policy=cheap
    )
    try:
        users.add_user("auditor", UserRole.AUDITOR, PASSWORD)
        users.login(Credentials(user_id="auditor", password=PASSWORD))  # warm the store
        yield coordinator, users
    finally:
        coordinator.stop()
        coordinator.store.close()
        users.close()


@contextlib.contextmanager
def auditor_browser(root: Path, coordinator: Coordinator, users: UserStore) -> Iterator[Browser]:
    """The dashboard over HTTPS on a free port, and a client logged in as the auditor; stopped on exit."""
    kit = root / "fed" / "coordinator"
    context = DashboardContext(coordinator=coordinator, users=users, state_dir=root / "state")
    server = serve_dashboard(create_app(context), cert_path=kit / "cert.pem", key_path=kit / "key.pem")
    try:
        browser = Browser(server.port, kit / "ca.pem")
        browser.login("auditor")
        yield browser
    finally:
        server.stop()


def time_pages(browser: Browser, paths: list[str], repeats: int, *, width: int = 40) -> tuple[float, float]:
    """Print each page's median GET beside a static file's from the same server; (baseline, slowest) in s."""
    timed(browser, "/static/style.css", 3)  # warm up
    base, _ = timed(browser, "/static/style.css", repeats)
    print(f"baseline GET /static/style.css: {base * 1e3:.2f} ms (median of {repeats})")
    print(f"{'page':<{width}} {'status':>6} {'median ms':>10} {'x static':>9}")
    worst = 0.0
    for path in paths:
        median, status = timed(browser, path, repeats)
        worst = max(worst, median)
        print(f"{path:<{width}} {status:>6} {median * 1e3:>10.1f} {median / base:>9.1f}")
    return base, worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--sites", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="medfed-dash-bench-") as tmp,
        bench_coordinator(Path(tmp)) as (
            coordinator,
            users,
        ),
    ):
        t0 = time.perf_counter()
        ids = populate(coordinator, jobs=args.jobs, sites=args.sites, rounds=args.rounds)
        rows = args.jobs * args.rounds * 2 * args.sites
        print(f"store: {args.jobs} jobs x {args.rounds} rounds x 2 kinds over {args.sites} sites "
              f"({rows} site-metric rows) in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        with auditor_browser(Path(tmp), coordinator, users) as browser:
            _, nav = load_pages(PAGE_MODULES)
            paths = [e.path for e in nav] + [f"/jobs/{ids[0]}", f"/jobs/{ids[0]}/progress.json"]
            _, worst = time_pages(browser, paths, args.repeats)
            verdict = "meets" if worst < TARGET_S else "MISSES"
            print(f"slowest page {worst * 1e3:.0f} ms: {verdict} the {TARGET_S:.0f} s target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
