"""Tasks: training, determinism, metrics, options, parameter round-trip, registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfed.core.errors import ConfigError, RegistryError, ValidationError
from medfed.core.params import Parameters
from medfed.learn.base import TabularData
from medfed.learn.registry import load_task, task_names
from medfed.learn.tasks import IdentityTask, LogisticRegressionTask, MLPTask, load_parameters, parameters_from_module

TRAINABLE = [LogisticRegressionTask, MLPTask]


def blobs(n: int = 120, d: int = 5, seed: int = 0) -> TabularData:
    rng = np.random.default_rng(seed)
    y = (rng.random(2 * n) < 0.5).astype(np.float32)
    x = (rng.standard_normal((2 * n, d)) + 1.5 * (2 * y[:, None] - 1) * np.eye(d)[0]).astype(np.float32)
    names = tuple(f"f{i}" for i in range(d))
    return TabularData(x_train=x[:n], y_train=y[:n], x_test=x[n:], y_test=y[n:], feature_names=names)


@pytest.mark.parametrize("cls", TRAINABLE)
def test_fit_reduces_the_loss(cls: type) -> None:
    task, data = cls(), blobs()
    params = task.init_parameters({"input_dim": 5}, 0)

    out = task.fit(params, data, {"local_steps": 200, "lr": 0.05}, 1)

    assert task.evaluate(out.parameters, data, {})[1]["loss"] < task.evaluate(params, data, {})[1]["loss"] - 0.1
    assert out.num_examples == 120 and out.parameters.spec() == params.spec()
    assert task.evaluate(out.parameters, data, {})[1]["accuracy"] > 0.8


@pytest.mark.parametrize("cls", TRAINABLE)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_is_deterministic_in_the_seed(cls: type, optimizer: str) -> None:
    task, data = cls(), blobs()
    config = {"local_steps": 30, "optimizer": optimizer}

    a = task.fit(task.init_parameters({"input_dim": 5}, 3), data, config, 9).parameters
    b = task.fit(task.init_parameters({"input_dim": 5}, 3), data, config, 9).parameters
    c = task.fit(task.init_parameters({"input_dim": 5}, 3), data, config, 10).parameters

    assert a.allclose(b, atol=0, rtol=0)
    assert not a.allclose(c, atol=0, rtol=0)
    assert not task.init_parameters({"input_dim": 5}, 3).allclose(task.init_parameters({"input_dim": 5}, 4))


def test_torch_global_rng_is_left_alone() -> None:
    task, data = MLPTask(), blobs()
    before = torch.random.get_rng_state()

    task.fit(task.init_parameters({"input_dim": 5}, 0), data, {"local_steps": 5}, 0)

    assert torch.equal(before, torch.random.get_rng_state())


def test_input_params_are_not_changed_by_fit() -> None:
    task, data = LogisticRegressionTask(), blobs()
    params = task.init_parameters({"input_dim": 5}, 0)
    before = [a.copy() for a in params.arrays]

    task.fit(params, data, {"local_steps": 10}, 0)

    assert all(np.array_equal(a, b) for a, b in zip(before, params.arrays, strict=True))


def test_proximal_term_keeps_the_model_near_the_global_one() -> None:
    task, data = LogisticRegressionTask(), blobs()
    start = task.init_parameters({"input_dim": 5}, 0)

    def drift(mu: float) -> float:
        out = task.fit(start, data, {"local_steps": 100, "lr": 0.1, "proximal_mu": mu}, 0).parameters
        return float(sum(np.sum((a - b) ** 2) for a, b in zip(out.arrays, start.arrays, strict=True)))

    assert drift(10.0) < 0.5 * drift(0.0)


def test_evaluate_reports_sane_metrics() -> None:
    task, data = LogisticRegressionTask(), blobs()
    params = task.fit(task.init_parameters({"input_dim": 5}, 0), data, {"local_steps": 100}, 0).parameters

    n, metrics = task.evaluate(params, data, {})

    assert n == 120 and set(metrics) == {"accuracy", "auc", "loss"}
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.5 < metrics["auc"] <= 1.0 and metrics["loss"] > 0


def test_mlp_hidden_option_sets_the_width() -> None:
    params = MLPTask().init_parameters({"input_dim": 5, "hidden": 7}, 0)

    assert params.spec()[0] == ("hidden.weight", "float32", (7, 5))


def test_input_dim_mismatch_names_both_numbers() -> None:
    task, data = LogisticRegressionTask(), blobs(d=5)
    params = task.init_parameters({"input_dim": 5}, 0)

    with pytest.raises(ValidationError, match=r"input_dim is 7 .* 5 features"):
        task.fit(params, data, {"input_dim": 7}, 0)


def test_parameters_of_another_shape_are_refused() -> None:
    task = LogisticRegressionTask()

    with pytest.raises(ValidationError, match="shape"):
        task.evaluate(task.init_parameters({"input_dim": 4}, 0), blobs(d=5), {})


def test_bad_options_are_all_reported() -> None:
    task = LogisticRegressionTask()
    config = {"learning_rate": 0.1, "local_steps": 0, "optimizer": "rmsprop", "lr": "fast", "hidden": 4}

    with pytest.raises(ConfigError) as info:
        task.fit(task.init_parameters({"input_dim": 5}, 0), blobs(), config, 0)  # type: ignore[arg-type]

    message = str(info.value)
    assert "5 problem" in message
    assert all(word in message for word in ("learning_rate", "local_steps", "rmsprop", "lr", "hidden"))


def test_init_without_input_dim_is_refused() -> None:
    with pytest.raises(ValidationError, match="input_dim"):
        LogisticRegressionTask().init_parameters({}, 0)


@pytest.mark.parametrize("cls", TRAINABLE)
def test_parameters_round_trip_through_a_module(cls: type) -> None:
    task = cls()
    params = task.init_parameters({"input_dim": 3}, 5)
    module = task._module(3, task._options({}))

    load_parameters(module, params)

    assert parameters_from_module(module).allclose(params, atol=0, rtol=0)
    assert list(module.state_dict()) == list(params.names)


def test_loading_a_nan_parameter_is_refused() -> None:
    task = LogisticRegressionTask()
    params = task.init_parameters({"input_dim": 3}, 0)
    bad = Parameters.from_numpy({"weight": np.full((1, 3), np.nan, np.float32), "bias": params["bias"]})

    with pytest.raises(ValidationError, match="non-finite"):
        task.evaluate(bad, blobs(d=3), {})


def test_identity_task_returns_its_input() -> None:
    task = IdentityTask()
    params = task.init_parameters({"n_params": 10, "n_tensors": 3, "random_init": True}, 1)

    out = task.fit(params, blobs(), {"num_examples": 7, "proximal_mu": 0.1}, 0)

    assert out.parameters is params and out.num_examples == 7
    assert [a.size for a in params.arrays] == [4, 3, 3] and params.arrays[0].dtype == np.float32
    assert task.init_parameters({"n_params": 10, "n_tensors": 3, "random_init": True}, 1).allclose(
        params, atol=0, rtol=0
    )
    assert not np.any(task.init_parameters({"n_params": 2}, 1).arrays[0])
    assert task.evaluate(params, blobs(), {}) == (1, {})


def test_registry_loads_the_installed_tasks() -> None:
    assert {"logistic_regression", "mlp", "identity"} <= set(task_names())
    assert isinstance(load_task("mlp"), MLPTask)


def test_registry_lists_installed_names_for_an_unknown_task() -> None:
    with pytest.raises(RegistryError, match=r"unknown task 'cox'.*logistic_regression"):
        load_task("cox")
