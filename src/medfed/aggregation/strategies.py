"""Server-side aggregation strategies and the factory that builds them from a job's spec.

Every strategy receives the example-weighted mean of the nodes' models (computed by the
coordinator with :class:`~medfed.aggregation.mean.WeightedMean`) and returns the next global
model. The adaptive ones follow Reddi et al. 2021, "Adaptive Federated Optimization",
Algorithm 2, with the pseudo-gradient ``delta = mean - current``::

    m = beta_1 * m + (1 - beta_1) * delta
    v = beta_2 * v + (1 - beta_2) * delta**2                       # FedAdam
    v = v - (1 - beta_2) * delta**2 * sign(v - delta**2)           # FedYogi
    v = v + delta**2                                               # FedAdagrad
    x = x + eta * m / (sqrt(v) + tau)

Their state is a :class:`Parameters` named ``m/<name>`` and ``v/<name>``, so it checkpoints like
a model. ``v`` starts at ``tau**2`` (Algorithm 2 asks for ``v_{-1} >= tau**2``), ``m`` at zero.
Strategies are pure: they never mutate their inputs.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medfed.aggregation.base import Strategy
from medfed.core.errors import ConfigError, RegistryError
from medfed.core.params import FloatArray, Parameters
from medfed.core.records import Scalar, StrategySpec

_EMPTY = Parameters((), ())


class StrategyName(enum.StrEnum):
    """The strategies a job may name in ``[strategy] name``."""

    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"
    FEDADAGRAD = "fedadagrad"


#: Allowed range of every option, by name: (test, description for the error message).
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "server_lr": (lambda x: x > 0, "> 0"),
    "mu": (lambda x: x >= 0, ">= 0"),
    "eta": (lambda x: x > 0, "> 0"),
    "beta_1": (lambda x: 0 <= x < 1, "in [0, 1)"),
    "beta_2": (lambda x: 0 <= x < 1, "in [0, 1)"),
    "tau": (lambda x: x > 0, "> 0"),
}


def _range_problems(values: dict[str, float]) -> list[str]:
    out = []
    for key, value in values.items():
        test, allowed = _RANGES[key]
        if not test(value):
            out.append(f"{key} must be {allowed}, got {value!r}")
    return out


def _config_error(problems: list[str], name: str) -> ConfigError:
    lines = "\n".join(f"  - {p}" for p in problems)
    return ConfigError(f"[strategy] {name}: {len(problems)} problem(s):\n{lines}")


def _check(strategy: object) -> None:
    values = {f.name: getattr(strategy, f.name) for f in dataclasses.fields(strategy)}  # type: ignore[arg-type]  # every strategy is a dataclass
    if problems := _range_problems(values):
        raise _config_error(problems, type(strategy).__name__)


def _state_dtype(dtype: np.dtype) -> np.dtype:
    # float16 cannot hold tau**2 or small squared deltas: keep optimiser state in >= float32.
    return np.promote_types(dtype, np.float32)


@dataclass(frozen=True, slots=True, kw_only=True)
class FedAvg:
    """Federated averaging (McMahan et al. 2017): the next model is the weighted mean.

    Parameters
    ----------
    server_lr
        Step along ``mean - current``; 1.0 (the default) returns the mean itself.
    """

    server_lr: float = 1.0

    def __post_init__(self) -> None:
        _check(self)

    def fit_config(self, rnd: int) -> dict[str, Scalar]:
        """No extra task configuration."""
        return {}

    def initial_state(self, params: Parameters) -> Parameters:
        """FedAvg keeps no state: an empty :class:`Parameters`."""
        return _EMPTY

    def aggregate(
        self, rnd: int, current: Parameters, mean: Parameters, state: Parameters
    ) -> tuple[Parameters, Parameters]:
        """``current + server_lr * (mean - current)``; the state passes through."""
        current.check_like(mean, where=f"round {rnd}: aggregated mean")
        if self.server_lr == 1.0:
            return mean, state
        arrays = tuple(
            np.asarray(c + self.server_lr * (m.astype(np.float64) - c), dtype=c.dtype)
            for c, m in zip(current.arrays, mean.arrays, strict=True)
        )
        return Parameters.from_arrays(current.names, arrays), state


@dataclass(frozen=True, slots=True, kw_only=True)
class FedProx(FedAvg):
    """FedProx (Li et al. 2020): FedAvg on the server; nodes add ``mu/2 * ||w - w_global||**2``.

    Parameters
    ----------
    mu
        Proximal coefficient sent to the tasks as ``proximal_mu``.
    """

    mu: float = 0.01

    def fit_config(self, rnd: int) -> dict[str, Scalar]:
        """``{"proximal_mu": mu}``, honoured by the tasks' local loss."""
        return {"proximal_mu": self.mu}


