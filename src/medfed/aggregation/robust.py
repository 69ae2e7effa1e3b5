"""Robust aggregation over every node's result: median, trimmed mean, (Multi-)Krum, norm bounding.

Unlike the streaming :class:`~medfed.aggregation.mean.WeightedMean`, these rules need every node's
individual result at once: O(nodes × largest array) scratch memory on the coordinator, and they
cannot run behind secure aggregation (except norm bounding, whose clipping can move to the node;
see ``docs/robust-aggregation.md``). They are pure: values in, a new :class:`Parameters` out.

Rules (``f`` is :attr:`RobustOptions.byzantine`, the number of malicious nodes a job declares it
must tolerate; ``n`` the number of results):

* ``median``: coordinate-wise median; needs n ≥ 2f + 1 (Yin et al. 2018, "Byzantine-Robust
  Distributed Learning: Towards Optimal Statistical Rates").
* ``trimmed_mean``: coordinate-wise mean without the k = ⌊βn⌋ largest and smallest values; needs
  k ≥ f (Yin et al. 2018).
* ``krum``: the one result closest to its n − f − 2 nearest neighbours; needs n ≥ 2f + 3 (Blanchard
  et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent").
* ``multi_krum``: mean of the m (default n − f) results with the best Krum scores (same paper).
* ``norm_bounded``: reference + weighted mean of the updates ``result − reference``, each clipped
  to L2 norm ≤ ``norm_bound`` (Sun et al. 2019, "Can You Really Backdoor Federated Learning?").

A rule that cannot tolerate f among the results at hand is refused with a :class:`ConfigError`
(:func:`check_tolerance`), never run with a silently weaker guarantee.

Weights: median, trimmed mean and (Multi-)Krum give every node one vote and ignore the weights,
because a weight is the node's own, unverified claim of its example count — an attacker who claims
10⁶ examples would otherwise own the average. Norm bounding keeps FedAvg's weights, as in Sun et
al. 2019 and as secure aggregation of node-clipped updates computes; bound the weights a node may
claim before using it against malicious nodes. Every weight is still checked (finite, > 0).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
import numpy.typing as npt

from medfed.core.errors import ConfigError, ValidationError
from medfed.core.params import FloatArray, Parameters
from medfed.core.records import Scalar

#: One node's result: its model and its weight (example count).
Result = tuple[Parameters, float]

# β·n is computed in floating point (0.29 * 100 == 28.999999999999996): nudge before flooring.
_FLOOR_SLACK = 1e-9


class RobustRule(enum.StrEnum):
    """The robust aggregation rules; the value is what a job file names."""

    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed_mean"
    KRUM = "krum"
    MULTI_KRUM = "multi_krum"
    NORM_BOUNDED = "norm_bounded"

    @property
    def needs_individual_updates(self) -> bool:
        """True when the coordinator must see each node's update (so secure aggregation cannot hide it)."""
        return self is not RobustRule.NORM_BOUNDED

    @classmethod
    def parse(cls, name: RobustRule | str) -> RobustRule:
        """The rule named ``name`` (case-insensitive), or :class:`ConfigError` listing the allowed values."""
        if isinstance(name, RobustRule):
            return name
        try:
            return cls(str(name).lower())
        except ValueError:
            raise ConfigError(f"unknown robust rule {name!r}, allowed: {[r.value for r in cls]}") from None


def _is_int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: object) -> TypeGuard[float]:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _option_problems(values: Mapping[str, object]) -> list[str]:
    problems = []
    f = values.get("byzantine", 0)
    if not _is_int(f) or f < 0:
        problems.append(f"byzantine must be an integer >= 0, got {f!r}")
    beta = values.get("trim_fraction", 0.1)
    if not _is_real(beta) or not 0 <= beta < 0.5:
        problems.append(f"trim_fraction must be a number in [0, 0.5), got {beta!r}")
    m = values.get("multi_krum")
    if m is not None and (not _is_int(m) or m < 1):
        problems.append(f"multi_krum must be an integer >= 1, got {m!r}")
    bound = values.get("norm_bound")
    if bound is not None and (not _is_real(bound) or bound <= 0):
        problems.append(f"norm_bound must be a finite number > 0, got {bound!r}")
    return problems


