"""The dashboard's core through a real browser: login with TOTP, sessions, access control."""

from __future__ import annotations

from typing import Any

import pytest

from dashboard.support import RESEARCHER, Dashboard, shot

pytestmark = pytest.mark.timeout(180)


def test_researcher_logs_in_with_password_and_totp(dash: Dashboard, page: Any) -> None:
    dash.login(page, RESEARCHER)

    page.goto(dash.url + "/federation")
    shot(page, "federation")

    assert page.inner_text("[data-testid=who]").startswith(RESEARCHER)
    assert page.locator("tr[data-site]").count() == 3
    expiry = page.inner_text("tr[data-site=alpha] td:nth-child(7)")
    # the certificate the node connected with: the test plan issues 30-day certificates, so it is flagged
    assert "UTC" in expiry and "renew soon" in expiry
