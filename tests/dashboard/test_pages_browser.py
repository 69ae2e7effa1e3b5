"""The Privacy, Approvals, Audit, Alerts and Catalog pages and the node's local page, in a real
browser (Playwright on Debian's Chromium) over HTTPS, against a real federation over mTLS.

The federation: alpha requires its admin's approval of every job spec (and serves its local page,
logins against its own user store), beta and gamma do not; every site has a DP budget on ``heart``;
gamma also declares a ``diabetes`` dataset (generated FHIR patients exported as CSV) whose catalog
entry carries its budget. The tests run in file order; the last one breaks the coordinator's audit
chain on purpose (tampering through SQLite) and checks the page names the bad entry.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dashboard.support import (
    AUDITOR,
    PASSWORD,
    POLICY,
    RESEARCHER,
    SITE_ADMIN,
    Dashboard,
    _enrol_totp,
    shot,
    start_dashboard,
)
from integration.support import NodeThread, job_toml
from integration.test_declared_datasets import CSV_SITE, _declare, _write_csv_export
from medfed.cli.config import load_node_config
from medfed.core.records import Role
from medfed.crypto.aead import Keyring, generate_key
from medfed.dashboard.node_page import NodePageContext, create_node_app, open_node_page
from medfed.dashboard.server import DashboardServer, serve_dashboard
from medfed.learn.base import TabularData
from medfed.node.runtime import DatasetConfig, NodeRuntime, NodeSettings
from medfed.security.authz import UserRole
from medfed.security.node_policy import NodePolicy
from medfed.security.users import UserStore, totp_code
from medfed.transport.api import Peer

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

SITES = ("alpha", "beta", "gamma")
KEEPER = "alpha-keeper"  # alpha's site admin in alpha's OWN user store (not the coordinator's)
WATCHER = "alpha-watcher"  # an auditor in alpha's own user store
BUDGET = 50.0  # a refused attempt still reserves at the sites that ran it: room for several jobs
GAMMA_BUDGET = 3.0


@dataclass
class Governed:
    dash: Dashboard
    node_server: DashboardServer
    node_page: NodePageContext
    totp: dict[str, bytes]  # alpha's own users' TOTP secrets
    states: Path

    @property
    def node_url(self) -> str:
        return self.node_server.url


def _settings(dash: Dashboard, site: str, states: Path) -> NodeSettings:
    heart = DatasetConfig(name="heart", path=dash.fed.kit(site) / "data" / site, epsilon_budget=BUDGET,
                          delta_budget=1e-5)  # fmt: skip
    datasets = {"heart": heart}
    if site == "gamma":
        datasets = dict(load_node_config(dash.fed.site_toml(site)).settings.datasets) | datasets
    policy = NodePolicy.approval_only(site) if site == "alpha" else None
    return NodeSettings(site=site, datasets=datasets, poll_wait_s=1.0, backoff_initial_s=0.05, backoff_max_s=0.5,
                        state_dir=states / site, policy=policy)  # fmt: skip


@pytest.fixture(scope="module")
def gov(tmp_path_factory: pytest.TempPathFactory, heart: dict[str, TabularData]) -> Iterator[Governed]:
    root = Path(tmp_path_factory.mktemp("pages"))
    # 2 s heartbeats: three in-process DP nodes share one GIL (see integration/test_privacy.py)
    dash = start_dashboard(root, heart, sites=SITES, nodes=(), heartbeat_s=2.0)
    states, server, page = root / "nodes", None, None
    try:
        _write_csv_export(dash.fed.kit("gamma") / "data" / "export.csv", seed=23, scratch=root / "gamma-fhir")
        declared = CSV_SITE.replace('format = "csv"\n', f'format = "csv"\nepsilon_budget = {GAMMA_BUDGET}\n', 1)
        _declare(dash.fed.kit("gamma"), declared)
        for site in SITES:
            node = NodeThread(NodeRuntime(_settings(dash, site, states), dash.cluster.link(site)))
            dash.cluster.nodes.append(node)
            node.start()
        dash.cluster.wait_online(list(SITES), timeout_s=60)
        keyring = Keyring.single(generate_key("alpha"))
        users = UserStore(states / "alpha" / "users.db", audit=lambda e, f: None, keyring=keyring, policy=POLICY,
                          clock=dash.clock)  # fmt: skip
        users.add_user(KEEPER, UserRole.SITE_ADMIN, PASSWORD, site="alpha")
        users.add_user(WATCHER, UserRole.AUDITOR, PASSWORD)
        secret = _enrol_totp(users, dash.clock, KEEPER)
        watcher = _enrol_totp(users, dash.clock, WATCHER)
        users.close()
        page = open_node_page(_settings(dash, "alpha", states), keyring=keyring, clock=dash.clock)
        kit = dash.fed.kit("alpha")
        server = serve_dashboard(create_node_app(page), cert_path=kit / "cert.pem", key_path=kit / "key.pem")
        yield Governed(
            dash=dash, node_server=server, node_page=page, totp={KEEPER: secret, WATCHER: watcher}, states=states
        )
    finally:
        if server is not None:
            server.stop()
        if page is not None:
            page.close()
        dash.close()


def _dp_spec(name: str) -> str:
    options = {"input_dim": 13, "local_steps": 5, "batch_size": 8, "lr": 0.05}
    spec = job_toml(name=name, rounds=2, task_options=options, min_nodes=3, retries=1, deadline_s=120.0)
    return spec + "\n[privacy]\nnoise_multiplier = 1.0\nclip_norm = 1.0\ndelta = 1e-6\n"


def _run(g: Governed, spec: str) -> tuple[str, Any]:
    view = g.dash.coordinator.submit_job(Peer(name=RESEARCHER, role=Role.RESEARCHER), spec, "job.toml")
    job_id = str(view["job_id"])
    g.dash.wait_job(job_id, timeout_s=180)
    return job_id, g.dash.coordinator.store.job(job_id)


def _node_login(g: Governed, page: Any, user: str = KEEPER) -> None:
    """Log ``user`` in on alpha's node page (a live session there: already in, /login moves on)."""
    page.goto(g.node_url + "/login")
    if "/login" not in page.url:
        return
    page.fill("#user", user)
    page.fill("#password", PASSWORD)
    with g.dash._login_lock:
        code = totp_code(g.totp[user], at=g.dash.clock())
        g.dash.clock.advance(30)
    page.fill("#code", code)
    with page.expect_navigation():
        page.click("form[action='/login'] button[type=submit]")
    assert "/login" not in page.url, page.inner_text("main")