def _config_error(problems: list[str]) -> ConfigError:
    if len(problems) == 1:
        return ConfigError(f"robust aggregation: {problems[0]}")
    lines = "\n".join(f"  - {p}" for p in problems)
    return ConfigError(f"robust aggregation: {len(problems)} problems:\n{lines}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RobustOptions:
    """Options of the robust rules; each rule reads only the ones it needs.

    Parameters
    ----------
    byzantine
        ``f``, the number of malicious nodes to tolerate (every rule but ``norm_bounded`` checks it).
    trim_fraction
        ``β`` of ``trimmed_mean``, in [0, 0.5): ⌊βn⌋ values are dropped at each end of every coordinate.
    multi_krum
        ``m`` of ``multi_krum``: how many results to average; ``None`` means ``n − f``.
    norm_bound
        L2 bound on each update for ``norm_bounded`` (required by that rule).
    """

    byzantine: int = 0
    trim_fraction: float = 0.1
    multi_krum: int | None = None
    norm_bound: float | None = None

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if problems := _option_problems(values):
            raise _config_error(problems)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Scalar]) -> RobustOptions:
        """Parse the options of a job spec, listing every unknown key and bad value at once."""
        known = [f.name for f in dataclasses.fields(cls)]
        problems = [f"unknown option {key!r}, allowed: {known}" for key in options if key not in known]
        problems += _option_problems(options)
        if problems:
            raise _config_error(problems)
        kwargs: dict[str, Any] = dict(options)  # every value was checked above
        return cls(**kwargs)


def _trim_count(beta: float, n: int) -> int:
    return math.floor(beta * n + _FLOOR_SLACK)


def check_tolerance(rule: RobustRule | str, n_nodes: int, options: RobustOptions) -> None:
    """Refuse a rule that cannot tolerate ``options.byzantine`` malicious nodes among ``n_nodes``.

    Call it at job submission with the fewest results a round may aggregate (the job's
    ``min_nodes``); :func:`robust_aggregate` calls it again with the results at hand.

    Raises
    ------
    ConfigError
        The rule's requirement (see the module table) fails; the message names rule, f and n.
    """
    rule = RobustRule.parse(rule)
    f, n = options.byzantine, n_nodes
    problems = []
    if rule is RobustRule.MEDIAN and n < 2 * f + 1:
        problems.append(f"median with byzantine={f} needs an honest majority, n >= 2f + 1 = {2 * f + 1}, got n={n}")
    elif rule is RobustRule.TRIMMED_MEAN and (k := _trim_count(options.trim_fraction, n)) < f:
        problems.append(
            f"trimmed_mean trims k = floor(trim_fraction * n) = {k} values per side with trim_fraction="
            f"{options.trim_fraction} and n={n}, fewer than byzantine={f}: trim_fraction must be >= {f / n:.4g}"
        )
    elif rule in (RobustRule.KRUM, RobustRule.MULTI_KRUM):
        if n < 2 * f + 3:  # Blanchard et al. 2017, Proposition 1: n > 2f + 2
            problems.append(f"{rule.value} with byzantine={f} needs n >= 2f + 3 = {2 * f + 3} nodes, got n={n}")
        m = options.multi_krum
        if rule is RobustRule.MULTI_KRUM and m is not None and m > n - f:
            problems.append(f"multi_krum={m} must be <= n - byzantine = {n - f} (n={n})")
    elif rule is RobustRule.NORM_BOUNDED and options.norm_bound is None:
        problems.append("norm_bounded needs norm_bound, the L2 bound on each node's update")
    if problems:
        raise _config_error(problems)


def _bad_weight(weight: object) -> bool:
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        return True
    return not (math.isfinite(float(weight)) and float(weight) > 0)


def _validate(results: Sequence[Result], reference: Parameters | None) -> Parameters:
    """The template (reference, else the first result) after checking every result against it."""
    if not results:
        raise ValidationError("no results to aggregate", where="robust aggregation")
    template = reference if reference is not None else results[0][0]
    problems: list[str] = []
    for i, (params, weight) in enumerate(results):
        if _bad_weight(weight):
            problems.append(f"result {i}: weight must be a positive finite number, got {weight!r}")
        try:
            template.check_like(params)
        except ValidationError as exc:
            problems += [f"result {i}: {p}" for p in exc.problems]
    if problems:
        raise ValidationError(problems, where="robust aggregation")
    return template


