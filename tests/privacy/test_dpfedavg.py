"""DP-FedAvg: node and server steps, noise shares, adaptive clipping, the strategy wrapper."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medfed.aggregation.strategies import FedAdam, FedAvg
from medfed.core.errors import ConfigError, ValidationError
from medfed.core.params import Parameters
from medfed.privacy.dpfedavg import (
    CLIP_NORM_NAME,
    AdaptiveClipping,
    DPAggregator,
    DPContribution,
    DPFedAvg,
    NoiseMode,
)
from medfed.privacy.mechanisms import l2_norm

SIZE = 20_000  # elements per noise sample: the empirical std is within ~1.5 % (3 sigma)


def _zeros(n: int = SIZE) -> Parameters:
    return Parameters.from_numpy({"w": np.zeros(n)})


def _vector(values: list[float] | np.ndarray) -> Parameters:
    return Parameters.from_numpy({"w": np.asarray(values, dtype=np.float64)})


def test_central_mode_adds_sigma_c_to_the_sum_and_divides_by_m() -> None:
    rule = DPAggregator(noise_multiplier=1.5, expected_nodes=4)
    node = rule.node_update(_zeros(), clip_norm=2.0, rng=np.random.default_rng(0))
    assert np.all(node.update["w"] == 0)  # central: nodes only clip

    mean, clip = rule.server_step(DPContribution.sum([node] * 4), clip_norm=2.0, rng=np.random.default_rng(1))

    assert clip == 2.0
    assert float(np.std(mean["w"])) == pytest.approx(1.5 * 2.0 / 4, rel=0.015)


def test_distributed_shares_sum_to_the_central_noise() -> None:
    m, sigma, c = 5, 1.2, 0.5
    rule = DPAggregator(noise_multiplier=sigma, expected_nodes=m, mode=NoiseMode.DISTRIBUTED)
    rngs = np.random.default_rng(7).spawn(m)

    shares = [rule.node_update(_zeros(), clip_norm=c, rng=r) for r in rngs]
    mean, _ = rule.server_step(DPContribution.sum(shares), clip_norm=c, rng=np.random.default_rng(8))

    for share in shares:
        assert float(np.std(share.update["w"])) == pytest.approx(sigma * c / math.sqrt(m), rel=0.015)
    total = DPContribution.sum(shares).update["w"]
    assert float(np.std(total)) == pytest.approx(sigma * c, rel=0.015)
    np.testing.assert_allclose(mean["w"], total / m, rtol=1e-12)  # the server adds no noise here


def test_node_update_clips_before_noise_and_reports_the_indicator() -> None:
    rule = DPAggregator(noise_multiplier=1.0, expected_nodes=100, adaptive=AdaptiveClipping())
    big = rule.node_update(_vector([3.0, 4.0]), clip_norm=1.0, rng=np.random.default_rng(0))
    small = rule.node_update(_vector([0.3, 0.4]), clip_norm=1.0, rng=np.random.default_rng(0))
    assert l2_norm(big.update) <= 1.0
    assert (big.unclipped, small.unclipped) == (-0.5, 0.5)  # centred: sensitivity 1/2


def test_fixed_denominator_does_not_follow_the_number_of_replies() -> None:
    # Two of four expected nodes reply: the mean is their sum over four (McMahan et al. 2018).
    dp = DPFedAvg(inner=FedAvg(), clip_norm=100.0, noise_multiplier=1e-9, expected_nodes=4)
    current = _vector([1.0, 1.0])
    models = [_vector([3.0, 1.0]), _vector([1.0, 5.0])]

    params, _ = dp.aggregate_models(1, current, models, dp.initial_state(current), rng=np.random.default_rng(0))

    np.testing.assert_allclose(params["w"], [1.0 + 2.0 / 4, 1.0 + 4.0 / 4], atol=1e-6)


def _adaptive_run(gamma: float, rounds: int, seed: int) -> tuple[float, float]:
    """Adaptive clipping on synthetic update norms (log-normal, median 1); returns C and the
    quantile of the norm distribution C ends at."""
    m = 200
    rule = DPAggregator(
        noise_multiplier=1.0, expected_nodes=m, adaptive=AdaptiveClipping(target_quantile=gamma, learning_rate=0.2)
    )
    rng = np.random.default_rng(seed)
    clip = 0.1  # Andrew et al.'s initial C
    for _ in range(rounds):
        norms = rng.lognormal(0.0, 0.5, size=m)
        nodes = [rule.node_update(_vector([n, 0.0]), clip_norm=clip, rng=rng) for n in norms]
        _, clip = rule.server_step(DPContribution.sum(nodes), clip_norm=clip, rng=rng)
    quantile = float(np.mean(rng.lognormal(0.0, 0.5, size=100_000) <= clip))
    return clip, quantile


@pytest.mark.parametrize("gamma", [0.5, 0.9])
def test_adaptive_clipping_moves_c_to_the_target_quantile(gamma: float) -> None:
    clip, quantile = _adaptive_run(gamma, rounds=60, seed=3)
    assert quantile == pytest.approx(gamma, abs=0.07)
    assert clip > 0.1


def test_adaptive_clipping_is_deterministic_for_a_seed() -> None:
    assert _adaptive_run(0.5, rounds=5, seed=11) == _adaptive_run(0.5, rounds=5, seed=11)


def test_adaptive_noise_split_keeps_the_effective_multiplier() -> None:
    # Andrew et al. 2021, Theorem 1: sigma_delta^-2 + (2 sigma_b)^-2 = z^-2.
    rule = DPAggregator(noise_multiplier=1.0, expected_nodes=100, adaptive=AdaptiveClipping())
    assert rule.count_stddev == 5.0  # m / 20
    assert rule.update_noise_multiplier**-2 + (2 * rule.count_stddev) ** -2 == pytest.approx(1.0)
    assert DPAggregator(noise_multiplier=1.0, expected_nodes=100).update_noise_multiplier == 1.0


def test_wrapper_state_carries_c_and_the_inner_state() -> None:
    dp = DPFedAvg(inner=FedAdam(), clip_norm=0.1, noise_multiplier=1.0, expected_nodes=40, adaptive=AdaptiveClipping())
    current = _vector([0.0, 0.0, 0.0])
    state = dp.initial_state(current)
    assert state.names == (CLIP_NORM_NAME, "inner/m/w", "inner/v/w")
    models = [_vector([1.0, -1.0, 0.5])] * 40  # every update far above C = 0.1

    params, new_state = dp.aggregate_models(1, current, models, state, rng=np.random.default_rng(5))

    assert new_state.names == state.names
    assert dp.clip_norm_of(new_state) > 0.1  # none unclipped: C grows
    assert not np.all(new_state["inner/m/w"] == 0)  # FedAdam stepped
    assert params.spec() == current.spec()


def test_wrapper_is_deterministic_and_leaves_its_inputs() -> None:
    dp = DPFedAvg(inner=FedAvg(), clip_norm=1.0, noise_multiplier=0.8, expected_nodes=3)
    current = _vector([0.5, 0.5])
    models = [_vector([1.0, 2.0]), _vector([0.0, 0.0]), _vector([5.0, -5.0])]
    copies = [Parameters.from_numpy(m.to_dict()) for m in [current, *models]]
    state = dp.initial_state(current)

    a = dp.aggregate_models(1, current, models, state, rng=np.random.default_rng(9))
    b = dp.aggregate_models(1, current, models, state, rng=np.random.default_rng(9))
    c = dp.aggregate_models(1, current, models, state, rng=np.random.default_rng(10))

    assert a[0].allclose(b[0], atol=0, rtol=0) and a[1].allclose(b[1], atol=0, rtol=0)
    assert not a[0].allclose(c[0])
    for original, copy in zip([current, *models], copies, strict=True):
        assert original.allclose(copy, atol=0, rtol=0)
    assert dp.clip_norm_of(a[1]) == 1.0  # fixed clipping


def test_packed_contributions_sum_like_the_records() -> None:
    # What the coordinator does: sum packed replies (secure aggregation reveals only this sum).
    a = DPContribution(_vector([1.0, 2.0]), 0.5)
    b = DPContribution(_vector([0.5, -1.0]), -0.5)
    packed = [a.to_parameters(), b.to_parameters()]
    summed = Parameters.from_numpy({n: packed[0][n] + packed[1][n] for n in packed[0].names})

    unpacked = DPContribution.from_parameters(summed)

    expected = DPContribution.sum([a, b])
    assert unpacked.update.allclose(expected.update) and unpacked.unclipped == expected.unclipped
    with pytest.raises(ValidationError):
        DPContribution.from_parameters(a.update)
    with pytest.raises(ValidationError):
        DPContribution.from_parameters(Parameters.from_numpy({"dp/unclipped": [1.0, 2.0]}))


def test_coordinator_path_matches_the_simulation_path() -> None:
    dp = DPFedAvg(inner=FedAvg(), clip_norm=1.0, noise_multiplier=0.5, expected_nodes=2, mode=NoiseMode.DISTRIBUTED)
    current = _vector([0.0, 0.0])
    state = dp.initial_state(current)
    rule, clip = DPAggregator.from_node_config(dp.fit_config(1) | dp.node_config(state))
    assert rule == dp.rule and clip == 1.0
    server, n0, n1 = np.random.default_rng(4).spawn(3)
    updates = [_vector([2.0, 0.0]), _vector([0.0, 0.3])]

    replies = [rule.node_update(u, clip_norm=clip, rng=r) for u, r in zip(updates, (n0, n1), strict=True)]
    via_sum = dp.aggregate_sum(1, current, DPContribution.sum(replies), state, rng=server)
    via_models = dp.aggregate_models(1, current, updates, state, rng=np.random.default_rng(4))

    assert via_sum[0].allclose(via_models[0], atol=0, rtol=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_multiplier": 0.0},
        {"noise_multiplier": float("nan")},
        {"expected_nodes": 0},
        {"expected_nodes": True},
        {"mode": "central"},
        {"adaptive": AdaptiveClipping(count_stddev=0.4)},  # z = 1 >= 2 * 0.4
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"noise_multiplier": 1.0, "expected_nodes": 10, **kwargs}
    with pytest.raises(ConfigError):
        DPAggregator(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs", [{"target_quantile": 1.0}, {"target_quantile": 0.0}, {"learning_rate": -0.1}, {"count_stddev": 0.0}]
)
def test_bad_adaptive_settings_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        AdaptiveClipping(**kwargs)


def test_wrapper_checks_its_clip_norm_and_settings_at_construction() -> None:
    with pytest.raises(ConfigError):
        DPFedAvg(inner=FedAvg(), clip_norm=0.0, noise_multiplier=1.0, expected_nodes=2)
    with pytest.raises(ConfigError):
        DPFedAvg(inner=FedAvg(), clip_norm=1.0, noise_multiplier=1.0, expected_nodes=0)


def test_node_config_errors_name_the_missing_key_and_allowed_modes() -> None:
    with pytest.raises(ConfigError, match="dp_mode"):
        DPAggregator.from_node_config({})
    config = DPAggregator(noise_multiplier=1.0, expected_nodes=2).node_config(1.0) | {"dp_mode": "local"}
    with pytest.raises(ConfigError, match=r"\['central', 'distributed'\]"):
        DPAggregator.from_node_config(config)


def test_a_mismatched_sum_or_state_is_refused() -> None:
    dp = DPFedAvg(inner=FedAvg(), clip_norm=1.0, noise_multiplier=1.0, expected_nodes=2)
    current = _vector([0.0, 0.0])
    with pytest.raises(ValidationError):
        dp.aggregate_sum(1, current, DPContribution(_vector([0.0])), dp.initial_state(current))
    with pytest.raises(ValidationError):
        dp.aggregate_sum(1, current, DPContribution(current), Parameters((), ()))
    with pytest.raises(ValidationError):
        dp.aggregate_models(1, current, [], dp.initial_state(current))
