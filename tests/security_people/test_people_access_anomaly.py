"""Access-anomaly detection on a simulated hospital, with injected incidents of six kinds.

Seeds 1 and 2 were used while building the detector; seeds 3 and 4 are held out and are what the
assertions below are about. Measured (``pytest -s -k held_out``): seed 3 precision 0.963, recall 1.0
for five kinds and 0.917 for browsing, 0.12 % of normal user-hour windows flagged; seed 4 precision
0.957, recall 1.0 for all six kinds, 0.16 % flagged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from people_access_sim import DAY, KINDS, T0, Evaluation, evaluate, inject, simulate

from medfed.core.errors import ConfigError, ValidationError
from medfed.security.access_anomaly import (
    AccessAction,
    AccessAnomalyDetector,
    AccessEvent,
    AlertKind,
    DetectorConfig,
    Outcome,
    alert_fields,
    parse_access_events,
    rank_alerts,
)

HELD_OUT_SEEDS = (3, 4)


@dataclass
class Run:
    detector: AccessAnomalyDetector
    evaluation: Evaluation
    rules_only: Evaluation
    forest_only: Evaluation
    alerts: list
    incidents: list


@pytest.fixture(scope="module", params=HELD_OUT_SEEDS, ids=lambda s: f"seed{s}")
def run(request: pytest.FixtureRequest) -> Run:
    seed: int = request.param
    events = simulate(seed, days=28)
    baseline = [e for e in events if e.at < T0 + 21 * DAY]
    normal_test = [e for e in events if e.at >= T0 + 21 * DAY]
    injected, incidents = inject(seed, baseline, first_day=21, days=7, per_kind=12)
    test = sorted(normal_test + injected, key=lambda e: e.at)
    config = DetectorConfig(seed=seed)
    detector = AccessAnomalyDetector.fit(baseline, config=config)
    alerts = detector.alerts(test)
    forest = [a for a in alerts if AlertKind.ISOLATION in a.kinds]
    rules = [a for a in alerts if set(a.kinds) - {AlertKind.ISOLATION}]
    return Run(
        detector,
        evaluate(alerts, incidents, test, config.window_s),
        evaluate(rules, incidents, test, config.window_s),
        evaluate(forest, incidents, test, config.window_s),
        alerts,
        incidents,
    )


def test_detects_every_incident_kind_on_a_held_out_seed(run: Run) -> None:
    ev = run.evaluation
    print(f"precision {ev.precision:.3f}, recall {ev.recall}, normal windows flagged {ev.normal_flag_rate:.4f}")
    assert ev.precision >= 0.8
    assert all(ev.recall[k] >= 0.9 for k in KINDS), ev.recall
    assert ev.normal_flag_rate <= 0.01  # stated bound: at most 1 % of normal user-hour windows


def test_top_of_the_review_queue_is_all_incidents(run: Run) -> None:
    top = rank_alerts(run.alerts, budget=20)
    hits = [
        any(a.user == i.user and a.window_start <= i.end and i.start < a.window_end for i in run.incidents) for a in top
    ]
    assert sum(hits) / len(top) >= 0.9  # precision@20; measured 1.0 on seeds 3 and 4


def test_rules_and_forest_each_carry_their_part(run: Run) -> None:
    rule_kinds = ("bulk_export", "off_hours", "out_of_scope", "credential_stuffing", "stolen_credentials")
    assert all(run.rules_only.recall[k] >= 0.9 for k in rule_kinds), run.rules_only.recall
    assert run.rules_only.recall["browsing"] < 0.5  # no rule names browsing ...
    assert run.forest_only.recall["browsing"] >= 0.8  # ... the forest finds it


def test_alerts_explain_themselves_without_phi(run: Run) -> None:
    assert all(a.reasons and len(a.reasons) == len(a.kinds) for a in run.alerts)
    for a in run.alerts:
        fields = alert_fields(a)
        assert "patient:" not in str(fields) and fields["user"] == a.user


def test_fitting_is_deterministic_for_a_seed() -> None:
    baseline = simulate(5, days=6)
    one = AccessAnomalyDetector.fit(baseline, config=DetectorConfig(seed=7))
    two = AccessAnomalyDetector.fit(baseline, config=DetectorConfig(seed=7))
    assert one.threshold == two.threshold
    assert one.alerts(baseline[-500:]) == two.alerts(baseline[-500:])
    assert AccessAnomalyDetector.fit(baseline, config=DetectorConfig(seed=8)).threshold != one.threshold


def ev(user: str, at: float, **kw: object) -> AccessEvent:
    base: dict[str, object] = dict(
        user=user, role="nurse", action=AccessAction.VIEW, resource="patient:1", at=at, source="10.1.0.1",
        outcome=Outcome.SUCCESS, bytes=1000, department="cardiology",
    )  # fmt: skip
    return AccessEvent(**{**base, **kw})  # type: ignore[arg-type]


def test_unknown_user_and_each_rule_in_isolation(run: Run) -> None:
    user = "card-nurse0"
    t = T0 + 30 * DAY + 10 * 3600  # a day-shift hour
    cases = {
        AlertKind.FAILED_LOGINS: [
            ev(user, t + i, action=AccessAction.LOGIN, outcome=Outcome.FAILURE) for i in range(6)
        ],
        AlertKind.NEW_SOURCE: [ev(user, t, source="192.0.2.7")],
        AlertKind.OUT_OF_SCOPE: [ev(user, t + i, department="psychiatry") for i in range(2)],
        AlertKind.VOLUME: [ev(user, t, action=AccessAction.EXPORT, bytes=500_000_000)],
        AlertKind.OFF_HOURS: [ev(user, t - 8 * 3600 + 60 * i) for i in range(3)],  # 02:00
        AlertKind.UNKNOWN_USER: [ev("new-starter", t)],
    }
    for kind, events in cases.items():
        alerts = run.detector.alerts(events)
        assert alerts and kind in alerts[0].kinds, (kind, alerts)
    assert run.detector.alerts([ev(user, t)]) == []


def test_config_and_baseline_are_checked() -> None:
    with pytest.raises(ConfigError) as err:
        DetectorConfig(window_s=0, forest_quantile=0.7)
    assert "window_s" in str(err.value) and "forest_quantile" in str(err.value)
    with pytest.raises(ValidationError, match="empty"):
        AccessAnomalyDetector.fit([], config=DetectorConfig())
    with pytest.raises(ValidationError, match="training windows"):
        AccessAnomalyDetector.fit([ev("a", T0 + i * 3600) for i in range(20)], config=DetectorConfig())


def test_parse_access_events_names_every_bad_line() -> None:
    good = (
        '{"user": "a", "role": "nurse", "action": "view", "resource": "r", "at": 1.5, "source": "s",'
        ' "outcome": "success", "bytes": 3}'
    )
    events = parse_access_events([good, "", good])
    assert len(events) == 2 and events[0].action is AccessAction.VIEW
    bad = [good, "[1]", '{"user": "a"}', good.replace('"view"', '"steal"'), good.replace("3}", "-3}"),
           good.replace("1.5", '"noon"'), good.replace('"r"', '"r", "ssn": "x"')]  # fmt: skip
    with pytest.raises(ValidationError) as err:
        parse_access_events(bad, where="events.jsonl")
    assert len(err.value.problems) == 6 and err.value.where == "events.jsonl"
    assert [p.split(":")[0] for p in err.value.problems] == [f"line {n}" for n in range(2, 8)]


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=40) | st.dictionaries(
    st.sampled_from(["user", "role", "action", "resource", "at", "source", "outcome", "bytes", "department", "x"]),
    json_scalars, max_size=9).map(json.dumps), max_size=5))  # fmt: skip
def test_fuzzed_event_lines_parse_or_fail_clearly(lines: list[str]) -> None:
    try:
        events = parse_access_events(lines)
    except ValidationError as err:
        assert all(p.startswith("line ") for p in err.problems)
        return
    assert all(isinstance(e.at, float) and e.bytes >= 0 for e in events)
