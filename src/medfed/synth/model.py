"""A tree-structured graphical model estimated from noisy marginals, and sampling from it.

MST's model is a tree by construction (a maximum spanning tree of 2-way marginals; McKenna et al.
2021, §3); medfed's AIM keeps that restriction, so inference is exact and needs no mirror descent
over a junction tree: the distribution is P(root) · Π P(child | parent).

Estimation (post-processing of the noisy measurements, so it costs no privacy):

1. every column's 1-way marginal is the inverse-variance average of its own measurements and of the
   row/column sums of the 2-way measurements that contain it (a sum of k noisy cells has variance
   kσ²), then projected onto the scaled probability simplex (Euclidean, Wang & Carreira-Perpiñán
   2013) — which keeps zeros as zeros instead of the upward bias of clipping;
2. each tree edge's 2-way table is its averaged measurements projected the same way and then made
   consistent with both 1-way estimates by iterative proportional fitting (Deming & Stephan 1940).

Models are saved as JSON (structure) plus ``.npz`` (tables) loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import ndtri

from medfed.core.errors import StoreError, ValidationError

_IPF_ITERATIONS = 20
_FLOOR = 1e-9  # smoothing so IPF can scale every row and column
_Z = np.linspace(-4.0, 4.0, 121)  # quadrature grid for the Gaussian-copula tables
_ZX, _ZY = np.meshgrid(_Z, _Z, indexing="ij")
_COPULA_R = np.linspace(-0.98, 0.98, 50)


@dataclass(frozen=True, slots=True, kw_only=True)
class Measurement:
    """Noisy counts of the marginal over ``columns`` (one or two), with its noise σ."""

    columns: tuple[int, ...]
    values: np.ndarray
    sigma: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TreeModel:
    """P(root) · Π P(child | parent) over integer codes; ``edges`` are (parent, child) in BFS order."""

    sizes: tuple[int, ...]
    total: float
    one_way: tuple[np.ndarray, ...]
    edges: tuple[tuple[int, int], ...]
    tables: tuple[np.ndarray, ...]  # tables[k][parent_code, child_code], probabilities

    def sample(self, rows: int, rng: np.random.Generator) -> np.ndarray:
        """``rows`` code vectors drawn from the model by ancestral sampling with rounding.

        As private-pgm's ``synthetic_data`` (McKenna et al.), counts are allocated rather than drawn
        independently: a root gets ``round(rows · P(v))`` rows of each value, and the rows with each
        parent value get their children in proportion to ``P(child | parent)`` (largest remainder),
        then shuffled. The table then follows the model closely without extra sampling noise.
        """
        if rows < 0:
            raise ValidationError(f"rows must be >= 0, got {rows}", where="synth sample")
        out = np.full((rows, len(self.sizes)), -1, dtype=np.int64)
        children = {child for _, child in self.edges}
        for j, p in enumerate(self.one_way):
            if j not in children:
                out[:, j] = _allocate(p, rows, rng)
        for (parent, child), table in zip(self.edges, self.tables, strict=True):
            cond = table / np.maximum(table.sum(axis=1, keepdims=True), _FLOOR)
            for value in np.unique(out[:, parent]):
                where = np.flatnonzero(out[:, parent] == value)
                out[where, child] = _allocate(cond[value], where.size, rng)
        return out

    def marginal(self, i: int, j: int) -> np.ndarray:
        """The model's 2-way probability table of columns i, j (exact for edges and independent pairs)."""
        for (a, b), table in zip(self.edges, self.tables, strict=True):
            if (a, b) == (i, j):
                return table
            if (a, b) == (j, i):
                return table.T
        return np.outer(self.one_way[i], self.one_way[j])

    def save(self, path: Path) -> None:
        """``path`` (JSON) and ``path.with_suffix('.npz')`` (arrays, no pickle)."""
        meta = {
            "format": "medfed-synth-tree/1",
            "sizes": list(self.sizes),
            "total": self.total,
            "edges": [list(e) for e in self.edges],
        }
        arrays = {f"one_way_{i}": a for i, a in enumerate(self.one_way)}
        arrays |= {f"table_{k}": t for k, t in enumerate(self.tables)}
        path.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        with path.with_suffix(".npz").open("wb") as fh:
            np.savez(fh, allow_pickle=False, **arrays)

    @classmethod
    def load(cls, path: Path) -> TreeModel:
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            if meta.get("format") != "medfed-synth-tree/1":
                raise StoreError(f"{path}: not a medfed tree model (format {meta.get('format')!r})")
            with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
                one_way = tuple(z[f"one_way_{i}"] for i in range(len(meta["sizes"])))
                tables = tuple(z[f"table_{k}"] for k in range(len(meta["edges"])))
            return cls(
                sizes=tuple(int(s) for s in meta["sizes"]),
                total=float(meta["total"]),
                one_way=one_way,
                edges=tuple((int(a), int(b)) for a, b in meta["edges"]),
                tables=tables,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{path}: unreadable synthesizer model ({exc})") from exc


def estimate(
    sizes: tuple[int, ...], measurements: list[Measurement], tree: list[tuple[int, int]], ordinal: tuple[bool, ...]
) -> TreeModel:
    """The tree model that best fits ``measurements`` (see the module notes); ``tree`` is undirected.

    ``ordinal[j]`` says column j's codes are ordered (numeric bins, or two categories): an edge
    between two ordinal columns is shrunk toward its best Gaussian-copula table (step 3).
    """
    total = _total(measurements)
    one_way = tuple(_project(_one_way(j, sizes, measurements), total) / total for j in range(len(sizes)))
    edges = _orient(len(sizes), tree)
    tables = []
    for parent, child in edges:
        table, variance = _pair(parent, child, sizes, measurements)
        fitted = _ipf(_project(table.ravel(), total).reshape(table.shape) / total, one_way[parent], one_way[child])
        if ordinal[parent] and ordinal[child]:
            fitted = _shrink(table / total, fitted, variance / total**2, one_way[parent], one_way[child])
        tables.append(fitted)
    return TreeModel(sizes=sizes, total=total, one_way=one_way, edges=tuple(edges), tables=tuple(tables))


def _total(measurements: list[Measurement]) -> float:
    weights = np.array([1.0 / (m.sigma**2 * m.values.size) for m in measurements])
    sums = np.array([m.values.sum() for m in measurements])
    return max(float(np.dot(weights, sums) / weights.sum()), 1.0)


def _one_way(j: int, sizes: tuple[int, ...], measurements: list[Measurement]) -> np.ndarray:
    acc, weight = np.zeros(sizes[j]), 0.0
    for m in measurements:
        if j not in m.columns:
            continue
        y = m.values.reshape([sizes[c] for c in m.columns])
        axis = m.columns.index(j)
        proj = y if y.ndim == 1 else y.sum(axis=1 - axis)
        w = 1.0 / (m.sigma**2 * (y.size // sizes[j]))
        acc, weight = acc + w * proj, weight + w
    return acc / weight if weight else np.ones(sizes[j])


def _pair(i: int, j: int, sizes: tuple[int, ...], measurements: list[Measurement]) -> tuple[np.ndarray, float]:
    """The inverse-variance average of the measurements of (i, j), and its per-cell variance."""
    acc, weight = np.zeros((sizes[i], sizes[j])), 0.0
    for m in measurements:
        if set(m.columns) == {i, j} and len(m.columns) == 2:
            y = m.values.reshape(sizes[m.columns[0]], sizes[m.columns[1]])
            w = 1.0 / m.sigma**2
            acc, weight = acc + w * (y if m.columns == (i, j) else y.T), weight + w
    if not weight:
        raise ValidationError(f"no measurement of the tree edge ({i}, {j})", where="synth estimation")
    return acc / weight, 1.0 / weight


def _shrink(noisy: np.ndarray, fitted: np.ndarray, variance: float, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Positive-part James-Stein shrinkage of a 2-way table toward its closest Gaussian-copula table.

    The copula table (one parameter, r) is fitted by least squares to the noisy normalised counts;
    the weight on the nonparametric table is ``1 - cells·variance / ||noisy - copula||²`` (at least
    0; James & Stein 1961). Pure post-processing of noisy measurements: no privacy cost.
    """
    candidates = _copula_tables(p, q)
    residual = ((candidates - noisy[None]) ** 2).sum(axis=(1, 2))
    best = candidates[int(np.argmin(residual))]
    weight = max(0.0, 1.0 - noisy.size * variance / max(float(residual.min()), _FLOOR))
    return _ipf(weight * fitted + (1.0 - weight) * best, p, q)


def _copula_tables(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Bivariate-normal-copula tables with marginals p, q, one per r in ``_COPULA_R`` (on a z-grid)."""
    cut_p = ndtri(np.clip(np.cumsum(p)[:-1], 1e-9, 1 - 1e-9))
    cut_q = ndtri(np.clip(np.cumsum(q)[:-1], 1e-9, 1 - 1e-9))
    cell_p, cell_q = np.searchsorted(cut_p, _Z), np.searchsorted(cut_q, _Z)
    flat = (cell_p[:, None] * q.size + cell_q[None, :]).ravel()
    out = np.empty((_COPULA_R.size, p.size, q.size))
    for k, r in enumerate(_COPULA_R):
        density = np.exp(-(_ZX * _ZX - 2.0 * r * _ZX * _ZY + _ZY * _ZY) / (2.0 * (1.0 - r * r))).ravel()
        cells = np.bincount(flat, weights=density, minlength=p.size * q.size)
        out[k] = (cells / cells.sum()).reshape(p.size, q.size)
    return out


def _project(y: np.ndarray, total: float) -> np.ndarray:
    """Euclidean projection of ``y`` onto {x >= 0, sum x = total}."""
    u = np.sort(y)[::-1]
    css = np.cumsum(u) - total
    k = np.arange(1, y.size + 1)
    r = int(np.nonzero(u - css / k > 0)[0][-1])
    out: np.ndarray = np.maximum(y - css[r] / (r + 1), 0.0)
    return out


def _ipf(table: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    # Floors keep every row and column scalable, so IPF never divides zero by zero.
    t, rows, cols = table + _FLOOR, rows + _FLOOR, cols + _FLOOR
    for _ in range(_IPF_ITERATIONS):
        t *= (rows / t.sum(axis=1))[:, None]
        t *= (cols / t.sum(axis=0))[None, :]
    return t


def _orient(d: int, tree: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(parent, child) pairs in breadth-first order from the lowest column of each component."""
    adjacent: dict[int, list[int]] = {j: [] for j in range(d)}
    for a, b in tree:
        adjacent[a].append(b)
        adjacent[b].append(a)
    seen, edges = set(), []
    for root in range(d):
        if root in seen:
            continue
        seen.add(root)
        frontier = [root]
        while frontier:
            nxt = []
            for node in frontier:
                for other in sorted(adjacent[node]):
                    if other not in seen:
                        seen.add(other)
                        edges.append((node, other))
                        nxt.append(other)
            frontier = nxt
    if len(edges) != len(tree):
        raise ValidationError("the selected marginals contain a cycle", where="synth estimation")
    return edges


def _allocate(p: np.ndarray, rows: int, rng: np.random.Generator) -> np.ndarray:
    """``rows`` codes with counts ``rows · p`` rounded by largest remainder (ties at random), shuffled."""
    share = rows * p / max(float(p.sum()), _FLOOR)
    counts = np.floor(share).astype(np.int64)
    short = rows - int(counts.sum())
    if short > 0:
        remainder = share - counts + rng.uniform(0.0, 1e-9, size=p.size)
        counts[np.argsort(-remainder)[:short]] += 1
    return rng.permutation(np.repeat(np.arange(p.size), counts))
