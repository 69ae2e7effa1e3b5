"""``medfed demo --dashboard --keep-open``: the real demo (a coordinator and four node processes over
mutual TLS on 127.0.0.1) serves the dashboard; a person logs in with the printed password and
TOTP code, watches the demo job's round counter rise without a reload until the job completes,
the printed ``medfed demo --totp-code`` one-liner gives the printed secret's codes, and Ctrl-C then
stops the whole federation cleanly."""

from __future__ import annotations

import base64
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from dashboard.support import shot
from integration.support import Process, wait_until
from medfed.security.users import TOTP_STEP_S, totp_code

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROUNDS = 15  # the demo's own default
_URL = re.compile(r"^dashboard: (https://127\.0\.0\.1:\d+)/ ", re.M)
_PASSWORD = re.compile(r"or auditor, password (\S+)$", re.M)
_WATCH = re.compile(r"^watch job ([0-9a-f]+) at (https://\S+)$", re.M)
_CODE = re.compile(r"^  researcher TOTP: (otpauth://\S+)  \(a code that works now: (\d{6})\)$", re.M)
_CODES = re.compile(r"^(\d{6})  \(next: (\d{6}) in \d+s\)$", re.M)


def _one_liner_codes(workdir: Path) -> tuple[str, str]:
    """What ``medfed demo --workdir DIR --totp-code researcher`` (the printed one-liner) prints."""
    run = subprocess.run(
        [sys.executable, "-m", "medfed", "demo", "--workdir", str(workdir), "--totp-code", "researcher"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found = _CODES.search(run.stdout)
    assert found, run.stdout + run.stderr
    return found.group(1), found.group(2)


def _secret(uri: str) -> bytes:
    b32 = parse_qs(urlparse(uri).query)["secret"][0]
    return base64.b32decode(b32 + "=" * (-len(b32) % 8))


def test_the_demo_serves_its_dashboard_where_its_job_advances_live(page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    # Arrange: the demo, with its dashboard on any free loopback port, kept open after the job
    workdir = tmp_path / "demo"
    args = ["demo", "--dashboard", "127.0.0.1:0", "--keep-open", "--workdir", str(workdir),
            "--report", str(tmp_path / "report.html")]  # fmt: skip
    demo = Process(args, tmp_path / "demo.log")
    try:
        out = wait_until(
            lambda: demo.text() if _WATCH.search(demo.text()) or demo.popen.poll() is not None else "",
            timeout_s=180, what="the demo to submit its job",
        )  # fmt: skip
        assert demo.popen.poll() is None, f"the demo exited early:\n{out}"
        url, password, job, code = _URL.search(out), _PASSWORD.search(out), _WATCH.search(out), _CODE.search(out)
        assert url and password and job and code, out

        # Act: log in as the demo's researcher, open the demo job's page as printed
        page.goto(url.group(1) + "/login")
        page.fill("#user", "researcher")
        page.fill("#password", password.group(1))
        page.fill("#code", code.group(2))  # the code the demo printed as working now
        with page.expect_navigation():
            page.click("form[action='/login'] button[type=submit]")
        assert "/login" not in page.url, page.inner_text("main")
        page.goto(job.group(2))
        page.evaluate("window.__notReloaded = true")
        first = int(page.inner_text("[data-testid=round-count]"))
        expect(page.get_by_test_id("round-count")).not_to_have_text(str(first), timeout=120_000)
        shot(page, "demo-job-live")  # the counter moved on in place
        expect(page.get_by_test_id("round-count")).to_have_text(str(ROUNDS), timeout=180_000)
        expect(page.get_by_test_id("state")).to_have_text("completed", timeout=60_000)
        shot(page, "demo-job-finished")

        # Assert: the counter rose in place, no reload; the demo finished its job and stays open
        assert first < ROUNDS
        assert page.evaluate("window.__notReloaded === true")
        wait_until(lambda: "the federation stays up until Ctrl-C" in demo.text(), timeout_s=120, what="keep-open")
        assert demo.popen.poll() is None
        page.reload()
        assert page.locator("[data-testid=comparison] tbody tr").count() == 5  # 4 hospitals + the mean
        # the report link serves the demo's report: the local-only and pooled references beside the federated model
        page.goto(job.group(2) + "/report")
        shot(page, "demo-job-report")
        report = page.inner_text("body")
        assert "Federated vs local-only vs pooled" in report
        assert "pooled (reference)" in report and "local-only cleveland" in report
        # the printed one-liner gives the codes of the secret in the printed otpauth URI
        now = time.time()
        around = {
            totp_code(_secret(code.group(1)), at=now + d) for d in (-TOTP_STEP_S, 0, TOTP_STEP_S, 2 * TOTP_STEP_S)
        }
        assert set(_one_liner_codes(workdir)) <= around

        # Ctrl-C: the demo stops its coordinator and nodes and exits cleanly
        demo.popen.send_signal(signal.SIGINT)
        assert demo.wait(60) == 0, demo.text()
        assert "Traceback" not in demo.text()
        assert "stopping the demo federation" in demo.text()
        host, port = url.group(1).removeprefix("https://").rsplit(":", 1)
        with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=5):
            pass  # the coordinator process (which served the dashboard) is gone
    finally:
        demo.stop()


def _demo_error(*args: str) -> str:
    run = subprocess.run([sys.executable, "-m", "medfed", "demo", *args], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    return run.stderr


def test_the_demo_refuses_a_public_dashboard_address_and_a_totp_code_it_cannot_give(tmp_path: Path) -> None:
    # Act / Assert: each refusal names the option and why, before anything starts
    public = _demo_error("--dashboard", "0.0.0.0:8443", "--workdir", str(tmp_path / "w"))
    assert "--dashboard '0.0.0.0:8443'" in public and "loopback address only" in public
    assert not (tmp_path / "w").exists()
    malformed = _demo_error("--dashboard", "localhost", "--workdir", str(tmp_path / "w"))
    assert "expected HOST:PORT" in malformed
    assert "--totp-code needs --workdir" in _demo_error("--totp-code", "researcher")
    assert "the demo's people are ['auditor', 'researcher']" in _demo_error(
        "--workdir", str(tmp_path), "--totp-code", "bob"
    )
    missing = _demo_error("--workdir", str(tmp_path), "--totp-code", "researcher")
    assert "no demo TOTP secret here" in missing and "researcher.totp" in missing