def _stack(params: Sequence[Parameters], j: int) -> FloatArray:
    return np.stack([p.arrays[j] for p in params], dtype=np.float64)


def _coordinatewise(
    template: Parameters, params: Sequence[Parameters], reduce: Callable[[FloatArray], FloatArray]
) -> Parameters:
    # One array at a time: scratch is n × (largest array), never n × model.
    arrays = tuple(np.asarray(reduce(_stack(params, j)), dtype=t.dtype) for j, t in enumerate(template.arrays))
    return Parameters.from_arrays(template.names, arrays)


def _trimmed_mean(stack: FloatArray, k: int) -> FloatArray:
    n = stack.shape[0]
    if k == 0:
        return np.asarray(np.mean(stack, axis=0))
    return np.asarray(np.mean(np.sort(stack, axis=0)[k : n - k], axis=0))


def _squared_distances(params: Sequence[Parameters]) -> FloatArray:
    """n × n squared L2 distances between whole models."""
    n = len(params)
    dist = np.zeros((n, n))
    for j in range(len(params[0])):
        x = _stack(params, j).reshape(n, -1)
        # Centre first: models share a large common part, and ||a||² + ||b||² − 2a·b would cancel it badly.
        x -= x.mean(axis=0)
        sq = np.einsum("ij,ij->i", x, x)
        dist += sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    dist = np.maximum((dist + dist.T) / 2.0, 0.0)
    np.fill_diagonal(dist, 0.0)
    return dist


def _krum_order(params: Sequence[Parameters], byzantine: int) -> npt.NDArray[np.intp]:
    """Indices by increasing Krum score (ties broken by index, so the result is deterministic)."""
    dist = _squared_distances(params)
    n, neighbours = len(params), len(params) - byzantine - 2
    # Score of i: sum of squared distances to its n − f − 2 nearest others (Blanchard et al. 2017, §4).
    scores = np.array([np.sort(np.delete(dist[i], i))[:neighbours].sum() for i in range(n)])
    return np.argsort(scores, kind="stable")


def krum_select(results: Sequence[Result], *, byzantine: int, count: int = 1) -> tuple[int, ...]:
    """Indices of the ``count`` results with the best Krum scores, best first (for reports).

    Raises
    ------
    ConfigError
        ``n < 2f + 3`` or ``count > n − f``.
    ValidationError
        Results of different models, non-finite values or bad weights; every problem is listed.
    """
    _validate(results, None)
    check_tolerance(RobustRule.MULTI_KRUM, len(results), RobustOptions(byzantine=byzantine, multi_krum=count))
    order = _krum_order([p for p, _ in results], byzantine)
    return tuple(int(i) for i in order[:count])


def _krum(template: Parameters, params: Sequence[Parameters], byzantine: int, count: int) -> Parameters:
    order = _krum_order(params, byzantine)[:count]
    if count == 1:
        # The chosen result itself, in the template's dtypes (no copy when they already match).
        chosen = params[int(order[0])]
        arrays = tuple(np.asarray(a, dtype=t.dtype) for a, t in zip(chosen.arrays, template.arrays, strict=True))
        return Parameters.from_arrays(template.names, arrays)
    return _coordinatewise(template, [params[int(i)] for i in order], lambda s: np.asarray(np.mean(s, axis=0)))


def update_norm(params: Parameters, reference: Parameters) -> float:
    """L2 norm of the whole update ``params − reference`` (over every array, in float64)."""
    total = 0.0
    for a, r in zip(params.arrays, reference.arrays, strict=True):
        d = a.astype(np.float64) - r
        total += float(np.dot(d.ravel(), d.ravel()))
    return math.sqrt(total)


def _clip_factor(norm: float, bound: float) -> float:
    return 1.0 if norm <= bound else bound / norm


