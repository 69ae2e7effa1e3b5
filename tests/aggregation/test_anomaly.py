"""Anomaly detection: golden z-scores, poisoned nodes flagged and honest ones not, records, refusals."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medfed.aggregation.anomaly import (
    MAD_TO_SIGMA,
    AnomalyConfig,
    AnomalyFlag,
    AnomalyRecord,
    detect_anomalies,
    robust_z,
)
from medfed.core.errors import ConfigError, ValidationError
from medfed.core.params import Parameters

SHAPES = {"w": (6, 5), "b": (5,)}
ATTACKS = {
    "huge_norm": AnomalyFlag.NORM_OUTLIER,
    "sign_flip": AnomalyFlag.LOW_COSINE,
    "scaled_1e3": AnomalyFlag.NORM_OUTLIER,
}


def round_of(
    honest: int, attackers: int = 0, attack: str = "", *, seed: int = 0
) -> tuple[Parameters, list[tuple[str, Parameters]]]:
    """A reference model and one model per site: honest sites first, then ``attackers`` poisoned ones."""
    rng = np.random.default_rng(seed)
    reference = Parameters.from_numpy({k: rng.standard_normal(s) for k, s in SHAPES.items()}, dtype="float32")
    direction = {k: rng.standard_normal(s) for k, s in SHAPES.items()}

    def update(scale: float) -> dict[str, np.ndarray]:
        return {k: scale * (direction[k] + 0.3 * rng.standard_normal(s)) for k, s in SHAPES.items()}

    updates = [update(1.0) for _ in range(honest)]
    for _ in range(attackers):
        if attack == "huge_norm":
            updates.append({k: 1e4 * rng.standard_normal(s) for k, s in SHAPES.items()})
        else:
            updates.append(update(-1.0 if attack == "sign_flip" else 1e3))
    sites = [f"honest-{i}" for i in range(honest)] + [f"attacker-{i}" for i in range(attackers)]
    results = [
        (site, Parameters.from_numpy({k: reference[k] + u[k] for k in SHAPES}, dtype="float32"))
        for site, u in zip(sites, updates, strict=True)
    ]
    return reference, results


# ---- robust z-scores -------------------------------------------------------------------------


def test_robust_z_golden() -> None:
    # median 3, MAD median(|[-2, -1, 0, 1, 97]|) = 1
    z = robust_z([1.0, 2.0, 3.0, 4.0, 100.0])

    np.testing.assert_allclose(z, np.array([-2.0, -1.0, 0.0, 1.0, 97.0]) / MAD_TO_SIGMA)
    assert z[-1] == pytest.approx(65.4255, abs=1e-4)


def test_robust_z_without_spread_is_zero_unless_a_floor_is_given() -> None:
    values = [1.0, 1.0, 1.0, 1.0, 2.0]

    assert np.all(robust_z(values) == 0.0)
    np.testing.assert_allclose(robust_z(values, rel_floor=0.01), [0.0, 0.0, 0.0, 0.0, 100.0])


# ---- attacks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("attack", ATTACKS)
def test_poisoned_nodes_are_flagged_and_honest_ones_are_not(attack: str, seed: int) -> None:
    reference, results = round_of(8, 2, attack, seed=seed)

    records = detect_anomalies(4, results, reference=reference)

    flagged = {r.site for r in records if r.flagged}
    assert flagged == {"attacker-0", "attacker-1"}
    assert all(ATTACKS[attack] in r.flags and r.reason for r in records if r.flagged)


@pytest.mark.parametrize("seed", range(5))
def test_a_round_of_honest_nodes_flags_nobody(seed: int) -> None:
    reference, results = round_of(20, seed=seed)

    records = detect_anomalies(1, results, reference=reference)

    assert not any(r.flagged for r in records)
    assert all(r.cosine is not None and r.cosine > 0.5 for r in records)


def test_a_free_rider_sending_no_update_is_flagged_below() -> None:
    reference, results = round_of(6)
    results.append(("free-rider", reference))

    record = detect_anomalies(2, results, reference=reference)[-1]

    assert record.flags == frozenset({AnomalyFlag.NORM_OUTLIER})
    assert record.norm == 0.0 and record.cosine is None and "below" in record.reason


def test_too_few_nodes_are_reported_but_not_judged() -> None:
    reference, results = round_of(1, 1, "scaled_1e3")

    records = detect_anomalies(1, results, reference=reference)

    assert len(records) == 2 and not any(r.flagged for r in records)
    assert records[1].norm > 100 * records[0].norm


# ---- records ---------------------------------------------------------------------------------


def test_records_are_frozen_in_input_order_and_serialise_to_json() -> None:
    reference, results = round_of(4, 1, "sign_flip")

    records = detect_anomalies(7, results, reference=reference)

    assert [r.site for r in records] == [site for site, _ in results]
    assert all(isinstance(r, AnomalyRecord) and r.round == 7 for r in records)
    with pytest.raises(dataclasses.FrozenInstanceError):
        records[0].norm = 0.0  # type: ignore[misc]
    row = json.loads(json.dumps(records[-1].as_dict()))
    assert row["site"] == "attacker-0" and row["flags"] == ["low_cosine"]
    assert set(row) == {"site", "round", "norm", "cosine", "robust_z", "flags", "reason"}


def test_no_results_give_no_records() -> None:
    reference, _ = round_of(1)

    assert detect_anomalies(1, [], reference=reference) == ()


# ---- refusals --------------------------------------------------------------------------------


def test_bad_results_are_refused_listing_every_problem() -> None:
    reference, results = round_of(3)
    wrong = Parameters.from_numpy({"other": np.zeros(2, np.float32)})
    results += [("honest-0", results[0][1]), ("odd", wrong)]

    with pytest.raises(ValidationError) as info:
        detect_anomalies(3, results, reference=reference)

    assert "round 3" in str(info.value) and len(info.value.problems) == 2
    assert "'honest-0'" in str(info.value) and "site 'odd': parameter names differ" in str(info.value)


def test_bad_config_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        AnomalyConfig(z_threshold=0.0, min_cosine=2.0, min_nodes=2, rel_floor=-1.0)

    for key in ("z_threshold", "min_cosine", "min_nodes", "rel_floor"):
        assert key in str(info.value)


# ---- properties ------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_flags_do_not_depend_on_the_scale_of_every_update(scale: float, seed: int) -> None:
    reference, results = round_of(6, 1, "sign_flip", seed=seed)
    zero = Parameters.from_numpy({k: np.zeros(s) for k, s in SHAPES.items()})
    deltas = [(site, Parameters.from_numpy({k: p[k] - reference[k] for k in SHAPES})) for site, p in results]
    scaled = [(site, d.map(lambda a: scale * a.astype(np.float64))) for site, d in deltas]

    plain = detect_anomalies(1, deltas, reference=zero)
    rescaled = detect_anomalies(1, scaled, reference=zero)

    assert [r.flags for r in plain] == [r.flags for r in rescaled]
    np.testing.assert_allclose([r.robust_z for r in plain], [r.robust_z for r in rescaled], rtol=1e-6, atol=1e-9)
