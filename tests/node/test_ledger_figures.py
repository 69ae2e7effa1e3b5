"""The ledger's figures as a node reports them: used = committed, held = open reservations beyond commits."""

from __future__ import annotations

from pathlib import Path

import pytest

from medfed.node.ledger import PrivacyLedger
from medfed.node.privacy import budget_figures


def test_figures_split_committed_spend_from_open_holds_and_a_release_clears_the_hold(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    try:
        ledger.set_budget("heart", epsilon=10.0, delta=1e-5)
        ledger.set_budget("unused", epsilon=2.0, delta=1e-6)
        ledger.reserve("heart", "job1", epsilon=4.0, delta=1e-6)
        ledger.commit("heart", "job1", epsilon=1.5, delta=1e-6, steps=5)
        ledger.reserve("heart", "job2", epsilon=1.0, delta=1e-7)
        ledger.commit("heart", "job2", epsilon=1.0, delta=1e-7, steps=5)
        ledger.close_job("heart", "job2")

        held = {f.dataset: f for f in budget_figures(ledger)}
        ledger.release_job("job1", reason="job failed")
        released = {f.dataset: f for f in budget_figures(ledger)}
    finally:
        ledger.close()

    heart = held["heart"]
    assert (heart.epsilon_total, heart.delta_total) == (10.0, 1e-5)
    assert heart.epsilon_used == pytest.approx(2.5) and heart.epsilon_held == pytest.approx(2.5)
    assert heart.delta_used == pytest.approx(1.1e-6) and heart.delta_held == 0.0
    assert released["heart"].epsilon_used == pytest.approx(2.5) and released["heart"].epsilon_held == 0.0
    assert (released["unused"].epsilon_used, released["unused"].epsilon_held) == (0.0, 0.0)
    assert budget_figures(None) == ()
