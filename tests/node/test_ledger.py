"""The node's privacy ledger: reserve before, commit after, refuse overspending, survive restarts."""

from pathlib import Path

import pytest

from medfed.core.errors import BudgetExhausted, StoreError
from medfed.node.ledger import PrivacyLedger


@pytest.fixture
def ledger(tmp_path: Path) -> PrivacyLedger:
    book = PrivacyLedger(tmp_path / "ledger.sqlite")
    book.set_budget("heart", epsilon=3.0, delta=1e-5)
    return book


def test_reserve_commit_close_accounts_exactly(ledger: PrivacyLedger) -> None:
    ledger.reserve("heart", "j1", epsilon=1.0, delta=1e-6)
    status = ledger.status("heart")
    assert status is not None and status.epsilon_left == pytest.approx(2.0)
    ledger.commit("heart", "j1", epsilon=0.6, delta=1e-6, steps=50)
    ledger.close_job("heart", "j1")
    status = ledger.status("heart")
    assert status is not None and status.epsilon_used == pytest.approx(0.6)  # the unspent 0.4 is released
    job = ledger.job("heart", "j1")
    assert job is not None and (job.epsilon_spent, job.steps, job.open) == (0.6, 50, False)


def test_overspending_is_refused_with_what_is_left(ledger: PrivacyLedger) -> None:
    ledger.reserve("heart", "j1", epsilon=2.5, delta=1e-6)
    with pytest.raises(BudgetExhausted) as info:
        ledger.reserve("heart", "j2", epsilon=1.0, delta=1e-6)
    text = str(info.value)
    assert "job j2 needs ε=1" in text and "only ε=0.5, δ=9e-06 are left" in text and "ε=3" in text
    assert ledger.job("heart", "j2") is None  # nothing recorded for the refused job


def test_delta_is_budgeted_too(ledger: PrivacyLedger) -> None:
    with pytest.raises(BudgetExhausted, match="δ"):
        ledger.reserve("heart", "j1", epsilon=0.1, delta=1e-4)


def test_a_reservation_grows_but_never_shrinks(ledger: PrivacyLedger) -> None:
    ledger.reserve("heart", "j1", epsilon=1.0, delta=1e-6)
    ledger.reserve("heart", "j1", epsilon=0.5, delta=1e-6)
    ledger.reserve("heart", "j1", epsilon=2.0, delta=1e-6)
    job = ledger.job("heart", "j1")
    assert job is not None and job.epsilon_reserved == 2.0
    with pytest.raises(BudgetExhausted):
        ledger.reserve("heart", "j1", epsilon=3.5, delta=1e-6)


def test_closed_job_cannot_reserve_again(ledger: PrivacyLedger) -> None:
    ledger.reserve("heart", "j1", epsilon=1.0, delta=1e-6)
    ledger.close_job("heart", "j1")
    with pytest.raises(BudgetExhausted, match="already closed"):
        ledger.reserve("heart", "j1", epsilon=1.0, delta=1e-6)


def test_ledger_survives_a_restart(tmp_path: Path, ledger: PrivacyLedger) -> None:
    ledger.reserve("heart", "j1", epsilon=1.0, delta=1e-6)
    ledger.commit("heart", "j1", epsilon=1.0, delta=1e-6, steps=10)
    ledger.close()
    again = PrivacyLedger(tmp_path / "ledger.sqlite")
    again.set_budget("heart", epsilon=3.0, delta=1e-5)  # same budget from site.toml: no change
    status = again.status("heart")
    assert status is not None and status.epsilon_used == pytest.approx(1.0)
    assert [e["action"] for e in again.events("heart")] == ["set-budget", "reserve", "commit"]
    again.close()


def test_no_budget_means_no_dp_release(tmp_path: Path) -> None:
    book = PrivacyLedger(tmp_path / "l.sqlite")
    assert book.status("notes") is None
    with pytest.raises(BudgetExhausted, match="no privacy budget"):
        book.reserve("notes", "j1", epsilon=0.1, delta=1e-6)
    with pytest.raises(StoreError, match="no reservation"):
        book.commit("notes", "j1", epsilon=0.1, delta=1e-6, steps=1)
    book.close()
