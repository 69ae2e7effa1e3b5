"""The HTML job report: self-contained, plots inline, privacy and anomaly sections when relevant."""

from pathlib import Path
from typing import Any

from medfed.report.html import render_job_report, write_job_report


def _view(**extra: Any) -> dict[str, Any]:
    rounds = [
        {
            "round": 1,
            "kind": "fit",
            "duration_s": 0.1,
            "aggregated": {"mean/eval_accuracy": 0.5, "mean/eval_loss": 0.7},
        },
        {"round": 2, "kind": "evaluate", "duration_s": 0.1, "aggregated": {"mean/eval_accuracy": 0.8}},
    ]
    metrics = {"eval_accuracy": 0.8, "eval_auc": 0.9, "eval_loss": 0.4}
    sites = [{"round": 2, "kind": "evaluate", "site": "a&b", "num_examples": 10, "metrics": metrics, "error": ""}]
    view = {
        "job_id": "j1", "name": "heart <demo>", "owner": "alice", "state": "completed", "rounds": 1,
        "completed_round": 1, "error": "", "spec_hash": "ab" * 32, "spec_toml": "[job]\\nname = 'x'",
        "round_metrics": rounds, "site_metrics": sites,
    }  # fmt: skip
    return view | extra


def test_report_is_self_contained_and_escaped() -> None:
    html = render_job_report(_view())
    assert html.count("<svg") == 1 and "http://" not in html.split("<svg")[0]  # no CDN, plot inline
    assert "heart &lt;demo&gt;" in html and "a&amp;b" in html
    assert "Privacy spent" not in html and "Anomalous updates" not in html


def test_privacy_and_anomaly_sections_appear_when_relevant(tmp_path: Path) -> None:
    view = _view()
    view["site_metrics"][0]["metrics"] |= {"privacy_epsilon_spent": 1.25, "privacy_epsilon_left": 8.75}
    view["anomalies"] = [
        {
            "round": 1,
            "site": "m",
            "norm": 50.0,
            "cosine": -1.0,
            "robust_z": 9.0,
            "flags": ["norm_outlier"],
            "reason": "x",
        },
        {"round": 1, "site": "h", "norm": 1.0, "cosine": 0.9, "robust_z": 0.1, "flags": [], "reason": ""},
    ]
    path = write_job_report(view, tmp_path / "r" / "report.html")
    html = path.read_text()
    assert "Privacy spent per site" in html and "1.250" in html and "8.750" in html
    assert "1 of 2 updates flagged" in html and "norm_outlier" in html
