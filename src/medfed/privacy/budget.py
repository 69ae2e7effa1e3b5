"""(ε, δ) spends and a site's privacy budget: frozen values, composed by basic composition.

A :class:`PrivacySpend` is what one DP release costs (a training job, a query), as reported by
the accountant for the whole release. A :class:`PrivacyBudget` is the total a data owner allows
for one dataset and what has been reserved so far. Across separate releases medfed uses basic
(sequential) composition, ``(Σε, Σδ)`` (Dwork & Roth 2014, Theorem 3.16): valid for any
mechanisms, adaptively chosen, and simple enough for a site admin to audit. It is loose, which is
why a job's rounds are composed by the accountant first and reach the budget as one spend.

The persistent ledger at a node (reserve → run → commit, audited) lives in the node layer; these
values are its pure arithmetic. Reserving returns a new budget and never mutates the old one; an
overspend raises :class:`~medfed.core.errors.BudgetExhausted` (kind ``budget``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from medfed.core.errors import BudgetExhausted, ValidationError

#: Relative slack when comparing spends with a total, so that floating-point rounding of a sum of
#: spends (0.1 + 0.1 + 0.1 > 0.3) does not refuse a release that fits exactly. It lets through at
#: most a 1e-9 relative overshoot, far below any meaningful ε.
_SLACK = 1e-9


def _spend_problems(epsilon: float, delta: float) -> list[str]:
    problems = []
    if isinstance(epsilon, bool) or not (isinstance(epsilon, int | float) and math.isfinite(epsilon) and epsilon >= 0):
        problems.append(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    if isinstance(delta, bool) or not (isinstance(delta, int | float) and 0 <= delta < 1):
        problems.append(f"delta must be a number in [0, 1), got {delta!r}")
    return problems


@dataclass(frozen=True, slots=True)
class PrivacySpend:
    """An (ε, δ) cost. ``a + b`` and :meth:`compose` are basic composition.

    Parameters
    ----------
    epsilon
        ε >= 0, finite.
    delta
        δ in [0, 1).

    Raises
    ------
    ValidationError
        Either value is out of range (both are reported).
    """

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        if problems := _spend_problems(self.epsilon, self.delta):
            raise ValidationError(problems, where="privacy spend")

    @classmethod
    def zero(cls) -> PrivacySpend:
        """The spend of nothing, (0, 0)."""
        return cls(0.0, 0.0)

    @classmethod
    def compose(cls, spends: Iterable[PrivacySpend]) -> PrivacySpend:
        """Basic composition of ``spends``: ``(Σε, Σδ)``, summed with :func:`math.fsum`."""
        items = list(spends)
        return cls(math.fsum(s.epsilon for s in items), math.fsum(s.delta for s in items))

    def __add__(self, other: PrivacySpend) -> PrivacySpend:
        if not isinstance(other, PrivacySpend):
            return NotImplemented
        return PrivacySpend.compose((self, other))

    def times(self, k: int) -> PrivacySpend:
        """``k``-fold basic composition of this spend with itself, ``(kε, kδ)``.

        Raises
        ------
        ValidationError
            ``k`` is not an integer >= 0, or ``kδ`` reaches 1.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValidationError(f"k must be an integer >= 0, got {k!r}", where="privacy spend")
        return PrivacySpend(self.epsilon * k, self.delta * k)

    def fits_in(self, limit: PrivacySpend) -> bool:
        """True when both ε and δ are at most ``limit``'s (up to rounding slack)."""
        return _within(self.epsilon, limit.epsilon) and _within(self.delta, limit.delta)


def _within(value: float, limit: float) -> bool:
    return value <= limit * (1 + _SLACK)


@dataclass(frozen=True, slots=True)
class PrivacyBudget:
    """A data owner's total (ε, δ) for one dataset and the part already reserved.

    Parameters
    ----------
    total
        What the site admin allows over the dataset's lifetime.
    spent
        Reserved or committed so far; (0, 0) for a fresh budget.

    Raises
    ------
    ValidationError
        ``spent`` already exceeds ``total``.

    Examples
    --------
    >>> budget = PrivacyBudget(PrivacySpend(3.0, 1e-5))
    >>> budget = budget.reserve(PrivacySpend(1.5, 1e-6))
    >>> round(budget.remaining.epsilon, 6)
    1.5
    """

    total: PrivacySpend
    spent: PrivacySpend = field(default_factory=PrivacySpend.zero)

    def __post_init__(self) -> None:
        if not self.spent.fits_in(self.total):
            raise ValidationError(f"spent {self.spent} exceeds total {self.total}", where="privacy budget")

    @property
    def remaining(self) -> PrivacySpend:
        """What is left, ``total - spent`` (clamped at zero against rounding)."""
        return PrivacySpend(
            max(0.0, self.total.epsilon - self.spent.epsilon), max(0.0, self.total.delta - self.spent.delta)
        )

    def allows(self, spend: PrivacySpend) -> bool:
        """True when ``spend`` fits in what is left."""
        return (self.spent + spend).fits_in(self.total)

    def reserve(self, spend: PrivacySpend) -> PrivacyBudget:
        """A new budget with ``spend`` added to what is spent; this one is unchanged.

        Raises
        ------
        BudgetExhausted
            ``spend`` does not fit; the message gives the request and what is left.
        """
        after = self.spent + spend
        if not after.fits_in(self.total):
            left = self.remaining
            raise BudgetExhausted(
                f"privacy budget exhausted: requested ε={spend.epsilon:g}, δ={spend.delta:g}; "
                f"remaining ε={left.epsilon:g}, δ={left.delta:g} of total ε={self.total.epsilon:g}, "
                f"δ={self.total.delta:g}"
            )
        return PrivacyBudget(self.total, after)
