"""In-process federated simulation: the round loop of the coordinator without any network.

Each round every site fits from the global model, the results stream into a
:class:`~medfed.aggregation.mean.WeightedMean` (weighted by training examples), the strategy turns
the mean into the next global model, and the model is scored on every site's test split. It is
the reference the networked coordinator must match, and what ``benchmarks/utility_heart.py`` runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from medfed.aggregation.mean import WeightedMean
from medfed.aggregation.strategies import make_strategy
from medfed.core.errors import ValidationError
from medfed.core.params import Parameters
from medfed.core.records import Scalar, StrategySpec
from medfed.learn.base import TabularData, Task
from medfed.learn.tasks import LogisticRegressionTask


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundMetrics:
    """Scores of the global model after one round, on each site's test split."""

    round: int
    sites: dict[str, dict[str, float]]  # site -> {accuracy, auc, loss}
    train_loss: float  # example-weighted mean of the sites' local training losses

    @property
    def mean_accuracy(self) -> float:
        """Unweighted mean of the sites' test accuracies (FLamby's Fed-Heart-Disease metric)."""
        return float(np.mean([m["accuracy"] for m in self.sites.values()]))


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationResult:
    """Per-round metrics and the final global model."""

    rounds: tuple[RoundMetrics, ...]
    parameters: Parameters

    @property
    def final(self) -> RoundMetrics:
        """Metrics after the last round."""
        return self.rounds[-1]


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch on one CPU thread inside the block, then restore the previous count.

    Tabular models are tiny: with several intra-op threads each minibatch step costs about twice
    as long (synchronisation dominates), measured on a 2-core machine.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def derive_seed(seed: int, *keys: int) -> int:
    """An independent 32-bit seed for ``(seed, *keys)`` (e.g. round and site index)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def evaluate_sites(
    task: Task, params: Parameters, datasets: Mapping[str, TabularData], options: dict[str, Scalar]
) -> dict[str, dict[str, float]]:
    """``task.evaluate`` of ``params`` on every site's test split."""
    return {site: task.evaluate(params, data, options)[1] for site, data in datasets.items()}


def simulate(
    strategy_spec: StrategySpec,
    datasets: Mapping[str, TabularData],
    *,
    rounds: int,
    task_options: dict[str, Scalar],
    seed: int,
    task: Task | None = None,
) -> SimulationResult:
    """Run ``rounds`` federated rounds of ``task`` (default logistic regression) over ``datasets``.

    ``input_dim`` defaults to the datasets' feature count. Deterministic in ``seed``: site ``i``
    fits round ``r`` with seed ``derive_seed(seed, r, i)``.

    Raises
    ------
    ValidationError
        No sites, ``rounds < 1``, or sites with different feature counts.
    ConfigError, RegistryError
        From the strategy spec or the task options.
    """
    dims = {data.n_features for data in datasets.values()}
    if rounds < 1 or len(dims) != 1:
        raise ValidationError(f"need rounds >= 1 and sites with one feature count, got {rounds} rounds, {dims}")
    task = task if task is not None else LogisticRegressionTask()
    options: dict[str, Scalar] = {"input_dim": dims.pop(), **task_options}
    strategy = make_strategy(strategy_spec)
    params = task.init_parameters(options, derive_seed(seed))
    state = strategy.initial_state(params)
    history = []
    with single_threaded():
        for rnd in range(1, rounds + 1):
            config = {**options, **strategy.fit_config(rnd)}
            mean, loss = WeightedMean(params), 0.0
            for i, (site, data) in enumerate(datasets.items()):
                out = task.fit(params, data, config, derive_seed(seed, rnd, i))
                mean.add(out.parameters, out.num_examples, where=f"round {rnd}, site {site}")
                loss += out.num_examples * out.metrics.get("train_loss", float("nan"))
            params, state = strategy.aggregate(rnd, params, mean.result(), state)
            sites = evaluate_sites(task, params, datasets, options)
            history.append(RoundMetrics(round=rnd, sites=sites, train_loss=loss / mean.total_weight))
    return SimulationResult(rounds=tuple(history), parameters=params)


def pool(datasets: Mapping[str, TabularData]) -> TabularData:
    """All sites' train splits and test splits stacked (the non-federated 'pooled' baseline)."""
    parts = list(datasets.values())
    return TabularData(
        x_train=np.concatenate([d.x_train for d in parts]),
        y_train=np.concatenate([d.y_train for d in parts]),
        x_test=np.concatenate([d.x_test for d in parts]),
        y_test=np.concatenate([d.y_test for d in parts]),
        feature_names=parts[0].feature_names,
    )


def train_alone(
    data: TabularData, datasets: Mapping[str, TabularData], *, task_options: dict[str, Scalar], seed: int
) -> dict[str, dict[str, float]]:
    """Train one model on ``data`` alone (``task_options["local_steps"]`` steps, logistic
    regression) and score it on every site's test split: the local-only and pooled baselines."""
    task = LogisticRegressionTask()
    options: dict[str, Scalar] = {"input_dim": data.n_features, **task_options}
    with single_threaded():
        params = task.init_parameters(options, derive_seed(seed))
        fitted = task.fit(params, data, options, derive_seed(seed, 0)).parameters
        return evaluate_sites(task, fitted, datasets, options)
