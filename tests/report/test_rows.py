"""Rows per site in job views: counts of what consent and missing-value policies left out, per
site, in the terminal and the HTML report (and why a site shows none)."""

from __future__ import annotations

from typing import Any

import pytest

from medfed.cli.views import print_job
from medfed.report.html import render_job_report
from medfed.report.rows import CountsStatus, site_rows, site_rows_lines

COUNTS = {"policy_rows_read": 303.0, "consent_rows_excluded": 4.0, "consent_patients_excluded": 2.0,
          "policy_rows_dropped": 0.0}  # fmt: skip


def _site(site: str, rnd: int, kind: str, metrics: dict[str, float], error: str = "") -> dict[str, Any]:
    return {"round": rnd, "kind": kind, "site": site, "num_examples": 10, "metrics": metrics, "error": error}


def _view() -> dict[str, Any]:
    return {
        "job_id": "j1", "name": "heart", "owner": "alice", "state": "completed", "rounds": 1, "completed_round": 1,
        "error": "", "spec_hash": "h", "spec_toml": "", "anomalies": [],
        "round_metrics": [{"round": 1, "kind": "fit", "aggregated": {}, "duration_s": 0.1},
                          {"round": 2, "kind": "evaluate", "aggregated": {}, "duration_s": 0.1}],
        "site_metrics": [
            _site("cleveland", 1, "fit", COUNTS | {"eval_accuracy": 0.7}),
            _site("cleveland", 2, "evaluate", COUNTS | {"consent_rows_excluded": 5.0, "policy_rows_dropped": 1.0}),
            _site("hungary", 1, "fit", {"eval_accuracy": 0.6, "metrics_withheld": 3.0}),
            _site("legacy", 1, "fit", {"eval_accuracy": 0.6}),
            _site("zurich", 1, "fit", {}, error="data: site 'zurich' has no datasets tagged ['adult']"),
        ],
        "dataset_matches": {"cleveland": ["heart"], "hungary": ["hu_heart"], "legacy": ["heart"], "zurich": []},
    }  # fmt: skip


def test_each_site_gets_its_latest_counts_or_the_reason_it_has_none() -> None:
    rows = {r.site: r for r in site_rows(_view())}
    assert set(rows) == {"cleveland", "hungary", "legacy"}  # zurich failed: no result to count
    assert (rows["cleveland"].read, rows["cleveland"].consent, rows["cleveland"].invalid) == (303, 5, 1)
    assert rows["cleveland"].used == 297
    assert rows["hungary"].status is CountsStatus.WITHHELD and rows["legacy"].status is CountsStatus.NONE
    assert site_rows_lines(_view())[0] == (
        "cleveland: 303 rows, 5 excluded by consent (2 patients), 1 invalid (missing-value policy), 297 used"
    )


def test_no_lines_when_no_site_declared_a_dataset() -> None:
    view = _view() | {"site_metrics": [_site("legacy", 1, "fit", {"eval_accuracy": 0.6})]}
    assert site_rows_lines(view) == []


def test_counts_from_an_older_node_without_rows_read() -> None:
    old = {k: v for k, v in COUNTS.items() if k != "policy_rows_read"}
    view = _view() | {"site_metrics": [_site("a", 1, "fit", old)]}
    assert site_rows_lines(view) == ["a: 4 excluded by consent (2 patients), 0 invalid (missing-value policy)"]


def test_the_terminal_and_the_html_report_say_it(capsys: pytest.CaptureFixture[str]) -> None:
    print_job(_view(), detail=True)
    out = capsys.readouterr().out
    assert "cleveland: 303 rows, 5 excluded by consent (2 patients), 1 invalid (missing-value policy), 297 used" in out
    assert "hungary: row counts kept at the site (differentially private job)" in out
    assert "no match (took no part): zurich" in out and "cleveland → heart" in out
    page = render_job_report(_view())
    assert "<h2>Rows per site</h2>" in page and "cleveland: 303 rows, 5 excluded by consent" in page
    assert "<td>zurich</td><td>no match: took no part</td>" in page
