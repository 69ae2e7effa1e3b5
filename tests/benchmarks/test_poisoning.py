"""The poisoning attacks of ``benchmarks/poisoning.py``: the attack maths on hand-made vectors, and a
small federation (Fed-Heart-Disease split into 20 nodes, 4 malicious, 8 rounds) against medfed's
real robust rules and anomaly detector.

``benchmarks/`` is put on ``sys.path`` as in ``test_mia.py`` (it is a folder of scripts, not a package).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import _poison_attacks as pa  # found through the sys.path entry above
import _poison_fed as pf
from medfed.core.params import Parameters
from medfed.learn.base import TabularData


@functools.cache
def _small() -> pf.Setting:
    return pf.setting_b(n_nodes=20, n_malicious=4, rounds=8, seed=0)


@functools.cache
def _outcome(attack: pa.Attack, aggregator: pf.Aggregator) -> pf.Outcome:
    return pf.run(_small(), attack, aggregator, seed=0)


# --- attack maths -------------------------------------------------------------------------------


def test_flatten_and_unflatten_round_trip() -> None:
    reference = Parameters.from_numpy({"w": np.ones((2, 3), np.float32), "b": np.zeros(1, np.float32)})
    update = np.arange(7, dtype=np.float64)

    model = pa.unflatten(update, reference)

    assert model["w"].dtype == np.float32
    assert np.array_equal(pa.flatten(model, reference), update)
    with pytest.raises(ValueError, match="8 values, the model 7"):
        pa.unflatten(np.zeros(8), reference)


def test_sign_flip_and_scaling_keep_their_promised_norms() -> None:
    clean = np.array([3.0, 4.0])

    flipped = pa.sign_flip(clean)
    scaled = pa.scaling(clean, np.random.default_rng(0))

    assert np.allclose(flipped, -pa.SIGN_FLIP_FACTOR * clean)
    assert np.linalg.norm(scaled) == pytest.approx(pa.SCALING_FACTOR * 5.0)
    assert np.allclose(pa.boosted(clean, n_nodes=50, n_malicious=10), 5 * clean)


def test_norm_matched_update_has_the_honest_median_norm_and_direction() -> None:
    rng = np.random.default_rng(1)
    honest = [np.array([1.0, 0.0, 0.0, 0.0]) + 0.8 * rng.standard_normal(4) for _ in range(9)]
    shift = np.array([0.0, 0.0, 5.0, 0.0])  # the backdoor lives off the honest direction

    update = pa.norm_matched(shift, honest, min_cosine=0.25)

    mean = np.mean(honest, axis=0)
    assert np.linalg.norm(update) == pytest.approx(np.median([np.linalg.norm(h) for h in honest]))
    assert pa.cosine(update, mean) >= 0.25 - 1e-12
    assert update @ shift > 0  # it still carries the backdoor


def test_norm_matched_refuses_a_zero_honest_mean() -> None:
    with pytest.raises(ValueError, match="zero"):
        pa.norm_matched(np.ones(2), [np.array([1.0, 0.0]), np.array([-1.0, 0.0])])


def test_trigger_stamps_a_copy_and_poisons_with_the_target_label() -> None:
    x = np.zeros((3, 4), np.float32)
    data = TabularData(
        x_train=x,
        y_train=np.ones(3, np.float32),
        x_test=x,
        y_test=np.array([1, 0, 1], np.float32),
        feature_names=("a", "b", "c", "d"),
    )
    trigger = pa.Trigger(features=(1, 3), value=2.0, target=0.0)

    poisoned = pa.poisoned_data(data, trigger)
    triggered = pa.triggered_test(data, trigger)

    assert poisoned.x_train.shape == (6, 4) and np.array_equal(poisoned.y_train, [1, 1, 1, 0, 0, 0])
    assert np.all(poisoned.x_train[3:, [1, 3]] == 2.0) and np.all(x == 0)  # the input is untouched
    assert triggered.x_test.shape == (2, 4)  # only rows whose label is not the target
    assert pa.backdoor_success(np.array([-1.0, 2.0]), trigger) == 0.5
    with pytest.raises(ValueError, match="distinct"):
        pa.Trigger(features=(1, 1))
    with pytest.raises(ValueError, match="out of range"):
        pa.Trigger(features=(9,)).stamp(x)


# --- refusal --------------------------------------------------------------------------------------


@pytest.mark.parametrize("aggregator", [pf.Aggregator.KRUM, pf.Aggregator.MULTI_KRUM])
def test_krum_is_refused_with_one_malicious_hospital_of_four(aggregator: pf.Aggregator) -> None:
    outcome = pf.run(pf.setting_a(rounds=1), pa.Attack.SIGN_FLIP, aggregator, seed=0)

    assert "needs n >= 2f + 3 = 5 nodes, got n=4" in outcome.refused
    assert np.isnan(outcome.clean_accuracy)


# --- a small federation under attack ---------------------------------------------------------------


@pytest.mark.parametrize("attack", [pa.Attack.SIGN_FLIP, pa.Attack.SCALING])
def test_median_and_trimmed_mean_resist_what_wrecks_fedavg(attack: pa.Attack) -> None:
    fedavg = _outcome(attack, pf.Aggregator.FEDAVG).clean_accuracy
    clean = _outcome(pa.Attack.NONE, pf.Aggregator.FEDAVG).clean_accuracy

    for rule in (pf.Aggregator.MEDIAN, pf.Aggregator.TRIMMED_MEAN):
        robust = _outcome(attack, rule)
        assert robust.clean_accuracy >= clean - 0.03, rule
        assert robust.clean_accuracy >= fedavg + 0.15, rule
    assert _outcome(attack, pf.Aggregator.FEDAVG).flagged_malicious == 1.0  # and detection sees it


def test_naive_backdoor_is_flagged_but_the_adaptive_one_passes_norm_defences() -> None:
    naive = _outcome(pa.Attack.BACKDOOR, pf.Aggregator.FEDAVG)
    adaptive = _outcome(pa.Attack.ADAPTIVE_BACKDOOR, pf.Aggregator.NORM_BOUNDED)
    baseline = _outcome(pa.Attack.NONE, pf.Aggregator.NORM_BOUNDED)

    assert naive.backdoor_success >= 0.9 and naive.flagged_malicious == 1.0
    assert adaptive.flagged_malicious == 0.0  # norm and cosine tests never flag it
    assert adaptive.backdoor_success >= baseline.backdoor_success + 0.05  # and norm bounding lets it in
    assert adaptive.clean_accuracy >= baseline.clean_accuracy - 0.03  # without a visible cost
