"""The coordinator's alert store: stable ids, dedupe, filters, PHI-free fields, shared between handles."""

from __future__ import annotations

from pathlib import Path

import pytest

from medfed.core.errors import ValidationError
from medfed.security.alerts import AlertSource, AlertStore, StoredAlert, alert_id, safe_reason


def alert(user: str = "dr-lee", at: float = 1000.0, kind: str = "failed_logins", **kw: object) -> StoredAlert:
    fields: dict[str, object] = dict(
        alert_id=alert_id(AlertSource.ACCESS, user, at, kind), at=at, kind=kind, subject=user, score=0.0,
        reason="7 failed attempts in one window", source=AlertSource.ACCESS,
    )  # fmt: skip
    return StoredAlert(**{**fields, **kw})  # type: ignore[arg-type]


def test_add_dedupes_by_id_and_lists_newest_first(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "alerts.sqlite")
    a, b = alert(at=1000.0), alert(user="analyst1", at=2000.0, kind="off_hours,new_source")
    assert store.add(a) and store.add(b)
    assert not store.add(a)  # the same finding again
    assert [x.alert_id for x in store.list()] == [b.alert_id, a.alert_id]
    assert store.list()[1] == a
    store.close()


def test_filters_by_time_kind_and_limit(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "alerts.sqlite")
    store.add(alert(at=1000.0, kind="failed_logins"))
    store.add(alert(at=2000.0, kind="off_hours,new_source"))
    store.add(alert(at=3000.0, kind="new_source"))
    upd = StoredAlert(alert_id=alert_id(AlertSource.UPDATES, "job1", 3, "site-b"), at=4000.0, kind="norm_outlier",
                      subject="site-b", score=12.5, reason="update norm far above the round's median",
                      source=AlertSource.UPDATES, job_id="job1", round=3)  # fmt: skip
    store.add(upd)
    assert [x.at for x in store.list(since=2000.0)] == [4000.0, 3000.0, 2000.0]
    assert [x.at for x in store.list(kind="new_source")] == [3000.0, 2000.0]
    assert store.list(kind="off") == []  # whole kinds only
    assert store.list(kind="_ff_hours") == []  # LIKE wildcards are escaped
    assert [x.at for x in store.list(limit=1)] == [4000.0]
    assert store.list(kind="norm_outlier")[0] == upd
    with pytest.raises(ValidationError):
        store.list(limit=0)
    store.close()


def test_a_second_handle_sees_the_same_alerts(tmp_path: Path) -> None:
    one, two = AlertStore(tmp_path / "a.sqlite"), AlertStore(tmp_path / "a.sqlite")
    assert one.add(alert())
    assert not two.add(alert())
    assert len(two.list()) == 1
    one.close()
    two.close()


@pytest.mark.parametrize(
    "bad",
    [
        {"reason": "record of John Smith viewed"},
        {"reason": "mrn 1234567 exported"},
        {"subject": "John Smith"},
        {"kind": ""},
        {"alert_id": ""},
        {"at": float("nan")},
        {"round": -1},
    ],
)
def test_alerts_refuse_identifier_like_or_malformed_fields(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        alert(**bad)


def test_safe_reason_keeps_what_the_audit_log_allows() -> None:
    assert safe_reason("networks never seen: ['203.0.113']", fallback="x") == "networks never seen: '203.0.113'"
    assert safe_reason("seen on 2026-01-05 by Jane Doe", fallback="new_source") == "new_source"
    assert len(safe_reason("a" * 500, fallback="x")) == 200
    with pytest.raises(ValidationError):
        safe_reason("Jane Doe", fallback="John Smith")


def test_alert_ids_are_stable_and_distinct() -> None:
    assert alert_id(AlertSource.ACCESS, "u", 3600.0, "a") == alert_id(AlertSource.ACCESS, "u", 3600.0, "a")
    assert alert_id(AlertSource.ACCESS, "u", 3600.0, "a") != alert_id(AlertSource.UPDATES, "u", 3600.0, "a")
    assert len(alert_id(AlertSource.ACCESS, "u")) == 24


def test_subjects_are_filtered_before_the_limit_and_kinds_follow_them(tmp_path: Path) -> None:
    # Arrange: the newest alerts are all about another site than site-a's single older one
    store = AlertStore(tmp_path / "alerts.sqlite")
    mine = alert(user="site-a", at=1.0, kind="norm_outlier")
    store.add(mine)
    for i in range(5):
        store.add(alert(user="site-b", at=100.0 + i, kind="off_hours,new_source"))

    # Act
    shown = store.list(limit=3, subjects={"site-a"})

    # Assert: site-a's alert is not crowded out; the kinds offered are only those about it
    assert shown == [mine]
    assert store.list(limit=3, subjects=set()) == []
    assert store.kinds(subjects={"site-a"}) == ("norm_outlier",)
    assert store.kinds() == ("new_source", "norm_outlier", "off_hours")
    store.close()
