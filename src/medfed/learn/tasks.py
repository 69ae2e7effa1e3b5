"""Built-in tasks (entry points of group ``medfed.tasks``): logistic regression, MLP, identity.

Training is deterministic in ``seed``: initial weights and minibatch order come from a local
:class:`torch.Generator`, never from torch's global RNG. Parameters travel as named float arrays
and are loaded into a module through its ``state_dict`` (no pickle).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from medfed.core.errors import ValidationError
from medfed.core.params import Parameters
from medfed.core.records import Scalar
from medfed.learn.base import FitOutput, TabularData
from medfed.learn.metrics import accuracy, log_loss, roc_auc
from medfed.learn.options import IDENTITY_SPEC, OptimizerName, TrainOptions, parse_options


def parameters_from_module(module: nn.Module) -> Parameters:
    """Copy a module's ``state_dict`` into :class:`Parameters` (names = state-dict keys)."""
    state = module.state_dict()
    return Parameters.from_arrays(
        tuple(state), tuple(t.detach().cpu().numpy().copy() for t in state.values())
    )


def load_parameters(module: nn.Module, params: Parameters, *, where: str = "") -> None:
    """Load ``params`` into ``module`` after checking names, shapes and finiteness.

    Raises
    ------
    ValidationError
        ``params`` does not fit the module; every mismatch is listed.
    """
    parameters_from_module(module).check_like(params, where=where)
    # np.array copies: the arrays of a Parameters are read-only and torch wants writable memory.
    state = OrderedDict((n, torch.from_numpy(np.array(a, dtype=np.float32))) for n, a in params)
    module.load_state_dict(state, strict=True)


