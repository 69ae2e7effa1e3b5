"""A simulated hospital with per-patient relationships, for explanation-based auditing.

The staff of :mod:`people_access_sim` (five departments; nurses, physicians, a clerk each) care for a
population of patients. Each day every department admits patients (an encounter of 1-6 days with a
care team of one physician and two nurses); physicians see outpatients by appointment. Every member
of staff is also a patient (their own record), some have family members among the patients, and a
few patients are VIPs. On duty, staff open the records of their team's patients, of patients being
treated in their department (covering), of their appointments; a few accesses have no relationship a
hospital records (consults of another department's patients; the odd lookup of any patient).

Incidents of four kinds are injected into the test days: ``own_department`` (a patient treated in the
user's department before, with no current encounter and no team link: invisible to a department-level
detector), ``family`` (a family member's record; half of them while the relative is treated in the
user's own department, so the department explains the access and only the rule can catch it),
``coworker`` (a colleague's own record) and ``vip``.

:func:`write_relations` writes the tables in the format :func:`medfed.security.access_explain.load_relations`
reads, so the CLI can be tested on the same hospital.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from people_access_sim import DAY, DEPARTMENTS, HOUR, T0, Staff, make_staff

from medfed.security.access_anomaly import AccessAction, AccessEvent, Outcome

KINDS = ("own_department", "family", "coworker", "vip")
N_PATIENTS = 4000
Encounter = tuple[str, str, str, float, float]  # encounter, patient, department, start, end


@dataclass(frozen=True)
class Incident:
    kind: str
    user: str
    patient: str
    start: float
    end: float


@dataclass
class Hospital:
    staff: list[Staff]
    own: dict[str, str]  # user -> their own patient record
    family: dict[str, list[str]]  # user -> relatives' records
    vip: list[str]
    encounters: list[tuple[str, str, str, float, float]]  # encounter, patient, department, start, end
    team: list[tuple[str, str]]  # encounter, user
    appointments: list[tuple[str, str, float]]  # patient, user, at


def _pid(n: int) -> str:
    return f"p{n:05d}"


def build(seed: int, *, days: int) -> Hospital:
    rng = np.random.default_rng(seed + 20_000)
    staff = [s for s in make_staff() if s.role != "researcher"]
    own = {s.user: _pid(i) for i, s in enumerate(staff)}
    family: dict[str, list[str]] = {}
    for s in staff:
        if rng.random() < 0.4:
            family[s.user] = [_pid(int(n)) for n in rng.integers(100, N_PATIENTS, int(rng.integers(1, 3)))]
    vip = [_pid(int(n)) for n in rng.choice(np.arange(100, N_PATIENTS), 25, replace=False)]
    encounters: list[Encounter] = []
    team: list[tuple[str, str]] = []
    appointments: list[tuple[str, str, float]] = []
    for day in range(-7, days):
        for dept in DEPARTMENTS:
            dr = [s.user for s in staff if s.dept == dept and s.role == "physician"]
            nurses = [s.user for s in staff if s.dept == dept and s.role == "nurse"]
            for _ in range(int(rng.poisson(6))):
                enc = f"e{len(encounters):06d}"
                start = T0 + day * DAY + float(rng.uniform(0, 24)) * HOUR
                end = start + float(rng.uniform(1, 6)) * DAY
                encounters.append((enc, _pid(int(rng.integers(50, N_PATIENTS))), dept, start, end))
                members = [dr[int(rng.integers(len(dr)))], *rng.choice(nurses, 2, replace=False).tolist()]
                team += [(enc, str(u)) for u in members]
            if day % 7 < 5 and day >= 0:
                for user in dr:
                    for at in rng.uniform(9, 16, int(rng.poisson(4))):
                        patient = _pid(int(rng.integers(50, N_PATIENTS)))
                        appointments.append((patient, user, T0 + day * DAY + float(at) * HOUR))
    return Hospital(staff, own, family, vip, encounters, team, appointments)


def _active(h: Hospital, at: float) -> list[tuple[str, str, str, float, float]]:
    return [e for e in h.encounters if e[3] <= at <= e[4]]


def _view(s: Staff, patient: str, at: float, unit: str) -> AccessEvent:
    """A record view; ``unit`` is the department treating the patient at the time ("" if none)."""
    return AccessEvent(user=s.user, role=s.role, action=AccessAction.VIEW, resource=f"patient:{patient}", at=at,
                       source=s.hosts[0], outcome=Outcome.SUCCESS, bytes=20_000, department=unit)  # fmt: skip


def simulate(h: Hospital, seed: int, *, first_day: int, days: int) -> list[AccessEvent]:
    """Normal accesses of ``days`` days from ``first_day``: one shift a day per member of staff (weekdays for
    physicians and clerks), at their usual rate."""
    rng = np.random.default_rng(seed + 30_000)
    on_team: dict[str, set[str]] = {}
    for enc, user in h.team:
        on_team.setdefault(user, set()).add(enc)
    events: list[AccessEvent] = []
    for day in range(first_day, first_day + days):
        noon = T0 + day * DAY + 12 * HOUR
        active = _active(h, noon)
        for s in h.staff:
            if s.weekdays_only and day % 7 >= 5:
                continue
            start = T0 + day * DAY + s.start_h * HOUR
            mine = [e for e in active if e[0] in on_team.get(s.user, set())]
            dept = [e for e in active if e[2] == s.dept]
            other = [e for e in active if e[2] != s.dept]
            appts = [a for a in h.appointments if a[1] == s.user and abs(a[2] - noon) < 2 * DAY]
            for at in np.sort(rng.uniform(start, start + s.hours * HOUR, int(rng.poisson(s.rate * s.hours)))):
                u = rng.random()
                consult = 0.06 if s.dept in ("emergency", "radiology") else 0.03
                if u < 0.005:
                    patient, unit = _pid(int(rng.integers(50, N_PATIENTS))), ""  # a lookup no table explains
                elif u < 0.005 + consult and other:
                    patient, unit = other[int(rng.integers(len(other)))][1:3]
                elif u < 0.4 and appts:
                    patient, unit = appts[int(rng.integers(len(appts)))][0], s.dept
                elif u < 0.7 and mine:
                    patient, unit = mine[int(rng.integers(len(mine)))][1:3]
                elif dept:
                    patient, unit = dept[int(rng.integers(len(dept)))][1:3]
                else:
                    continue
                events.append(_view(s, patient, float(at), unit))
    return sorted(events, key=lambda e: e.at)


def inject(h: Hospital, seed: int, *, first_day: int, days: int, per_kind: int) -> tuple[
    list[AccessEvent], list[Incident]
]:  # fmt: skip
    """``per_kind`` incidents of each kind on the given days, and their labels. Half the family lookups admit
    the relative to the user's department first: this adds encounters to ``h`` (write or convert its tables
    after injecting)."""
    rng = np.random.default_rng(seed + 40_000)
    team = {(u, e) for e, u in h.team}
    by_enc = {e[0]: e for e in h.encounters}
    events: list[AccessEvent] = []
    incidents: list[Incident] = []
    for kind in KINDS:
        made = 0
        while made < per_kind:
            s = h.staff[int(rng.integers(len(h.staff)))]
            day = first_day + int(rng.integers(days))
            day = day if not s.weekdays_only else day - day % 7 + min(day % 7, 4)
            at = T0 + day * DAY + (s.start_h + 1 + float(rng.uniform(0, s.hours - 2))) * HOUR
            patient = _target(kind, h, s, at, rng, team, by_enc)
            if patient is None:
                continue
            n = int(rng.integers(1, 4))
            unit = next((e[2] for e in _active(h, at) if e[1] == patient), "")
            events += [_view(s, patient, at + 300 * k, unit) for k in range(n)]
            incidents.append(Incident(kind, s.user, patient, at, at + 300 * (n - 1)))
            made += 1
    return events, incidents


def _target(
    kind: str, h: Hospital, s: Staff, at: float, rng: np.random.Generator, team: set[tuple[str, str]],
    by_enc: dict[str, Encounter],
) -> str | None:  # fmt: skip
    if kind == "own_department":
        active = {e[1] for e in _active(h, at)} | {a[0] for a in h.appointments if abs(a[2] - at) < 8 * DAY}
        past = [e for e in h.encounters if e[2] == s.dept and e[4] < at - 3 * DAY and e[1] not in active
                and (s.user, e[0]) not in team]  # fmt: skip
        return past[int(rng.integers(len(past)))][1] if past else None
    if kind == "family":
        relatives = h.family.get(s.user)
        if not relatives:
            return None
        if rng.random() < 0.5:  # the relative is being treated in the user's department: admit them now
            enc = f"x{len(h.encounters):06d}"
            h.encounters.append((enc, relatives[0], s.dept, at - DAY, at + 2 * DAY))
            by_enc[enc] = h.encounters[-1]
        return relatives[0]
    if kind == "coworker":
        others = [u for u in h.own if u != s.user]
        return h.own[others[int(rng.integers(len(others)))]]
    return h.vip[int(rng.integers(len(h.vip)))]


def write_relations(h: Hospital, directory: Path) -> None:
    """The hospital's relationship tables as CSV files (the format ``--relations DIR`` reads)."""
    directory.mkdir(parents=True, exist_ok=True)
    dept = {s.user: s.dept for s in h.staff}
    tables: dict[str, tuple[list[str], list[tuple[object, ...]]]] = {
        "staff": (["user", "department", "patient"], [(u, dept[u], p) for u, p in h.own.items()]),
        "encounters": (["encounter", "patient", "department", "start", "end"], list(h.encounters)),
        "care_team": (["encounter", "user"], list(h.team)),
        "appointments": (["patient", "user", "at"], list(h.appointments)),
        "family": (["user", "patient"], [(u, p) for u, ps in h.family.items() for p in ps]),
        "vip": (["patient", "note"], [(p, "board member") for p in h.vip]),
    }
    for name, (columns, rows) in tables.items():
        with (directory / f"{name}.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(columns)
            w.writerows(rows)


def relations(h: Hospital) -> dict[str, list[dict[str, object]]]:
    """The same tables as row objects (for :meth:`Relations.from_records`)."""
    dept = {s.user: s.dept for s in h.staff}
    cols = ("encounter", "patient", "department", "start", "end")
    return {
        "staff": [{"user": u, "department": dept[u], "patient": p} for u, p in h.own.items()],
        "encounters": [dict(zip(cols, e, strict=True)) for e in h.encounters],
        "care_team": [{"encounter": e, "user": u} for e, u in h.team],
        "appointments": [{"patient": p, "user": u, "at": a} for p, u, a in h.appointments],
        "family": [{"user": u, "patient": p} for u, ps in h.family.items() for p in ps],
        "vip": [{"patient": p} for p in h.vip],
    }
