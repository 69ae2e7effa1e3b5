"""The dashboard's core through a real browser (Playwright on Debian's Chromium) over HTTPS:
login with password + TOTP, sessions, access control through the UI, the Federation page and a
job advancing live on its page, with its signed model downloaded and verified."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import expect

from dashboard.support import AUDITOR, FED_ADMIN, PASSWORD, POLICY, RESEARCHER, SITE_ADMIN, Dashboard, job_toml, shot
from medfed.core.params import Parameters
from medfed.crypto.signing import ModelSignature, verify_model
from medfed.security.authz import UserRole
from medfed.security.provision import COORDINATOR_PUB
from medfed.security.users import Credentials

pytestmark = pytest.mark.timeout(240)


def _csrf(page: Any) -> str:
    return str(page.get_attribute("form[action='/logout'] input[name=csrf]", "value"))


def test_researcher_logs_in_with_password_and_totp(dash: Dashboard, page: Any) -> None:
    dash.login(page, RESEARCHER)

    page.goto(dash.url + "/federation")
    shot(page, "federation")

    assert page.inner_text("[data-testid=who]").startswith(RESEARCHER)
    assert page.locator("tr[data-site]").count() == 3
    assert page.inner_text("[data-testid=online-count]") == "3"
    expiry = page.inner_text("tr[data-site=alpha] td:nth-child(7)")
    # the certificate the node connected with: the test plan issues 30-day certificates, so it is flagged
    assert "UTC" in expiry and "renew soon" in expiry
    logins = [e for e in dash.audit_actions() if e[0] == "login.succeeded" and e[1] == RESEARCHER]
    assert logins


def test_a_wrong_code_is_refused_with_one_opaque_message(dash: Dashboard, page: Any) -> None:
    page.goto(dash.url + "/login")
    page.fill("#user", SITE_ADMIN)
    page.fill("#password", PASSWORD)
    page.fill("#code", "000000" if dash.code(SITE_ADMIN) != "000000" else "111111")
    page.click("form[action='/login'] button[type=submit]")
    shot(page, "login-refused")

    assert "/login" in page.url
    message = page.inner_text("[data-testid=error]")
    assert message.startswith("Login failed") and "code" in message  # the same text for every cause
    assert page.context.cookies() and not any(c["name"] == "medfed_session" for c in page.context.cookies())
    failures = [e for e in dash.audit_actions() if e[0] == "login.failed" and e[2].get("user") == SITE_ADMIN]
    assert failures


def test_cookies_and_headers_are_locked_down(dash: Dashboard, page: Any) -> None:
    dash.login(page, FED_ADMIN)

    response = page.goto(dash.url + "/jobs")

    assert response is not None
    headers = response.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"
    session = next(c for c in page.context.cookies() if c["name"] == "medfed_session")
    assert session["secure"] and session["httpOnly"] and session["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # scripts cannot read it


def test_auditor_sees_no_submit_form_and_a_post_is_refused(dash: Dashboard, page: Any) -> None:
    # Arrange
    dash.login(page, AUDITOR)
    page.goto(dash.url + "/jobs")
    shot(page, "jobs-auditor")
    jobs_before = len(dash.coordinator.store.jobs())

    # Act: a hand-made POST with the auditor's own valid session and CSRF token
    response = page.request.post(dash.url + "/jobs", form={"csrf": _csrf(page), "spec": job_toml(rounds=1)})

    # Assert
    assert page.locator("[data-testid=submit-form]").count() == 0
    assert response.status == 403
    assert "auditor" in response.text() and "job.submit" in response.text()
    assert len(dash.coordinator.store.jobs()) == jobs_before
    denied = [e for e in dash.audit_actions() if e[0] == "access.denied" and e[1] == AUDITOR]
    assert denied and denied[-1][2]["method"] == "job.submit"


def test_a_post_without_the_csrf_token_is_refused(dash: Dashboard, page: Any) -> None:
    dash.login(page, RESEARCHER)
    jobs_before = len(dash.coordinator.store.jobs())

    response = page.request.post(dash.url + "/jobs", form={"spec": job_toml(rounds=1)})

    assert response.status == 403 and "CSRF" in response.text()
    assert len(dash.coordinator.store.jobs()) == jobs_before


def test_an_idle_session_redirects_to_login(dash: Dashboard, page: Any) -> None:
    dash.login(page, RESEARCHER)
    page.goto(dash.url + "/jobs")

    dash.clock.advance(POLICY.session_idle_s + 1)  # the store's clock: the session is now idle too long
    page.goto(dash.url + "/federation")
    shot(page, "session-expired")

    assert re.search(r"/login\?next=/federation&expired=1$", page.url)
    assert "session ended" in page.inner_text("[data-testid=notice]")
    ended = [e for e in dash.audit_actions() if e[0] == "logout" and e[1] == RESEARCHER]
    assert ended and ended[-1][2].get("reason") == "idle"


def test_a_researcher_submits_a_job_and_watches_it_advance_live(dash: Dashboard, page: Any, tmp_path: Path) -> None:
    # Arrange
    dash.login(page, RESEARCHER)
    page.goto(dash.url + "/jobs")
    rounds = 6
    spec = job_toml(name="live-job", rounds=rounds, task_options={"input_dim": 13, "local_steps": 60, "lr": 0.05})

    # Act: submit through the form; the job page then polls progress.json
    page.fill("#spec", spec)
    with page.expect_navigation():
        page.click("[data-testid=submit-form] button[type=submit]")
    page.evaluate("window.__notReloaded = true")
    first = int(page.inner_text("[data-testid=round-count]"))
    # (Playwright's wait_for_function evaluates a string, which the page's CSP forbids: use expect)
    expect(page.get_by_test_id("round-count")).to_have_text(str(rounds), timeout=120_000)
    expect(page.get_by_test_id("state")).to_have_text("completed", timeout=30_000)
    shot(page, "job-live-finished")

    # Assert: the count rose in place, without a reload
    assert first < rounds
    assert page.evaluate("window.__notReloaded === true")
    assert page.evaluate("Chart.getChart('chart-sites').data.datasets.length") == 3
    assert page.evaluate("Chart.getChart('chart-scores').data.labels.length") >= rounds - 1
    job_id = page.url.rsplit("/", 1)[1]
    assert dash.coordinator.store.job(job_id).owner == RESEARCHER

    # and the signed model downloads and verifies against the coordinator's public key
    page.reload()
    shot(page, "job-detail")
    assert page.locator("[data-testid=comparison] tbody tr").count() == 4  # 3 sites + the mean
    with page.expect_download() as model_dl:
        page.click("[data-testid=download-model]")
    with page.expect_download() as sig_dl:
        page.click("[data-testid=download-signature]")
    with np.load(io.BytesIO(Path(model_dl.value.path()).read_bytes()), allow_pickle=False) as npz:
        params = Parameters.from_numpy({k: npz[k] for k in npz.files})
    signature = ModelSignature.from_json_bytes(Path(sig_dl.value.path()).read_bytes())
    public = (dash.fed.kit(RESEARCHER) / COORDINATOR_PUB).read_bytes()  # every kit holds the public half
    provenance = verify_model(params, signature, public)
    assert provenance.rounds == rounds


def test_the_job_report_opens_and_the_auditor_cannot_download_the_model(dash: Dashboard, page: Any) -> None:
    job_id = dash.submit(RESEARCHER, name="for-auditor", rounds=1)
    dash.wait_job(job_id)
    dash.login(page, AUDITOR)

    page.goto(f"{dash.url}/jobs/{job_id}")
    no_download = page.locator("[data-testid=download-model]").count() == 0
    report = page.request.get(f"{dash.url}/jobs/{job_id}/report")
    model = page.request.get(f"{dash.url}/jobs/{job_id}/model.npz")

    page.goto(f"{dash.url}/jobs/{job_id}/report")
    pdf = page.pdf(format="A4")  # "printable to PDF": Chromium's print path with the report's print CSS

    assert no_download
    assert page.locator("h1").inner_text().startswith(f"medfed job {job_id}")
    assert report.status == 200 and "Per-round metrics" in report.text()
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page") >= 1
    assert model.status == 403


def test_a_researcher_cannot_open_approvals(dash: Dashboard, page: Any) -> None:
    dash.login(page, RESEARCHER)

    response = page.goto(dash.url + "/approvals")
    shot(page, "approvals-researcher-403")

    assert response is not None and response.status == 403
    assert "researcher" in page.inner_text("[data-testid=error]")
    assert page.locator("nav a[href='/approvals']").count() == 0  # no link to a page the role cannot use


def test_a_site_admin_cancels_another_job_only_under_break_glass(dash: Dashboard, page: Any) -> None:
    # Arrange: a long job; the site admin first logs in normally (no job.cancel right)
    job_id = dash.submit(RESEARCHER, name="long-job", rounds=200)
    dash.login(page, SITE_ADMIN)
    page.goto(f"{dash.url}/jobs/{job_id}")
    normal_form = page.locator("[data-testid=cancel-form]").count()
    refused = page.request.post(f"{dash.url}/jobs/{job_id}/cancel", form={"csrf": _csrf(page)})
    # break glass (CLI-only: `medfed login --break-glass`), then the same browser carries that session
    session = dash.users.break_glass(
        Credentials(user_id=SITE_ADMIN, password=PASSWORD, code=dash.code(SITE_ADMIN)),
        reason="a runaway job is exhausting site budgets",
    )
    page.context.add_cookies([{"name": "medfed_session", "value": session.secret, "url": dash.url}])

    # Act
    page.goto(f"{dash.url}/jobs/{job_id}")
    shot(page, "job-break-glass")
    with page.expect_navigation():
        page.click("[data-testid=cancel-form] button")

    # Assert
    assert normal_form == 0 and refused.status == 403
    assert page.inner_text("[data-testid=state]") == "cancelled"
    assert dash.coordinator.store.job(job_id).state.value == "cancelled"
    loud = [e for e in dash.audit_actions() if e[0] == "access.break_glass" and e[2].get("method") == "job.cancel"]
    assert loud and loud[-1][1] == SITE_ADMIN


def test_an_oversized_form_is_refused_before_it_is_parsed(dash: Dashboard, page: Any) -> None:
    dash.login(page, RESEARCHER)
    jobs_before = len(dash.coordinator.store.jobs())

    response = page.request.post(dash.url + "/jobs", form={"csrf": _csrf(page), "spec": "#" * (300 * 1024)})

    assert response.status == 413
    assert response.headers["x-frame-options"] == "DENY"
    assert len(dash.coordinator.store.jobs()) == jobs_before


def test_a_polling_job_page_does_not_keep_an_idle_session_alive(dash: Dashboard, page: Any) -> None:
    # Arrange: a job page open and polling progress.json every second
    job_id = dash.submit(RESEARCHER, name="idle-watch", rounds=1)
    dash.wait_job(job_id)
    dash.login(page, RESEARCHER)
    page.goto(f"{dash.url}/jobs/{job_id}")

    # Act: the person walks away; only the page's own requests come in
    dash.clock.advance(POLICY.session_idle_s - 60)
    polled = page.request.get(f"{dash.url}/jobs/{job_id}/progress.json")
    dash.clock.advance(120)  # past the idle limit counted from the person's last own request
    page.goto(f"{dash.url}/jobs/{job_id}")

    # Assert
    assert polled.status == 200 and polled.json()["job_id"] == job_id
    assert "/login" in page.url and "expired=1" in page.url


def test_a_locked_account_gets_the_same_message_as_a_wrong_password(dash: Dashboard, page: Any) -> None:
    # Arrange: a fresh person (no TOTP: optional for researchers) and the lockout threshold of failures
    dash.users.add_user("lockme", UserRole.RESEARCHER, PASSWORD)

    def attempt(password: str) -> str:
        page.goto(dash.url + "/login")
        page.fill("#user", "lockme")
        page.fill("#password", password)
        page.click("form[action='/login'] button[type=submit]")
        return page.inner_text("[data-testid=error]")

    # Act
    wrong = [attempt("not the password at all") for _ in range(POLICY.max_failures)]
    locked = attempt(PASSWORD)  # the right password, now refused: the account is locked

    # Assert: nothing tells an attacker which it was; the audit log knows
    assert len(set(wrong)) == 1 and locked == wrong[0]
    assert "/login" in page.url
    reasons = [
        e[2].get("reason") for e in dash.audit_actions() if e[0] == "login.failed" and e[2].get("user") == "lockme"
    ]
    assert "locked" in str(reasons[-1])


def test_login_returns_to_the_page_asked_for_with_its_query(dash: Dashboard, page: Any) -> None:
    page.goto(dash.url + "/jobs?x=1&y=2")  # not logged in: to the login form, remembering where
    assert "/login?next=" in page.url

    page.fill("#user", FED_ADMIN)
    page.fill("#password", PASSWORD)
    page.fill("#code", dash.code(FED_ADMIN))
    with page.expect_navigation():
        page.click("form[action='/login'] button[type=submit]")

    assert page.url == dash.url + "/jobs?x=1&y=2"


def test_a_model_download_is_one_export_with_its_source_and_the_signature_none(dash: Dashboard, page: Any) -> None:
    # Arrange: a completed job of the researcher's
    job_id = dash.submit(RESEARCHER, name="export-count", rounds=1)
    dash.wait_job(job_id)
    dash.login(page, RESEARCHER)

    def exports() -> list[dict[str, object]]:
        return [e[2] for e in dash.audit_actions() if e[0] == "data.exported" and e[2].get("job_id") == job_id]

    # Act
    model = page.request.get(f"{dash.url}/jobs/{job_id}/model.npz")
    after_model = exports()
    signature = page.request.get(f"{dash.url}/jobs/{job_id}/signature.json")

    # Assert: the model left once, from the browser's address; the signature is no second export
    assert model.status == 200 and signature.status == 200
    assert len(after_model) == 1
    assert after_model[0]["user"] == RESEARCHER and after_model[0]["source"] == "127.0.0.1"
    assert (
        after_model[0]["bytes"]
        == Parameters.from_numpy(dict(np.load(io.BytesIO(model.body()), allow_pickle=False))).nbytes
    )
    assert exports() == after_model


def test_a_stranger_cannot_tell_which_job_ids_exist(dash: Dashboard, page: Any) -> None:
    job_id = dash.submit(RESEARCHER, name="exists", rounds=1)

    answers = {
        path: page.request.get(f"{dash.url}{path}", max_redirects=0)
        for path in (f"/jobs/{job_id}", "/jobs/no-such-job", f"/jobs/{job_id}/progress.json", "/jobs/nope/report")
    }

    assert {p: r.status for p, r in answers.items()} == dict.fromkeys(answers, 303)
    assert all(r.headers["location"].startswith("/login?next=") for r in answers.values())
