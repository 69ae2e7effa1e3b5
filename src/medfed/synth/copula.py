"""A Gaussian-copula synthesizer: the non-DP baseline, for comparison only.

It learns each column's empirical distribution and the correlation of their normal scores
(Nelsen 2006, ch. 2; the "Gaussian copula" of SDV). It is **not** differentially private: it
stores real quantiles, so it may reproduce real values and rows. ``release.gate`` blocks its
output unless the site's policy waives the DP requirement.

It works on the same discretised codes as the DP synthesizers (bins from the public schema, no
noise), so missingness and mixed types are handled the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from medfed.synth.domain import Domain, Schema, decode, encode, fit_domain

DIFFERENTIALLY_PRIVATE = False


@dataclass(frozen=True, slots=True, kw_only=True)
class GaussianCopula:
    domain: Domain
    cdfs: tuple[np.ndarray, ...]  # per column, cumulative share of each code
    correlation: np.ndarray

    def sample(self, rows: int, rng: np.random.Generator) -> pd.DataFrame:
        z = rng.multivariate_normal(np.zeros(len(self.cdfs)), self.correlation, size=rows, method="cholesky")
        u = ndtr(z)
        codes = np.column_stack(
            [np.minimum(np.searchsorted(c, u[:, j], side="right"), len(c) - 1) for j, c in enumerate(self.cdfs)]
        )
        return decode(codes, self.domain, rng)


def fit_copula(df: pd.DataFrame, schema: Schema, *, bins: int, rng: np.random.Generator) -> GaussianCopula:
    """Fit the baseline (no privacy): equal-width bins over the schema's bounds."""
    domain = fit_domain(df, schema, bins=bins, rho=0.0, rng=rng)
    codes = encode(df, domain)
    cdfs, scores = [], []
    for j, size in enumerate(domain.sizes):
        counts = np.bincount(codes[:, j], minlength=size).astype(np.float64)
        cdf = np.cumsum(counts) / counts.sum()
        cdfs.append(cdf)
        # Normal score of each row: the middle of its code's probability interval.
        lower = np.r_[0.0, cdf[:-1]][codes[:, j]]
        scores.append(ndtri(np.clip((lower + cdf[codes[:, j]]) / 2.0, 1e-6, 1 - 1e-6)))
    z = np.column_stack(scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.nan_to_num(np.corrcoef(z, rowvar=False)) if z.shape[1] > 1 else np.ones((1, 1))
    np.fill_diagonal(corr, 1.0)
    # Nearest positive-definite matrix by clipping eigenvalues (constant columns give zeros).
    w, v = np.linalg.eigh(corr)
    corr = (v * np.maximum(w, 1e-6)) @ v.T
    d = np.sqrt(np.diag(corr))
    return GaussianCopula(domain=domain, cdfs=tuple(cdfs), correlation=corr / np.outer(d, d))