@dataclass(frozen=True, slots=True, kw_only=True)
class _Adaptive:
    """Shared body of FedAdam, FedYogi and FedAdagrad (Reddi et al. 2021, Algorithm 2)."""

    eta: float
    beta_1: float
    tau: float

    def __post_init__(self) -> None:
        _check(self)

    def fit_config(self, rnd: int) -> dict[str, Scalar]:
        """No extra task configuration."""
        return {}

    def initial_state(self, params: Parameters) -> Parameters:
        """``m/<name>`` = 0 and ``v/<name>`` = tau**2 for every parameter."""
        names = tuple(f"m/{n}" for n in params.names) + tuple(f"v/{n}" for n in params.names)
        ms = tuple(np.zeros(a.shape, _state_dtype(a.dtype)) for a in params.arrays)
        vs = tuple(np.full(a.shape, self.tau**2, _state_dtype(a.dtype)) for a in params.arrays)
        return Parameters.from_arrays(names, ms + vs)

    def _second_moment(self, v: FloatArray, delta_sq: FloatArray) -> FloatArray:
        raise NotImplementedError  # each subclass defines its rule

    def aggregate(
        self, rnd: int, current: Parameters, mean: Parameters, state: Parameters
    ) -> tuple[Parameters, Parameters]:
        """One server optimiser step along ``delta = mean - current``."""
        where = f"round {rnd}"
        current.check_like(mean, where=f"{where}: aggregated mean")
        self.initial_state(current).check_like(state, where=f"{where}: strategy state")
        n = len(current)
        models, ms, vs = [], [], []
        for c, mu, m, v in zip(current.arrays, mean.arrays, state.arrays[:n], state.arrays[n:], strict=True):
            x = c.astype(np.float64)
            delta = mu.astype(np.float64) - x
            m_new = self.beta_1 * m + (1.0 - self.beta_1) * delta
            v_new = self._second_moment(v.astype(np.float64), delta * delta)
            # np.asarray: arithmetic on 0-d arrays yields numpy scalars, not arrays
            models.append(np.asarray(x + self.eta * m_new / (np.sqrt(v_new) + self.tau), dtype=c.dtype))
            ms.append(np.asarray(m_new, dtype=m.dtype))
            vs.append(np.asarray(v_new, dtype=v.dtype))
        return (
            Parameters.from_arrays(current.names, tuple(models)),
            Parameters.from_arrays(state.names, tuple(ms + vs)),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class FedAdam(_Adaptive):
    """FedAdam: ``v = beta_2 v + (1 - beta_2) delta**2``. Defaults follow Flower's FedAdam."""

    eta: float = 0.1
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-9

    def _second_moment(self, v: FloatArray, delta_sq: FloatArray) -> FloatArray:
        return self.beta_2 * v + (1.0 - self.beta_2) * delta_sq


@dataclass(frozen=True, slots=True, kw_only=True)
class FedYogi(_Adaptive):
    """FedYogi: ``v = v - (1 - beta_2) delta**2 sign(v - delta**2)``. Flower's defaults."""

    eta: float = 0.01
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3

    def _second_moment(self, v: FloatArray, delta_sq: FloatArray) -> FloatArray:
        return v - (1.0 - self.beta_2) * delta_sq * np.sign(v - delta_sq)


@dataclass(frozen=True, slots=True, kw_only=True)
class FedAdagrad(_Adaptive):
    """FedAdagrad: ``v = v + delta**2``. Flower's defaults (no momentum: ``beta_1 = 0``)."""

    eta: float = 0.1
    beta_1: float = 0.0
    tau: float = 1e-9

    def _second_moment(self, v: FloatArray, delta_sq: FloatArray) -> FloatArray:
        return v + delta_sq


_CLASSES: dict[StrategyName, type[FedAvg] | type[_Adaptive]] = {
    StrategyName.FEDAVG: FedAvg,
    StrategyName.FEDPROX: FedProx,
    StrategyName.FEDADAM: FedAdam,
    StrategyName.FEDYOGI: FedYogi,
    StrategyName.FEDADAGRAD: FedAdagrad,
}


def _coerce(key: str, value: Scalar, problems: list[str]) -> float | None:
    # Every option today is a real number; booleans are ints to Python but never a valid rate.
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.append(f"{key} must be a number, got {type(value).__name__} {value!r}")
        return None
    if not np.isfinite(value):
        problems.append(f"{key} must be finite, got {value!r}")
        return None
    return float(value)


def make_strategy(spec: StrategySpec) -> Strategy:
    """Build the strategy a job names, checking every option.

    Raises
    ------
    RegistryError
        The name is not a :class:`StrategyName`; the message lists the allowed values.
    ConfigError
        Unknown options, non-numeric values or values out of range; every problem is listed.
    """
    try:
        name = StrategyName(spec.name.lower())
    except ValueError:
        allowed = [s.value for s in StrategyName]
        raise RegistryError(f"unknown strategy {spec.name!r}, allowed: {allowed}") from None
    cls = _CLASSES[name]
    known = {f.name for f in dataclasses.fields(cls)}
    problems: list[str] = []
    kwargs: dict[str, float] = {}
    for key, value in spec.options.items():
        if key not in known:
            problems.append(f"unknown option {key!r} for {name.value}, allowed: {sorted(known)}")
        elif (number := _coerce(key, value, problems)) is not None:
            kwargs[key] = number
    problems += _range_problems(kwargs)
    if problems:
        raise _config_error(problems, name.value)
    return cls(**kwargs)
