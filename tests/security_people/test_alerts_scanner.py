"""The coordinator's alert scanner over a simulated hospital's use of the coordinator, written into a
real audit log: learnt baselines flag the injected incidents, baseline-free rules work from the
first event, every new alert is audited once, and the audit chain still verifies."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from people_access_sim import DAY, HOUR, T0, inject, simulate

from medfed.coordinator.alerting import BREAK_GLASS, AlertScanner, ScanConfig, access_event
from medfed.coordinator.audit_hooks import CoordinatorAudit
from medfed.coordinator.store import Store
from medfed.core.errors import ConfigError
from medfed.security.access_anomaly import AccessAction, AccessEvent, Outcome
from medfed.security.alerts import AlertSource
from medfed.security.audit_chain import AuditEntry
from medfed.security.audit_events import AuditAction

pytestmark = pytest.mark.timeout(300)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@dataclass
class Coordinator:
    audit: CoordinatorAudit
    store: Store
    scanner: AlertScanner
    clock: Clock

    def write(self, e: AccessEvent) -> None:
        """Record ``e`` as the coordinator's audit log would (no resource ids: no PHI)."""
        self.clock.t = e.at
        fields: dict[str, str | int | float | bool] = {"user": e.user, "source": e.source}
        if e.action is AccessAction.LOGIN:
            ok = e.outcome is Outcome.SUCCESS
            self.audit.record(AuditAction.LOGIN_SUCCEEDED if ok else AuditAction.LOGIN_FAILED, e.user, fields)
            return
        action = AuditAction.DATA_EXPORTED if e.action is AccessAction.EXPORT else AuditAction.DATA_ACCESSED
        self.audit.record(action, e.user, fields | {"dataset": e.department, "bytes": e.bytes})


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    clock = Clock()
    audit = CoordinatorAudit(tmp_path, clock=clock, checkpoint_every=1000)
    store = Store(tmp_path / "coordinator.sqlite")
    scanner = AlertScanner(audit=audit, store=store, alerts_path=tmp_path / "alerts.sqlite", clock=clock)
    yield Coordinator(audit, store, scanner, clock)
    scanner.stop()
    audit.close()
    store.close()


def test_learnt_baselines_flag_incidents_in_the_latest_windows(coordinator: Coordinator) -> None:
    # Arrange: 5 days of normal use as history, then incidents on day 5, each scanned as it happens
    history = simulate(3, days=6)
    baseline = [e for e in history if e.at < T0 + 5 * DAY]
    for e in baseline:
        coordinator.write(e)
    injected, incidents = inject(3, baseline, first_day=5, days=1, per_kind=1)
    wanted = {"bulk_export": "volume", "off_hours": "off_hours", "stolen_credentials": "new_source",
              "credential_stuffing": "failed_logins", "out_of_scope": "out_of_scope"}  # fmt: skip
    found: dict[str, set[str]] = {}

    # Act: each incident alone (with the day's normal events before it), scanned at its end
    later = sorted([e for e in history if e.at >= T0 + 5 * DAY] + injected, key=lambda e: e.at)
    for incident in sorted((i for i in incidents if i.kind in wanted), key=lambda i: i.end):
        while later and later[0].at <= incident.end:
            coordinator.write(later.pop(0))
        coordinator.clock.t = incident.end + 60
        new = coordinator.scanner.scan_now()
        found[incident.kind] = {k for a in new if a.subject == incident.user for k in a.kind.split(",")}

    # Assert: every incident raised an alert of the kind that names it
    for kind, alert_kind in wanted.items():
        assert alert_kind in found[kind], (kind, found[kind])
    raised = [e for e in coordinator.audit.log.entries() if e.action == AuditAction.ALERT_RAISED.value]
    stored = coordinator.scanner.alerts.list()
    assert sorted(e.fields["alert_id"] for e in raised) == sorted(a.alert_id for a in stored)
    assert all(a.source is AlertSource.ACCESS and "patient" not in a.reason for a in stored)
    assert coordinator.audit.log.verify(coordinator.audit.key.public_pem).ok


