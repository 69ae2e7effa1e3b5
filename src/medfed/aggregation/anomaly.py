"""Per-node, per-round detection of anomalous updates, reported as frozen records.

For round ``r`` the coordinator hands over every node's model and the current global model; each
node's update is ``model − reference``. Two tests, both robust to the very outliers they look for:

* **norm outlier** — the update's L2 norm has a robust z-score ``|z| > z_threshold``, where
  ``z = (norm − median) / (1.4826 · MAD)`` over this round's norms (the "modified z-score" of
  Iglewicz & Hoaglin 1993, "How to Detect and Handle Outliers", who suggest 3.5). Scaled and
  huge-norm updates land far above; a free-rider's empty update far below.
* **low cosine** — the cosine similarity between the update and the coordinate-wise median update
  is below ``min_cosine`` (0 by default: the node pushes against the consensus direction, as a
  sign-flip attack does). The median, not the mean, is the reference direction, so a minority of
  attackers cannot drag it toward themselves (Yin et al. 2018).

Detection only reports: it changes no update and excludes no node. Like the robust rules it needs
every node's individual update, so it cannot run behind secure aggregation. An adaptive attacker
that matches honest norms and directions passes both tests; pair detection with a robust rule.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from medfed.core.errors import ConfigError, ValidationError
from medfed.core.params import FloatArray, Parameters

#: 1 / Φ⁻¹(3/4): turns the MAD of normal data into its standard deviation (Iglewicz & Hoaglin 1993).
MAD_TO_SIGMA = 1.482602218505602


class AnomalyFlag(enum.StrEnum):
    """Why an update was flagged."""

    NORM_OUTLIER = "norm_outlier"
    LOW_COSINE = "low_cosine"


@dataclass(frozen=True, slots=True, kw_only=True)
class AnomalyConfig:
    """Thresholds of :func:`detect_anomalies`.

    Parameters
    ----------
    z_threshold
        Flag a norm whose robust z-score exceeds this in absolute value (Iglewicz & Hoaglin: 3.5).
    min_cosine
        Flag an update whose cosine similarity to the median update is below this, in [-1, 1].
    min_nodes
        With fewer updates than this nothing is flagged: a median of two says nothing.
    rel_floor
        The spread used for z-scores is at least ``rel_floor · median norm``: a norm within
        ``z_threshold · rel_floor`` (35 % by default) of the median is never flagged. Honest norms
        of high-dimensional updates concentrate, so the MAD of a handful of them can be tiny and
        would flag ordinary variation; and nodes that all clip to one bound have a MAD of zero.
    """

    z_threshold: float = 3.5
    min_cosine: float = 0.0
    min_nodes: int = 3
    rel_floor: float = 0.1

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.z_threshold) and self.z_threshold > 0):
            problems.append(f"z_threshold must be a finite number > 0, got {self.z_threshold!r}")
        if not -1.0 <= self.min_cosine <= 1.0:
            problems.append(f"min_cosine must be in [-1, 1], got {self.min_cosine!r}")
        if isinstance(self.min_nodes, bool) or not isinstance(self.min_nodes, int) or self.min_nodes < 3:
            problems.append(f"min_nodes must be an integer >= 3, got {self.min_nodes!r}")
        if not (math.isfinite(self.rel_floor) and self.rel_floor >= 0):
            problems.append(f"rel_floor must be a finite number >= 0, got {self.rel_floor!r}")
        if problems:
            raise ConfigError("anomaly detection: " + "; ".join(problems))


@dataclass(frozen=True, slots=True, kw_only=True)
class AnomalyRecord:
    """What detection found about one node's update in one round.

    ``cosine`` is ``None`` when undefined (the update or the median update is zero); ``reason`` is
    empty when ``flags`` is.
    """

    site: str
    round: int
    norm: float
    cosine: float | None
    robust_z: float
    flags: frozenset[AnomalyFlag]
    reason: str

    @property
    def flagged(self) -> bool:
        """True when any test flagged the update."""
        return bool(self.flags)

    def as_dict(self) -> dict[str, str | int | float | list[str] | None]:
        """A JSON-ready dict for reports and audit events (flags sorted)."""
        return {
            "site": self.site,
            "round": self.round,
            "norm": self.norm,
            "cosine": self.cosine,
            "robust_z": self.robust_z,
            "flags": sorted(f.value for f in self.flags),
            "reason": self.reason,
        }


def robust_z(values: npt.ArrayLike, *, rel_floor: float = 0.0) -> FloatArray:
    """Modified z-scores ``(x − median) / max(1.4826 · MAD, rel_floor · |median|)``.

    All zeros when that spread is zero (no basis to call anything an outlier).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return x
    median = float(np.median(x))
    spread = max(MAD_TO_SIGMA * float(np.median(np.abs(x - median))), rel_floor * abs(median))
    if spread == 0.0:
        return np.zeros_like(x)
    return (x - median) / spread


