"""Robust rules: a conformance suite every rule passes, golden values, attacks, refusals, properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from medfed.aggregation.mean import WeightedMean
from medfed.aggregation.robust import (
    Result,
    RobustOptions,
    RobustRule,
    check_secure_aggregation,
    check_tolerance,
    clip_update,
    krum_select,
    robust_aggregate,
    update_norm,
)
from medfed.core.errors import ConfigError, ValidationError
from medfed.core.params import Parameters

RULES = list(RobustRule)
# Five nodes tolerate one malicious node under every rule: 2f + 3 = 5, floor(0.2 * 5) = 1.
OPTIONS = RobustOptions(byzantine=1, trim_fraction=0.2, norm_bound=1.0)


def model(seed: int, shift: float = 0.0) -> Parameters:
    rng = np.random.default_rng(seed)
    return Parameters.from_numpy(
        {
            "layer.weight": (rng.standard_normal((3, 2)) + shift).astype(np.float32),
            "layer.bias": rng.standard_normal(2) + shift,
            "scale": np.full((), 0.5 + shift, dtype=np.float16),
        }
    )


REFERENCE = model(99)


def node_results(n: int = 5) -> list[Result]:
    return [(model(i, shift=0.1 * i), float(i + 1)) for i in range(n)]


def vec(params: Parameters) -> np.ndarray:
    return np.concatenate([a.astype(np.float64).ravel() for a in params.arrays])


def params_1d(*rows: list[float]) -> list[Result]:
    return [(Parameters.from_numpy({"w": np.array(r, dtype=np.float64)}), 1.0) for r in rows]


# ---- conformance: every rule -----------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_keeps_names_shapes_and_dtypes(rule: RobustRule) -> None:
    results = node_results()

    out = robust_aggregate(rule, results, options=OPTIONS, reference=REFERENCE)

    assert out.spec() == REFERENCE.spec()
    assert all(not a.flags.writeable for a in out.arrays)


@pytest.mark.parametrize("rule", RULES)
def test_does_not_mutate_inputs(rule: RobustRule) -> None:
    results = node_results()
    before = [[a.copy() for a in p.arrays] for p, _ in results]
    reference_before = [a.copy() for a in REFERENCE.arrays]

    robust_aggregate(rule, results, options=OPTIONS, reference=REFERENCE)

    for original, (params, _) in zip(before, results, strict=True):
        for a, b in zip(original, params.arrays, strict=True):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(reference_before, REFERENCE.arrays, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rule", RULES)
def test_is_deterministic(rule: RobustRule) -> None:
    first = robust_aggregate(rule, node_results(), options=OPTIONS, reference=REFERENCE)
    second = robust_aggregate(rule, node_results(), options=OPTIONS, reference=REFERENCE)

    assert first.allclose(second, atol=0, rtol=0)


@pytest.mark.parametrize("rule", RULES)
def test_every_coordinate_stays_within_the_inputs(rule: RobustRule) -> None:
    results = node_results()
    stacked = np.stack([vec(p) for p, _ in results] + [vec(REFERENCE)])

    out = vec(robust_aggregate(rule, results, options=OPTIONS, reference=REFERENCE))

    assert np.all(out >= stacked.min(axis=0)) and np.all(out <= stacked.max(axis=0))


@pytest.mark.parametrize("rule", RULES)
def test_rule_may_be_named_by_its_value(rule: RobustRule) -> None:
    by_enum = robust_aggregate(rule, node_results(), options=OPTIONS, reference=REFERENCE)
    by_name = robust_aggregate(rule.value.upper(), node_results(), options=OPTIONS, reference=REFERENCE)

    assert by_enum.allclose(by_name, atol=0, rtol=0)


@pytest.mark.parametrize("rule", RULES)
def test_results_of_another_model_are_refused_listing_each(rule: RobustRule) -> None:
    wrong = Parameters.from_numpy({"other": np.zeros(2, np.float32)})
    results = [*node_results(), (wrong, 1.0), (REFERENCE, float("nan"))]

    with pytest.raises(ValidationError) as info:
        robust_aggregate(rule, results, options=OPTIONS, reference=REFERENCE)

    assert len(info.value.problems) == 2
    assert "result 5: parameter names differ" in str(info.value)
    assert "result 6: weight must be a positive finite number" in str(info.value)


@pytest.mark.parametrize("rule", RULES)
def test_no_results_are_refused(rule: RobustRule) -> None:
    with pytest.raises(ValidationError, match="no results"):
        robust_aggregate(rule, [], options=OPTIONS, reference=REFERENCE)


@pytest.mark.parametrize("weight", [0.0, -1.0, float("inf"), True, "3"])
def test_bad_weights_are_refused(weight: object) -> None:
    results = [*node_results(4), (REFERENCE, weight)]

    with pytest.raises(ValidationError, match="weight must be a positive finite number"):
        robust_aggregate(RobustRule.MEDIAN, results, options=OPTIONS)  # type: ignore[arg-type]


def test_non_finite_values_are_refused() -> None:
    bad = Parameters.from_numpy({"w": np.array([1.0, np.nan])})
    results = [*params_1d([0.0, 0.0], [1.0, 1.0]), (bad, 1.0)]

    with pytest.raises(ValidationError, match="non-finite"):
        robust_aggregate(RobustRule.MEDIAN, results, options=RobustOptions())


# ---- golden values ---------------------------------------------------------------------------


def test_median_golden() -> None:
    out = robust_aggregate(RobustRule.MEDIAN, params_1d([1, 10], [2, 20], [3, 30], [100, -5]), options=RobustOptions())

    np.testing.assert_array_equal(out["w"], [2.5, 15.0])


def test_trimmed_mean_golden() -> None:
    results = params_1d([1, 10], [2, 20], [3, 30], [100, -5])

    out = robust_aggregate(RobustRule.TRIMMED_MEAN, results, options=RobustOptions(trim_fraction=0.25))

    np.testing.assert_array_equal(out["w"], [2.5, 15.0])


def test_krum_golden() -> None:
    results = params_1d([0.0], [0.1], [0.2], [10.0], [11.0])

    best = krum_select(results, byzantine=1, count=3)
    krum = robust_aggregate(RobustRule.KRUM, results, options=RobustOptions(byzantine=1))
    multi = robust_aggregate(RobustRule.MULTI_KRUM, results, options=RobustOptions(byzantine=1, multi_krum=3))

    assert best[0] == 1 and set(best) == {0, 1, 2}
    assert krum["w"][0] == 0.1
    np.testing.assert_allclose(multi["w"], [0.1])


def test_multi_krum_averages_n_minus_f_by_default() -> None:
    results = params_1d([0.0], [0.1], [0.2], [0.3], [50.0])

    out = robust_aggregate(RobustRule.MULTI_KRUM, results, options=RobustOptions(byzantine=1))

    np.testing.assert_allclose(out["w"], [0.15])


def test_norm_bounded_golden() -> None:
    reference = Parameters.from_numpy({"w": np.zeros(2)})
    results = [(Parameters.from_numpy({"w": [3.0, 4.0]}), 1.0), (Parameters.from_numpy({"w": [0.3, 0.4]}), 3.0)]

    out = robust_aggregate(RobustRule.NORM_BOUNDED, results, options=RobustOptions(norm_bound=1.0), reference=reference)

    np.testing.assert_allclose(out["w"], [(0.6 + 3 * 0.3) / 4, (0.8 + 3 * 0.4) / 4])


def test_clip_update_scales_to_the_bound_and_leaves_small_updates_alone() -> None:
    reference = Parameters.from_numpy({"w": [1.0, 1.0]})
    big = Parameters.from_numpy({"w": [4.0, 5.0]})
    small = Parameters.from_numpy({"w": [1.3, 1.4]})

    clipped = clip_update(big, reference=reference, bound=1.0)

    np.testing.assert_allclose(clipped["w"], [1.6, 1.8])
    assert update_norm(clipped, reference) == pytest.approx(1.0)
    assert clip_update(small, reference=reference, bound=1.0) is small


# ---- attacks ---------------------------------------------------------------------------------

HONEST, BYZANTINE = 8, 2
ATTACKS = ["huge_norm", "sign_flip", "scaled_1e3"]


def federation(attack: str, seed: int) -> tuple[Parameters, list[Result], np.ndarray]:
    """Reference model, results (attackers last) and the honest nodes' mean model as a vector."""
    rng = np.random.default_rng(seed)
    shapes = {"w": (6, 5), "b": (5,)}
    reference = Parameters.from_numpy({k: rng.standard_normal(s) for k, s in shapes.items()}, dtype="float32")
    direction = {k: rng.standard_normal(s) for k, s in shapes.items()}

    def update(scale: float) -> dict[str, np.ndarray]:
        return {k: scale * (direction[k] + 0.1 * rng.standard_normal(s)) for k, s in shapes.items()}

    updates = [update(1.0) for _ in range(HONEST)]
    for _ in range(BYZANTINE):
        if attack == "huge_norm":
            updates.append({k: 1e4 * rng.standard_normal(s) for k, s in shapes.items()})
        else:
            updates.append(update(-1.0 if attack == "sign_flip" else 1e3))
    # Attackers also overstate their example counts (500 against honest 20..200): only the plain mean listens.
    weights = [float(w) for w in rng.integers(20, 200, HONEST)] + [500.0] * BYZANTINE
    results = [
        (Parameters.from_numpy({k: reference[k] + u[k] for k in shapes}, dtype="float32"), w)
        for u, w in zip(updates, weights, strict=True)
    ]
    honest_mean = np.mean([vec(p) for p, _ in results[:HONEST]], axis=0)
    return reference, results, honest_mean


