"""Client-level differential privacy for federated averaging (DP-FedAvg), with adaptive clipping.

The privacy unit here is the *node*: the released model hardly depends on whether any one site
took part. With few hospitals this costs a lot (see DESIGN.md, "Privacy design facts"); patient-
level DP-SGD inside each site is the default there, and this is for federations with many nodes.

The mechanism (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models",
Algorithm 1, with the fixed denominator of its estimator ``f̃_f``)::

    uᵢ  = clip(modelᵢ − global, C)                       at node i, ‖uᵢ‖₂ ≤ C
    Σ   = Σᵢ uᵢ + N(0, (σ_Δ C)² I)                        noise on the sum
    Δ   = Σ / m                                           m = expected_nodes, fixed
    global' = inner.aggregate(global, global + Δ)         FedAvg, FedAdam, ... on the noised mean

The denominator is the configured ``m``, not the number of nodes that replied: that number is
itself sensitive under add/remove-one-node neighbouring, and so is any example count, which is
why updates are not weighted by examples. The noise is added either by the coordinator
(:attr:`NoiseMode.CENTRAL`: it must be trusted to do so, and sees clipped updates), or in shares
by the nodes (:attr:`NoiseMode.DISTRIBUTED`: each adds N(0, (σ_Δ C)²/m), so the sum of m
shares carries (σ_Δ C)²; with secure aggregation the coordinator sees only that sum). Fewer than
``m`` surviving nodes means less noise than accounted: set ``m`` to the number of nodes the
round must keep (the secure-aggregation threshold), not the number invited.

Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive Clipping",
Algorithm 1) moves C geometrically toward the ``γ`` quantile of update norms. Each node also
sends ``bᵢ = 1[‖modelᵢ − global‖ ≤ C] − ½`` (centred, so its sensitivity is ½), noised like the
update (σ_b on the sum, centrally or in shares), and::

    b̄  = (Σᵢ bᵢ + N(0, σ_b²)) / m + ½                     noised fraction of unclipped updates
    C' = C · exp(−η_C (b̄ − γ))

The two releases together are as private as one Gaussian mechanism with noise multiplier ``z``
when the update noise is ``σ_Δ = (z⁻² − (2σ_b)⁻²)^(-1/2)`` (Andrew et al., Theorem 1), so
``noise_multiplier`` is always the ``z`` to give the accountant:
``epsilon(noise_multiplier=z, sampling_rate=q, steps=rounds, ...)``, with ``q`` the chance
that a node is sampled in a round (1.0 when every node takes part).

How the coordinator uses it (the in-process simulation does the same in
:meth:`DPFedAvg.aggregate_models`)
------------------------------------------------------------------------------------------
1. State: ``state = dp.initial_state(params)`` holds C (``dp/clip_norm``) and the inner
   strategy's state, so it checkpoints like a model.
2. Each round ``r`` the task config is ``dp.fit_config(r) | dp.node_config(state)``: the clip
   norm, noise mode, noise multipliers and ``m`` the node needs (``fit_config`` alone cannot see
   the state, so ``node_config`` carries the round's C).
3. At the node, DP middleware (after training, before secure-aggregation masking) rebuilds the
   rule with ``DPAggregator.from_node_config(config)``, computes ``u = model − global`` and
   ``node_update(u, clip_norm=C, rng=secure_rng())``, and replies with
   ``contribution.to_parameters()`` in place of the model and no example count. A node may refuse
   a config whose noise is below its own policy.
4. The coordinator sums the replies with weight 1 each (secure aggregation yields exactly this
   sum), ``DPContribution.from_parameters(total)``, and calls
   ``dp.aggregate_sum(r, global, summed, state, rng=secure_rng())``. In central mode that call
   adds the noise; in distributed mode it adds none. It never needs a single node's reply.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medfed.aggregation.base import Strategy
from medfed.core.errors import ConfigError, ValidationError
from medfed.core.params import Parameters
from medfed.core.records import Scalar
from medfed.privacy.mechanisms import add_noise, clip_update, combine, secure_rng

#: Name of the 0-d tensor that carries a contribution's (noised, centred) unclipped indicator.
UNCLIPPED_NAME = "dp/unclipped"
#: Name of the clip norm in a :class:`DPFedAvg` state; the inner state follows, prefixed ``inner/``.
CLIP_NORM_NAME = "dp/clip_norm"
_INNER = "inner/"


class NoiseMode(enum.StrEnum):
    """Who adds the Gaussian noise: the coordinator, or every node a share of it."""

    CENTRAL = "central"
    DISTRIBUTED = "distributed"


def _positive(value: float) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value > 0


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptiveClipping:
    """Adaptive clipping settings (Andrew et al. 2021); defaults are the paper's.

    Parameters
    ----------
    target_quantile
        γ in (0, 1): the fraction of updates that should be left unclipped.
    learning_rate
        η_C > 0 of the geometric update ``C' = C · exp(−η_C (b̄ − γ))``.
    count_stddev
        σ_b > 0, the noise on the count of unclipped updates; ``None`` means ``m / 20``.
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if not (_positive(self.target_quantile) and self.target_quantile < 1):
            problems.append(f"target_quantile must be in (0, 1), got {self.target_quantile!r}")
        if not _positive(self.learning_rate):
            problems.append(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.count_stddev is not None and not _positive(self.count_stddev):
            problems.append(f"count_stddev must be > 0, got {self.count_stddev!r}")
        if problems:
            raise ConfigError("adaptive clipping: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class DPContribution:
    """A node's clipped (and, in distributed mode, noised) update, or the sum of several.

    ``unclipped`` is the centred indicator ``1[‖u‖ ≤ C] − ½`` plus any noise share (0 without
    adaptive clipping); summed over nodes it estimates the unclipped count minus ``m/2``.
    """

    update: Parameters
    unclipped: float = 0.0

    @classmethod
    def sum(cls, items: Sequence[DPContribution]) -> DPContribution:
        """The sum of ``items`` (what secure aggregation reveals), in float64 then their dtypes."""
        if not items:
            raise ValidationError("no contributions to sum")
        total = combine([c.update for c in items], template=items[0].update)
        return cls(total, math.fsum(c.unclipped for c in items))

    def to_parameters(self) -> Parameters:
        """The update with a 0-d float64 ``dp/unclipped`` tensor appended: one thing to mask and sum."""
        extra = np.asarray(self.unclipped, dtype=np.float64)
        return Parameters.from_arrays((*self.update.names, UNCLIPPED_NAME), (*self.update.arrays, extra))

    @classmethod
    def from_parameters(cls, params: Parameters) -> DPContribution:
        """Inverse of :meth:`to_parameters` (also for a sum of packed contributions)."""
        if not params.names or params.names[-1] != UNCLIPPED_NAME or params.arrays[-1].shape != ():
            raise ValidationError(f"a DP contribution ends with a 0-d {UNCLIPPED_NAME!r} tensor", where="dp")
        update = Parameters.from_arrays(params.names[:-1], params.arrays[:-1])
        return cls(update, float(params.arrays[-1]))


@dataclass(frozen=True, slots=True, kw_only=True)
class DPAggregator:
    """The pure DP-FedAvg rule: :meth:`node_update` at each node, :meth:`server_step` on the sum.

    Parameters
    ----------
    noise_multiplier
        z > 0, the effective noise multiplier to account with (see the module notes).
    expected_nodes
        m >= 1: the fixed denominator, and the number of noise shares in distributed mode.
    mode
        Who adds the noise.
    adaptive
        Adaptive clipping, or ``None`` for a fixed clip norm.

    Raises
    ------
    ConfigError
        Out-of-range values, or adaptive clipping with ``z >= 2 σ_b`` (no σ_Δ satisfies
        Andrew et al.'s Theorem 1 then: raise ``count_stddev`` or lower ``z``).
    """

    noise_multiplier: float
    expected_nodes: int
    mode: NoiseMode = NoiseMode.CENTRAL
    adaptive: AdaptiveClipping | None = None

    def __post_init__(self) -> None:
        problems = []
        if not _positive(self.noise_multiplier):
            problems.append(f"noise_multiplier must be > 0, got {self.noise_multiplier!r}")
        if isinstance(self.expected_nodes, bool) or not isinstance(self.expected_nodes, int) or self.expected_nodes < 1:
            problems.append(f"expected_nodes must be an integer >= 1, got {self.expected_nodes!r}")
        if not isinstance(self.mode, NoiseMode):
            problems.append(f"mode must be one of {[m.value for m in NoiseMode]}, got {self.mode!r}")
        if not problems and self.adaptive is not None and self.noise_multiplier >= 2 * self.count_stddev:
            problems.append(
                f"adaptive clipping needs noise_multiplier < 2 * count_stddev, got {self.noise_multiplier!r} "
                f">= 2 * {self.count_stddev!r}"
            )
        if problems:
            raise ConfigError("DP-FedAvg: " + "; ".join(problems))

    @property
    def count_stddev(self) -> float:
        """σ_b, the noise on the unclipped count (0 without adaptive clipping)."""
        if self.adaptive is None:
            return 0.0
        given = self.adaptive.count_stddev
        return given if given is not None else self.expected_nodes / 20

    @property
    def update_noise_multiplier(self) -> float:
        """σ_Δ: z itself, or ``(z⁻² − (2σ_b)⁻²)^(-1/2)`` with adaptive clipping."""
        z = self.noise_multiplier
        if self.adaptive is None:
            return z
        return float((z**-2 - (2 * self.count_stddev) ** -2) ** -0.5)

    def _share(self) -> float:
        # Distributed mode: each of m nodes adds variance 1/m of the total (std / sqrt(m)).
        return 1.0 / math.sqrt(self.expected_nodes) if self.mode is NoiseMode.DISTRIBUTED else 0.0

    def node_update(self, update: Parameters, *, clip_norm: float, rng: np.random.Generator) -> DPContribution:
        """Clip one node's update to ``clip_norm`` and, in distributed mode, add its noise share.

        Raises
        ------
        ValidationError
            ``clip_norm`` is not > 0, or ``update`` holds NaN or inf.
        """
        clipped, was_clipped = clip_update(update, clip_norm)
        share = self._share()
        noised = add_noise(clipped, share * self.update_noise_multiplier * clip_norm, rng)
        unclipped = 0.0
        if self.adaptive is not None:
            unclipped = (0.0 if was_clipped else 1.0) - 0.5
            if share:
                unclipped += float(rng.normal(0.0, share * self.count_stddev))
        return DPContribution(noised, unclipped)

    def server_step(
        self, summed: DPContribution, *, clip_norm: float, rng: np.random.Generator
    ) -> tuple[Parameters, float]:
        """The noised mean update ``(Σ + noise) / m`` and the next round's clip norm.

        ``summed`` is the sum of every node's :meth:`node_update` this round, made with
        ``clip_norm``. In central mode the noise is added here; in distributed mode it is already
        in the sum. Without adaptive clipping the clip norm comes back unchanged.
        """
        if not _positive(clip_norm):
            raise ValidationError(f"clip_norm must be > 0, got {clip_norm!r}", where="dp server step")
        central = self.mode is NoiseMode.CENTRAL
        total = summed.update
        if central:
            total = add_noise(total, self.update_noise_multiplier * clip_norm, rng)
        mean = combine([total], template=total, weights=[1.0 / self.expected_nodes])
        if self.adaptive is None:
            return mean, clip_norm
        count = summed.unclipped + (float(rng.normal(0.0, self.count_stddev)) if central else 0.0)
        fraction = count / self.expected_nodes + 0.5
        next_clip = clip_norm * math.exp(-self.adaptive.learning_rate * (fraction - self.adaptive.target_quantile))
        return mean, next_clip

    def node_config(self, clip_norm: float) -> dict[str, Scalar]:
        """The task configuration a node needs to run :meth:`node_update` this round."""
        config: dict[str, Scalar] = {
            "dp_clip_norm": float(clip_norm),
            "dp_mode": self.mode.value,
            "dp_noise_multiplier": float(self.noise_multiplier),
            "dp_expected_nodes": self.expected_nodes,
            "dp_adaptive": self.adaptive is not None,
        }
        if self.adaptive is not None:
            config["dp_count_stddev"] = self.count_stddev
        return config

    @classmethod
    def from_node_config(cls, config: Mapping[str, Scalar]) -> tuple[DPAggregator, float]:
        """The rule and the round's clip norm from :meth:`node_config`'s keys.

        The node only needs ``update_noise_multiplier``, ``count_stddev`` and the mode, so the
        adaptive learning rate and quantile (server-side) take their defaults here.

        Raises
        ------
        ConfigError
            A key is missing or a value is out of range.
        """
        try:
            mode = NoiseMode(str(config["dp_mode"]))
            adaptive = (
                AdaptiveClipping(count_stddev=float(config["dp_count_stddev"])) if config["dp_adaptive"] else None
            )
            rule = cls(
                noise_multiplier=float(config["dp_noise_multiplier"]),
                expected_nodes=int(config["dp_expected_nodes"]),
                mode=mode,
                adaptive=adaptive,
            )
            return rule, float(config["dp_clip_norm"])
        except KeyError as exc:
            raise ConfigError(f"DP task config lacks {exc.args[0]!r}") from None
        except ValueError as exc:
            allowed = [m.value for m in NoiseMode]
            raise ConfigError(f"bad DP task config ({exc}); dp_mode allowed: {allowed}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class DPFedAvg:
    """DP-FedAvg around any strategy: the inner strategy steps along the noised mean update.

    Not a drop-in :class:`~medfed.aggregation.base.Strategy`: ``Strategy.aggregate`` receives
    only the example-weighted mean of node models, after which no update can be clipped, and it
    takes no random generator to draw noise from. Use :meth:`aggregate_models` where every node's
    model is at hand (the in-process simulation) and :meth:`aggregate_sum` where only the sum of
    node contributions is (the coordinator; see the module notes for the protocol).

    Parameters
    ----------
    inner
        The strategy that turns the noised mean into the next model (FedAvg, FedAdam, ...).
    clip_norm
        C > 0, or the initial C with adaptive clipping (Andrew et al. start at 0.1).
    noise_multiplier, expected_nodes, mode, adaptive
        As for :class:`DPAggregator`.
    """

    inner: Strategy
    clip_norm: float
    noise_multiplier: float
    expected_nodes: int
    mode: NoiseMode = NoiseMode.CENTRAL
    adaptive: AdaptiveClipping | None = None

    def __post_init__(self) -> None:
        if not _positive(self.clip_norm):
            raise ConfigError(f"DP-FedAvg: clip_norm must be > 0, got {self.clip_norm!r}")
        self.rule  # noqa: B018 - validates the remaining fields now, not at the first round

    @property
    def rule(self) -> DPAggregator:
        """The :class:`DPAggregator` these settings describe."""
        return DPAggregator(
            noise_multiplier=self.noise_multiplier,
            expected_nodes=self.expected_nodes,
            mode=self.mode,
            adaptive=self.adaptive,
        )

    def fit_config(self, rnd: int) -> dict[str, Scalar]:
        """The inner strategy's task configuration (merge :meth:`node_config` into it)."""
        return self.inner.fit_config(rnd)

    def initial_state(self, params: Parameters) -> Parameters:
        """``dp/clip_norm`` (0-d float64), then the inner state with names prefixed ``inner/``."""
        inner = self.inner.initial_state(params)
        names = (CLIP_NORM_NAME, *(_INNER + n for n in inner.names))
        return Parameters.from_arrays(names, (np.asarray(float(self.clip_norm)), *inner.arrays))

    @staticmethod
    def clip_norm_of(state: Parameters) -> float:
        """The clip norm for the coming round, read from a :class:`DPFedAvg` state."""
        if not state.names or state.names[0] != CLIP_NORM_NAME:
            raise ValidationError(f"a DP-FedAvg state starts with {CLIP_NORM_NAME!r}", where="dp state")
        return float(state.arrays[0])

    def node_config(self, state: Parameters) -> dict[str, Scalar]:
        """What nodes need this round (clip norm, mode, noise), from the current state."""
        return self.rule.node_config(self.clip_norm_of(state))

    def aggregate_sum(
        self,
        rnd: int,
        current: Parameters,
        summed: DPContribution,
        state: Parameters,
        *,
        rng: np.random.Generator | None = None,
    ) -> tuple[Parameters, Parameters]:
        """Next model and state from the sum of this round's node contributions.

        ``rng`` defaults to :func:`~medfed.privacy.mechanisms.secure_rng`; pass a seeded one only
        for tests and reproducible simulations.

        Raises
        ------
        ValidationError
            ``summed`` does not match ``current``, or ``state`` is not a DP-FedAvg state.
        """
        rng = secure_rng() if rng is None else rng
        clip_norm = self.clip_norm_of(state)
        current.check_like(summed.update, where=f"round {rnd}: summed DP contributions")
        mean_update, next_clip = self.rule.server_step(summed, clip_norm=clip_norm, rng=rng)
        proposal = combine([current, mean_update], template=current)
        inner_state = Parameters.from_arrays(tuple(n.removeprefix(_INNER) for n in state.names[1:]), state.arrays[1:])
        params, inner_next = self.inner.aggregate(rnd, current, proposal, inner_state)
        names = (CLIP_NORM_NAME, *(_INNER + n for n in inner_next.names))
        return params, Parameters.from_arrays(names, (np.asarray(next_clip), *inner_next.arrays))

    def aggregate_models(
        self,
        rnd: int,
        current: Parameters,
        models: Sequence[Parameters],
        state: Parameters,
        *,
        rng: np.random.Generator | None = None,
    ) -> tuple[Parameters, Parameters]:
        """Next model and state from every node's model: node updates, sum, server step.

        Each node's noise comes from its own child of ``rng`` (``rng.spawn``), the server's from
        another, so results are deterministic for a seeded ``rng`` whatever the node order.
        """
        rng = secure_rng() if rng is None else rng
        if not models:
            raise ValidationError(f"round {rnd}: no node models to aggregate")
        clip_norm = self.clip_norm_of(state)
        rule = self.rule
        server_rng, *node_rngs = rng.spawn(len(models) + 1)
        contributions = []
        for i, (model, node_rng) in enumerate(zip(models, node_rngs, strict=True)):
            current.check_like(model, where=f"round {rnd}, node {i}")
            update = combine([model, current], template=current, weights=[1.0, -1.0])
            contributions.append(rule.node_update(update, clip_norm=clip_norm, rng=node_rng))
        return self.aggregate_sum(rnd, current, DPContribution.sum(contributions), state, rng=server_rng)
