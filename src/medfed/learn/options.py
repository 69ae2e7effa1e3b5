"""Task options: parsed once from a task's ``config`` into frozen values, every problem collected.

A task's ``config`` is the job's ``task_options`` plus the strategy's extras (FedProx's
``proximal_mu``). Unknown keys are refused, so a misspelt option (``learning_rate``) fails loudly
instead of silently training with a default.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from medfed.core.errors import ConfigError
from medfed.core.records import Scalar


class DPClipping(enum.StrEnum):
    """How DP-SGD bounds each example's gradient (Opacus): hooks (the default) store every
    per-example gradient; ghost clipping computes per-example gradient norms without materialising
    them (Li et al. 2022; Bu et al. 2023), at the price of a second backward pass. Both clip to the
    same norm: the privacy is the same. For the small tabular models hooks are faster
    (``benchmarks/dp_sgd_speed.py``)."""

    GHOST = "ghost"
    HOOKS = "hooks"


class OptimizerName(enum.StrEnum):
    """Local optimisers a task may use."""

    ADAM = "adam"
    SGD = "sgd"


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """Type, default and allowed range of one option."""

    kind: type[int] | type[float] | type[str] | type[bool]
    default: Scalar | None
    check: Callable[[Scalar], bool] = lambda _: True
    allowed: str = ""


def _positive(x: Scalar) -> bool:
    return not isinstance(x, str) and x > 0


def _non_negative(x: Scalar) -> bool:
    return not isinstance(x, str) and x >= 0


def _typed(key: str, value: Scalar, kind: type, problems: list[str]) -> Scalar | None:
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    problems.append(f"{key} must be {kind.__name__}, got {type(value).__name__} {value!r}")
    return None


def parse_options(
    config: Mapping[str, Scalar], spec: Mapping[str, OptionSpec], *, where: str
) -> dict[str, Scalar | None]:
    """Check ``config`` against ``spec``; fill defaults.

    Raises
    ------
    ConfigError
        Unknown keys, wrong types or values out of range, all listed in one message.
    """
    problems = [f"unknown option {k!r}, allowed: {sorted(spec)}" for k in config if k not in spec]
    out: dict[str, Scalar | None] = {}
    for key, opt in spec.items():
        if key not in config:
            out[key] = opt.default
            continue
        value = _typed(key, config[key], opt.kind, problems)
        if value is not None and not opt.check(value):
            problems.append(f"{key} must be {opt.allowed}, got {value!r}")
        out[key] = value
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{where}: {len(problems)} problem(s) in the task options:\n{lines}")
    return out


#: Options of the trainable tasks; ``hidden`` only for the MLP.
TRAIN_SPEC: dict[str, OptionSpec] = {
    "input_dim": OptionSpec(int, None, _positive, "> 0"),
    "local_steps": OptionSpec(int, 100, _positive, "> 0"),
    "batch_size": OptionSpec(int, 4, _positive, "> 0"),
    "lr": OptionSpec(float, 0.01, _positive, "> 0"),
    "optimizer": OptionSpec(
        str, "sgd", lambda x: x in set(OptimizerName), f"one of {[o.value for o in OptimizerName]}"
    ),
    "proximal_mu": OptionSpec(float, 0.0, _non_negative, ">= 0"),
    "hidden": OptionSpec(int, 16, _positive, "> 0"),
    # set by the node's privacy middleware from the job's [privacy] table, not by researchers
    "dp_noise_multiplier": OptionSpec(float, 0.0, _non_negative, ">= 0"),
    "dp_clip_norm": OptionSpec(float, 1.0, _positive, "> 0"),
    "dp_clipping": OptionSpec(str, "hooks", lambda x: x in set(DPClipping), f"one of {[c.value for c in DPClipping]}"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainOptions:
    """Parsed options of a trainable task (see :data:`TRAIN_SPEC` for defaults)."""

    input_dim: int | None
    local_steps: int
    batch_size: int
    lr: float
    optimizer: OptimizerName
    proximal_mu: float
    hidden: int
    dp_noise_multiplier: float = 0.0
    dp_clip_norm: float = 1.0
    dp_clipping: DPClipping = DPClipping.HOOKS

    @classmethod
    def parse(cls, config: Mapping[str, Scalar], *, with_hidden: bool, where: str) -> TrainOptions:
        """Parse a task ``config``; ``with_hidden`` admits the MLP's ``hidden`` option."""
        spec = TRAIN_SPEC if with_hidden else {k: v for k, v in TRAIN_SPEC.items() if k != "hidden"}
        v = parse_options(config, spec, where=where)
        return cls(
            input_dim=None if v["input_dim"] is None else int(v["input_dim"]),
            local_steps=int(v["local_steps"]),  # type: ignore[arg-type]  # parse_options checked the type
            batch_size=int(v["batch_size"]),  # type: ignore[arg-type]  # idem
            lr=float(v["lr"]),  # type: ignore[arg-type]  # idem
            optimizer=OptimizerName(str(v["optimizer"])),
            proximal_mu=float(v["proximal_mu"]),  # type: ignore[arg-type]  # idem
            hidden=int(v.get("hidden") or TRAIN_SPEC["hidden"].default),  # type: ignore[arg-type]  # idem
            dp_noise_multiplier=float(v["dp_noise_multiplier"]),  # type: ignore[arg-type]  # idem
            dp_clip_norm=float(v["dp_clip_norm"]),  # type: ignore[arg-type]  # idem
            dp_clipping=DPClipping(str(v["dp_clipping"])),
        )


#: Options of the identity task; it also accepts (and ignores) the training options.
IDENTITY_SPEC: dict[str, OptionSpec] = {
    "n_params": OptionSpec(int, 1024, _positive, "> 0"),
    "n_tensors": OptionSpec(int, 4, _positive, "> 0"),
    "num_examples": OptionSpec(int, 1, _positive, "> 0"),
    "random_init": OptionSpec(bool, False),
    **TRAIN_SPEC,
}
