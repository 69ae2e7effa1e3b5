"""A job's ``[robust]`` table turned into a plan, and one fit round's aggregate under that plan.

The rules and the detector are pure (``medfed.aggregation.robust`` and ``.anomaly``); this module
checks a job's choice of them at submission, collecting every problem into one
:class:`ConfigError`, and applies them to the updates a round kept. Both need every site's
individual update, so a round of such a job keeps them all: O(nodes × model) coordinator memory
instead of the streaming mean's O(model); see ``docs/robust-aggregation.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from medfed.aggregation.anomaly import AnomalyConfig, AnomalyRecord, detect_anomalies
from medfed.aggregation.robust import (
    RobustOptions,
    RobustRule,
    check_secure_aggregation,
    check_tolerance,
    robust_aggregate,
)
from medfed.core.errors import ConfigError
from medfed.core.params import Parameters
from medfed.core.records import JobSpec

T = TypeVar("T")

#: A kept fit result: the site's validated model and its claimed example count.
Kept = tuple[Parameters, float]


@dataclass(frozen=True, slots=True, kw_only=True)
class RobustPlan:
    """What a job's fit rounds do besides (or instead of) the weighted mean.

    Parameters
    ----------
    rule
        The robust rule whose result replaces the weighted mean; ``None`` keeps the mean.
    options
        The rule's options (``byzantine``, ``trim_fraction``, ``multi_krum``, ``norm_bound``).
    detect
        Run anomaly detection on every fit round and record one report per site.
    anomaly
        Thresholds of the detector.
    """

    rule: RobustRule | None
    options: RobustOptions = field(default_factory=RobustOptions)
    detect: bool = True
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)


def robust_plan(spec: JobSpec, *, secure_aggregation: bool | None = None) -> RobustPlan | None:
    """Check a job's ``[robust]`` table; ``None`` when it has none (or asks for nothing).

    ``secure_aggregation`` says whether the job's updates are masked (its ``[secure_aggregation]``
    table); ``None`` reads it from the spec.

    Raises
    ------
    ConfigError
        Unknown rule, unknown or bad options, a rule that cannot tolerate ``byzantine`` malicious
        nodes among ``rounds.min_nodes`` results, or a combination that secure aggregation would
        hide; every problem is listed under the job file's ``[robust]`` table.
    """
    if secure_aggregation is None:
        secure_aggregation = spec.secure_aggregation is not None
    robust = spec.robust
    if robust is None or not robust.keeps_updates:
        return None
    problems: list[str] = []
    if spec.client_dp is not None:
        problems.append(
            "[robust] cannot combine with [client_dp]: DP-FedAvg nodes send clipped contributions, not models "
            "(its clipping already bounds each node's influence, like norm bounding)"
        )
    name = robust.rule
    rule = _checked(problems, lambda: RobustRule.parse(name)) if name is not None else None
    options = _checked(problems, lambda: RobustOptions.from_mapping(robust.options))
    if rule is not None and options is not None:
        _checked(problems, lambda: check_tolerance(rule, spec.policy.min_nodes, options))
    if rule is not None:
        _checked(problems, lambda: check_secure_aggregation(rule, secure_aggregation=secure_aggregation))
    if secure_aggregation and robust.detect_anomalies:
        problems.append(
            "robust.detect_anomalies needs every node's individual update, which secure aggregation "
            "hides from the coordinator: set detect_anomalies = false or turn off secure aggregation"
        )
    if problems:
        lines = "\n".join("  - " + p.replace("\n", "\n  ") for p in problems)
        raise ConfigError(f"the job's [robust] table cannot be used:\n{lines}")
    return RobustPlan(rule=rule, options=options or RobustOptions(), detect=robust.detect_anomalies)


def _checked(problems: list[str], check: Callable[[], T]) -> T | None:
    """``check()``, or ``None`` with its :class:`ConfigError` added to ``problems``."""
    try:
        return check()
    except ConfigError as exc:
        problems.append(str(exc))
        return None


def aggregate_round(
    plan: RobustPlan, rnd: int, kept: Mapping[str, Kept], *, mean: Parameters, reference: Parameters
) -> tuple[Parameters, tuple[AnomalyRecord, ...]]:
    """The model a fit round hands to the strategy, and the round's anomaly reports.

    Parameters
    ----------
    plan
        The job's plan.
    rnd
        The round (copied into the reports).
    kept
        Every successful site's model and weight, by site.
    mean
        The round's streaming weighted mean: the result when the plan has no rule.
    reference
        The global model the round started from.

    Raises
    ------
    ConfigError
        The rule cannot tolerate the declared malicious nodes among the results at hand.
    """
    sites = sorted(kept)
    records: tuple[AnomalyRecord, ...] = ()
    if plan.detect:
        records = detect_anomalies(rnd, [(s, kept[s][0]) for s in sites], reference=reference, config=plan.anomaly)
    if plan.rule is None:
        return mean, records
    robust = robust_aggregate(plan.rule, [kept[s] for s in sites], options=plan.options, reference=reference)
    return robust, records
