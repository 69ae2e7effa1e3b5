"""A federated synthesis job's ``[synthesis]`` table, and a site's ``[synthetic]`` release policy.

Both the coordinator (checks the table at submission, sends it to every site) and the node (fits
under it) read :class:`SynthesisSpec`; :func:`release_policy` reads the ``[synthetic]`` table of a
``site.toml`` for the CLI and the node alike (the node does not import the CLI).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from medfed.core.config import typed_table
from medfed.core.errors import ConfigError, ValidationError
from medfed.synth.domain import Schema
from medfed.synth.evaluate import Subgroup
from medfed.synth.release import ReleasePolicy
from medfed.synth.synthesizer import Method, SynthConfig, spec_from_dict, spec_to_dict

#: The most synthetic rows one site may be asked for (its answer travels in one 1 MiB payload).
MAX_ROWS = 5000
_KEYS = {"method", "epsilon", "delta", "rows", "target", "subgroups", "bins", "public_bounds", "schema"}


@dataclass(frozen=True, slots=True, kw_only=True)
class SynthesisSpec:
    """What every site fits and releases: ``rows`` synthetic rows under (``epsilon``, ``delta``).

    ``target`` is the outcome column (TSTR/TRTR utility; the label of the site's dataset is named
    so in the synthetic rows). The schema's bounds and categories are released with the rows: the
    job either gives them (``schema``, a list of column specs) or declares the ones each site reads
    off its data public (``public_bounds = true``).
    """

    method: Method = Method.MST
    epsilon: float = 1.0
    delta: float = 1e-6
    rows: int = 500
    target: str = "label"
    subgroups: tuple[str, ...] = ()  # "column" or "column:edge,edge" (numeric columns cut at edges)
    bins: int = 8
    public_bounds: bool = False
    schema: Schema | None = None

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.rows <= MAX_ROWS:
            problems.append(f"rows must be in [1, {MAX_ROWS}], got {self.rows!r}")
        if not self.target:
            problems.append("target must name the outcome column")
        if self.schema is None and not self.public_bounds:
            problems.append(
                "give a public schema (a list of column specs) or public_bounds = true: the bounds and categories "
                "of the schema are released with the synthetic rows"
            )
        if self.schema is not None and self.target not in self.schema.names:
            problems.append(f"target {self.target!r} is not a column of the schema {list(self.schema.names)}")
        try:
            self.config()
            self.subgroup_specs()
        except ConfigError as exc:
            problems.append(str(exc))
        if problems:
            raise ValidationError(problems, where="[synthesis]")

    def config(self) -> SynthConfig:
        """The synthesizer's configuration (MST is star-shaped around ``target``, a DP naive Bayes)."""
        target = self.target if self.method is Method.MST else ""
        return SynthConfig(method=self.method, epsilon=self.epsilon, delta=self.delta, bins=self.bins, target=target)

    def subgroup_specs(self) -> tuple[Subgroup, ...]:
        out = []
        for spec in self.subgroups:
            column, _, edges = spec.partition(":")
            try:
                cuts = tuple(float(x) for x in edges.split(",") if x)
            except ValueError:
                raise ConfigError(f"subgroup {spec!r}: edges must be numbers") from None
            out.append(Subgroup(name=column, column=column, edges=cuts))
        return tuple(out)

    def to_json(self) -> str:
        raw: dict[str, Any] = {
            "method": self.method.value, "epsilon": self.epsilon, "delta": self.delta, "rows": self.rows,
            "target": self.target, "subgroups": list(self.subgroups), "bins": self.bins,
            "public_bounds": self.public_bounds,
        }  # fmt: skip
        if self.schema is not None:
            raw["schema"] = [spec_to_dict(c) for c in self.schema.columns]
        return json.dumps(raw, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> SynthesisSpec:
        """Parse a ``[synthesis]`` table (as JSON).

        Raises
        ------
        ValidationError
            Unknown keys, wrong types or values out of range (every problem named).
        """
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ValidationError(f"not JSON: {exc}", where="[synthesis]") from None
        if not isinstance(raw, dict):
            raise ValidationError("must be a table", where="[synthesis]")
        problems = [f"unknown key {k!r} (allowed: {sorted(_KEYS)})" for k in sorted(set(raw) - _KEYS)]
        kinds: dict[str, tuple[type, ...]] = {
            "method": (str,), "epsilon": (int, float), "delta": (int, float), "rows": (int,), "target": (str,),
            "subgroups": (list,), "bins": (int,), "public_bounds": (bool,), "schema": (list,),
        }  # fmt: skip
        for key, types in kinds.items():
            value = raw.get(key)
            if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
                problems.append(f"{key} must be {' or '.join(t.__name__ for t in types)}, got {value!r}")
        if problems:
            raise ValidationError(problems, where="[synthesis]")
        values: dict[str, Any] = {}
        if "method" in raw:
            try:
                values["method"] = Method(raw["method"].lower())
            except ValueError:
                raise ValidationError(
                    f"method {raw['method']!r}: allowed {[m.value for m in Method]}", where="[synthesis]"
                ) from None
        for key in ("epsilon", "delta"):
            if key in raw:
                values[key] = float(raw[key])
                if not math.isfinite(values[key]):
                    raise ValidationError(f"{key} must be finite", where="[synthesis]")
        for key in ("rows", "bins", "target", "public_bounds"):
            if key in raw:
                values[key] = raw[key]
        if "subgroups" in raw:
            values["subgroups"] = tuple(str(s) for s in raw["subgroups"])
        if "schema" in raw:
            try:
                values["schema"] = Schema(columns=tuple(spec_from_dict(c) for c in raw["schema"]))
            except (KeyError, TypeError, ValueError, ValidationError) as exc:
                raise ValidationError(f"schema: {exc}", where="[synthesis]") from None
        return cls(**values)


def release_policy(table: Any, where: str) -> ReleasePolicy:
    """A site's ``[synthetic]`` table (``max_mia_auc``, ``require_dp``, ``block_erased_subgroups``)
    as its release policy; the defaults when ``table`` is ``None``.

    Raises
    ------
    ConfigError
        Not a table, an unknown key, a wrong type or a value out of range (named, with ``where``).
    """
    if table is None:
        return ReleasePolicy()
    kinds: dict[str, type | tuple[type, ...]] = {
        "max_mia_auc": (int, float), "require_dp": bool, "block_erased_subgroups": bool,
    }  # fmt: skip
    try:
        return ReleasePolicy(**typed_table(table, "synthetic", kinds))
    except (ConfigError, ValidationError) as exc:
        raise ConfigError(f"{where}: [synthetic]: {exc}") from None


__all__ = ["MAX_ROWS", "SynthesisSpec", "release_policy"]
