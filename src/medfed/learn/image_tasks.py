"""A small convolutional network for image datasets (entry point ``cnn`` of group ``medfed.tasks``).

The node hands an image dataset to a task as a :class:`TabularData` whose rows are images flattened
in C order and whose ``image_shape`` says (channels, rows, columns) (see
:mod:`medfed.node.media_data`). :class:`CNNTask` reshapes them and trains two 3×3 convolutions
(``hidden`` channels, ReLU, 2×2 max-pooling), a global average pool and a logit. The global pool
makes the parameters independent of the image size, so the coordinator can initialise the model
without knowing it. Training, FedProx, DP-SGD (Opacus supports ``Conv2d``) and evaluation are the
same as the tabular tasks' (:class:`medfed.learn.tasks._TorchBinaryTask`): the same
:class:`~medfed.core.params.Parameters` and round protocol.

It is a plumbing check that images reach a federated model, not a clinical model.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from medfed.core.errors import ValidationError
from medfed.core.params import Parameters
from medfed.core.records import Scalar
from medfed.learn.base import TabularData
from medfed.learn.options import TrainOptions
from medfed.learn.tasks import _TorchBinaryTask, load_parameters, parameters_from_module

__all__ = ["CNNTask"]

#: The shape a model is built with when no image is at hand (the parameters do not depend on it).
_ANY_SHAPE = (1, 8, 8)


class _Unflatten(nn.Module):
    """Rows of flattened images back to (n, channels, rows, columns)."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """An uninitialised 3×3 convolution (built on the meta device: torch's global RNG is not drawn)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, device="meta").to_empty(device="cpu")


def _network(shape: tuple[int, int, int], hidden: int) -> nn.Module:
    linear = nn.Linear(hidden, 1, device="meta").to_empty(device="cpu")
    layers = OrderedDict(
        image=_Unflatten(shape),
        conv1=_conv(shape[0], hidden),
        act1=nn.ReLU(),
        pool1=nn.MaxPool2d(2, ceil_mode=True),
        conv2=_conv(hidden, hidden),
        act2=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1),
        flat=nn.Flatten(),
        out=linear,
    )
    return nn.Sequential(layers)


def _init(module: nn.Module, generator: torch.Generator) -> None:
    """torch's default init bound, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from ``generator``."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d | nn.Linear):
                fan_in = int(np.prod(layer.weight.shape[1:]))
                bound = 1.0 / float(np.sqrt(fan_in))
                layer.weight.uniform_(-bound, bound, generator=generator)
                if layer.bias is not None:
                    layer.bias.uniform_(-bound, bound, generator=generator)


class CNNTask(_TorchBinaryTask):
    """Two 3×3 convolutions of ``hidden`` channels (default 16), global average pool, a logit."""

    _with_hidden = True
    _name = "cnn"

    def _module(self, input_dim: int, opts: TrainOptions) -> nn.Module:
        return _network(_ANY_SHAPE, opts.hidden)

    def _prepared(self, params: Parameters, data: TabularData, opts: TrainOptions, where: str) -> nn.Module:
        if data.image_shape is None:
            raise ValidationError('the cnn task needs an image dataset (format = "dicom"), got a table', where=where)
        module = _network(data.image_shape, opts.hidden)
        load_parameters(module, params, where=where)
        return module

    def init_parameters(self, options: dict[str, Scalar], seed: int) -> Parameters:
        """Initial model, deterministic in ``seed``; ``input_dim`` is not needed (nor checked)."""
        opts = self._options(options)
        module = _network(_ANY_SHAPE, opts.hidden)
        _init(module, torch.Generator().manual_seed(seed))
        return parameters_from_module(module)