def honest_radius(results: list[Result], honest_mean: np.ndarray) -> float:
    return max(float(np.linalg.norm(vec(p) - honest_mean)) for p, _ in results[:HONEST])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("rule", [RobustRule.MEDIAN, RobustRule.TRIMMED_MEAN, RobustRule.KRUM, RobustRule.MULTI_KRUM])
def test_robust_rules_stay_near_the_honest_mean_while_the_mean_is_pulled_away(
    rule: RobustRule, attack: str, seed: int
) -> None:
    reference, results, honest_mean = federation(attack, seed)
    options = RobustOptions(byzantine=BYZANTINE, trim_fraction=0.2)
    plain = WeightedMean(reference)
    for params, weight in results:
        plain.add(params, weight)
    bound = honest_radius(results, honest_mean)

    robust_error = np.linalg.norm(vec(robust_aggregate(rule, results, options=options)) - honest_mean)
    plain_error = np.linalg.norm(vec(plain.result()) - honest_mean)

    assert robust_error <= bound
    assert plain_error > 3 * bound


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("attack", ATTACKS)
def test_krum_picks_an_honest_update(attack: str, seed: int) -> None:
    _, results, _ = federation(attack, seed)

    chosen = krum_select(results, byzantine=BYZANTINE)[0]
    out = robust_aggregate(RobustRule.KRUM, results, options=RobustOptions(byzantine=BYZANTINE))

    assert chosen < HONEST
    assert out.allclose(results[chosen][0], atol=0, rtol=0)
    assert set(krum_select(results, byzantine=BYZANTINE, count=HONEST)) == set(range(HONEST))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("attack", ATTACKS)
