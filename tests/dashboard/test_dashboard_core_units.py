"""The dashboard core's pure parts, without a browser: chart series and comparison from a job
view, safe redirects after login, ``--https`` parsing, the page registry's checks, and the
vendored Chart.js file against its recorded digest."""

from __future__ import annotations

import hashlib
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from medfed.core.errors import ConfigError
from medfed.dashboard import job_data
from medfed.dashboard.auth import safe_next
from medfed.dashboard.pages import PAGE_MODULES, load_pages
from medfed.dashboard.server import parse_https_address

VENDOR = Path(__file__).resolve().parents[2] / "src" / "medfed" / "dashboard" / "static" / "vendor"


def _view() -> dict[str, Any]:
    """Two fit rounds and three evaluations (the initial model and one after each round), two sites."""
    rounds: list[dict[str, Any]] = []
    sites: list[dict[str, Any]] = []
    for r in (1, 2):
        rounds.append({"round": r, "kind": "fit", "aggregated": {"mean/train_loss": 0.7 - 0.1 * r}})
        for s in ("alpha", "beta"):
            sites.append({"round": r, "kind": "fit", "site": s, "num_examples": 50, "metrics": {"train_loss": 0.6},
                          "error": ""})  # fmt: skip
    for r in (1, 2, 3):
        rounds.append({"round": r, "kind": "evaluate", "aggregated": {"mean/eval_accuracy": 0.5 + 0.1 * r}})
        sites.append({"round": r, "kind": "evaluate", "site": "alpha", "num_examples": 40,
                      "metrics": {"eval_accuracy": 0.5 + 0.1 * r, "eval_auc": float("nan")}, "error": ""})  # fmt: skip
        sites.append({"round": r, "kind": "evaluate", "site": "beta", "num_examples": 20, "metrics": {},
                      "error": "data: dataset unreadable" if r == 3 else ""})  # fmt: skip
    return {"job_id": "j1", "state": "running", "completed_round": 2, "rounds": 2, "error": "",
            "round_metrics": rounds, "site_metrics": sites}  # fmt: skip


def test_round_series_puts_evaluations_at_the_model_they_tested() -> None:
    series = job_data.round_series(_view())

    assert series["rounds"] == [0, 1, 2]  # evaluation round r tests the model after round r - 1
    assert series["series"]["eval_accuracy"] == pytest.approx([0.6, 0.7, 0.8])
    assert series["series"]["train_loss"] == pytest.approx([None, 0.6, 0.5], nan_ok=True)


def test_site_series_skips_failed_sites_and_non_finite_values() -> None:
    series = job_data.site_series(_view())

    assert series["metric"] == "eval_accuracy"
    assert series["sites"] == {"alpha": pytest.approx([0.6, 0.7, 0.8])}


def test_comparison_is_the_last_evaluation_per_site_and_its_mean() -> None:
    metrics, rows = job_data.comparison_rows(_view())

    assert metrics == ["eval_accuracy", "eval_auc"]
    assert [r["site"] for r in rows] == ["alpha", "mean over sites"]
    assert rows[0]["values"] == [pytest.approx(0.8), None]  # NaN AUC is shown as missing, not as a number
    assert rows[-1]["values"] == [pytest.approx(0.8), None]


def test_progress_says_when_a_job_is_finished() -> None:
    running = job_data.progress(_view())
    done = job_data.progress(_view() | {"state": "failed"})

    assert (running["finished"], done["finished"]) == (False, True)
    assert running["completed_round"] == 2 and running["rounds"] == 2


@pytest.mark.parametrize(
    ("target", "expected"),
    [("/jobs/abc", "/jobs/abc"), ("//evil.example/x", "/"), ("https://evil.example", "/"), ("/\\evil", "/"), ("", "/")],
)
def test_login_redirects_only_to_local_paths(target: str, expected: str) -> None:
    assert safe_next(target) == expected


def test_https_address_parsing() -> None:
    assert parse_https_address("127.0.0.1:8443") == ("127.0.0.1", 8443)
    assert parse_https_address("[::1]:0") == ("::1", 0)
    for bad in ("8443", "127.0.0.1:", "host:99999", ":8443", "127.0.0.1:http"):
        with pytest.raises(ConfigError, match="expected host:port"):
            parse_https_address(bad)


def test_every_page_module_loads_with_routes_and_unique_nav_paths() -> None:
    routes, nav = load_pages(PAGE_MODULES)

    assert {"/federation", "/jobs"} <= {e.path for e in nav}
    assert len({e.path for e in nav}) == len(nav)
    assert len(routes) >= len(PAGE_MODULES)


def test_a_page_module_without_routes_or_nav_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "medfed.dashboard.pages.empty_page", types.ModuleType("empty_page"))

    with pytest.raises(ConfigError, match=r"no routes\(\) function; no NAV attribute"):
        load_pages(("empty_page",))
    with pytest.raises(ConfigError, match="'no_such_page' cannot be imported"):
        load_pages(("no_such_page",))


def test_the_vendored_chart_js_matches_its_recorded_digest_and_licence() -> None:
    recorded = (VENDOR / "chart.umd.min.js.sha256").read_text().split()[0]
    actual = hashlib.sha256((VENDOR / "chart.umd.min.js").read_bytes()).hexdigest()

    assert actual == recorded
    assert "MIT License" in (VENDOR / "chart.js-LICENSE.md").read_text()
    assert (VENDOR / "chart.umd.min.js").read_text()[:200].count("Chart.js v4.6.1") == 1
