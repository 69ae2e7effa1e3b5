"""Federated learning on Fed-Heart-Disease beats training alone (FLamby's protocol, fewer seeds)."""

from __future__ import annotations

import numpy as np
import pytest

from medfed.core.records import StrategySpec
from medfed.data.heart import HEART_DEFAULTS, load_fed_heart_disease
from medfed.learn.base import TabularData
from medfed.learn.simulate import simulate, train_alone

SEEDS = (0, 1)
ROUNDS = 15


@pytest.fixture(scope="module")
def heart() -> dict[str, TabularData]:
    return load_fed_heart_disease()


@pytest.fixture(scope="module")
def local_only(heart: dict[str, TabularData]) -> float:
    """Mean over sites and seeds of a site's own model scored on all four test sets."""
    options = {**HEART_DEFAULTS["fedavg"]["task"], "local_steps": ROUNDS * 100}
    scores = [
        np.mean([m["accuracy"] for m in train_alone(data, heart, task_options=options, seed=s).values()])
        for data in heart.values()
        for s in SEEDS
    ]
    return float(np.mean(scores))


def federated(name: str, heart: dict[str, TabularData]) -> float:
    defaults = HEART_DEFAULTS[name]
    spec = StrategySpec(name=name, options=defaults["strategy"])
    return float(
        np.mean(
            [
                simulate(spec, heart, rounds=ROUNDS, task_options=defaults["task"], seed=s).final.mean_accuracy
                for s in SEEDS
            ]
        )
    )


@pytest.mark.parametrize("name", ["fedavg", "fedyogi"])
def test_federated_beats_local_only(name: str, heart: dict[str, TabularData], local_only: float) -> None:
    accuracy = federated(name, heart)

    assert accuracy > local_only + 0.03
    assert accuracy >= 0.685  # FLamby's FedAvg


def test_simulation_is_deterministic_and_reports_every_round(heart: dict[str, TabularData]) -> None:
    spec = StrategySpec(name="fedadam", options={"eta": 0.03})
    options = {"local_steps": 10}

    a = simulate(spec, heart, rounds=3, task_options=options, seed=4)
    b = simulate(spec, heart, rounds=3, task_options=options, seed=4)

    assert [r.round for r in a.rounds] == [1, 2, 3]
    assert set(a.final.sites) == set(heart)
    assert a.parameters.allclose(b.parameters, atol=0, rtol=0) and a.rounds == b.rounds