def test_a_researcher_cannot_open_approvals(gov: Governed, page: Any) -> None:
    gov.dash.login(page, RESEARCHER)

    response = page.goto(gov.dash.url + "/approvals")

    assert response is not None and response.status == 403
    assert "approval.read" in page.inner_text("[data-testid=error]")
    assert page.locator("nav a[href='/approvals']").count() == 0  # not even offered
    denied = [f for a, _, f in gov.dash.audit_actions() if a == "access.denied" and f.get("user") == RESEARCHER]
    assert any(f.get("method") == "approval.read" for f in denied)


def test_a_site_admin_approves_a_refused_spec_on_the_node_page_and_the_resubmitted_job_runs(
    gov: Governed, page: Any
) -> None:
    # Arrange: nobody at alpha has approved this spec yet
    spec = _dp_spec("approve-me")
    digest = hashlib.sha256(spec.encode()).hexdigest()
    refused_id, refused = _run(gov, spec)
    assert refused.state.value == "failed" and "awaits the site admin's approval" in refused.error

    # Act 1: the coordinator's Approvals page, as alpha's admin there
    gov.dash.login(page, SITE_ADMIN)
    page.goto(gov.dash.url + "/approvals")
    shot(page, "approvals")
    item = page.locator(f"[data-testid=not-cleared][data-site=alpha][data-spec='{digest}']")
    # Assert 1: the refusal as alpha sent it, and where to decide
    assert item.locator("[data-testid=state]").inner_text() == "pending"
    assert refused_id in item.inner_text()
    assert "--page" in page.inner_text("[data-testid=where-to-decide]")

    # Act 2: alpha's admin approves it on the node's local page (alpha's own user store)
    _node_login(gov, page)
    page.goto(gov.node_url + "/approvals")
    pending = page.locator(f"[data-testid=approval][data-spec='{digest}']")
    assert pending.get_attribute("data-state") == "pending"
    assert "[privacy]" in pending.locator("[data-testid=spec]").text_content()
    pending.locator("input[name=reason]").fill("reviewed: DP heart model")
    pending.locator("input[name=expires_days]").fill("7")
    shot(page, "node-approvals-pending")
    with page.expect_navigation():
        pending.locator("[data-testid=approve]").click()
    shot(page, "node-approvals-decided")

    # Assert 2: decided, recorded with its expiry, and audited in alpha's own chain
    assert "approved" in page.inner_text("[data-testid=message]")
    decided = page.locator(f"[data-testid=approval][data-spec='{digest}']")
    assert decided.get_attribute("data-state") == "approved"
    assert "reviewed: DP heart model" in decided.inner_text() and "expires" in decided.inner_text()
    entries = gov.node_page.audit.entries()
    assert any(e.action == "approval.decided" and e.fields.get("spec_hash") == digest and e.actor == KEEPER
               for e in entries)  # fmt: skip

    # Act 3 / Assert 3: the same spec, resubmitted, now runs at every site
    ran_id, ran = _run(gov, spec)
    assert ran.state.value == "completed", ran.error
    page.goto(gov.dash.url + "/approvals")  # still logged in there: the node page's cookies are its own
    state = page.locator(f"[data-testid=not-cleared][data-spec='{digest}'] [data-testid=state]").inner_text()
    assert f"cleared since (job {ran_id} ran)" in state

    # Act 4 / Assert 4: a changed spec of the same job is refused again, shown with its diff to the one that ran
    changed = spec.replace("lr = 0.05", "lr = 0.1")
    _run(gov, changed)
    page.reload()
    item = page.locator(f"[data-testid=not-cleared][data-spec='{hashlib.sha256(changed.encode()).hexdigest()}']")
    diff = item.locator("[data-testid=diff]").text_content() or ""
    assert f"ran: job {ran_id}" in diff and "-lr = 0.05" in diff and "+lr = 0.1" in diff, diff
    _node_login(gov, page)
    page.goto(gov.node_url + "/approvals")
    node_diff = page.locator(f"[data-testid=approval][data-spec='{hashlib.sha256(changed.encode()).hexdigest()}']")
    assert "+lr = 0.1" in (node_diff.locator("[data-testid=diff]").text_content() or "")


