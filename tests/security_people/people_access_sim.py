"""A simulated hospital access log with injected incidents, to evaluate the access detector.

Five departments, each with nurses on three shifts (day 07-15, evening 15-23, night 23-07),
physicians on weekday days (some on call in the evening over VPN), a ward clerk on office hours;
plus research analysts who query and export cohorts across departments. People work from their
ward's subnet (mostly one workstation, sometimes another on the ward), look up patients of their
department with the odd consult elsewhere, mistype a password now and then, and export a little.

Incidents of six kinds are injected after the baseline: bulk export, off-hours snooping, access
outside the user's departments (VIP / co-worker snooping), credential stuffing (a burst of failed
logins from outside), stolen credentials (normal-looking use from an unknown network), and
browsing (many records of the user's own department in normal hours: no rule covers it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medfed.security.access_anomaly import AccessAction, AccessEvent, Alert, Outcome

DEPARTMENTS = ("cardiology", "oncology", "emergency", "pediatrics", "radiology")
KINDS = ("bulk_export", "off_hours", "out_of_scope", "credential_stuffing", "stolen_credentials", "browsing")
T0 = 1_767_571_200.0  # Monday 2026-01-05 00:00 UTC
DAY, HOUR = 86_400.0, 3600.0


@dataclass(frozen=True)
class Staff:
    user: str
    role: str
    dept: str
    start_h: int
    hours: int
    weekdays_only: bool
    rate: float  # accesses per hour on shift
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class Incident:
    kind: str
    user: str
    start: float
    end: float


def make_staff() -> list[Staff]:
    staff = []
    for d, dept in enumerate(DEPARTMENTS):
        hosts = tuple(f"10.{d + 1}.0.{h}" for h in range(10, 30))
        for i, start in enumerate((7, 7, 15, 15, 23, 23)):
            staff.append(Staff(f"{dept[:4]}-nurse{i}", "nurse", dept, start, 8, False, 6.0, hosts[i : i + 3]))
        for i in range(3):
            staff.append(Staff(f"{dept[:4]}-dr{i}", "physician", dept, 8, 10, True, 4.0, hosts[10 + i : 12 + i]))
        staff.append(Staff(f"{dept[:4]}-clerk", "clerk", dept, 9, 8, True, 5.0, hosts[15:16]))
    for i in range(3):
        staff.append(Staff(f"analyst{i}", "researcher", "research", 9, 8, True, 3.0, (f"10.50.0.{10 + i}",)))
    return staff


def _event(s: Staff, rng: np.random.Generator, at: float, **kw: object) -> AccessEvent:
    base: dict[str, object] = dict(user=s.user, role=s.role, action=AccessAction.VIEW, resource="", at=at,
                                   source=s.hosts[0], outcome=Outcome.SUCCESS, bytes=0, department=s.dept)  # fmt: skip
    return AccessEvent(**{**base, **kw})  # type: ignore[arg-type]


def _shift(s: Staff, rng: np.random.Generator, start: float) -> list[AccessEvent]:
    start += rng.uniform(-0.25, 0.5) * HOUR
    end = start + (s.hours + (rng.uniform(0, 1) if rng.random() < 0.3 else 0.0)) * HOUR
    out = [_event(s, rng, start - 60 * (k + 1), action=AccessAction.LOGIN, outcome=Outcome.FAILURE)
           for k in range(int(rng.integers(1, 3)) if rng.random() < 0.06 else 0)]  # fmt: skip
    out.append(_event(s, rng, start, action=AccessAction.LOGIN))
    n = rng.poisson(s.rate * (end - start) / HOUR)
    for at in np.sort(rng.uniform(start, end, n)):
        host = s.hosts[0] if rng.random() < 0.85 else s.hosts[int(rng.integers(len(s.hosts)))]
        if s.role == "researcher":
            dept = DEPARTMENTS[int(rng.integers(len(DEPARTMENTS)))]
            export = rng.random() < 0.05
            out.append(_event(s, rng, float(at), action=AccessAction.EXPORT if export else AccessAction.QUERY,
                              resource=f"cohort:{dept}", source=host, department=dept,
                              bytes=int(rng.lognormal(15.5 if export else 12.0, 0.7))))  # fmt: skip
            continue
        dept = s.dept
        if rng.random() < (0.1 if s.dept in ("emergency", "radiology") else 0.01):
            dept = DEPARTMENTS[int(rng.integers(len(DEPARTMENTS)))]
        export = s.role == "physician" and rng.random() < 0.03
        out.append(_event(s, rng, float(at), action=AccessAction.EXPORT if export else AccessAction.VIEW,
                          resource=f"patient:{dept}:{int(rng.integers(400))}", source=host, department=dept,
                          bytes=int(rng.lognormal(13.5 if export else 10.0, 0.6))))  # fmt: skip
    return out


def simulate(seed: int, *, days: int) -> list[AccessEvent]:
    """``days`` days of normal activity, starting on a Monday."""
    rng, events = np.random.default_rng(seed), []
    for s in make_staff():
        off_days = set(rng.choice(7, size=2, replace=False).tolist())
        for day in range(days):
            weekend = day % 7 >= 5
            if (s.weekdays_only and weekend) or (not s.weekdays_only and day % 7 in off_days):
                continue
            events += _shift(s, rng, T0 + day * DAY + s.start_h * HOUR)
            if s.role == "physician" and rng.random() < 0.25:  # on call: a few looks from home
                for at in np.sort(rng.uniform(19, 23, int(rng.integers(1, 4)))):
                    events.append(_event(s, rng, T0 + day * DAY + float(at) * HOUR, source="10.99.0.5",
                                         resource=f"patient:{s.dept}:{int(rng.integers(400))}",
                                         bytes=int(rng.lognormal(10.0, 0.6))))  # fmt: skip
    return sorted(events, key=lambda e: e.at)


def _on_shift_hour(s: Staff, rng: np.random.Generator, day: int) -> float:
    day = day if not s.weekdays_only else day - day % 7 + min(day % 7, 4)
    return T0 + day * DAY + (s.start_h + 2 + float(rng.uniform(0, s.hours - 4))) * HOUR


def inject(seed: int, baseline: list[AccessEvent], *, first_day: int, days: int, per_kind: int) -> tuple[
    list[AccessEvent], list[Incident]
]:  # fmt: skip
    """Incident events (``per_kind`` of each kind) on the days after the baseline, and their labels."""
    rng = np.random.default_rng(seed + 10_000)
    staff = [s for s in make_staff() if s.role != "researcher"]
    seen: dict[str, set[str]] = {}
    for e in baseline:
        seen.setdefault(e.user, set()).add(e.department)
    events: list[AccessEvent] = []
    incidents: list[Incident] = []
    for kind in KINDS:
        for _ in range(per_kind):
            s = staff[int(rng.integers(len(staff)))]
            day = first_day + int(rng.integers(days))
            new, start = _incident(kind, s, rng, day, seen.get(s.user, set()))
            events += new
            incidents.append(Incident(kind, s.user, start, max(e.at for e in new)))
    return events, incidents


def _incident(kind: str, s: Staff, rng: np.random.Generator, day: int, seen: set[str]) -> tuple[
    list[AccessEvent], float
]:  # fmt: skip
    def view(at: float, **kw: object) -> AccessEvent:
        args: dict[str, object] = dict(resource=f"patient:{s.dept}:{int(rng.integers(400))}",
                                       bytes=int(rng.lognormal(10.0, 0.6)))  # fmt: skip
        return _event(s, rng, at, **{**args, **kw})

    if kind == "bulk_export":
        start = _on_shift_hour(s, rng, day)
        n = int(rng.integers(10, 40))
        return [
            view(start + 30 * k, action=AccessAction.EXPORT, bytes=int(rng.lognormal(15.5, 0.5))) for k in range(n)
        ], start
    if kind == "off_hours":
        start = T0 + day * DAY + ((s.start_h + 12 + float(rng.uniform(0, 3))) % 24) * HOUR
        return [view(start + 120 * k) for k in range(int(rng.integers(3, 10)))], start
    if kind == "out_of_scope":
        start = _on_shift_hour(s, rng, day)
        depts = [d for d in DEPARTMENTS if d not in seen] or ["psychiatry"]
        dept = depts[int(rng.integers(len(depts)))]
        n = int(rng.integers(2, 6))
        return [view(start + 90 * k, resource=f"patient:{dept}:{int(rng.integers(400))}", department=dept)
                for k in range(n)], start  # fmt: skip
    if kind == "credential_stuffing":
        start = T0 + day * DAY + float(rng.uniform(0, 24)) * HOUR
        source = f"203.0.113.{int(rng.integers(1, 250))}"
        n = int(rng.integers(6, 25))
        return [view(start + 20 * k, action=AccessAction.LOGIN, outcome=Outcome.FAILURE, source=source,
                     resource="", bytes=0) for k in range(n)], start  # fmt: skip
    if kind == "browsing":  # curiosity: many records of the user's own department, in hours, from the ward
        start = _on_shift_hour(s, rng, day)
        n = int(rng.integers(30, 80))
        return [view(start + 40 * k, resource=f"patient:{s.dept}:{1000 + k}") for k in range(n)], start
    start = _on_shift_hour(s, rng, day)
    source = f"198.51.100.{int(rng.integers(1, 250))}"
    return [view(start + 200 * k, source=source) for k in range(int(rng.integers(2, 8)))], start


@dataclass(frozen=True)
class Evaluation:
    alerts: int
    true_alerts: int
    precision: float
    recall: dict[str, float]
    normal_windows: int
    flagged_normal_windows: int

    @property
    def normal_flag_rate(self) -> float:
        return self.flagged_normal_windows / max(self.normal_windows, 1)


def evaluate(
    alerts: list[Alert], incidents: list[Incident], test_events: list[AccessEvent], window_s: float
) -> Evaluation:
    def hits(a: Alert, i: Incident) -> bool:
        return a.user == i.user and a.window_start <= i.end and i.start < a.window_end

    true_alerts = sum(any(hits(a, i) for i in incidents) for a in alerts)
    recall = {}
    for kind in KINDS:
        mine = [i for i in incidents if i.kind == kind]
        recall[kind] = sum(any(hits(a, i) for a in alerts) for i in mine) / len(mine)
    windows = {(e.user, int(e.at // window_s)) for e in test_events}
    bad = {(i.user, w) for i in incidents for w in range(int(i.start // window_s), int(i.end // window_s) + 1)}
    normal = windows - bad
    flagged = {(a.user, int(a.window_start // window_s)) for a in alerts} & normal
    return Evaluation(len(alerts), true_alerts, true_alerts / max(len(alerts), 1), recall, len(normal), len(flagged))
