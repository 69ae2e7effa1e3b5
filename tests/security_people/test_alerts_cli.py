"""``medfed alerts list --state DIR``: the coordinator's alert store from the command line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from medfed.cli.main import main
from medfed.security.alerts import AlertSource, AlertStore, StoredAlert, alert_id


def fill(state: Path) -> None:
    store = AlertStore(state / "alerts.sqlite")
    now = time.time()
    store.add(
        StoredAlert(
            alert_id=alert_id(AlertSource.ACCESS, "bob", 1),
            at=now - 3 * 86_400,
            kind="failed_logins",
            subject="bob",
            score=0.0,
            reason="9 failed logins in one window",
            source=AlertSource.ACCESS,
        )
    )
    store.add(StoredAlert(alert_id=alert_id(AlertSource.UPDATES, "j1", 2, "mallory"), at=now - 60,
                          kind="norm_outlier,low_cosine", subject="mallory", score=41.5,
                          reason="round 2: update norm far above the median", source=AlertSource.UPDATES,
                          job_id="j1", round=2))  # fmt: skip
    store.close()


def test_lists_filters_and_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(tmp_path)

    assert main(["alerts", "list", "--state", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert main(["alerts", "list", "--state", str(tmp_path), "--json", "--kind", "low_cosine"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["alerts", "list", "--state", str(tmp_path), "--json", "--since-hours", "24"]) == 0
    recent = capsys.readouterr().out.splitlines()

    assert (
        "mallory" in text
        and "job j1 round 2" in text
        and "bob" in text
        and text.rstrip().endswith(f"2 alert(s) in {tmp_path / 'alerts.sqlite'}")
    )
    assert [(r["subject"], r["source"], r["round"]) for r in rows] == [("mallory", "updates", 2)]
    assert len(recent) == 1 and json.loads(recent[0])["subject"] == "mallory"


def test_a_directory_without_alerts_or_a_half_given_events_mode_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["alerts", "list", "--state", str(tmp_path)]) == 1
    assert "no alert store" in capsys.readouterr().err
    assert not (tmp_path / "alerts.sqlite").exists()  # reading created nothing
    assert main(["alerts", "list", "--events", str(tmp_path / "e.jsonl"), "--site", "x"]) == 1
    assert "--events also needs --baseline-days, --users-db" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["alerts", "list", "--state", str(tmp_path), "--events", "e.jsonl"])
