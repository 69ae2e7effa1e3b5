"""Built-in tasks (entry points of group ``medfed.tasks``): logistic regression, MLP, identity.

Training is deterministic in ``seed``: initial weights and minibatch order come from a local
:class:`torch.Generator`, never from torch's global RNG. Parameters travel as named float arrays
and are loaded into a module through its ``state_dict`` (no pickle).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from medfed.core.errors import ValidationError
from medfed.core.params import Parameters
from medfed.core.records import Scalar
from medfed.learn.base import FitOutput, TabularData
from medfed.learn.identity import IdentityTask
from medfed.learn.metrics import accuracy, log_loss, roc_auc
from medfed.learn.options import DPClipping, OptimizerName, TrainOptions

__all__ = [
    "IdentityTask",  # torch-free, in its own module; re-exported for the ``identity`` entry point
    "LogisticRegressionTask",
    "MLPTask",
    "load_parameters",
    "parameters_from_module",
]


def parameters_from_module(module: nn.Module) -> Parameters:
    """Copy a module's ``state_dict`` into :class:`Parameters` (names = state-dict keys)."""
    state = module.state_dict()
    return Parameters.from_arrays(tuple(state), tuple(t.detach().cpu().numpy().copy() for t in state.values()))


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


def _linear(in_features: int, out_features: int) -> nn.Linear:
    """An uninitialised ``nn.Linear``: built on the meta device, so torch's global RNG is not
    drawn from; weights come from ``params`` or :func:`_uniform_init`."""
    return nn.Linear(in_features, out_features, device="meta").to_empty(device="cpu")


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
        for batch in torch.split(torch.randperm(n, generator=generator), opts.batch_size):
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
        if opts.dp_noise_multiplier > 0:
            return self._fit_dp_sgd(module, data, opts, seed)
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
            torch.autograd.backward(loss)
            optimizer.step()
        metrics = {"train_loss": float(np.mean(losses))} if losses else {}
        return FitOutput(parameters=parameters_from_module(module), num_examples=len(y), metrics=metrics)

    def _fit_dp_sgd(self, module: nn.Module, data: TabularData, opts: TrainOptions, seed: int) -> FitOutput:
        """DP-SGD (Abadi et al. 2016) through Opacus: Poisson-sampled batches (rate batch/n, as the
        accountant assumes), every example's gradient clipped to ``dp_clip_norm``, Gaussian noise
        of std ``dp_noise_multiplier * dp_clip_norm`` added to each step's sum.

        The noise comes from a ``torch.Generator`` seeded per task: reproducible, and *not* a
        cryptographically secure source (Opacus's ``secure_mode`` needs torchcsprng, which does not
        install here); see ``docs/privacy.md``.
        """
        if opts.proximal_mu > 0:
            raise ValidationError("FedProx's proximal term cannot be combined with DP-SGD", where=self._name)
        gen = torch.Generator().manual_seed(seed)
        x, y = _tensor(data.x_train), _tensor(data.y_train)
        rate = min(1.0, opts.batch_size / len(y))
        optim_cls = torch.optim.Adam if opts.optimizer is OptimizerName.ADAM else torch.optim.SGD
        if opts.dp_clipping is DPClipping.GHOST:
            step, gsm = _ghost_dp_step(module, optim_cls, opts, gen)
        else:
            step, gsm = _hooks_dp_step(module, optim_cls, opts, gen)
        losses = []
        for _ in range(opts.local_steps):
            idx = (torch.rand(len(y), generator=gen) < rate).nonzero().squeeze(1)
            # the input asks for a gradient so that Opacus's full backward hooks see one: without
            # it torch warns on every step ("Full backward hook is firing…"), and warning filters
            # are process-global, not something a task may change while other threads run
            loss = step(x[idx].requires_grad_(True), y[idx])  # an empty Poisson batch: noise only
            if loss is not None:
                losses.append(loss / len(idx))
        metrics = {"train_loss": float(np.mean(losses))} if losses else {}
        fitted = parameters_from_module(gsm)
        return FitOutput(parameters=fitted, num_examples=len(y), metrics=metrics)

    def predict_logits(self, params: Parameters, data: TabularData, config: dict[str, Scalar]) -> np.ndarray:
        """Logits of the model ``params`` on the test split."""
        module = self._prepared(params, data, self._options(config), where=f"{self._name}.evaluate")
        with torch.no_grad():
            logits: np.ndarray = module(_tensor(data.x_test)).squeeze(-1).numpy()
        return logits

    def evaluate(
        self, params: Parameters, data: TabularData, config: dict[str, Scalar]
    ) -> tuple[int, dict[str, float]]:
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
        return _linear(input_dim, 1)


