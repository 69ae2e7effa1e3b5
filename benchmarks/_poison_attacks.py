"""Model-poisoning attacks on one federated round: pure numpy on :class:`Parameters`, no training.

Used by ``benchmarks/poisoning.py`` (through ``_poison_fed.py``) and tested by
``tests/benchmarks/test_poisoning.py``. An update is ``model − reference`` (the global model the
round started from). The attacks (``f`` malicious nodes among ``n``):

* **sign-flip** — send ``−λ · Δ_clean`` (λ = 4), the node's honest update reversed and boosted
  (the "sign-flipping" attack of Li et al. 2019, RSA; Fang et al. 2020 use the same family).
* **scaling** — send a random direction boosted to ``λ · ‖Δ_clean‖`` (λ = 25), fresh every round: an
  untargeted large-norm attack (the "Gaussian" attack of Fang et al. 2020, boosted).
* **backdoor** (naive, boosted) — train on the node's rows plus triggered copies labelled with the
  target class, then boost the update by ``n / f`` (model replacement, Bagdasaryan et al. 2020, "How
  To Backdoor Federated Learning", §4.2). Its norm gives it away.
* **adaptive backdoor** — a full-knowledge attacker (it sees the round's honest updates): the
  colluders' mean backdoor shift, made orthogonal to the honest mean and added to it so that the
  update has the honest median norm and a cosine of at least 0.25 to the honest mean
  (:func:`norm_matched`; "constrain-and-scale", Bagdasaryan et al. 2020, §4.3; norm matching as in
  Sun et al. 2019). Every colluder sends the same update.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from medfed.core.params import Parameters
from medfed.learn.base import TabularData

FloatArray = npt.NDArray[np.float64]

SIGN_FLIP_FACTOR = 10.0
SCALING_FACTOR = 100.0


class Attack(enum.StrEnum):
    """What the malicious nodes do."""

    NONE = "none"
    SIGN_FLIP = "sign_flip"
    SCALING = "scaling"
    BACKDOOR = "backdoor"
    ADAPTIVE_BACKDOOR = "adaptive_backdoor"

    @property
    def is_backdoor(self) -> bool:
        """True when the malicious nodes train on triggered rows."""
        return self in (Attack.BACKDOOR, Attack.ADAPTIVE_BACKDOOR)


@dataclass(frozen=True, slots=True, kw_only=True)
class Trigger:
    """Set ``features`` (column indices) to ``value`` and the label to ``target``.

    The default trigger of ``poisoning.py`` sets ``fbs``, ``restecg_1`` and ``restecg_2`` to 3 standard
    deviations: the two ``restecg`` dummies are one-hot, so no real patient has both.
    """

    features: tuple[int, ...]
    value: float = 3.0
    target: float = 0.0

    def __post_init__(self) -> None:
        if not self.features or len(set(self.features)) != len(self.features) or min(self.features) < 0:
            raise ValueError(f"trigger features must be distinct column indices >= 0, got {self.features!r}")
        if self.target not in (0.0, 1.0):
            raise ValueError(f"trigger target must be a label in {{0, 1}}, got {self.target!r}")

    def stamp(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """A copy of ``x`` with the trigger features set."""
        if max(self.features) >= x.shape[1]:
            raise ValueError(f"trigger feature {max(self.features)} is out of range for {x.shape[1]} columns")
        out = np.array(x, dtype=np.float32, copy=True)
        out[:, list(self.features)] = self.value
        return out


def poisoned_data(data: TabularData, trigger: Trigger) -> TabularData:
    """``data`` with a triggered, target-labelled copy of every training row appended (test split kept)."""
    x = np.concatenate([data.x_train, trigger.stamp(data.x_train)])
    y = np.concatenate([data.y_train, np.full(len(data.y_train), trigger.target, dtype=np.float32)])
    return TabularData(x_train=x, y_train=y, x_test=data.x_test, y_test=data.y_test, feature_names=data.feature_names)


def triggered_test(data: TabularData, trigger: Trigger) -> TabularData:
    """The test rows whose true label is not the target, stamped with the trigger (for backdoor success)."""
    keep = data.y_test != trigger.target
    return TabularData(
        x_train=data.x_train,
        y_train=data.y_train,
        x_test=trigger.stamp(data.x_test[keep]),
        y_test=data.y_test[keep],
        feature_names=data.feature_names,
    )


def backdoor_success(logits: npt.ArrayLike, trigger: Trigger) -> float:
    """Fraction of triggered rows classified as the target (logits of rows whose label is not it)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.size == 0:
        raise ValueError("no triggered rows to score")
    predicted = (z >= 0).astype(np.float64)
    return float(np.mean(predicted == trigger.target))


