"""DP-SGD in the tasks (Opacus): per-example clipping bounds every step, runs are reproducible."""

import numpy as np
import pytest

from medfed.core.errors import ConfigError, ValidationError
from medfed.core.params import Parameters
from medfed.learn.base import TabularData
from medfed.learn.tasks import LogisticRegressionTask, MLPTask


def _data(n: int = 64) -> TabularData:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 5)).astype(np.float32) * 10  # large inputs: large raw gradients
    y = (x[:, 0] > 0).astype(np.float32)
    return TabularData(x_train=x, y_train=y, x_test=x[:16], y_test=y[:16], feature_names=tuple("abcde"))


def _distance(a: Parameters, b: Parameters) -> float:
    return float(np.sqrt(sum(np.sum((x.astype(np.float64) - y) ** 2) for x, y in zip(a.arrays, b.arrays, strict=True))))


@pytest.mark.parametrize("task", [LogisticRegressionTask(), MLPTask()], ids=["logreg", "mlp"])
def test_clipping_bounds_how_far_a_step_moves(task: LogisticRegressionTask) -> None:
    data, steps, lr, clip, batch = _data(), 20, 0.1, 1e-3, 8
    opts = {"input_dim": 5, "local_steps": steps, "batch_size": batch, "lr": lr, "dp_clip_norm": clip,
            "dp_noise_multiplier": 1e-9}  # fmt: skip
    start = task.init_parameters(opts, seed=1)
    out = task.fit(start, data, opts, seed=2)
    # each step adds at most |B| clipped gradients of norm C, divided by the expected batch size;
    # |B| ≤ n, so the whole run moves at most steps · lr · C · n / batch
    assert 0 < _distance(start, out.parameters) <= steps * lr * clip * len(data.y_train) / batch
    plain = task.fit(start, data, {k: v for k, v in opts.items() if not k.startswith("dp_")}, seed=2)
    assert _distance(start, plain.parameters) > 10 * _distance(start, out.parameters)


def test_dp_sgd_is_reproducible_and_noise_changes_the_model() -> None:
    task, data = LogisticRegressionTask(), _data()
    opts = {"input_dim": 5, "local_steps": 10, "batch_size": 8, "lr": 0.1, "dp_noise_multiplier": 1.0}
    start = task.init_parameters(opts, seed=1)
    a, b = task.fit(start, data, opts, seed=3), task.fit(start, data, opts, seed=3)
    c = task.fit(start, data, opts, seed=4)
    assert a.parameters.allclose(b.parameters, atol=0, rtol=0)
    assert not a.parameters.allclose(c.parameters)


def test_fedprox_with_dp_sgd_is_refused() -> None:
    task = LogisticRegressionTask()
    opts = {"input_dim": 5, "dp_noise_multiplier": 1.0, "proximal_mu": 0.1}
    with pytest.raises(ValidationError, match="proximal term cannot be combined with DP-SGD"):
        task.fit(task.init_parameters(opts, seed=0), _data(), opts, seed=0)


@pytest.mark.parametrize("task", [LogisticRegressionTask(), MLPTask()], ids=["logreg", "mlp"])
def test_ghost_clipping_trains_the_same_model_as_per_example_hooks(task: LogisticRegressionTask) -> None:
    """Ghost clipping and Opacus's hooks (the default) clip the same per-example norms and draw the
    same noise from the same seed: the models agree; only how the norms are computed differs."""
    data = _data()
    opts = {"input_dim": 5, "local_steps": 10, "batch_size": 8, "lr": 0.1, "dp_noise_multiplier": 0.5,
            "dp_clip_norm": 0.01}  # fmt: skip
    start = task.init_parameters(opts, seed=1)
    ghost = task.fit(start, data, opts | {"dp_clipping": "ghost"}, seed=5)
    hooks = task.fit(start, data, opts | {"dp_clipping": "hooks"}, seed=5)
    assert ghost.parameters.allclose(hooks.parameters, atol=1e-6, rtol=1e-5)
    assert not ghost.parameters.allclose(start)


def test_an_unknown_clipping_mode_is_refused() -> None:
    task = LogisticRegressionTask()
    opts = {"input_dim": 5, "dp_noise_multiplier": 1.0, "dp_clipping": "fast"}
    with pytest.raises(ConfigError, match="dp_clipping must be one of \\['ghost', 'hooks'\\], got 'fast'"):
        task.fit(task.init_parameters({"input_dim": 5}, seed=0), _data(), opts, seed=0)