def _uniform_init(module: nn.Module, generator: torch.Generator) -> None:
    """torch's default ``nn.Linear`` init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from ``generator``."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                bound = 1.0 / float(np.sqrt(layer.in_features))
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)


def _batches(n: int, opts: TrainOptions, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """``opts.local_steps`` minibatch index tensors, reshuffled each epoch (like a DataLoader)."""
    steps = 0
    while True:
        for batch in torch.randperm(n, generator=generator).split(opts.batch_size):
            if steps == opts.local_steps:
                return
            steps += 1
            yield batch


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))


class _TorchBinaryTask:
    """Shared fit/evaluate of a binary classifier trained with BCE-with-logits."""

    _with_hidden = False
    _name = "task"

    def _module(self, input_dim: int, opts: TrainOptions) -> nn.Module:
        raise NotImplementedError  # each task builds its network

    def _options(self, config: dict[str, Scalar]) -> TrainOptions:
        return TrainOptions.parse(config, with_hidden=self._with_hidden, where=self._name)

    def _prepared(self, params: Parameters, data: TabularData, opts: TrainOptions, where: str) -> nn.Module:
        if opts.input_dim is not None and opts.input_dim != data.n_features:
            raise ValidationError(
                f"input_dim is {opts.input_dim} in the task options but the dataset has {data.n_features} features",
                where=where,
            )
        module = self._module(data.n_features, opts)
        load_parameters(module, params, where=where)
        return module

    def init_parameters(self, options: dict[str, Scalar], seed: int) -> Parameters:
        """Initial model for ``options["input_dim"]`` features, deterministic in ``seed``."""
        opts = self._options(options)
        if opts.input_dim is None:
            raise ValidationError("input_dim is required to initialise the model", where=self._name)
        module = self._module(opts.input_dim, opts)
        _uniform_init(module, torch.Generator().manual_seed(seed))
        return parameters_from_module(module)

    def fit(self, params: Parameters, data: TabularData, config: dict[str, Scalar], seed: int) -> FitOutput:
        """``local_steps`` minibatch updates from ``params`` on the train split.

        With ``proximal_mu > 0`` the loss gains FedProx's ``mu/2 * ||w - w_global||**2``.
        """
        opts = self._options(config)
        module = self._prepared(params, data, opts, where=f"{self._name}.fit")
        anchor = [p.detach().clone() for p in module.parameters()]
        x, y = _tensor(data.x_train), _tensor(data.y_train)
        optim_cls = torch.optim.Adam if opts.optimizer is OptimizerName.ADAM else torch.optim.SGD
        optimizer = optim_cls(module.parameters(), lr=opts.lr)
        losses = []
        for idx in _batches(len(y), opts, torch.Generator().manual_seed(seed)):
            optimizer.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(module(x[idx]).squeeze(-1), y[idx])
            losses.append(float(loss.detach()))
            if opts.proximal_mu > 0:
                drift = sum(((p - a) ** 2).sum() for p, a in zip(module.parameters(), anchor, strict=True))
                loss = loss + opts.proximal_mu / 2.0 * drift
            loss.backward()
            optimizer.step()
        metrics = {"train_loss": float(np.mean(losses))} if losses else {}
        return FitOutput(parameters=parameters_from_module(module), num_examples=len(y), metrics=metrics)

    def predict_logits(self, params: Parameters, data: TabularData, config: dict[str, Scalar]) -> np.ndarray:
        """Logits of the model ``params`` on the test split."""
        module = self._prepared(params, data, self._options(config), where=f"{self._name}.evaluate")
        with torch.no_grad():
            return module(_tensor(data.x_test)).squeeze(-1).numpy()

    def evaluate(self, params: Parameters, data: TabularData, config: dict[str, Scalar]) -> tuple[int, dict[str, float]]:
        """(test size, {accuracy, auc, loss}) of ``params`` on the test split.

        ``auc`` is NaN when the test split holds a single class (it is undefined there).
        """
        logits = self.predict_logits(params, data, config)
        y = data.y_test.astype(np.float64)
        prob = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        return len(y), {"accuracy": accuracy(y, prob), "auc": roc_auc(y, logits), "loss": log_loss(y, logits)}


class LogisticRegressionTask(_TorchBinaryTask):
    """Logistic regression: ``Linear(input_dim, 1)`` trained with BCE-with-logits."""

    _name = "logistic_regression"

    def _module(self, input_dim: int, opts: TrainOptions) -> nn.Module:
        return nn.utils.skip_init(nn.Linear, input_dim, 1)  # weights come from params or _uniform_init


class MLPTask(_TorchBinaryTask):
    """One hidden ReLU layer of ``hidden`` units (default 16), then a logit."""

    _with_hidden = True
    _name = "mlp"

    def _module(self, input_dim: int, opts: TrainOptions) -> nn.Module:
        layers = OrderedDict(
            hidden=nn.utils.skip_init(nn.Linear, input_dim, opts.hidden),
            act=nn.ReLU(),
            out=nn.utils.skip_init(nn.Linear, opts.hidden, 1),
        )
        return nn.Sequential(layers)


class IdentityTask:
    """Returns the parameters it receives: a null task to measure transport and aggregation.

    Options: ``n_params`` (total float32 scalars of :meth:`init_parameters`, split into
    ``n_tensors`` arrays), ``random_init`` (seeded normal values instead of zeros) and
    ``num_examples`` (the weight its results carry, default 1).
    """

    def init_parameters(self, options: dict[str, Scalar], seed: int) -> Parameters:
        """``n_params`` float32 scalars in ``min(n_tensors, n_params)`` arrays ``tensor_<i>``."""
        opts = parse_options(options, IDENTITY_SPEC, where="identity")
        total, parts = int(opts["n_params"]), int(opts["n_tensors"])  # type: ignore[arg-type]  # checked ints
        parts = min(parts, total)
        sizes = [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
        rng = np.random.default_rng(seed)
        arrays = tuple(
            rng.standard_normal(size, dtype=np.float32) if opts["random_init"] else np.zeros(size, np.float32)
            for size in sizes
        )
        return Parameters.from_arrays(tuple(f"tensor_{i}" for i in range(parts)), arrays)

    def fit(self, params: Parameters, data: TabularData, config: dict[str, Scalar], seed: int) -> FitOutput:
        """``params`` unchanged, weighted by ``num_examples``."""
        opts = parse_options(config, IDENTITY_SPEC, where="identity")
        return FitOutput(parameters=params, num_examples=int(opts["num_examples"]), metrics={})  # type: ignore[arg-type]  # checked int

    def evaluate(self, params: Parameters, data: TabularData, config: dict[str, Scalar]) -> tuple[int, dict[str, float]]:
        """``(num_examples, {})``: there is no model to score."""
        opts = parse_options(config, IDENTITY_SPEC, where="identity")
        return int(opts["num_examples"]), {}  # type: ignore[arg-type]  # checked int
