"""Conformance suite shared by every strategy, golden values, and WeightedMean properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from medfed.aggregation import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedProx,
    FedYogi,
    Strategy,
    StrategyName,
    WeightedMean,
    make_strategy,
)
from medfed.core.errors import ConfigError, RegistryError, ValidationError
from medfed.core.params import Parameters
from medfed.core.records import StrategySpec

NAMES = [s.value for s in StrategyName]


def model(shift: float = 0.0) -> Parameters:
    rng = np.random.default_rng(7)
    return Parameters.from_numpy(
        {
            "layer.weight": (rng.standard_normal((3, 2)) + shift).astype(np.float32),
            "layer.bias": rng.standard_normal(2) + shift,
            "scale": np.full((), 0.5 + shift, dtype=np.float16),
        }
    )


def strategy(name: str) -> Strategy:
    return make_strategy(StrategySpec(name=name))


def copies(params: Parameters) -> list[np.ndarray]:
    return [a.copy() for a in params.arrays]


# ---- conformance: every strategy -------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_aggregate_keeps_names_shapes_and_dtypes(name: str) -> None:
    s, current, mean = strategy(name), model(), model(shift=0.3)

    new, state = s.aggregate(1, current, mean, s.initial_state(current))

    assert new.spec() == current.spec()
    assert isinstance(state, Parameters)


@pytest.mark.parametrize("name", NAMES)
def test_aggregate_does_not_mutate_inputs(name: str) -> None:
    s, current, mean = strategy(name), model(), model(shift=0.3)
    state = s.initial_state(current)
    before = [copies(current), copies(mean), copies(state)]

    s.aggregate(1, current, mean, state)

    for original, params in zip(before, (current, mean, state), strict=True):
        for a, b in zip(original, params.arrays, strict=True):
            np.testing.assert_array_equal(a, b)
            assert not b.flags.writeable


@pytest.mark.parametrize("name", NAMES)
def test_aggregate_is_deterministic_over_rounds(name: str) -> None:
    def run() -> tuple[Parameters, Parameters]:
        s = strategy(name)
        current = model()
        state = s.initial_state(current)
        for rnd in range(1, 4):
            current, state = s.aggregate(rnd, current, model(shift=0.1 * rnd), state)
        return current, state

    (m1, s1), (m2, s2) = run(), run()

    assert m1.allclose(m2, atol=0, rtol=0) and s1.allclose(s2, atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_mean_equal_to_current_leaves_model_unchanged_from_fresh_state(name: str) -> None:
    s, current = strategy(name), model()

    new, _ = s.aggregate(1, current, model(), s.initial_state(current))

    assert new.allclose(current, atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_moves_toward_the_mean(name: str) -> None:
    s, current, mean = strategy(name), model(), model(shift=1.0)

    new, _ = s.aggregate(1, current, mean, s.initial_state(current))

    for c, m, n in zip(current.arrays, mean.arrays, new.arrays, strict=True):
        step = n.astype(np.float64) - c
        assert np.all(step > 0) and np.all(step <= m.astype(np.float64) - c + 1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_fit_config_holds_scalars_only(name: str) -> None:
    config = strategy(name).fit_config(3)

    assert all(isinstance(k, str) and isinstance(v, bool | int | float | str) for k, v in config.items())


@pytest.mark.parametrize("name", NAMES)
def test_state_checkpoints_as_parameters(name: str) -> None:
    s, current = strategy(name), model()
    _, state = s.aggregate(1, current, model(shift=0.2), s.initial_state(current))
    restored = Parameters.from_numpy(state.to_dict())

    a, _ = s.aggregate(2, current, model(shift=0.4), state)
    b, _ = s.aggregate(2, current, model(shift=0.4), restored)

    assert a.allclose(b, atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_mean_of_another_model_is_refused(name: str) -> None:
    s, current = strategy(name), model()
    wrong = Parameters.from_numpy({"other": np.zeros(2, np.float32)})

    with pytest.raises(ValidationError, match="names differ"):
        s.aggregate(1, current, wrong, s.initial_state(current))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("options", [{"nope": 1.0}, {"eta": "fast"}, {"mu": float("nan")}, {"server_lr": True}])
def test_bad_options_raise_config_error(name: str, options: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=name):
        make_strategy(StrategySpec(name=name, options=options))  # type: ignore[arg-type]  # deliberately wrong


@pytest.mark.parametrize("name", NAMES)
def test_out_of_range_value_of_a_known_option_raises_config_error(name: str) -> None:
    key = next(iter(strategy(name).__dataclass_fields__))  # type: ignore[attr-defined]  # dataclasses

    with pytest.raises(ConfigError, match=f"{key} must be"):
        make_strategy(StrategySpec(name=name, options={key: -1.0}))


# ---- the factory ---------------------------------------------------------------------------


def test_unknown_strategy_lists_the_allowed_names() -> None:
    with pytest.raises(RegistryError) as info:
        make_strategy(StrategySpec(name="fedsgd"))

    assert all(name in str(info.value) for name in NAMES)


def test_every_problem_is_reported_at_once() -> None:
    spec = StrategySpec(name="fedadam", options={"eta": -1.0, "beta_1": 1.5, "tau": "x", "momentum": 0.9})

    with pytest.raises(ConfigError) as info:
        make_strategy(spec)

    message = str(info.value)
    assert "4 problem" in message
    assert all(word in message for word in ("eta", "beta_1", "tau", "momentum"))


def test_factory_builds_the_named_class_with_options() -> None:
    built = make_strategy(StrategySpec(name="FedYogi", options={"eta": 0.05, "tau": 1}))

    assert built == FedYogi(eta=0.05, tau=1.0)


def test_direct_construction_validates_too() -> None:
    with pytest.raises(ConfigError, match="beta_2"):
        FedAdam(beta_2=1.0)


# ---- golden values ---------------------------------------------------------------------------


def test_fedavg_returns_the_weighted_mean() -> None:
    a, b, c = model(), model(shift=1.0), model(shift=-2.0)
    acc = WeightedMean(a)
    for params, weight in ((a, 10), (b, 30), (c, 60)):
        acc.add(params, weight)
    mean = acc.result()

    new, state = FedAvg().aggregate(1, a, mean, FedAvg().initial_state(a))

    assert new.allclose(mean, atol=0, rtol=0)
    expected = 0.1 * a["layer.bias"] + 0.3 * b["layer.bias"] + 0.6 * c["layer.bias"]
    np.testing.assert_allclose(new["layer.bias"], expected, rtol=1e-12)
    assert len(state) == 0


def test_fedavg_server_lr_scales_the_step() -> None:
    current = Parameters.from_numpy({"w": np.array([1.0, 2.0])})
    mean = Parameters.from_numpy({"w": np.array([3.0, 0.0])})

    new, _ = FedAvg(server_lr=0.5).aggregate(1, current, mean, Parameters((), ()))

    np.testing.assert_allclose(new["w"], [2.0, 1.0])


def test_fedadam_first_step_by_hand() -> None:
    current = Parameters.from_numpy({"w": np.array([1.0, -2.0])})
    mean = Parameters.from_numpy({"w": np.array([1.5, -2.2])})
    s = FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)

    new, state = s.aggregate(1, current, mean, s.initial_state(current))

    delta = np.array([0.5, -0.2])
    m = 0.1 * delta  # beta_1 * 0 + (1 - beta_1) * delta
    v = 0.99 * 1e-6 + 0.01 * delta**2  # v starts at tau**2
    np.testing.assert_allclose(state["m/w"], m)
    np.testing.assert_allclose(state["v/w"], v)
    np.testing.assert_allclose(new["w"], [1.0, -2.0] + 0.1 * m / (np.sqrt(v) + 1e-3))
    np.testing.assert_allclose(
        new["w"],
        [1.0 + 0.1 * 0.05 / (np.sqrt(0.0025 + 9.9e-7) + 1e-3), -2.0 - 0.1 * 0.02 / (np.sqrt(0.0004 + 9.9e-7) + 1e-3)],
    )


def test_fedyogi_second_moment_follows_the_sign_rule() -> None:
    current = Parameters.from_numpy({"w": np.zeros(2)})
    mean = Parameters.from_numpy({"w": np.array([0.1, 2.0])})  # delta**2 = 0.01, 4.0
    state = Parameters.from_numpy({"m/w": np.zeros(2), "v/w": np.array([1.0, 1.0])})
    s = FedYogi(beta_2=0.9)

    _, new_state = s.aggregate(1, current, mean, state)

    # v > delta**2: v shrinks by (1 - beta_2) delta**2; v < delta**2: v grows by it (Adam would
    # move v toward delta**2 multiplicatively instead: 0.9 * 1 + 0.1 * 0.01 = 0.901).
    np.testing.assert_allclose(new_state["v/w"], [1.0 - 0.1 * 0.01, 1.0 + 0.1 * 4.0])


def test_fedadagrad_accumulates_squared_deltas() -> None:
    s = FedAdagrad(eta=0.1, tau=1e-3)  # beta_1 = 0: m is the latest delta
    x0 = Parameters.from_numpy({"w": np.zeros(1)})
    x1, state1 = s.aggregate(1, x0, Parameters.from_numpy({"w": np.full(1, 0.5)}), s.initial_state(x0))
    x2, state2 = s.aggregate(2, x1, Parameters.from_numpy({"w": np.full(1, 1.0)}), state1)

    v1 = 1e-6 + 0.5**2
    w1 = 0.1 * 0.5 / (np.sqrt(v1) + 1e-3)
    v2 = v1 + (1.0 - w1) ** 2
    np.testing.assert_allclose([x1["w"][0], state1["v/w"][0]], [w1, v1])
    np.testing.assert_allclose([state2["v/w"][0], x2["w"][0]], [v2, w1 + 0.1 * (1.0 - w1) / (np.sqrt(v2) + 1e-3)])


def test_fedprox_sends_mu_to_the_tasks_and_averages() -> None:
    s = make_strategy(StrategySpec(name="fedprox", options={"mu": 0.5}))
    current, mean = model(), model(shift=0.5)

    new, _ = s.aggregate(1, current, mean, s.initial_state(current))

    assert s.fit_config(1) == {"proximal_mu": 0.5}
    assert isinstance(s, FedProx) and new.allclose(mean, atol=0, rtol=0)


def test_adaptive_state_is_named_after_the_model() -> None:
    state = FedAdam().initial_state(model())

    assert state.names == ("m/layer.weight", "m/layer.bias", "m/scale", "v/layer.weight", "v/layer.bias", "v/scale")
    assert state["v/scale"].dtype == np.float32  # float16 cannot hold tau**2


# ---- WeightedMean ----------------------------------------------------------------------------

shapes = hnp.array_shapes(min_dims=0, max_dims=2, max_side=4)
finite = st.floats(-1e6, 1e6, allow_nan=False, width=64)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), shape=shapes, n=st.integers(1, 6))
def test_weighted_mean_equals_numpy_average(data: st.DataObject, shape: tuple[int, ...], n: int) -> None:
    arrays = [data.draw(hnp.arrays(np.float64, shape, elements=finite)) for _ in range(n)]
    weights = data.draw(st.lists(st.floats(1e-3, 1e4), min_size=n, max_size=n))
    acc = WeightedMean(Parameters.from_numpy({"x": np.zeros(shape)}))

    for array, weight in zip(arrays, weights, strict=True):
        acc.add(Parameters.from_numpy({"x": array}), weight)

    expected = np.average(np.stack(arrays), axis=0, weights=weights)
    np.testing.assert_allclose(acc.result()["x"], expected, rtol=1e-9, atol=1e-6)
    assert acc.count == n and acc.total_weight == pytest.approx(sum(weights))


@settings(max_examples=40, deadline=None)
@given(good=hnp.arrays(np.float32, (3,), elements=st.floats(-10, 10, width=32)), bad_at=st.integers(0, 2))
def test_weighted_mean_refuses_nan_and_wrong_shape_without_changing_sums(good: np.ndarray, bad_at: int) -> None:
    acc = WeightedMean(Parameters.from_numpy({"x": np.zeros(3, np.float32)}))
    acc.add(Parameters.from_numpy({"x": good}), 2.0)
    before = acc.result()
    poisoned = good.copy()
    poisoned[bad_at] = np.nan

    for bad in ({"x": poisoned}, {"x": np.zeros(4, np.float32)}, {"y": good}):
        with pytest.raises(ValidationError):
            acc.add(Parameters.from_numpy(bad), 1.0)
    for weight in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="weight"):
            acc.add(Parameters.from_numpy({"x": good}), weight)

    assert acc.count == 1 and acc.total_weight == 2.0
    assert acc.result().allclose(before, atol=0, rtol=0)


def test_weighted_mean_scales_float32_results_in_float64() -> None:
    acc = WeightedMean(Parameters.from_numpy({"x": np.zeros(1)}))  # float64 template

    acc.add(Parameters.from_numpy({"x": np.ones(1, np.float32)}), 1 / 3)
    acc.add(Parameters.from_numpy({"x": np.zeros(1, np.float32)}), 2 / 3)

    # a float32 product would give 0.33333334; the sums are float64 throughout
    assert acc.result()["x"][0] == 1 / 3


def test_weighted_mean_of_nothing_is_an_error() -> None:
    with pytest.raises(ValidationError, match="no results"):
        WeightedMean(model()).result()


def test_package_exports_exist() -> None:
    import medfed.aggregation as package

    assert all(hasattr(package, name) for name in package.__all__)
    assert {"StrategyName", "make_strategy", "WeightedMean", "Strategy"} <= set(package.__all__)
