"""Which marginals to measure: MST (McKenna et al. 2021) and AIM (McKenna et al. 2022), on trees.

Both first measure every 1-way marginal, then choose 2-way marginals with the exponential
mechanism and measure them with the Gaussian mechanism; the model they feed is a tree
(:mod:`medfed.synth.model`).

* **MST**: a third of the budget on 1-way marginals, a third on selection, a third on the chosen
  2-way marginals. Selection is Kruskal's algorithm where each edge is drawn by the exponential
  mechanism among the pairs that join two components, scored by the L1 distance between the real
  2-way marginal and the independence model built from the noisy 1-way marginals (§3.2).
* **AIM** (adaptive and iterative): rounds of "select with ε_t, measure with σ_t" on the current
  model. Candidates are the pairs that join two components *and* the tree's own edges (AIM may
  re-measure a marginal; measurements are averaged). The score is AIM's: the model's L1 error on
  that marginal minus the noise it would add, √(2/π)·σ_t·cells (Alg. 2, line 7). When a
  measurement changes the model by less than that noise, the per-round budget is raised 4× (σ
  halves; the annealing of §4.3). medfed restricts AIM to tree-structured models (AIM proper may
  select 3-way marginals over a junction tree), trading some fidelity for exact, fast inference.

Every score has sensitivity 1: adding or removing one row moves one cell of one real marginal by 1.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np

from medfed.synth.dp import exponential_mechanism, gaussian_measure
from medfed.synth.model import Measurement, TreeModel, estimate

_AIM_SELECT_SHARE = 0.1  # AIM's α: the share of each round's ρ spent on selection (1 - 0.9)
_ONE_WAY_SHARE_AIM = 0.2
# MST's split of ρ between 1-way measurements, selection and 2-way measurements. The paper splits
# in thirds; benchmarks/synth_quality.py measured lower 2-way error with more on the 2-way tables.
MST_SHARES = (0.2, 0.1, 0.7)
#: With a fixed star (``center``), the split between 1-way and 2-way measurements.
STAR_SHARES = (0.2, 0.8)


class _Marginals:
    """The real data's 1- and 2-way count tables (never released; only noisy or scored)."""

    def __init__(self, codes: np.ndarray, sizes: tuple[int, ...]) -> None:
        self.codes, self.sizes = codes, sizes

    def one(self, j: int) -> np.ndarray:
        return np.bincount(self.codes[:, j], minlength=self.sizes[j]).astype(np.float64)

    def two(self, i: int, j: int) -> np.ndarray:
        flat = self.codes[:, i] * self.sizes[j] + self.codes[:, j]
        return (
            np.bincount(flat, minlength=self.sizes[i] * self.sizes[j])
            .reshape(self.sizes[i], self.sizes[j])
            .astype(np.float64)
        )


def _find(parent: list[int], a: int) -> int:
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


def _one_ways(data: _Marginals, rho: float, rng: np.random.Generator) -> list[Measurement]:
    d = len(data.sizes)
    sigma = math.sqrt(d / (2.0 * rho))
    return [Measurement(columns=(j,), values=gaussian_measure(data.one(j), sigma, rng), sigma=sigma) for j in range(d)]


def mst(
    codes: np.ndarray,
    sizes: tuple[int, ...],
    ordinal: tuple[bool, ...],
    rho: float,
    rng: np.random.Generator,
    *,
    center: int | None = None,
) -> tuple[TreeModel, list[tuple[int, int]]]:
    """MST under ρ-zCDP; returns the model and the chosen (undirected) edges.

    With ``center``, the tree is fixed in advance as the star around that column (every other
    column's parent is ``center``, e.g. the outcome): a public, data-independent structure, so no
    budget goes to selection and the synthesizer is a DP naive Bayes model (``STAR_SHARES``).
    """
    data, d = _Marginals(codes, sizes), len(sizes)
    shares = MST_SHARES if center is None else (STAR_SHARES[0], 0.0, STAR_SHARES[1])
    measurements = _one_ways(data, rho * shares[0], rng)
    if d == 1:
        return estimate(sizes, measurements, [], ordinal), []
    if center is None:
        tree = _kruskal(data, estimate(sizes, measurements, [], ordinal), rho * shares[1], rng)
    else:
        tree = [(center, j) for j in range(d) if j != center]
    sigma = math.sqrt((d - 1) / (2.0 * rho * shares[2]))
    for i, j in tree:
        measurements.append(
            Measurement(columns=(i, j), values=gaussian_measure(data.two(i, j), sigma, rng).ravel(), sigma=sigma)
        )
    return estimate(sizes, measurements, tree, ordinal), tree


def _kruskal(data: _Marginals, base: TreeModel, rho: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    """MST's selection: d - 1 exponential-mechanism draws among the pairs joining two components."""
    d = len(data.sizes)
    pairs = list(combinations(range(d), 2))
    scores = np.array([np.abs(data.two(i, j) - base.total * base.marginal(i, j)).sum() for i, j in pairs])
    eps = math.sqrt(8.0 * rho / (d - 1))
    parent, tree = list(range(d)), []
    for _ in range(d - 1):
        open_ = [k for k, (i, j) in enumerate(pairs) if _find(parent, i) != _find(parent, j)]
        i, j = pairs[open_[exponential_mechanism(scores[open_], eps, 1.0, rng)]]
        parent[_find(parent, i)] = _find(parent, j)
        tree.append((i, j))
    return tree


def aim(
    codes: np.ndarray, sizes: tuple[int, ...], ordinal: tuple[bool, ...], rho: float, rng: np.random.Generator
) -> tuple[TreeModel, list[tuple[int, int]]]:
    """Tree-restricted AIM under ρ-zCDP; returns the model and its (undirected) edges."""
    data, d = _Marginals(codes, sizes), len(sizes)
    measurements = _one_ways(data, rho * _ONE_WAY_SHARE_AIM, rng)
    left = rho * (1.0 - _ONE_WAY_SHARE_AIM)
    model = estimate(sizes, measurements, [], ordinal)
    if d == 1:
        return model, []
    pairs = list(combinations(range(d), 2))
    real = {p: data.two(*p) for p in pairs}
    parent, tree = list(range(d)), []
    rho_t = left / (2.0 * (d - 1))
    while left > 1e-12:
        if left < 2.0 * rho_t:
            rho_t = left  # the last round takes what is left (Alg. 2, lines 12-13)
        left -= rho_t
        eps, sigma = (
            math.sqrt(8.0 * _AIM_SELECT_SHARE * rho_t),
            math.sqrt(1.0 / (2.0 * (1 - _AIM_SELECT_SHARE) * rho_t)),
        )
        cand = [p for p in pairs if p in tree or _find(parent, p[0]) != _find(parent, p[1])]
        penalty = math.sqrt(2.0 / math.pi) * sigma
        scores = np.array(
            [np.abs(real[p] - model.total * model.marginal(*p)).sum() - penalty * real[p].size for p in cand]
        )
        i, j = cand[exponential_mechanism(scores, eps, 1.0, rng)]
        before = model.marginal(i, j)
        measurements.append(
            Measurement(columns=(i, j), values=gaussian_measure(real[(i, j)], sigma, rng).ravel(), sigma=sigma)
        )
        if (i, j) not in tree:
            parent[_find(parent, i)] = _find(parent, j)
            tree.append((i, j))
        model = estimate(sizes, measurements, tree, ordinal)
        if model.total * np.abs(model.marginal(i, j) - before).sum() <= penalty * real[(i, j)].size:
            rho_t *= 4.0
    return model, tree