def _gauge(page: Any, site: str, dataset: str) -> float:
    """ε used on the Privacy page's gauge (the meter's value), 0 when the site reported nothing yet."""
    meter = page.locator(f"[data-testid=gauge][data-site={site}][data-dataset={dataset}] meter")
    return float(meter.get_attribute("value")) if meter.count() else 0.0


def test_the_budget_gauge_moves_after_a_dp_job(gov: Governed, page: Any) -> None:
    # Arrange: alpha's admin approved this spec beforehand (as on its page or with medfed approvals)
    spec = _dp_spec("gauge")
    from medfed.security.approvals import open_site_approvals
    from medfed.security.authz import Principal

    _run(gov, spec)  # refused at alpha: now pending there
    store = open_site_approvals(gov.states / "alpha", site="alpha", note=lambda e, f: None)
    store.approve(hashlib.sha256(spec.encode()).hexdigest(), by=Principal(user_id=KEEPER, role=UserRole.SITE_ADMIN,
                                                                        site="alpha"), reason="gauge test")  # fmt: skip
    store.close()
    gov.dash.login(page, AUDITOR)
    page.goto(gov.dash.url + "/privacy")
    before = _gauge(page, "alpha", "heart")
    # gamma's declared dataset: the total came with its catalog entry and its ledger's figures (both sent
    # when it registered), before any DP job touched it
    gamma = page.locator("[data-testid=gauge][data-site=gamma][data-dataset=diabetes]")
    assert gamma.locator("[data-testid=total]").inner_text().startswith(f"{GAMMA_BUDGET:g}")
    assert re.search("catalog entry|site's ledger", gamma.locator("[data-testid=total]").inner_text())

    # Act
    job_id, row = _run(gov, spec)
    page.reload()
    shot(page, "privacy")

    # Assert: the gauge moved by what the sites reported, and says where the figures came from
    assert row.state.value == "completed", row.error
    after = _gauge(page, "alpha", "heart")
    assert after > before
    alpha = page.locator("[data-testid=gauge][data-site=alpha][data-dataset=heart]")
    assert page.locator("[data-testid=gauge][data-site=alpha][data-dataset=heart] meter").get_attribute("max") == str(
        BUDGET
    )
    assert f"job {job_id}" in alpha.locator("[data-testid=left]").inner_text()
    assert alpha.locator(f"tr[data-job='{job_id}']").count() == 1
    # beta ran the first round of jobs alpha refused: no job result at the coordinator shows that spend (nor
    # the holds, until beta released them); the page says so (held / committed by the ledger, or not
    # explained) rather than hiding the difference
    beta = page.locator("[data-testid=gauge][data-site=beta][data-dataset=heart]")
    shown = [beta.locator(f"[data-testid={k}]") for k in ("unexplained", "held", "unreported")]
    assert any(float(x.inner_text().split()[0]) > 0 for x in shown if x.count())
    # the node's own ledger agrees: its page shows the same ε used
    _node_login(gov, page)
    page.goto(gov.node_url + "/budget")
    shot(page, "node-budget")
    node_used = float(page.locator("[data-testid=budget][data-dataset=heart] meter").get_attribute("value"))
    assert node_used == pytest.approx(after, rel=1e-9)


