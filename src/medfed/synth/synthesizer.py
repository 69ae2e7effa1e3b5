"""The facade: fit a DP synthesizer to a table under (ε, δ), sample from it, save and load it.

A node charges ``fitted.cost`` (ε, δ) to the dataset's ledger: reserve it before calling
:func:`fit`, commit it after (DESIGN.md habit 7). The whole fit — DP bin edges, 1-way and 2-way
measurements, selections — is one ρ-zCDP budget converted to ``cost.epsilon`` at ``cost.delta``.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medfed.core.errors import ConfigError, StoreError
from medfed.synth.domain import ColumnKind, ColumnSpec, Domain, Schema, decode, encode, fit_domain
from medfed.synth.dp import PrivacyCost, epsilon_from_rho, rho_for_epsilon
from medfed.synth.model import TreeModel
from medfed.synth.select import aim, mst


class Method(enum.StrEnum):
    """The DP synthesizers medfed offers."""

    MST = "mst"
    AIM = "aim"


@dataclass(frozen=True, slots=True, kw_only=True)
class SynthConfig:
    """How to fit: method, total (ε, δ), bins per numeric column, share of ρ for DP bin edges."""

    method: Method = Method.AIM
    epsilon: float = 1.0
    delta: float = 1e-6
    bins: int = 8
    bin_share: float = 0.1
    target: str = ""  # MST only: fix the tree as the star around this column (DP naive Bayes)

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.method, Method):
            problems.append(f"method must be one of {[m.value for m in Method]}, got {self.method!r}")
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            problems.append(f"epsilon must be a finite number > 0, got {self.epsilon!r}")
        if not 0 < self.delta < 1:
            problems.append(f"delta must be in (0, 1), got {self.delta!r}")
        if not 2 <= self.bins <= 256:
            problems.append(f"bins must be in [2, 256], got {self.bins!r}")
        if not 0 <= self.bin_share < 1:
            problems.append(f"bin_share must be in [0, 1), got {self.bin_share!r}")
        if self.target and self.method is not Method.MST:
            problems.append(f"target {self.target!r} fixes the tree in advance, which only method 'mst' supports")
        if problems:
            raise ConfigError("synth config: " + "; ".join(problems))


@dataclass(frozen=True, slots=True, kw_only=True)
class FittedSynthesizer:
    """A fitted DP synthesizer: its domain, tree model, chosen marginals and privacy cost."""

    method: Method
    domain: Domain
    model: TreeModel
    cost: PrivacyCost
    edges: tuple[tuple[str, str], ...]
    #: the privacy-ledger job a node charged ``cost`` to ("" when fitted outside a node)
    ledger_job: str = ""

    def sample(self, rows: int, rng: np.random.Generator) -> pd.DataFrame:
        """``rows`` synthetic rows (post-processing: costs no privacy)."""
        return decode(self.model.sample(rows, rng), self.domain, rng)

    def save(self, path: Path) -> None:
        """``path`` (JSON: method, cost, schema, bins), and the tree model beside it as
        ``<stem>.model.json`` + ``<stem>.model.npz`` (arrays, no pickle)."""
        self.model.save(path.with_suffix(".model.json"))
        meta = {
            "format": "medfed-synth/1",
            "method": self.method.value,
            "cost": {"rho": self.cost.rho, "epsilon": self.cost.epsilon, "delta": self.cost.delta},
            "edges": [list(e) for e in self.edges],
            "ledger_job": self.ledger_job,
            "columns": [spec_to_dict(c) for c in self.domain.schema.columns],
            "bin_edges": [e.tolist() for e in self.domain.edges],
        }
        path.write_text(json.dumps(meta, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> FittedSynthesizer:
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            if meta.get("format") != "medfed-synth/1":
                raise StoreError(f"{path}: not a medfed synthesizer (format {meta.get('format')!r})")
            schema = Schema(columns=tuple(spec_from_dict(c) for c in meta["columns"]))
            domain = Domain(schema=schema, edges=tuple(np.asarray(e, dtype=np.float64) for e in meta["bin_edges"]))
            cost = PrivacyCost(**{k: float(meta["cost"][k]) for k in ("rho", "epsilon", "delta")})
            edges = tuple((str(a), str(b)) for a, b in meta["edges"])
            method = Method(meta["method"])
            ledger_job = str(meta.get("ledger_job", ""))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{path}: unreadable synthesizer ({exc})") from exc
        return cls(
            method=method,
            domain=domain,
            model=TreeModel.load(path.with_suffix(".model.json")),
            cost=cost,
            edges=edges,
            ledger_job=ledger_job,
        )


def planned_cost(config: SynthConfig) -> PrivacyCost:
    """What :func:`fit` with ``config`` will spend, known before any data is read: reserve this.

    ``fit`` spends exactly ρ = ``rho_for_epsilon(config.epsilon, config.delta)``, whatever the data,
    so a node can reserve ``(cost.epsilon, cost.delta)`` on its ledger, then fit, then commit
    ``fitted.cost`` (the same values).
    """
    rho = rho_for_epsilon(config.epsilon, config.delta)
    return PrivacyCost(rho=rho, epsilon=epsilon_from_rho(rho, config.delta), delta=config.delta)


def fit(df: pd.DataFrame, schema: Schema, config: SynthConfig, rng: np.random.Generator) -> FittedSynthesizer:
    """Fit ``config.method`` to ``df`` under ``(config.epsilon, config.delta)``-DP.

    Raises
    ------
    ValidationError
        ``df`` does not match ``schema`` (every problem listed, with column and row).
    ConfigError
        ``config.target`` is not a column of ``schema``.
    """
    if config.target and config.target not in schema.names:
        raise ConfigError(f"synth config: target {config.target!r} is not a column of the schema")
    rho = rho_for_epsilon(config.epsilon, config.delta)
    has_numeric = any(c.kind is not ColumnKind.CATEGORICAL for c in schema.columns)
    rho_bins = rho * config.bin_share if has_numeric else 0.0
    domain = fit_domain(df, schema, bins=config.bins, rho=rho_bins, rng=rng)
    codes = encode(df, domain)
    if config.method is Method.AIM:
        model, tree = aim(codes, domain.sizes, domain.ordinal, rho - rho_bins, rng)
    else:
        center = schema.names.index(config.target) if config.target else None
        model, tree = mst(codes, domain.sizes, domain.ordinal, rho - rho_bins, rng, center=center)
    names = schema.names
    return FittedSynthesizer(
        method=config.method,
        domain=domain,
        model=model,
        cost=planned_cost(config),
        edges=tuple((names[i], names[j]) for i, j in tree),
    )


def spec_to_dict(c: ColumnSpec) -> dict[str, object]:
    """A column spec as JSON-ready values (the format of schema files and saved synthesizers)."""
    return {
        "name": c.name,
        "kind": c.kind.value,
        "lower": c.lower,
        "upper": c.upper,
        "categories": list(c.categories),
        "nullable": c.nullable,
        "integer": c.integer,
    }


def spec_from_dict(c: dict[str, object]) -> ColumnSpec:
    """The inverse of :func:`spec_to_dict`; raises ``KeyError``/``TypeError``/``ValueError`` on bad input."""
    cats = c["categories"]
    if not isinstance(cats, list):
        raise TypeError("categories must be a list")
    return ColumnSpec(
        name=str(c["name"]),
        kind=ColumnKind(str(c["kind"])),
        lower=float(str(c["lower"])),
        upper=float(str(c["upper"])),
        categories=tuple(str(x) for x in cats),
        nullable=bool(c["nullable"]),
        integer=bool(c["integer"]),
    )
