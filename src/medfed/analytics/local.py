"""What a site computes on its own rows: sufficient statistics, never rows.

Each function takes the site's cohort (a DataFrame already filtered to complete cases) and returns
named float64 arrays. Sums of these over sites are the pooled statistics, which is why the
federated fits equal the pooled ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit, gammaln

from medfed.analytics.spec import Family, Level, QuerySpec
from medfed.core.errors import ValidationError

Arrays = dict[str, np.ndarray]


def numeric(cohort: pd.DataFrame, column: str) -> np.ndarray:
    """A column as float64, or a ValidationError naming it and its first bad row."""
    values = pd.to_numeric(cohort[column], errors="coerce")
    bad = values.isna() & cohort[column].notna()
    if bad.any():
        pos = int(np.argmax(np.asarray(bad)))
        raise ValidationError(
            f"non-numeric value {cohort[column].iloc[pos]!r} at row {cohort.index[pos]}", where=f"column {column!r}"
        )
    return np.asarray(values, dtype=np.float64)


def _binary(cohort: pd.DataFrame, column: str) -> np.ndarray:
    values = numeric(cohort, column)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        row = cohort.index[int(np.argmax(bad))]
        raise ValidationError(f"value {values[bad][0]!r} at row {row} is not 0 or 1", where=f"column {column!r}")
    return values


def describe(cohort: pd.DataFrame, spec: QuerySpec) -> Arrays:
    """Per column: n, mean, and the sum of squared deviations (M2), for exact pooling (Chan et al. 1979)."""
    x = np.column_stack([numeric(cohort, c) for c in spec.columns])
    mean = x.mean(axis=0)
    return {"n": np.array([float(len(x))]), "mean": mean, "m2": ((x - mean) ** 2).sum(axis=0)}


def histogram(cohort: pd.DataFrame, spec: QuerySpec) -> np.ndarray:
    """Counts below the first edge, in each bin (right edge open but the last closed), above the last."""
    x = numeric(cohort, spec.columns[0])
    edges = np.asarray(spec.bins)
    inside = np.histogram(x, bins=edges)[0]
    return np.concatenate([[np.sum(x < edges[0])], inside, [np.sum(x > edges[-1])]]).astype(np.float64)


def _level_masks(series: pd.Series, levels: tuple[Level, ...]) -> list[np.ndarray]:
    out = []
    for level in levels:
        if isinstance(level, str):
            out.append(np.asarray(series.astype("string") == level, dtype=bool))
        else:
            out.append(np.asarray(pd.to_numeric(series, errors="coerce") == level, dtype=bool))
    return out


def crosstab(cohort: pd.DataFrame, spec: QuerySpec) -> np.ndarray:
    rows = _level_masks(cohort[spec.columns[0]], spec.levels[0])
    cols = _level_masks(cohort[spec.columns[1]], spec.levels[1])
    return np.array([[np.count_nonzero(r & c) for c in cols] for r in rows], dtype=np.float64)


def survival_table(cohort: pd.DataFrame, spec: QuerySpec) -> Arrays:
    """Per group: distinct times with their event and censoring counts (``time/j``, ``events/j``,
    ``censored/j``), from which the pooled Kaplan–Meier curve and log-rank test follow exactly."""
    time, event = numeric(cohort, spec.time), _binary(cohort, spec.event)
    if np.any(time < 0):
        raise ValidationError("negative survival time", where=f"column {spec.time!r}")
    groups = _level_masks(cohort[spec.group], spec.levels[0]) if spec.group else [np.ones(len(time), dtype=bool)]
    out: Arrays = {}
    for j, mask in enumerate(groups):
        times, inverse = np.unique(time[mask], return_inverse=True)
        out[f"time/{j}"] = times
        out[f"events/{j}"] = np.bincount(inverse, weights=event[mask], minlength=len(times)).astype(np.float64)
        out[f"censored/{j}"] = np.bincount(inverse, weights=1 - event[mask], minlength=len(times)).astype(np.float64)
    return out


def design(cohort: pd.DataFrame, spec: QuerySpec) -> np.ndarray:
    cols = [numeric(cohort, c) for c in spec.covariates]
    if spec.intercept and spec.family is not None:
        cols.insert(0, np.ones(len(cohort)))
    return np.column_stack(cols) if cols else np.zeros((len(cohort), 0))


def glm_stats(cohort: pd.DataFrame, spec: QuerySpec) -> Arrays:
    """Score ``Xᵀ(y − μ)``, information ``XᵀWX`` and log-likelihood at ``spec.beta`` (canonical
    links, so observed = expected information). For the linear model the residual sum of squares
    ``rss`` gives the scale; its score and information are the unscaled ones."""
    x = design(cohort, spec)
    y = numeric(cohort, spec.outcome)
    beta = np.asarray(spec.beta) if spec.beta else np.zeros(x.shape[1])
    eta = x @ beta
    if spec.family is Family.LOGISTIC:
        y = _binary(cohort, spec.outcome)
        mu = expit(eta)
        weight = mu * (1 - mu)
        loglik = float(np.sum(y * eta - np.logaddexp(0.0, eta)))
    elif spec.family is Family.POISSON:
        if np.any(y < 0) or np.any(y != np.round(y)):
            raise ValidationError("Poisson outcome must be whole numbers >= 0", where=f"column {spec.outcome!r}")
        mu = np.exp(eta)
        weight = mu
        loglik = float(np.sum(y * eta - mu - gammaln(y + 1)))
    else:
        mu, weight = eta, np.ones_like(eta)
        loglik = 0.0  # the Gaussian likelihood needs the pooled scale: formed from rss at the coordinator
    resid = y - mu
    return {
        "score": x.T @ resid,
        "info": (x * weight[:, None]).T @ x,
        "loglik": np.array([loglik]),
        "rss": np.array([float(resid @ resid)]),
        "n": np.array([float(len(y))]),
    }


def cox_stats(cohort: pd.DataFrame, spec: QuerySpec) -> Arrays:
    """Efron partial log-likelihood, score and information of one stratum (this site) at ``beta``.

    With tied event times the Efron (1977) approximation is used, as lifelines and R's ``coxph``
    do: for the l-th of d tied events the risk-set sums lose ``l/d`` of the tied events' share.
    """
    time, event = numeric(cohort, spec.time), _binary(cohort, spec.event)
    x = design(cohort, spec)
    beta = np.asarray(spec.beta) if spec.beta else np.zeros(x.shape[1])
    order = np.argsort(time, kind="stable")
    time, event, x = time[order], event[order], x[order]
    eta = x @ beta
    eta = eta - eta.max(initial=0.0)  # the partial likelihood is invariant to a shift within a stratum
    risk = np.exp(eta)
    rx = risk[:, None] * x
    rxx = rx[:, :, None] * x[:, None, :]
    # Risk-set sums at each row's time: reverse cumulative sums, taken at the first row of that time.
    first = np.searchsorted(time, time, side="left")
    s0, s1, s2 = (np.cumsum(a[::-1], axis=0)[::-1][first] for a in (risk, rx, rxx))
    dead = event == 1
    # Tied events: the sums over each tie group, and each event's rank l within its group.
    groups, tie, d = np.unique(time[dead], return_inverse=True, return_counts=True)
    d0 = np.bincount(tie, weights=risk[dead], minlength=len(groups))
    d1 = np.stack([np.bincount(tie, weights=c, minlength=len(groups)) for c in rx[dead].T], axis=1)
    d2 = np.zeros((len(groups), x.shape[1], x.shape[1]))
    np.add.at(d2, tie, rxx[dead])
    rank = np.arange(len(tie)) - np.searchsorted(tie, tie, side="left")
    frac = rank / d[tie]
    den = s0[dead] - frac * d0[tie]
    num1 = s1[dead] - frac[:, None] * d1[tie]
    num2 = s2[dead] - frac[:, None, None] * d2[tie]
    mean1 = num1 / den[:, None]
    info = (num2 / den[:, None, None]).sum(axis=0) - mean1.T @ mean1
    return {
        "score": x[dead].sum(axis=0) - mean1.sum(axis=0),
        "info": info,
        "loglik": np.array([float(eta[dead].sum() - np.log(den).sum())]),
        "n": np.array([float(len(time))]),
        "events": np.array([float(dead.sum())]),
    }