def flatten(params: Parameters, reference: Parameters) -> FloatArray:
    """The update ``params − reference`` as one float64 vector."""
    return np.concatenate(
        [(a.astype(np.float64) - r).ravel() for a, r in zip(params.arrays, reference.arrays, strict=True)]
    )


def unflatten(update: FloatArray, reference: Parameters) -> Parameters:
    """``reference + update`` in the reference's names, shapes and dtypes."""
    arrays, start = [], 0
    for r in reference.arrays:
        stop = start + r.size
        arrays.append(np.asarray(r + update[start:stop].reshape(r.shape), dtype=r.dtype))
        start = stop
    if start != update.size:
        raise ValueError(f"update has {update.size} values, the model {start}")
    return Parameters.from_arrays(reference.names, tuple(arrays))


def _norm(v: FloatArray) -> float:
    return float(np.linalg.norm(v))


def cosine(a: FloatArray, b: FloatArray) -> float:
    """Cosine similarity of two vectors (0 when either is zero)."""
    na, nb = _norm(a), _norm(b)
    return 0.0 if na == 0 or nb == 0 else float(a @ b) / (na * nb)


def sign_flip(clean: FloatArray, *, factor: float = SIGN_FLIP_FACTOR) -> FloatArray:
    """``−factor · clean``."""
    return -factor * clean


def scaling(clean: FloatArray, rng: np.random.Generator, *, factor: float = SCALING_FACTOR) -> FloatArray:
    """A uniformly random direction with norm ``factor · ‖clean‖``."""
    direction = rng.standard_normal(clean.size)
    return direction / _norm(direction) * factor * _norm(clean)


def boosted(update: FloatArray, *, n_nodes: int, n_malicious: int) -> FloatArray:
    """Model replacement's boost ``n / f`` (Bagdasaryan et al. 2020 with server rate 1)."""
    return update * (n_nodes / n_malicious)


def norm_matched(shift: FloatArray, honest: Sequence[FloatArray], *, min_cosine: float = 0.25) -> FloatArray:
    """The adaptive attacker's update ``a·ĉ + b·d̂``, with the median norm ``τ`` of the honest updates.

    A *full-knowledge* attacker (Fang et al. 2020, "Local Model Poisoning Attacks to Byzantine-Robust
    Federated Learning", §3): it sees the honest updates of the round. ``ĉ`` is the direction of their
    mean ``c̄``; ``d̂`` that of the part of the backdoor ``shift`` (backdoored minus clean update of
    the colluders) orthogonal to ``c̄``. ``a = ‖c̄‖`` clamped to ``[min_cosine·τ, τ]`` and ``b`` fills
    the rest of the norm: the update has an honest norm, a cosine of at least ``min_cosine`` to the
    honest mean, and sits about as far from ``c̄`` as an honest update does (honest updates spread
    around their mean by roughly ``sqrt(τ² − ‖c̄‖²)``).
    """
    if not honest:
        raise ValueError("need at least one honest update")
    if not 0.0 < min_cosine <= 1.0:
        raise ValueError(f"min_cosine must be in (0, 1], got {min_cosine!r}")
    c: FloatArray = np.asarray(np.mean(honest, axis=0), dtype=np.float64)
    c_norm = _norm(c)
    if c_norm == 0.0:
        raise ValueError("the mean honest update is zero: no direction to match")
    c_hat = c / c_norm
    d = shift - float(shift @ c_hat) * c_hat
    target = float(np.median([_norm(v) for v in honest]))
    a = min(max(c_norm, min_cosine * target), target)
    b = math.sqrt(max(target**2 - a**2, 0.0))
    d_norm = _norm(d)
    return a * c_hat + (b / d_norm) * d if d_norm > 0 else a * c_hat


def update_norms(updates: Sequence[FloatArray]) -> FloatArray:
    """L2 norm of each update."""
    return np.array([_norm(u) for u in updates])


def is_finite_update(update: FloatArray) -> bool:
    """True when every value is finite (a boosted update can overflow float32 models)."""
    return bool(np.all(np.isfinite(update))) and math.isfinite(_norm(update))