def test_baseline_free_rules_fire_on_a_fresh_coordinator(coordinator: Coordinator) -> None:
    # Arrange: no history at all; a failed-login burst and a break-glass access
    coordinator.clock.t = T0 + 10 * HOUR
    for _ in range(6):
        coordinator.clock.t += 5
        coordinator.audit.record(AuditAction.LOGIN_FAILED, "mallory", {"user": "mallory", "source": "203.0.113.9"})
    coordinator.audit.record(AuditAction.BREAK_GLASS, "dr-who", {"user": "dr-who", "reason": "code blue"})

    # Act
    new = coordinator.scanner.scan_now()
    again = coordinator.scanner.scan_now()

    # Assert
    assert sorted((a.subject, a.kind) for a in new) == [("dr-who", BREAK_GLASS), ("mallory", "failed_logins")]
    assert again == []
    assert "6 failed logins in one window from 1 address" in next(a.reason for a in new if a.subject == "mallory")


def test_node_results_and_alerts_are_not_access_events() -> None:
    def entry(action: AuditAction, **fields: str | int | bool) -> AuditEntry:
        return AuditEntry(seq=1, at=T0, action=action.value, actor="x", fields=fields, prev="0" * 64, hash="")

    datasets = {"j1": "heart"}.__getitem__
    assert access_event(entry(AuditAction.RESULT_RECEIVED, site="alpha", job_id="j1"), datasets) is None
    assert access_event(entry(AuditAction.ALERT_RAISED, alert_id="a1"), datasets) is None
    job = access_event(entry(AuditAction.JOB_SUBMITTED, job_id="j1"), datasets)
    assert job is not None and job.department == "heart" and job.action is AccessAction.JOB
    denied = access_event(entry(AuditAction.PERMISSION_DENIED, user="bob", method="job.cancel", job_id="j1"), datasets)
    assert denied is not None and denied.outcome is Outcome.DENIED and denied.resource == "job:j1"


def test_scan_config_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"recent_windows.*interval_s"):
        ScanConfig(recent_windows=0, interval_s=0.0)


def test_the_periodic_thread_raises_alerts_by_itself(tmp_path: Path) -> None:
    audit = CoordinatorAudit(tmp_path)
    store = Store(tmp_path / "coordinator.sqlite")
    scanner = AlertScanner(audit=audit, store=store, alerts_path=tmp_path / "alerts.sqlite",
                           config=ScanConfig(interval_s=0.05))  # fmt: skip
    try:
        scanner.start()
        for _ in range(5):
            audit.record(AuditAction.LOGIN_FAILED, "eve", {"user": "eve", "source": "198.51.100.7"})
        deadline = time.monotonic() + 30.0
        while not scanner.alerts.list() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [a.subject for a in scanner.alerts.list()] == ["eve"]
    finally:
        scanner.stop()
        audit.close()
        store.close()


def test_one_address_spraying_passwords_over_users_is_flagged(coordinator: Coordinator) -> None:
    # Arrange: 2 failures for each of 3 users from one address: no user reaches the per-user burst
    coordinator.clock.t = T0 + 10 * HOUR
    for user in ("ann", "ben", "cat"):
        for _ in range(2):
            coordinator.clock.t += 5
            coordinator.audit.record(AuditAction.LOGIN_FAILED, user, {"user": user, "source": "203.0.113.9"})

    # Act
    new = coordinator.scanner.scan_now()

    # Assert: one alert about the address, audited with it as the source
    assert [(a.subject, a.kind) for a in new] == [("203.0.113.9", "failed_logins")]
    assert new[0].reason.startswith("6 failed logins for 3 users from one address")
    raised = [e for e in coordinator.audit.log.entries() if e.action == AuditAction.ALERT_RAISED.value]
    assert [e.fields.get("source") for e in raised] == ["203.0.113.9"] and "user" not in raised[0].fields