def clip_update(params: Parameters, *, reference: Parameters, bound: float) -> Parameters:
    """``reference + (params − reference) · min(1, bound / ||params − reference||)``.

    The node-side half of norm bounding, for use before secure-aggregation masking (Sun et al. 2019).

    Raises
    ------
    ConfigError
        ``bound`` is not a finite number > 0.
    ValidationError
        ``params`` is not a finite model like ``reference``.
    """
    RobustOptions(norm_bound=bound)
    reference.check_like(params, where="clip_update")
    factor = _clip_factor(update_norm(params, reference), bound)
    if factor == 1.0:
        return params
    arrays = tuple(
        np.asarray(r + factor * (a.astype(np.float64) - r), dtype=r.dtype)
        for a, r in zip(params.arrays, reference.arrays, strict=True)
    )
    return Parameters.from_arrays(reference.names, arrays)


def _norm_bounded(reference: Parameters, results: Sequence[Result], bound: float) -> Parameters:
    total = sum(float(w) for _, w in results)
    # Per-result scale w_i · clip_i / W, so each array is one pass over the results.
    scales = [float(w) * _clip_factor(update_norm(p, reference), bound) / total for p, w in results]
    arrays = []
    for j, r in enumerate(reference.arrays):
        acc = r.astype(np.float64)
        for (p, _), scale in zip(results, scales, strict=True):
            acc += scale * (p.arrays[j].astype(np.float64) - r)
        arrays.append(np.asarray(acc, dtype=r.dtype))
    return Parameters.from_arrays(reference.names, tuple(arrays))


def robust_aggregate(
    rule: RobustRule | str,
    results: Sequence[Result],
    *,
    options: RobustOptions,
    reference: Parameters | None = None,
) -> Parameters:
    """Aggregate every node's result with a robust rule; inputs are never mutated.

    Parameters
    ----------
    rule
        A :class:`RobustRule` or its value.
    results
        ``(model, weight)`` per node; all models share names and shapes and are finite.
    options
        The rule's options, including the declared number of malicious nodes.
    reference
        The current global model. Required by ``norm_bounded`` (updates are ``result − reference``);
        when given, every result is checked against it and the output takes its dtypes.

    Returns
    -------
    Parameters
        The next model, in the dtypes of ``reference`` (or of the first result).

    Raises
    ------
    ConfigError
        Unknown rule (the allowed values are listed) or a rule that cannot tolerate
        ``options.byzantine`` malicious nodes among ``len(results)``.
    ValidationError
        No results, mismatched or non-finite models, bad weights, or ``norm_bounded`` without
        ``reference``; every problem is listed.
    """
    rule = RobustRule.parse(rule)
    template = _validate(results, reference)
    check_tolerance(rule, len(results), options)
    params = [p for p, _ in results]
    n, f = len(results), options.byzantine
    if rule is RobustRule.MEDIAN:
        return _coordinatewise(template, params, lambda s: np.asarray(np.median(s, axis=0)))
    if rule is RobustRule.TRIMMED_MEAN:
        k = _trim_count(options.trim_fraction, n)
        return _coordinatewise(template, params, lambda s: _trimmed_mean(s, k))
    if rule is RobustRule.KRUM:
        return _krum(template, params, f, 1)
    if rule is RobustRule.MULTI_KRUM:
        return _krum(template, params, f, options.multi_krum or n - f)
    if reference is None:
        raise ValidationError("norm_bounded needs reference=, the current global model", where="robust aggregation")
    if options.norm_bound is None:  # refused by check_tolerance already; this narrows the type
        raise _config_error(["norm_bounded needs norm_bound"])
    return _norm_bounded(reference, results, options.norm_bound)


def check_secure_aggregation(rule: RobustRule | str, *, secure_aggregation: bool) -> None:
    """Refuse a robust rule that needs individual updates in a job that uses secure aggregation.

    Call it at job submission, so the job fails before any node trains.

    Raises
    ------
    ConfigError
        ``secure_aggregation`` is on and the rule needs every node's individual update; the message
        names both and lists the rules that do combine.
    """
    rule = RobustRule.parse(rule)
    if secure_aggregation and rule.needs_individual_updates:
        compatible = [r.value for r in RobustRule if not r.needs_individual_updates]
        raise ConfigError(
            f"robust rule {rule.value!r} cannot combine with secure aggregation: it needs every node's "
            f"individual update, which secure aggregation hides from the coordinator. Turn off secure "
            f"aggregation or choose a rule that combines with it: {compatible} (clipped at each node "
            f"before masking)"
        )
