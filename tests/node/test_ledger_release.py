"""Closing a job's account gives back exactly what it reserved and did not commit, once."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medfed.node.ledger import PrivacyLedger, Release


@pytest.fixture
def ledger(tmp_path: Path) -> PrivacyLedger:
    book = PrivacyLedger(tmp_path / "ledger.sqlite")
    book.set_budget("heart", epsilon=3.0, delta=1e-5)
    return book


def test_release_returns_reserved_minus_committed_and_real_spend_stays(ledger: PrivacyLedger) -> None:
    ledger.reserve("heart", "j1", epsilon=2.0, delta=1e-6)
    ledger.commit("heart", "j1", epsilon=0.7, delta=1e-6, steps=5)

    released = ledger.release_job("j1", reason="job failed")

    assert released == [Release(dataset="heart", job_id="j1", epsilon=pytest.approx(1.3), delta=0.0)]
    status = ledger.status("heart")
    assert status is not None and status.epsilon_used == pytest.approx(0.7)
    close = ledger.events("heart")[-1]
    assert close["action"] == "close" and close["epsilon"] == pytest.approx(1.3)
    assert close["detail"] == "released; job failed"


def test_release_is_idempotent_and_records_once(ledger: PrivacyLedger) -> None:
    ledger.reserve("heart", "j1", epsilon=1.0, delta=1e-6)
    first = ledger.release_job("j1", reason="job cancelled")

    again = ledger.release_job("j1", reason="job cancelled")

    assert [r.epsilon for r in first] == [1.0] and again == []
    assert ledger.close_job("heart", "j1") is None
    assert [e["action"] for e in ledger.events("heart")].count("close") == 1
    assert ledger.status("heart").epsilon_used == 0.0  # type: ignore[union-attr]


def test_a_commit_beyond_the_reservation_releases_nothing_and_stays_spent(ledger: PrivacyLedger) -> None:
    ledger.reserve("heart", "j1", epsilon=0.5, delta=1e-6)
    ledger.commit("heart", "j1", epsilon=0.9, delta=2e-6, steps=3)

    (released,) = ledger.release_job("j1", reason="job failed")

    assert (released.epsilon, released.delta) == (0.0, 0.0)
    assert ledger.status("heart").epsilon_used == pytest.approx(0.9)  # type: ignore[union-attr]


def test_release_touches_only_that_job_and_frees_budget_for_others(ledger: PrivacyLedger) -> None:
    ledger.reserve("heart", "j1", epsilon=2.0, delta=1e-6)
    ledger.reserve("heart", "j2", epsilon=1.0, delta=1e-6)
    assert ledger.open_jobs() == ["j1", "j2"]

    ledger.release_job("j1", reason="job failed")

    assert ledger.open_jobs() == ["j2"]
    assert ledger.job("heart", "j2").open  # type: ignore[union-attr]
    ledger.reserve("heart", "j3", epsilon=1.9, delta=1e-6)  # fits only because j1's hold was given back


def test_release_covers_every_dataset_of_the_job(tmp_path: Path, ledger: PrivacyLedger) -> None:
    ledger.set_budget("lung", epsilon=1.0, delta=1e-5)
    ledger.reserve("heart", "j1", epsilon=1.0, delta=1e-6)
    ledger.reserve("lung", "j1", epsilon=0.5, delta=1e-6)

    released = ledger.release_job("j1", reason="job failed")

    assert sorted((r.dataset, r.epsilon) for r in released) == [("heart", 1.0), ("lung", 0.5)]
    assert ledger.open_jobs() == []


def test_open_jobs_survive_a_restart_and_are_capped(tmp_path: Path, ledger: PrivacyLedger) -> None:
    for i in range(5):
        ledger.reserve("heart", f"j{i}", epsilon=0.1, delta=1e-7)
    ledger.close()
    again = PrivacyLedger(tmp_path / "ledger.sqlite")

    assert again.open_jobs(limit=3) == ["j0", "j1", "j2"]
    again.close()


@settings(max_examples=40, deadline=None)
@given(
    reserved=st.floats(0.01, 2.0),
    committed=st.lists(st.floats(0.0, 2.5), max_size=4),
)
def test_used_after_release_equals_the_committed_spend(tmp_path_factory: pytest.TempPathFactory, reserved: float,
                                                       committed: list[float]) -> None:  # fmt: skip
    book = PrivacyLedger(tmp_path_factory.mktemp("l") / "ledger.sqlite")
    book.set_budget("heart", epsilon=10.0, delta=1e-5)
    book.reserve("heart", "j", epsilon=reserved, delta=1e-6)
    for i, eps in enumerate(committed):
        book.commit("heart", "j", epsilon=eps, delta=1e-6, steps=i + 1)
    spent = max(committed, default=0.0)

    (released,) = book.release_job("j", reason="job failed")

    assert released.epsilon == pytest.approx(max(0.0, reserved - spent))
    assert book.status("heart").epsilon_used == pytest.approx(spent)  # type: ignore[union-attr]
    assert book.release_job("j", reason="job failed") == []
    book.close()