def test_a_site_admin_sees_only_their_own_sites_budget(gov: Governed, page: Any) -> None:
    gov.dash.login(page, SITE_ADMIN)  # alpha's admin at the coordinator

    page.goto(gov.dash.url + "/privacy")
    shown = {page.locator("[data-testid=gauge]").nth(i).get_attribute("data-site")
             for i in range(page.locator("[data-testid=gauge]").count())}  # fmt: skip
    response = page.goto(gov.dash.url + "/privacy?site=beta")

    assert shown <= {"alpha"}
    assert response is not None and response.status == 403
    assert "their own site" in page.inner_text("[data-testid=error]")


def test_catalog_search_shows_metadata_and_coarse_counts_only(gov: Governed, page: Any) -> None:
    gov.dash.login(page, RESEARCHER)

    page.goto(gov.dash.url + "/catalog?q=diabetes+glucose+hba1c%3E6")
    shot(page, "catalog")

    hits = page.locator("[data-testid=hits] tr[data-site]")
    assert hits.count() == 1 and hits.get_attribute("data-site") == "gamma"
    assert page.inner_text("[data-testid=hits] [data-testid=rows]") == "80"  # coarse: rounded to 10
    text = page.inner_text("main")
    assert "hba1c>6" in text and "MRN" not in text  # no identifier of a patient reaches the page


def test_node_page_shows_datasets_and_verifies_its_own_audit_chain(gov: Governed, page: Any) -> None:
    import datetime as dt

    from medfed.data.consent import ConsentRecord, ConsentStatus, ConsentStore
    from medfed.node.datasets import consent_path

    path = consent_path(gov.states / "alpha")
    assert path is not None
    store, day = ConsentStore(path), dt.date(2026, 1, 5)
    store.add([ConsentRecord(patient_id=f"w{p}", purpose="*", status=status, date=day)
               for p, status in ((1, ConsentStatus.PERMIT), (2, ConsentStatus.DENY), (3, ConsentStatus.PERMIT))],
              source="test.csv", at=dt.datetime(2026, 1, 5, tzinfo=dt.UTC))  # fmt: skip
    store.add([ConsentRecord(patient_id="w3", purpose="*", status=ConsentStatus.DENY, date=day + dt.timedelta(days=1))],
              source="withdraw", at=dt.datetime(2026, 1, 6, tzinfo=dt.UTC))  # fmt: skip
    store.close()
    _node_login(gov, page)
    page.goto(gov.node_url + "/datasets")
    shot(page, "node-datasets")
    row = page.locator("[data-testid=datasets] tr[data-dataset=heart]")
    folder = gov.dash.fed.dataset("alpha").path
    rows = sum(len((folder / f).read_text().splitlines()) - 1 for f in ("train.csv", "test.csv"))
    assert row.locator("td.num").inner_text() == str(rows)
    assert "valid" in row.inner_text()
    counts = {k: page.inner_text(f"[data-testid=consent-{k}]") for k in ("patients", "in", "out")}
    assert counts == {"patients": "3", "in": "1", "out": "2"}  # w3 withdrew after opting in
    page.goto(gov.node_url + "/audit")
    with page.expect_navigation():
        page.click("[data-testid=verify]")
    shot(page, "node-audit")
    assert page.inner_text("[data-testid=verify-result]").startswith("✓ Chain OK")
    assert "login.succeeded" in page.inner_text("[data-testid=entries]")


def test_the_node_page_lets_its_auditor_read_but_not_decide_and_ends_idle_sessions(gov: Governed, page: Any) -> None:
    _run(gov, _dp_spec("watched"))  # refused at alpha: a pending spec there to look at
    _node_login(gov, page, WATCHER)
    page.goto(gov.node_url + "/approvals")
    assert page.locator("[data-testid=approval]").count() >= 1
    assert page.locator("[data-testid=decide]").count() == 0  # no form to decide with
    spec = page.locator("[data-testid=approval]").first.get_attribute("data-spec")
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    # a hand-made POST with the auditor's own valid CSRF token is refused by the role matrix, and audited
    forged = page.request.post(gov.node_url + f"/approvals/{spec}", form={"csrf": csrf, "decision": "reject",
                                                                           "reason": "not mine to decide"})  # fmt: skip
    assert forged.status == 403 and "approval.decide" in forged.text()
    denied = [e for e in gov.node_page.audit.entries() if e.action == "access.denied"]
    assert denied and denied[-1].fields.get("user") == WATCHER

    gov.dash.clock.advance(gov.node_page.users.policy.session_idle_s + 60)  # idle past the automatic logoff
    page.goto(gov.node_url + "/audit")
    assert "/login" in page.url and "expired=1" in page.url
    assert "session ended" in page.inner_text("main")


