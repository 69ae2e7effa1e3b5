"""A federated run with malicious nodes, aggregated by FedAvg or one of medfed's robust rules.

The round loop of :func:`medfed.learn.simulate.simulate` (plain FedAvg server step: the aggregate
becomes the next global model), with three changes: the malicious nodes replace their update by an
attack (``_poison_attacks.py``), every node's update goes through
:func:`medfed.aggregation.anomaly.detect_anomalies`, and the aggregate is
:class:`~medfed.aggregation.mean.WeightedMean` (FedAvg) or
:func:`~medfed.aggregation.robust.robust_aggregate`. The model is medfed's
:class:`~medfed.learn.tasks.LogisticRegressionTask`, trained with torch at every node.

Norm bounding needs a bound chosen without trusting any one node: each round it is the median of
that round's update norms (as a coordinator can compute from what it receives; an honest majority
keeps it honest).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

import _poison_attacks as pa  # benchmarks/ is on sys.path when a script or the test runs
from medfed.aggregation.anomaly import detect_anomalies
from medfed.aggregation.mean import WeightedMean
from medfed.aggregation.robust import RobustOptions, RobustRule, check_tolerance, robust_aggregate
from medfed.core.errors import ConfigError
from medfed.core.params import Parameters
from medfed.core.records import Scalar
from medfed.data.heart import load_fed_heart_disease
from medfed.learn.base import TabularData
from medfed.learn.simulate import derive_seed, pool, single_threaded
from medfed.learn.tasks import LogisticRegressionTask

#: fbs, restecg_1, restecg_2 of Fed-Heart-Disease's 13 features; target "no heart disease".
HEART_TRIGGER = pa.Trigger(features=(4, 11, 12), value=3.0, target=0.0)


class Aggregator(enum.StrEnum):
    """FedAvg or one of medfed's robust rules (same values as :class:`RobustRule`)."""

    FEDAVG = "fedavg"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed_mean"
    KRUM = "krum"
    MULTI_KRUM = "multi_krum"
    NORM_BOUNDED = "norm_bounded"


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    """Who trains on what, who is malicious, where the global model is scored, and how long."""

    name: str
    nodes: Mapping[str, TabularData]  # each node's training rows (its test split is not used)
    malicious: tuple[str, ...]
    test: TabularData  # the global model is scored on this test split
    task_options: Mapping[str, Scalar]
    rounds: int

    def __post_init__(self) -> None:
        unknown = [m for m in self.malicious if m not in self.nodes]
        if unknown or not self.malicious or self.rounds < 1:
            raise ValueError(f"{self.name}: malicious nodes {unknown} unknown, none, or rounds < 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """The global model after the last round, and what detection saw over all rounds."""

    clean_accuracy: float  # accuracy on the clean test rows
    backdoor_success: float  # triggered test rows (true label != target) classified as the target
    flagged_malicious: float  # fraction of (malicious node, round) updates the detector flagged
    flagged_honest: float  # same for honest nodes (false positives)
    refused: str = ""  # the ConfigError of an aggregator that cannot tolerate the malicious nodes


def setting_a(*, rounds: int = 15, malicious: str = "cleveland") -> Setting:
    """The four real Fed-Heart-Disease hospitals, one malicious; scored on all four test splits."""
    sites = load_fed_heart_disease()
    return Setting(
        name=f"A: 4 hospitals, 1 malicious ({malicious})",
        nodes=sites,
        malicious=(malicious,),
        test=pool(sites),
        task_options={"local_steps": 25, "batch_size": 8, "optimizer": "sgd", "lr": 0.02},
        rounds=rounds,
    )


def setting_b(*, n_nodes: int = 50, n_malicious: int = 10, rounds: int = 15, seed: int = 0) -> Setting:
    """The pooled Fed-Heart-Disease training rows shuffled into ``n_nodes`` nodes of about equal size,
    ``n_malicious`` of them (chosen at random) malicious; scored on the pooled test splits."""
    pooled = pool(load_fed_heart_disease())
    rng = np.random.default_rng(derive_seed(seed, 7))
    parts = np.array_split(rng.permutation(len(pooled.y_train)), n_nodes)
    empty = np.zeros((0, pooled.n_features), dtype=np.float32)
    nodes = {
        f"node{i:02d}": TabularData(
            x_train=pooled.x_train[idx],
            y_train=pooled.y_train[idx],
            x_test=empty,
            y_test=np.zeros(0, dtype=np.float32),
            feature_names=pooled.feature_names,
        )
        for i, idx in enumerate(parts)
    }
    bad = tuple(sorted(f"node{i:02d}" for i in rng.choice(n_nodes, size=n_malicious, replace=False)))
    return Setting(
        name=f"B: {n_nodes} nodes, {n_malicious} malicious",
        nodes=nodes,
        malicious=bad,
        test=pooled,
        task_options={"local_steps": 5, "batch_size": 16, "optimizer": "sgd", "lr": 0.1},
        rounds=rounds,
    )


def robust_options(setting: Setting, aggregator: Aggregator, norm_bound: float = 1.0) -> RobustOptions:
    """Options declaring the setting's number of malicious nodes; trimmed mean trims exactly f/n."""
    n, f = len(setting.nodes), len(setting.malicious)
    return RobustOptions(byzantine=f, trim_fraction=f / n, norm_bound=norm_bound)


def _malicious_updates(
    attack: pa.Attack, clean: dict[str, pa.FloatArray], backdoored: dict[str, pa.FloatArray], rngs: dict[str, int]
) -> dict[str, pa.FloatArray]:
    bad = list(backdoored) if attack.is_backdoor else list(rngs)
    n, f = len(clean), len(bad)
    if attack is pa.Attack.SIGN_FLIP:
        return {s: pa.sign_flip(clean[s]) for s in bad}
    if attack is pa.Attack.SCALING:
        return {s: pa.scaling(clean[s], np.random.default_rng(rngs[s])) for s in bad}
    if attack is pa.Attack.BACKDOOR:
        return {s: pa.boosted(backdoored[s], n_nodes=n, n_malicious=f) for s in bad}
    shift = np.mean([backdoored[s] - clean[s] for s in bad], axis=0)
    shared = pa.norm_matched(shift, [u for s, u in clean.items() if s not in backdoored])
    return {s: shared for s in bad}


def _round_updates(
    setting: Setting, attack: pa.Attack, params: Parameters, rnd: int, seed: int
) -> dict[str, pa.FloatArray]:
    task = LogisticRegressionTask()
    options = {"input_dim": setting.test.n_features, **setting.task_options}
    clean: dict[str, pa.FloatArray] = {}
    backdoored: dict[str, pa.FloatArray] = {}
    for i, (site, data) in enumerate(setting.nodes.items()):
        clean[site] = pa.flatten(task.fit(params, data, options, derive_seed(seed, rnd, i)).parameters, params)
        if attack.is_backdoor and site in setting.malicious:
            fitted = task.fit(params, pa.poisoned_data(data, HEART_TRIGGER), options, derive_seed(seed, rnd, i, 1))
            backdoored[site] = pa.flatten(fitted.parameters, params)
    if attack is pa.Attack.NONE:
        return clean
    rngs = {s: derive_seed(seed, rnd, i, 2) for i, s in enumerate(setting.nodes) if s in setting.malicious}
    return {**clean, **_malicious_updates(attack, clean, backdoored, rngs)}


def _aggregate(
    setting: Setting, aggregator: Aggregator, params: Parameters, updates: dict[str, pa.FloatArray]
) -> Parameters:
    results = [(pa.unflatten(u, params), float(len(setting.nodes[s].y_train))) for s, u in updates.items()]
    if aggregator is Aggregator.FEDAVG:
        mean = WeightedMean(params)
        for model, weight in results:
            mean.add(model, weight)
        return mean.result()
    bound = float(np.median(pa.update_norms(list(updates.values()))))
    options = robust_options(setting, aggregator, norm_bound=max(bound, 1e-12))
    return robust_aggregate(RobustRule(aggregator.value), results, options=options, reference=params)


def run(setting: Setting, attack: pa.Attack, aggregator: Aggregator, *, seed: int) -> Outcome:
    """Train ``setting.rounds`` rounds under ``attack`` and score the final global model.

    An aggregator that cannot tolerate the setting's malicious nodes is not run: the outcome is NaN
    with ``refused`` holding :func:`check_tolerance`'s message.
    """
    if aggregator is not Aggregator.FEDAVG:
        try:
            check_tolerance(aggregator.value, len(setting.nodes), robust_options(setting, aggregator))
        except ConfigError as exc:
            nan = float("nan")
            return Outcome(
                clean_accuracy=nan, backdoor_success=nan, flagged_malicious=nan, flagged_honest=nan, refused=str(exc)
            )
    task = LogisticRegressionTask()
    options = {"input_dim": setting.test.n_features, **setting.task_options}
    params = task.init_parameters(options, derive_seed(seed))
    flagged = {True: 0, False: 0}
    with single_threaded():
        for rnd in range(1, setting.rounds + 1):
            updates = _round_updates(setting, attack, params, rnd, seed)
            models = [(s, pa.unflatten(u, params)) for s, u in updates.items()]
            for record in detect_anomalies(rnd, models, reference=params):
                flagged[record.site in setting.malicious] += record.flagged
            params = _aggregate(setting, aggregator, params, updates)
        clean_logits = task.predict_logits(params, setting.test, options)
        bd_logits = task.predict_logits(params, pa.triggered_test(setting.test, HEART_TRIGGER), options)
    n_bad = len(setting.malicious) * setting.rounds
    n_good = (len(setting.nodes) - len(setting.malicious)) * setting.rounds
    return Outcome(
        clean_accuracy=float(np.mean((clean_logits >= 0) == (setting.test.y_test > 0.5))),
        backdoor_success=pa.backdoor_success(bd_logits, HEART_TRIGGER),
        flagged_malicious=flagged[True] / n_bad,
        flagged_honest=flagged[False] / n_good,
    )