def _check(rnd: int, results: Sequence[tuple[str, Parameters]], reference: Parameters) -> None:
    problems: list[str] = []
    sites = [site for site, _ in results]
    if dupes := sorted({s for s in sites if sites.count(s) > 1}):
        problems.append(f"sites appear more than once: {dupes}")
    for site, params in results:
        try:
            reference.check_like(params)
        except ValidationError as exc:
            problems += [f"site {site!r}: {p}" for p in exc.problems]
    if problems:
        raise ValidationError(problems, where=f"round {rnd}: anomaly detection")


def _norms_and_cosines(
    results: Sequence[tuple[str, Parameters]], reference: Parameters
) -> tuple[FloatArray, list[float | None]]:
    n = len(results)
    sq, dots, median_sq = np.zeros(n), np.zeros(n), 0.0
    for j, r in enumerate(reference.arrays):
        # One array at a time: scratch is n × (largest array), never n × model.
        updates = np.stack([p.arrays[j] for _, p in results], dtype=np.float64).reshape(n, -1)
        updates -= r.reshape(-1)
        median = np.median(updates, axis=0)
        sq += np.einsum("ij,ij->i", updates, updates)
        dots += updates @ median
        median_sq += float(median @ median)
    norms, median_norm = np.sqrt(sq), math.sqrt(median_sq)
    cosines: list[float | None] = [
        min(1.0, max(-1.0, float(d) / (float(nm) * median_norm))) if nm > 0 and median_norm > 0 else None
        for d, nm in zip(dots, norms, strict=True)
    ]
    return norms, cosines


def _verdict(norm: float, z: float, cosine: float | None, config: AnomalyConfig) -> tuple[frozenset[AnomalyFlag], str]:
    flags, reasons = set(), []
    if abs(z) > config.z_threshold:
        flags.add(AnomalyFlag.NORM_OUTLIER)
        side = "above" if z > 0 else "below"
        reasons.append(f"update norm {norm:.4g} is {abs(z):.1f} robust SDs {side} the round's median norm")
    if cosine is not None and cosine < config.min_cosine:
        flags.add(AnomalyFlag.LOW_COSINE)
        reasons.append(f"cosine {cosine:.3f} to the median update is below {config.min_cosine}")
    return frozenset(flags), "; ".join(reasons)


def detect_anomalies(
    rnd: int,
    results: Sequence[tuple[str, Parameters]],
    *,
    reference: Parameters,
    config: AnomalyConfig = AnomalyConfig(),
) -> tuple[AnomalyRecord, ...]:
    """One :class:`AnomalyRecord` per ``(site, model)`` of round ``rnd``, in input order.

    Parameters
    ----------
    rnd
        The round, copied into the records.
    results
        Each node's site name and returned model.
    reference
        The global model the nodes started the round from; updates are ``model − reference``.
    config
        Thresholds.

    Raises
    ------
    ValidationError
        A model unlike ``reference`` (names, shapes, non-finite values) or a site named twice;
        every problem is listed.
    """
    _check(rnd, results, reference)
    if not results:
        return ()
    norms, cosines = _norms_and_cosines(results, reference)
    zs = robust_z(norms, rel_floor=config.rel_floor)
    judged = len(results) >= config.min_nodes
    records = []
    for (site, _), norm, z, cosine in zip(results, norms, zs, cosines, strict=True):
        flags, reason = _verdict(float(norm), float(z), cosine, config) if judged else (frozenset(), "")
        records.append(
            AnomalyRecord(
                site=site, round=rnd, norm=float(norm), cosine=cosine, robust_z=float(z), flags=flags, reason=reason
            )
        )
    return tuple(records)
