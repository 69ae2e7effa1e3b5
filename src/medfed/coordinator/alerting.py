"""Security alerts at the coordinator: its own audit log scanned for unusual access, and nodes
flagged for anomalous updates, raised into the alert store and the audit log.

:class:`AlertScanner` turns the coordinator's tamper-evident audit log (logins, failed logins,
denials, break glass, job submissions, data reads and exports) into
:class:`~medfed.security.access_anomaly.AccessEvent` values and runs the access detector on the
most recent windows, with each user's profile learnt from the history before them (refitted as
history grows). Two rules need no learnt baseline and run from the first event: a burst of failed
logins for one user within a window, and every break-glass access. The aggregation anomaly reports
the coordinator stores per job, round and site become ``updates`` alerts.

A new alert goes to ``state_dir/alerts.sqlite`` (:class:`~medfed.security.alerts.AlertStore`, which
dedupes by a stable id, so scanning the same window twice raises it once) and, with its reason, into
the audit log as ``alert.raised``. :meth:`AlertScanner.scan_now` scans on demand; with
``interval_s`` a daemon thread scans periodically (off by default).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medfed.coordinator.audit_hooks import COORDINATOR_ACTOR, CoordinatorAudit
from medfed.coordinator.store import Store
from medfed.core.config import parse_job_spec
from medfed.core.errors import ConfigError, MedfedError, ValidationError
from medfed.security.access_anomaly import (
    AccessAction,
    AccessAnomalyDetector,
    AccessEvent,
    Alert,
    AlertKind,
    DetectorConfig,
    Outcome,
)
from medfed.security.alerts import AlertSource, AlertStore, StoredAlert, alert_id, safe_reason
from medfed.security.audit_chain import AuditEntry
from medfed.security.audit_events import AuditAction

__all__ = ["BREAK_GLASS", "AlertScanner", "ScanConfig", "access_event"]

log = logging.getLogger(__name__)

#: The kind of a break-glass alert (a rule of the scanner; the detector has no such kind).
BREAK_GLASS = "break_glass"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanConfig:
    """How the scanner looks at the audit log.

    Parameters
    ----------
    detector
        The access detector's knobs (window length, thresholds, seed).
    recent_windows
        Windows each scan examines: the current one and those before it. Older events are history.
    history_s
        History kept in memory and used as the baseline (28 days by default).
    refit_s
        Refit profiles and forest once the baseline has moved on by this long.
    interval_s
        Scan every ``interval_s`` seconds in a daemon thread; ``None``: only :meth:`AlertScanner.scan_now`.
    """

    detector: DetectorConfig = field(default_factory=DetectorConfig)
    recent_windows: int = 2
    history_s: float = 28 * 86_400.0
    refit_s: float = 3_600.0
    interval_s: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.recent_windows < 1:
            problems.append(f"recent_windows must be >= 1, got {self.recent_windows!r}")
        if not (math.isfinite(self.history_s) and self.history_s > 0):
            problems.append(f"history_s must be > 0, got {self.history_s!r}")
        if not (math.isfinite(self.refit_s) and self.refit_s > 0):
            problems.append(f"refit_s must be > 0, got {self.refit_s!r}")
        if self.interval_s is not None and not (math.isfinite(self.interval_s) and self.interval_s > 0):
            problems.append(f"interval_s must be > 0 or None, got {self.interval_s!r}")
        if problems:
            raise ConfigError("alert scanner: " + "; ".join(problems))


_LOGINS = {AuditAction.LOGIN_SUCCEEDED.value: Outcome.SUCCESS, AuditAction.LOGIN_FAILED.value: Outcome.FAILURE}
_DATA = {AuditAction.DATA_ACCESSED.value: AccessAction.VIEW, AuditAction.DATA_EXPORTED.value: AccessAction.EXPORT}


def access_event(entry: AuditEntry, dataset_of: Callable[[str], str]) -> AccessEvent | None:
    """The access a coordinator audit entry records, or ``None`` for one that is not a person's
    access (a node's result, a signed model, a user change, an alert). ``dataset_of(job_id)`` names
    a job's dataset: the "department" whose scope the detector learns per user."""
    f: Mapping[str, Any] = entry.fields
    user = str(f.get("user") or entry.actor)
    source, job = str(f.get("source", "")), str(f.get("job_id", ""))
    base: dict[str, Any] = {"user": user, "role": str(f.get("role", "")), "at": entry.at, "source": source}
    if entry.action in _LOGINS:
        return AccessEvent(**base, action=AccessAction.LOGIN, resource="", outcome=_LOGINS[entry.action])
    if entry.action == AuditAction.PERMISSION_DENIED.value:
        method = str(f.get("method", ""))
        action = AccessAction.JOB if method.startswith(("job", "result")) else AccessAction.VIEW
        resource = f"job:{job}" if job else str(f.get("resource", ""))
        return AccessEvent(**base, action=action, resource=resource, outcome=Outcome.DENIED)
    if entry.action == AuditAction.BREAK_GLASS.value:
        return AccessEvent(**base, action=AccessAction.VIEW, resource="break_glass", outcome=Outcome.SUCCESS)
    if entry.action == AuditAction.JOB_SUBMITTED.value:
        return AccessEvent(**base, action=AccessAction.JOB, resource=f"job:{job}", outcome=Outcome.SUCCESS,
                           department=dataset_of(job) if job else "")  # fmt: skip
    if entry.action in _DATA:
        dataset = str(f.get("dataset", "")) or (dataset_of(job) if job else "")
        size = f.get("bytes", 0)
        return AccessEvent(**base, action=_DATA[entry.action], resource=f"job:{job}" if job else dataset,
                           outcome=Outcome.SUCCESS, bytes=size if isinstance(size, int) and size >= 0 else 0,
                           department=dataset)  # fmt: skip
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class AlertScanner:
    """Scans the coordinator's audit log and anomaly reports; raises new alerts (store + audit)."""

    def __init__(
        self,
        *,
        audit: CoordinatorAudit,
        store: Store,
        alerts_path: Path,
        config: ScanConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or ScanConfig()
        self.alerts = AlertStore(alerts_path)
        self._audit, self._store, self._clock = audit, store, clock
        self._events: list[AccessEvent] = []
        self._seq = 0
        self._datasets: dict[str, str] = {}
        self._detector: AccessAnomalyDetector | None = None
        self._fitted: tuple[float, int] = (-math.inf, -1)  # (baseline cut, baseline size) of the last fit
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start periodic scans when ``interval_s`` is set (else nothing)."""
        if self.config.interval_s is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="medfed-alert-scanner", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the periodic scans and close the alert store."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._lock:
            self.alerts.close()

    def _loop(self) -> None:
        interval = self.config.interval_s or 60.0
        while not self._stop.wait(interval):
            try:
                self.scan_now()
            except MedfedError as exc:
                log.error("alert scan failed: %s", exc)
            except Exception:
                log.exception("alert scan failed")

    # --- scanning --------------------------------------------------------------------------

    def scan_now(self) -> list[StoredAlert]:
        """Scan once; the alerts that were new (each now in the store and the audit log)."""
        with self._lock:
            now = float(self._clock())
            self._ingest(now)
            found = self._access_alerts(now) + self._update_alerts(now)
            return [a for a in found if self._raise(a, now)]

    def _ingest(self, now: float) -> None:
        entries = self._audit.log.entries(since=self._seq)
        for entry in entries:
            event = access_event(entry, self._dataset_of)
            if event is not None:
                self._events.append(event)
        if entries:
            self._seq = entries[-1].seq
        oldest = now - self.config.history_s
        if self._events and self._events[0].at < oldest:
            self._events = [e for e in self._events if e.at >= oldest]

    def _dataset_of(self, job_id: str) -> str:
        if job_id not in self._datasets:
            row = self._store.job(job_id)
            try:
                self._datasets[job_id] = "" if row is None else parse_job_spec(row.spec_toml).dataset
            except MedfedError:
                self._datasets[job_id] = ""
        return self._datasets[job_id]

    def _access_alerts(self, now: float) -> list[StoredAlert]:
        window = self.config.detector.window_s
        cut = (math.floor(now / window) - self.config.recent_windows + 1) * window
        recent = [e for e in self._events if e.at >= cut]
        detector = self._fit(cut)
        found = detector.alerts(recent) if detector is not None else []
        covered = {(a.user, a.window_start) for a in found if AlertKind.FAILED_LOGINS in a.kinds}
        out = [self._from_detector(a) for a in found]
        out += [a for a in self._failed_login_bursts(recent) if (a.subject, a.at) not in covered]
        out += [self._break_glass(e) for e in recent if e.resource == "break_glass"]
        return out

    def _fit(self, cut: float) -> AccessAnomalyDetector | None:
        baseline = [e for e in self._events if e.at < cut]
        last_cut, last_n = self._fitted
        if len(baseline) == last_n or (self._detector is not None and cut - last_cut < self.config.refit_s):
            return self._detector
        self._fitted = (cut, len(baseline))
        try:
            self._detector = AccessAnomalyDetector.fit(baseline, config=self.config.detector)
        except ValidationError as exc:  # too little history yet: the baseline-free rules still run
            log.debug("access detector not fitted: %s", exc)
            self._detector = None
        return self._detector

    def _from_detector(self, a: Alert) -> StoredAlert:
        kinds = ",".join(a.kinds)
        # a user without a baseline is named once, not in every window they are active
        parts = (a.user, AlertKind.UNKNOWN_USER.value) if a.kinds == (AlertKind.UNKNOWN_USER,) else (
            a.user, a.window_start, kinds)  # fmt: skip
        return StoredAlert(
            alert_id=alert_id(AlertSource.ACCESS, *parts), at=a.window_start, kind=kinds, subject=a.user,
            score=a.score, reason=safe_reason("; ".join(a.reasons), fallback=f"unusual access: {kinds}"),
            source=AlertSource.ACCESS,
        )  # fmt: skip

    def _failed_login_bursts(self, recent: list[AccessEvent]) -> list[StoredAlert]:
        window, burst = self.config.detector.window_s, self.config.detector.failed_burst
        failures: dict[tuple[str, float], list[AccessEvent]] = defaultdict(list)
        for e in recent:
            if e.action is AccessAction.LOGIN and e.outcome is Outcome.FAILURE:
                failures[(e.user, math.floor(e.at / window) * window)].append(e)
        out, kind = [], AlertKind.FAILED_LOGINS.value
        for (user, start), evs in sorted(failures.items()):
            if len(evs) < burst:
                continue
            sources = len({e.source for e in evs})
            out.append(StoredAlert(
                alert_id=alert_id(AlertSource.ACCESS, user, start, kind), at=start, kind=kind, subject=user,
                score=0.0, source=AlertSource.ACCESS,
                reason=f"{len(evs)} failed logins in one window from {sources} address(es); threshold {burst}",
            ))  # fmt: skip
        # password spraying: one address failing for several users, each below the per-user burst
        by_source: dict[tuple[str, float], list[AccessEvent]] = defaultdict(list)
        for (_, start), evs in failures.items():
            for e in evs:
                if e.source:
                    by_source[(e.source, start)].append(e)
        for (source, start), evs in sorted(by_source.items()):
            users = len({e.user for e in evs})
            if len(evs) >= burst and users >= 2:
                out.append(StoredAlert(
                    alert_id=alert_id(AlertSource.ACCESS, source, start, kind), at=start, kind=kind,
                    subject=source.replace(":", "-"), score=0.0, source=AlertSource.ACCESS,
                    reason=f"{len(evs)} failed logins for {users} users from one address in one window; "
                           f"threshold {burst}",
                ))  # fmt: skip
        return out

    def _break_glass(self, e: AccessEvent) -> StoredAlert:
        return StoredAlert(
            alert_id=alert_id(AlertSource.ACCESS, e.user, e.at, BREAK_GLASS), at=e.at, kind=BREAK_GLASS,
            subject=e.user, score=0.0, source=AlertSource.ACCESS,
            reason="emergency access (break glass) used: review that it was justified",
        )  # fmt: skip

    def _update_alerts(self, now: float) -> list[StoredAlert]:
        out = []
        for job in self._store.jobs():
            for row in self._store.anomaly_rows(job.job_id):
                if not row["flags"]:
                    continue
                kinds = ",".join(str(f) for f in row["flags"])
                site, rnd = str(row["site"]), int(row["round"])
                out.append(StoredAlert(
                    alert_id=alert_id(AlertSource.UPDATES, job.job_id, rnd, site), at=now, kind=kinds,
                    subject=site, score=float(row["robust_z"]), source=AlertSource.UPDATES, job_id=job.job_id,
                    round=rnd, reason=safe_reason(f"round {rnd}: {row['reason']}",
                                                  fallback=f"anomalous update in round {rnd}: {kinds}"),
                ))  # fmt: skip
        return out

    def _raise(self, alert: StoredAlert, now: float) -> bool:
        if not self.alerts.add(alert, now=now):
            return False
        fields: dict[str, str | int | float | bool] = {
            "alert_id": alert.alert_id, "kind": alert.kind.replace(",", "."), "reason": alert.reason,
            "score": alert.score,
        }  # fmt: skip
        if alert.source is AlertSource.UPDATES:
            fields |= {"site": alert.subject, "job_id": alert.job_id, "round": alert.round}
        elif _is_ip(alert.subject):  # an address spraying passwords
            fields["source"] = alert.subject
        else:
            fields["user"] = alert.subject
        self._audit.record(AuditAction.ALERT_RAISED, COORDINATOR_ACTOR, fields)
        log.warning("alert %s (%s) on %s: %s", alert.alert_id, alert.kind, alert.subject, alert.reason)
        return True
