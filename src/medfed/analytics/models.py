"""Federated regression by Newton–Raphson on summed site statistics: the pooled fit, exactly.

Each iteration the coordinator asks every site for the score and information at the current
coefficients; their sums are the pooled ones (the log-likelihood is a sum over patients, and for
the Cox model stratified by site a sum over strata), so the iterates, the estimate, its standard
errors and p-values are those of a pooled fit (Karr et al. 2005; Lu et al. 2015, *WebDISCO*).
Wald inference uses the normal distribution, as statsmodels' GLM and lifelines do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from medfed.analytics.answer import SiteAnswer
from medfed.analytics.spec import Family, QueryKind, QuerySpec
from medfed.core.errors import JobError, ValidationError

Ask = Callable[[QuerySpec], Mapping[str, SiteAnswer]]


@dataclass(frozen=True, slots=True, kw_only=True)
class FitOptions:
    max_iter: int = 50
    tol: float = 1e-10  # stop when the largest Newton step is below this
    alpha: float = 0.05  # 1 - confidence level of the intervals
    max_halvings: int = 30


@dataclass(frozen=True, slots=True, kw_only=True)
class RegressionResult:
    """A fitted GLM or Cox model, reported like a statistics package."""

    model: str  # "logistic", "linear", "poisson" or "cox"
    names: tuple[str, ...]
    coef: np.ndarray
    se: np.ndarray
    loglik: float
    n: int
    iterations: int
    sites: tuple[str, ...]
    scale: float = 1.0
    events: int = 0
    alpha: float = 0.05

    @property
    def z(self) -> np.ndarray:
        return np.asarray(self.coef / self.se)

    @property
    def p_values(self) -> np.ndarray:
        return np.asarray(2 * norm.sf(np.abs(self.z)))

    def conf_int(self) -> np.ndarray:
        half = norm.ppf(1 - self.alpha / 2) * self.se
        return np.column_stack([self.coef - half, self.coef + half])

    @property
    def ratio_name(self) -> str:
        return {"logistic": "OR", "poisson": "IRR", "cox": "HR"}.get(self.model, "")

    def summary(self) -> pd.DataFrame:
        """coef, SE, z, p, CI, and the odds / rate / hazard ratio with its CI where it applies."""
        ci = self.conf_int()
        lo, hi = f"[{self.alpha / 2:g}", f"{1 - self.alpha / 2:g}]"
        table = pd.DataFrame(
            {"coef": self.coef, "std err": self.se, "z": self.z, "P>|z|": self.p_values, lo: ci[:, 0], hi: ci[:, 1]},
            index=pd.Index(self.names, name="covariate"),
        )
        if self.ratio_name:
            table[self.ratio_name] = np.exp(self.coef)
            table[f"{self.ratio_name} {lo}"] = np.exp(ci[:, 0])
            table[f"{self.ratio_name} {hi}"] = np.exp(ci[:, 1])
        return table


def sum_stats(answers: Mapping[str, SiteAnswer], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Element-wise sums of the named arrays over sites."""
    if not answers:
        raise JobError("no site answered")
    try:
        return {k: np.sum([np.asarray(a[k]) for a in answers.values()], axis=0) for k in names}
    except (KeyError, ValueError) as exc:
        raise ValidationError(f"site answers do not fit together: {exc}", where="combine") from None


def _newton(
    ask: Ask, spec: QuerySpec, options: FitOptions
) -> tuple[np.ndarray, dict[str, np.ndarray], int, tuple[str, ...]]:
    """Newton–Raphson with step halving on the summed log-likelihood; returns the estimate, the
    sums at the last evaluated point, the iteration count and the sites (fixed by the first answer)."""
    p = len(spec.design_names)
    beta = np.zeros(p)
    keys = ("score", "info", "loglik", "n", "rss", "events")
    sites: tuple[str, ...] = ()
    best: dict[str, np.ndarray] | None = None
    step = np.zeros(p)
    halvings = 0
    for iteration in range(1, options.max_iter + 1):
        answers = ask(spec.replace(beta=tuple(float(b) for b in beta)))
        if not answers:
            raise JobError(f"{spec.kind.value}: no site answered")
        if not sites:
            sites = tuple(sorted(answers))
        elif tuple(sorted(answers)) != sites:
            raise JobError(
                f"sites changed during the fit: {list(sites)} then {sorted(answers)}; it would not be the pooled fit"
            )
        stats = sum_stats(answers, tuple(k for k in keys if k in next(iter(answers.values())).arrays))
        if best is not None and stats["loglik"][0] < best["loglik"][0] - 1e-12 * abs(best["loglik"][0]):
            halvings += 1
            if halvings > options.max_halvings:
                raise JobError("the fit does not converge (log-likelihood keeps falling)")
            step = step / 2  # overshot: go back half way (Marschner 2011, step-halving)
            beta = beta - step
            continue
        best, halvings = stats, 0
        try:
            step = np.linalg.solve(stats["info"], stats["score"])
        except np.linalg.LinAlgError:
            raise JobError("the information matrix is singular: collinear covariates or separation") from None
        beta = beta + step
        if np.max(np.abs(step), initial=0.0) < options.tol:
            return beta, stats, iteration, sites
    raise JobError(f"no convergence in {options.max_iter} Newton iterations")


def fit_glm(ask: Ask, spec: QuerySpec, options: FitOptions = FitOptions()) -> RegressionResult:
    """Fit the GLM ``spec`` describes (a :meth:`QuerySpec.glm`) across the sites ``ask`` reaches.

    Raises
    ------
    JobError
        No site answered, the set of answering sites changed, or the fit does not converge.
    """
    if spec.kind is not QueryKind.GLM_STATS or spec.family is None:
        raise ValidationError(f"fit_glm needs a glm_stats query, got {spec.kind.value}")
    beta, stats, iterations, sites = _newton(ask, spec, options)
    n, p = int(stats["n"][0]), len(beta)
    scale, loglik = 1.0, float(stats["loglik"][0])
    if spec.family is Family.LINEAR:
        # The Pearson scale, as statsmodels' GLM: rss / (n - p); the log-likelihood at the ML scale.
        rss = float(stats["rss"][0])
        scale = rss / (n - p)
        loglik = -n / 2 * (np.log(2 * np.pi * rss / n) + 1)
    se = np.sqrt(np.diag(np.linalg.inv(stats["info"])) * scale)
    return RegressionResult(
        model=spec.family.value, names=spec.design_names, coef=beta, se=se, loglik=loglik, n=n,
        iterations=iterations, sites=sites, scale=scale, alpha=options.alpha,
    )  # fmt: skip


def fit_cox(ask: Ask, spec: QuerySpec, options: FitOptions = FitOptions()) -> RegressionResult:
    """Fit a Cox model stratified by site (each site its own baseline hazard), Efron ties.

    Raises
    ------
    JobError
        As :func:`fit_glm`.
    """
    if spec.kind is not QueryKind.COX_STATS:
        raise ValidationError(f"fit_cox needs a cox_stats query, got {spec.kind.value}")
    beta, stats, iterations, sites = _newton(ask, spec, options)
    se = np.sqrt(np.diag(np.linalg.inv(stats["info"])))
    return RegressionResult(
        model="cox", names=spec.design_names, coef=beta, se=se, loglik=float(stats["loglik"][0]),
        n=int(stats["n"][0]), iterations=iterations, sites=sites, events=int(stats["events"][0]), alpha=options.alpha,
    )  # fmt: skip