class MLPTask(_TorchBinaryTask):
    """One hidden ReLU layer of ``hidden`` units (default 16), then a logit."""

    _with_hidden = True
    _name = "mlp"

    def _module(self, input_dim: int, opts: TrainOptions) -> nn.Module:
        layers = OrderedDict(
            hidden=_linear(input_dim, opts.hidden),
            act=nn.ReLU(),
            out=_linear(opts.hidden, 1),
        )
        return nn.Sequential(layers)


#: One DP-SGD step on a (possibly empty) Poisson batch; returns the summed loss, or None if empty.
_DPStep = Callable[[torch.Tensor, torch.Tensor], float | None]


def _hooks_dp_step(
    module: nn.Module,
    optim_cls: type[torch.optim.SGD] | type[torch.optim.Adam],
    opts: TrainOptions,
    gen: torch.Generator,
) -> tuple[_DPStep, nn.Module]:
    """DP-SGD with Opacus's per-example gradients from hooks (every one materialised)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    gsm = GradSampleModule(module, loss_reduction="sum")
    optimizer = DPOptimizer(
        optim_cls(gsm.parameters(), lr=opts.lr),
        noise_multiplier=opts.dp_noise_multiplier,
        max_grad_norm=opts.dp_clip_norm,
        expected_batch_size=opts.batch_size,
        loss_reduction="sum",
        generator=gen,
    )

    def step(batch: torch.Tensor, labels: torch.Tensor) -> float | None:
        optimizer.zero_grad(set_to_none=True)
        loss = None
        if len(batch) == 0:
            for p in gsm.parameters():
                p.grad_sample = torch.zeros((0, *p.shape))
        else:
            out = nn.functional.binary_cross_entropy_with_logits(gsm(batch).squeeze(-1), labels, reduction="sum")
            loss = float(out.detach())
            torch.autograd.backward(out)
        optimizer.step()
        return loss

    return step, gsm._module


def _ghost_dp_step(
    module: nn.Module,
    optim_cls: type[torch.optim.SGD] | type[torch.optim.Adam],
    opts: TrainOptions,
    gen: torch.Generator,
) -> tuple[_DPStep, nn.Module]:
    """DP-SGD with Opacus's ghost clipping: per-example gradient norms from activations and
    output gradients, a second backward pass on the clipped loss, no per-example gradients stored."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    gsm = GradSampleModuleFastGradientClipping(
        module, max_grad_norm=opts.dp_clip_norm, use_ghost_clipping=True, loss_reduction="sum"
    )
    optimizer = DPOptimizerFastGradientClipping(
        optim_cls(gsm.parameters(), lr=opts.lr),
        noise_multiplier=opts.dp_noise_multiplier,
        max_grad_norm=opts.dp_clip_norm,
        expected_batch_size=opts.batch_size,
        loss_reduction="sum",
        generator=gen,
    )
    criterion = DPLossFastGradientClipping(gsm, optimizer, nn.BCEWithLogitsLoss(reduction="sum"), loss_reduction="sum")

    def step(batch: torch.Tensor, labels: torch.Tensor) -> float | None:
        optimizer.zero_grad(set_to_none=True)
        loss = None
        if len(batch) == 0:
            for p in gsm.parameters():
                p.grad = torch.zeros_like(p)
        else:
            out = criterion(gsm(batch).squeeze(-1), labels)
            loss = float(out.detach().sum()) if isinstance(out, torch.Tensor) else float(out.item())
            out.backward()
        optimizer.step()
        return loss

    return step, gsm._module