def test_the_node_page_login_returns_to_the_page_asked_for_and_drops_an_ended_sessions_cookie(
    gov: Governed, page: Any
) -> None:
    # Arrange: a browser holding a node-page session cookie the node does not know (ended)
    page.context.add_cookies([{"name": "medfed_node_session", "value": "ended-long-ago", "url": gov.node_url}])

    # Act: ask for a filtered page, then log in from where it sent us
    page.goto(gov.node_url + "/audit?x=1&y=2")
    sent_to = page.url
    left = {c["name"] for c in page.context.cookies(gov.node_url)}
    page.fill("#user", KEEPER)
    page.fill("#password", PASSWORD)
    with gov.dash._login_lock:
        code = totp_code(gov.totp[KEEPER], at=gov.dash.clock())
        gov.dash.clock.advance(30)
    page.fill("#code", code)
    with page.expect_navigation():
        page.click("form[action='/login'] button[type=submit]")

    # Assert: the whole target was one next= value; the ended session's cookie was dropped
    assert sent_to == gov.node_url + "/login?next=/audit%3Fx%3D1%26y%3D2&expired=1"
    assert "medfed_node_session" not in left
    assert page.url == gov.node_url + "/audit?x=1&y=2"


def test_an_alert_appears_after_repeated_failed_logins(gov: Governed, page: Any) -> None:
    # Arrange: a burst of failed logins at the dashboard, then the coordinator's alert scan
    for _ in range(9):  # >= 2 x 5 - 1: a burst of 5 lands in one hour window even across a boundary
        page.goto(gov.dash.url + "/login")
        page.fill("#user", "mallory")
        page.fill("#password", "not the password at all")
        page.fill("#code", "000000")
        page.click("form[action='/login'] button[type=submit]")
        page.wait_for_selector("[data-testid=error]")
    new = gov.dash.coordinator.alerting.scan_now()
    assert any(a.subject == "mallory" and "failed_logins" in a.kind for a in new)

    # Act
    gov.dash.login(page, AUDITOR)
    page.goto(gov.dash.url + "/alerts?kind=failed_logins")
    shot(page, "alerts")

    # Assert
    row = page.locator("[data-testid=alerts] tr[data-kind*=failed_logins]").first
    assert "mallory" in row.inner_text() and "failed logins" in row.inner_text()
    page.goto(gov.dash.url + "/alerts?kind=off_hours")
    assert "mallory" not in page.inner_text("[data-testid=alerts]")


def test_the_audit_chain_verifies_then_the_page_names_a_tampered_entry(gov: Governed, page: Any) -> None:
    gov.dash.login(page, AUDITOR)
    page.goto(gov.dash.url + "/audit?action=user.changed")  # the fixture added four people, each audited
    assert page.locator("[data-testid=entries] tr[data-seq]").count() >= 4
    assert {page.inner_text(f"[data-testid=entries] tr[data-seq]:nth-child({i}) td:nth-child(3)") for i in (1, 2)} == {
        "user.changed"
    }
    with page.expect_navigation():
        page.click("[data-testid=verify]")
    assert page.inner_text("[data-testid=verify-result]").startswith("✓ Chain OK")

    # Tamper with one entry through SQLite, past the append-only guard (what an intruder would do)
    path = gov.dash.coordinator.audit.log.path
    victim = gov.dash.coordinator.audit.log.entries()[4].seq
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET actor='someone-else' WHERE seq=?", (victim,))
    db.commit()
    db.close()

    with page.expect_navigation():
        page.click("[data-testid=verify]")
    shot(page, "audit-tampered")

    result = page.inner_text("[data-testid=verify-result]")
    assert result.startswith(f"✗ Chain broken at entry {victim}:"), result
    # the evidence is left as it is: the edited row and the dropped guard are still there
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        assert db.execute("SELECT actor FROM audit WHERE seq=?", (victim,)).fetchone() == ("someone-else",)
        triggers = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
        assert "audit_no_update" not in triggers
    finally:
        db.close()
