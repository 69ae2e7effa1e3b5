"""medfed.aggregation: pure server-side aggregation (streaming weighted mean, strategies, robust
rules and anomaly detection)."""

from medfed.aggregation.anomaly import AnomalyConfig, AnomalyFlag, AnomalyRecord, detect_anomalies
from medfed.aggregation.base import Strategy
from medfed.aggregation.mean import WeightedMean
from medfed.aggregation.robust import (
    RobustOptions,
    RobustRule,
    check_secure_aggregation,
    check_tolerance,
    clip_update,
    krum_select,
    robust_aggregate,
)
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
    "AnomalyConfig",
    "AnomalyFlag",
    "AnomalyRecord",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedProx",
    "FedYogi",
    "RobustOptions",
    "RobustRule",
    "Strategy",
    "StrategyName",
    "WeightedMean",
    "check_secure_aggregation",
    "check_tolerance",
    "clip_update",
    "detect_anomalies",
    "krum_select",
    "make_strategy",
    "robust_aggregate",
]