def test_norm_bounding_limits_each_attackers_pull(attack: str, seed: int) -> None:
    reference, results, honest_mean = federation(attack, seed)
    bound = 1.1 * max(update_norm(p, reference) for p, _ in results[:HONEST])
    equal = [(p, 1.0) for p, _ in results]  # Sun et al.'s bound on the pull assumes equal weights

    out = robust_aggregate(RobustRule.NORM_BOUNDED, equal, options=RobustOptions(norm_bound=bound), reference=reference)

    # Honest updates pass unclipped; each attacker adds at most bound / n, and dilutes the honest mean as much.
    n = HONEST + BYZANTINE
    assert np.linalg.norm(vec(out) - honest_mean) <= 2 * BYZANTINE * bound / n + 1e-4


# ---- refusals --------------------------------------------------------------------------------


def test_unknown_rule_lists_the_allowed_values() -> None:
    with pytest.raises(ConfigError) as info:
        robust_aggregate("geometric_median", node_results(), options=OPTIONS)

    assert "'geometric_median'" in str(info.value)
    assert all(r.value in str(info.value) for r in RobustRule)


@pytest.mark.parametrize(
    ("rule", "n", "options", "message"),
    [
        (
            RobustRule.KRUM,
            4,
            RobustOptions(byzantine=1),
            r"krum with byzantine=1 needs n >= 2f \+ 3 = 5 nodes, got n=4",
        ),
        (RobustRule.MULTI_KRUM, 6, RobustOptions(byzantine=2), r"multi_krum with byzantine=2 needs n >= 2f \+ 3 = 7"),
        (RobustRule.MULTI_KRUM, 5, RobustOptions(byzantine=1, multi_krum=5), r"multi_krum=5 must be <= n - byzantine"),
        (RobustRule.MEDIAN, 4, RobustOptions(byzantine=2), r"n >= 2f \+ 1 = 5, got n=4"),
        (RobustRule.TRIMMED_MEAN, 10, RobustOptions(byzantine=2, trim_fraction=0.1), r"trim_fraction must be >= 0\.2"),
        (RobustRule.NORM_BOUNDED, 10, RobustOptions(), "norm_bounded needs norm_bound"),
    ],
)
def test_rules_that_cannot_tolerate_the_declared_attackers_are_refused(
    rule: RobustRule, n: int, options: RobustOptions, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        check_tolerance(rule, n, options)


def test_aggregation_checks_tolerance_with_the_results_at_hand() -> None:
    with pytest.raises(ConfigError, match=r"2f \+ 3 = 5 nodes, got n=4"):
        robust_aggregate(RobustRule.KRUM, node_results(4), options=RobustOptions(byzantine=1))


def test_trim_count_survives_float_rounding() -> None:
    check_tolerance(RobustRule.TRIMMED_MEAN, 100, RobustOptions(byzantine=29, trim_fraction=0.29))


def test_norm_bounded_needs_the_reference() -> None:
    with pytest.raises(ValidationError, match="reference"):
        robust_aggregate(RobustRule.NORM_BOUNDED, node_results(), options=OPTIONS)


def test_bad_options_are_listed_together() -> None:
    with pytest.raises(ConfigError) as info:
        RobustOptions(byzantine=-1, trim_fraction=0.5, multi_krum=0, norm_bound=float("inf"))

    assert "4 problems" in str(info.value)
    for key in ("byzantine", "trim_fraction", "multi_krum", "norm_bound"):
        assert key in str(info.value)


def test_options_parse_from_a_job_spec_mapping() -> None:
    assert RobustOptions.from_mapping({"byzantine": 2, "trim_fraction": 0.25}) == RobustOptions(
        byzantine=2, trim_fraction=0.25
    )
    with pytest.raises(ConfigError) as info:
        RobustOptions.from_mapping({"f": 2, "byzantine": 1.5, "norm_bound": "big"})

    assert "3 problems" in str(info.value) and "unknown option 'f'" in str(info.value)


@pytest.mark.parametrize("rule", [r for r in RobustRule if r.needs_individual_updates])
def test_rules_needing_individual_updates_refuse_secure_aggregation(rule: RobustRule) -> None:
    with pytest.raises(ConfigError) as info:
        check_secure_aggregation(rule, secure_aggregation=True)

    assert repr(rule.value) in str(info.value) and "secure aggregation" in str(info.value)
    assert "norm_bounded" in str(info.value)
    check_secure_aggregation(rule, secure_aggregation=False)


def test_norm_bounding_combines_with_secure_aggregation() -> None:
    check_secure_aggregation("norm_bounded", secure_aggregation=True)


# ---- properties ------------------------------------------------------------------------------

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(rows=hnp.arrays(np.float64, st.tuples(st.integers(1, 7), st.integers(1, 5)), elements=finite))
def test_trimmed_mean_without_trimming_is_the_mean(rows: np.ndarray) -> None:
    results = [(Parameters.from_numpy({"w": row}), 1.0) for row in rows]
    mean = WeightedMean(results[0][0])
    for params, weight in results:
        mean.add(params, weight)

    out = robust_aggregate(RobustRule.TRIMMED_MEAN, results, options=RobustOptions(trim_fraction=0.0))

    np.testing.assert_allclose(out["w"], mean.result()["w"], rtol=1e-9, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    update=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=0, max_dims=2, max_side=4),
        elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
    ),
    n=st.integers(1, 7),
)
def test_median_of_identical_updates_is_that_update(update: np.ndarray, n: int) -> None:
    params = Parameters.from_numpy({"w": update})

    out = robust_aggregate(RobustRule.MEDIAN, [(params, 1.0)] * n, options=RobustOptions())

    assert out["w"].dtype == np.float32
    np.testing.assert_array_equal(out["w"], update)


@settings(max_examples=60, deadline=None)
@given(
    rows=hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 4)), elements=finite),
    weights=st.lists(st.floats(0.1, 1e3), min_size=6, max_size=6),
    bound=st.floats(1e-3, 1e3),
)
def test_norm_bounding_moves_the_model_at_most_the_bound(rows: np.ndarray, weights: list[float], bound: float) -> None:
    reference = Parameters.from_numpy({"w": np.zeros(rows.shape[1])})
    results = [(Parameters.from_numpy({"w": row}), w) for row, w in zip(rows, weights, strict=False)]

    out = robust_aggregate(
        RobustRule.NORM_BOUNDED, results, options=RobustOptions(norm_bound=bound), reference=reference
    )

    assert update_norm(out, reference) <= bound * (1 + 1e-9)
