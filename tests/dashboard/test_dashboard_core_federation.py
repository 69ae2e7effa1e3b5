"""The Federation page tells online from offline sites: a node that stops heartbeating turns
offline (its last heartbeat stays shown), the others stay online."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from dashboard.support import FED_ADMIN, Dashboard, node_thread, shot, start_dashboard
from integration.support import wait_until
from medfed.learn.base import TabularData
from medfed.transport.api import Hello

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory: pytest.TempPathFactory, heart: dict[str, TabularData]) -> Iterator[Dashboard]:
    d = start_dashboard(Path(tmp_path_factory.mktemp("dashfed")), heart, sites=("alpha", "beta"))
    try:
        yield d
    finally:
        d.close()


def test_a_stopped_node_shows_offline_with_its_last_heartbeat(two_sites: Dashboard, page: Any) -> None:
    # Arrange
    dash = two_sites
    dash.login(page, FED_ADMIN)
    page.goto(dash.url + "/federation")
    before = page.inner_text("tr[data-site=beta] td:nth-child(2)")

    page.evaluate("window.__notReloaded = true")

    # Act: beta's node stops; the coordinator marks it stale after three missed heartbeats, and the
    # open page shows it at its next refresh, without a reload
    beta = node_thread(dash, "beta")
    beta.runtime.stop()
    beta.join(15.0)
    wait_until(lambda: "beta" not in {n.site for n in dash.coordinator.nodes.online()}, timeout_s=20, what="beta stale")
    expect(page.locator("tr[data-site=beta] [data-field=status]")).to_have_text("offline", timeout=20_000)
    shot(page, "federation-offline")

    # Assert
    assert before == "online"
    assert page.evaluate("window.__notReloaded === true")
    assert page.inner_text("tr[data-site=beta] td:nth-child(2)") == "offline"
    assert page.inner_text("tr[data-site=alpha] td:nth-child(2)") == "online"
    assert page.inner_text("[data-testid=online-count]") == "1"
    assert page.inner_text("tr[data-site=beta] td:nth-child(3)").endswith("UTC")  # its last heartbeat
    assert float(page.inner_text("tr[data-site=beta] td:nth-child(4)")) >= 3  # three missed heartbeats (1 s)


def test_a_site_on_another_software_version_is_flagged(two_sites: Dashboard, page: Any) -> None:
    # a site that registered with an older medfed (recorded the way Coordinator.register records it)
    dash = two_sites
    dash.coordinator.nodes.register("legacy", Hello(version="0.0.9", datasets=("heart",)))
    dash.coordinator.store.touch_node("legacy", version="0.0.9", datasets=("heart",))
    dash.login(page, FED_ADMIN)

    page.goto(dash.url + "/federation")

    assert "coordinator runs" in page.inner_text("tr[data-site=legacy] td:nth-child(5)")
    assert "coordinator runs" not in page.inner_text("tr[data-site=alpha] td:nth-child(5)")
    assert page.inner_text("tr[data-site=legacy] td:nth-child(7)") == "—"  # no certificate seen: no expiry shown
