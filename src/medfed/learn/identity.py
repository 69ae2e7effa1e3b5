"""The identity task without torch: a null task to measure transport and aggregation.

Same behaviour as :class:`medfed.learn.tasks.IdentityTask`, but this module imports only numpy
and medfed's torch-free modules, so a node process that runs it stays small (importing torch
costs every node process hundreds of MiB of resident memory, which matters with 50 node
processes on one machine in ``benchmarks/transport_speed.py``).
"""

from __future__ import annotations

import numpy as np

from medfed.core.params import Parameters
from medfed.core.records import Scalar
from medfed.learn.base import FitOutput, TabularData
from medfed.learn.options import IDENTITY_SPEC, parse_options

__all__ = ["IdentityTask"]


def _tensor_sizes(total: int, parts: int) -> list[int]:
    """``total`` split into ``min(parts, total)`` sizes that differ by at most one."""
    parts = min(parts, total)
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class IdentityTask:
    """Returns the parameters it receives: a null task to measure transport and aggregation.

    Options: ``n_params`` (total float32 scalars of :meth:`init_parameters`, split into
    ``n_tensors`` arrays), ``random_init`` (seeded normal values instead of zeros) and
    ``num_examples`` (the weight its results carry, default 1). The training options are
    accepted and ignored, so a job spec can switch between this task and a trainable one.
    """

    def init_parameters(self, options: dict[str, Scalar], seed: int) -> Parameters:
        """``n_params`` float32 scalars in ``min(n_tensors, n_params)`` arrays ``tensor_<i>``."""
        opts = parse_options(options, IDENTITY_SPEC, where="identity")
        sizes = _tensor_sizes(int(opts["n_params"]), int(opts["n_tensors"]))  # type: ignore[arg-type]  # checked ints
        rng = np.random.default_rng(seed)
        arrays = tuple(
            rng.standard_normal(size, dtype=np.float32) if opts["random_init"] else np.zeros(size, np.float32)
            for size in sizes
        )
        return Parameters.from_arrays(tuple(f"tensor_{i}" for i in range(len(sizes))), arrays)

    def fit(self, params: Parameters, data: TabularData, config: dict[str, Scalar], seed: int) -> FitOutput:
        """``params`` unchanged (no copy: they are read-only), weighted by ``num_examples``."""
        opts = parse_options(config, IDENTITY_SPEC, where="identity")
        return FitOutput(parameters=params, num_examples=int(opts["num_examples"]), metrics={})  # type: ignore[arg-type]  # checked int

    def evaluate(
        self, params: Parameters, data: TabularData, config: dict[str, Scalar]
    ) -> tuple[int, dict[str, float]]:
        """``(num_examples, {})``: there is no model to score."""
        opts = parse_options(config, IDENTITY_SPEC, where="identity")
        return int(opts["num_examples"]), {}  # type: ignore[arg-type]  # checked int
