"""medfed.aggregation: pure server-side aggregation (streaming weighted mean and strategies)."""

from medfed.aggregation.base import Strategy
from medfed.aggregation.mean import WeightedMean
from medfed.aggregation.strategies import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedProx,
    FedYogi,
    StrategyName,
    make_strategy,
)

__all__ = [
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedProx",
    "FedYogi",
    "Strategy",
    "StrategyName",
    "WeightedMean",
    "make_strategy",
]
