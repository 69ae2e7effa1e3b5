"""How long the Privacy, Approvals, Audit, Alerts and Catalog pages take with a busy coordinator.

On top of ``dashboard_pages.py``'s store (100 jobs x 10 rounds x 2 kinds over 50 sites) this adds
what these pages read: every other job a DP job (each site's results report its spend and budget),
10 jobs refused as "not cleared" at 5 sites each, ``--audit`` entries in the coordinator's
hash-chained audit log (appended through ``AuditLog.append``, so the chain and its signed
checkpoints are real), ``--alerts`` alerts in ``alerts.sqlite``, and a catalog entry per site. It
then logs in as an auditor over HTTPS and times each page (median of ``--repeats``) as a ratio to
a static file from the same server in the same run, plus one "verify chain" POST.

    .venv/bin/python benchmarks/dashboard_governance_pages.py [--audit 10000] [--alerts 500] [--repeats 7]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dashboard_pages import (  # same store, client, timer
    TARGET_S,
    Browser,
    auditor_browser,
    bench_coordinator,
    populate,
    time_pages,
)
from medfed.coordinator.service import Coordinator
from medfed.core.records import RoundRecord, SiteMetrics, TaskKind
from medfed.data.catalog import CatalogColumn, CatalogEntry
from medfed.security.alerts import AlertSource, AlertStore, StoredAlert, alert_id
from medfed.security.audit_events import AuditAction, AuditEvent

PAGES = ("/privacy", "/approvals", "/audit", "/audit?action=job.submitted&actor=researcher", "/alerts",
         "/alerts?kind=failed_logins", "/catalog?q=heart+age%3E60")  # fmt: skip


def add_governance(coordinator: Coordinator, ids: list[str], *, sites: int, rounds: int) -> None:
    """DP spends on every other job, refusals on 10 jobs, a catalog entry per site."""
    store, names = coordinator.store, [f"site-{i:02d}" for i in range(sites)]
    for j, job_id in enumerate(ids):
        if j % 2 == 0:
            for r in range(1, rounds + 1):
                spent = {"privacy_epsilon_spent": 0.1 * r, "privacy_delta_spent": 1e-6,
                         "privacy_epsilon_left": 50 - 0.1 * r, "privacy_epsilon_total": 50.0}  # fmt: skip
                metrics = [SiteMetrics(site=s, num_examples=100, metrics={"train_loss": 0.5} | spent) for s in names]
                store.complete_round(RoundRecord(job_id=job_id, round=r, kind=TaskKind.FIT, sites=tuple(metrics),
                                                 aggregated={}, duration_s=1.0), checkpoint=None)  # fmt: skip
        if j % 10 == 5:
            prefix = f"{j:064x}"[:12]  # dashboard_pages.populate's spec_hash
            refused = [SiteMetrics(site=s, num_examples=0, metrics={}, error=(
                f"site {s!r}, round 1: site {s!r} has not cleared job {job_id!r} (spec {prefix}…): its spec awaits "
                "the site admin's approval (medfed approvals list)")) for s in names[:5]]  # fmt: skip
            store.complete_round(RoundRecord(job_id=job_id, round=1, kind=TaskKind.FIT, sites=tuple(refused),
                                             aggregated={}, duration_s=1.0), checkpoint=None)  # fmt: skip
    for s in names:
        age = CatalogColumn(name="age", type="float", unit="year", bins=((20.0, 60.0, "120"), (60.0, 90.0, "180")))
        entry = CatalogEntry(site=s, dataset="heart", rows="300", tags=("cardiology",), epsilon_budget=50.0,
                             delta_budget=1e-5, columns=(age,))  # fmt: skip
        store.replace_catalog(s, [entry])


def add_audit_and_alerts(coordinator: Coordinator, state: Path, *, audit: int, alerts: int) -> None:
    actions = (AuditAction.JOB_SUBMITTED, AuditAction.RESULT_RECEIVED, AuditAction.LOGIN_SUCCEEDED)
    for i in range(audit):
        action = actions[i % len(actions)]
        actor = "researcher" if action is not AuditAction.RESULT_RECEIVED else f"site-{i % 50:02d}"
        fields: dict[str, str | int | float | bool] = {"job_id": f"j{i % 100:04d}", "round": i % 10}
        coordinator.audit.log.append(AuditEvent(action=action, actor=actor, fields=fields))
    store = AlertStore(state / "alerts.sqlite")
    now = time.time()
    for i in range(alerts):
        kind = ("failed_logins", "off_hours", "new_source")[i % 3]
        store.add(StoredAlert(alert_id=alert_id(AlertSource.ACCESS, f"user{i % 40}", float(i), kind), at=now - i * 60,
                              kind=kind, subject=f"user{i % 40}", score=-0.1, reason=f"{kind} in one window",
                              source=AlertSource.ACCESS))  # fmt: skip
    store.close()


def verify_once(browser: Browser) -> tuple[float, str]:
    _, page = browser.request("GET", "/audit")
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    if csrf is None:
        raise SystemExit("no CSRF token on the audit page")
    start = time.perf_counter()
    status, body = browser.request("POST", "/audit/verify", f"csrf={csrf.group(1)}")
    took = time.perf_counter() - start
    found = re.search(r'data-testid="verify-result">([^<]{0,60})', body)
    return took, f"HTTP {status}: {found.group(1).strip() if found else '?'}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--sites", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--audit", type=int, default=10_000)
    ap.add_argument("--alerts", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="medfed-gov-bench-") as tmp,
        bench_coordinator(Path(tmp)) as (
            coordinator,
            users,
        ),
    ):
        t0 = time.perf_counter()
        ids = populate(coordinator, jobs=args.jobs, sites=args.sites, rounds=args.rounds)
        add_governance(coordinator, ids, sites=args.sites, rounds=args.rounds)
        add_audit_and_alerts(coordinator, Path(tmp) / "state", audit=args.audit, alerts=args.alerts)
        print(f"state: {args.jobs} jobs ({args.jobs // 2} DP, {args.jobs // 10} refused at 5 sites) x {args.rounds} "
              f"rounds over {args.sites} sites, {args.audit} audit entries, {args.alerts} alerts "
              f"(built in {time.perf_counter() - t0:.1f} s)")  # fmt: skip
        with auditor_browser(Path(tmp), coordinator, users) as browser:
            base, worst = time_pages(browser, PAGES, args.repeats, width=48)
            took = statistics.median(verify_once(browser)[0] for _ in range(3))
            print(f"{'POST /audit/verify (' + verify_once(browser)[1] + ')':<48} {'':>6} {took * 1e3:>10.1f} "
                  f"{took / base:>9.1f}")  # fmt: skip
            print(f"slowest page {worst * 1e3:.0f} ms: {'meets' if worst < TARGET_S else 'MISSES'} the "
                  f"{TARGET_S:.0f} s target; verifying {args.audit} entries took {took * 1e3:.0f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
