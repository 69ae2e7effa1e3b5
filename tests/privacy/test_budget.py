"""Privacy spends and budgets: basic composition, reservation, refusal, immutability."""

from __future__ import annotations

import pytest

from medfed.core.errors import BudgetExhausted, PermissionDenied, ValidationError
from medfed.privacy.budget import PrivacyBudget, PrivacySpend


def test_spends_compose_by_summing() -> None:
    a, b = PrivacySpend(0.5, 1e-6), PrivacySpend(1.0, 2e-6)
    assert a + b == PrivacySpend(1.5, 3e-6)
    assert PrivacySpend.compose([a, a, a]) == a.times(3)
    assert PrivacySpend.compose([]) == PrivacySpend.zero()


@pytest.mark.parametrize(
    ("eps", "delta"), [(-0.1, 0.0), (float("inf"), 0.0), (float("nan"), 0.0), (1.0, 1.0), (1.0, -1e-9)]
)
def test_spend_refuses_out_of_range_values(eps: float, delta: float) -> None:
    with pytest.raises(ValidationError):
        PrivacySpend(eps, delta)


def test_times_refuses_negative_k_and_delta_reaching_one() -> None:
    with pytest.raises(ValidationError):
        PrivacySpend(1.0, 0.0).times(-1)
    with pytest.raises(ValidationError):
        PrivacySpend(1.0, 0.3).times(4)


def test_reserve_returns_a_new_budget_and_leaves_the_old_one() -> None:
    budget = PrivacyBudget(PrivacySpend(3.0, 1e-5))

    after = budget.reserve(PrivacySpend(1.0, 1e-6))

    assert budget.spent == PrivacySpend.zero()
    assert after.spent == PrivacySpend(1.0, 1e-6)
    assert after.remaining.epsilon == pytest.approx(2.0)
    assert after.remaining.delta == pytest.approx(9e-6)


def test_an_overspend_is_refused_with_what_is_left() -> None:
    budget = PrivacyBudget(PrivacySpend(1.0, 1e-5)).reserve(PrivacySpend(0.75, 0.0))

    assert not budget.allows(PrivacySpend(0.5, 0.0))
    with pytest.raises(BudgetExhausted, match=r"requested ε=0.5.*remaining ε=0.25") as info:
        budget.reserve(PrivacySpend(0.5, 0.0))
    assert isinstance(info.value, PermissionDenied)
    assert info.value.kind == "budget"


def test_delta_is_budgeted_too() -> None:
    budget = PrivacyBudget(PrivacySpend(10.0, 1e-5))
    with pytest.raises(BudgetExhausted):
        budget.reserve(PrivacySpend(0.1, 2e-5))


def test_rounding_does_not_refuse_an_exact_fit() -> None:
    budget = PrivacyBudget(PrivacySpend(0.3, 0.0))
    for _ in range(3):
        budget = budget.reserve(PrivacySpend(0.1, 0.0))  # 0.1 + 0.1 + 0.1 > 0.3 in floating point
    assert budget.remaining.epsilon == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(BudgetExhausted):
        budget.reserve(PrivacySpend(1e-6, 0.0))


def test_a_budget_cannot_start_overspent() -> None:
    with pytest.raises(ValidationError):
        PrivacyBudget(PrivacySpend(1.0, 0.0), PrivacySpend(2.0, 0.0))


def test_values_are_frozen() -> None:
    budget = PrivacyBudget(PrivacySpend(1.0, 0.0))
    with pytest.raises(AttributeError):
        budget.spent = PrivacySpend(0.5, 0.0)  # type: ignore[misc]
