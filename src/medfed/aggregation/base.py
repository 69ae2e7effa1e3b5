"""The strategy seam: one small protocol every aggregation strategy implements.

The coordinator streams node results into a :class:`~medfed.aggregation.mean.WeightedMean`
(O(model) memory, whatever the number of nodes) and hands the example-weighted mean of the
returned models to :meth:`Strategy.aggregate`, which returns the next global model. Strategies are
pure: values in, values out; their state is a :class:`Parameters` so it checkpoints like a model.
"""

from __future__ import annotations

from typing import Protocol

from medfed.core.params import Parameters
from medfed.core.records import Scalar


class Strategy(Protocol):
    """Server-side aggregation rule."""

    def fit_config(self, rnd: int) -> dict[str, Scalar]:
        """Extra task configuration for round ``rnd`` (e.g. FedProx's ``proximal_mu``)."""
        ...

    def initial_state(self, params: Parameters) -> Parameters:
        """Server optimiser state for a fresh job (empty for stateless strategies)."""
        ...

    def aggregate(
        self, rnd: int, current: Parameters, mean: Parameters, state: Parameters
    ) -> tuple[Parameters, Parameters]:
        """Next global model and state from the current model and the weighted mean of results."""
        ...
