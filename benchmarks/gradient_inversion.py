"""Proof by attack: gradient inversion of one site's update on Fed-Heart-Disease.

The coordinator is the attacker: it sent the global model (medfed's ``LogisticRegressionTask`` or
``MLPTask``, 16 hidden units, freshly initialised) and the training configuration (SGD, lr 0.01 as
in ``HEART_DEFAULTS``, ``K`` local steps on a batch of ``B`` rows), and it gets what the protocol
gives it. The site's update is made by the task's own ``fit`` on real Cleveland training rows
(standardised units). Attacks (``benchmarks/_inversion.py``): the analytic ratios for one row
(``Δw/Δb`` for logistic regression, ``ΔW₁[k]/Δb₁[k]`` for the MLP), and gradient matching
(DLG/Inverting-Gradients: Adam on dummy rows + soft labels, cosine + relative L2, every local step
unrolled, DP clipping simulated; 8 restarts, best by matching loss).

Cases:

1. **none**: the site's update itself, B ∈ {1, 4, 8}, K ∈ {1, 10};
2. **secagg**: medfed's SecAgg+ (``medfed.secagg.run_round``, 4 sites, threshold 3, 32-bit
   quantisation); one row per site. The coordinator attacks (a) site 1's masked vector, (b) the
   unmasked mean as if it were site 1's update of one row, and (c) the mean as one update of all
   4 rows (what the sum does leak: rows, not which site holds them);
3. **dp-fedavg**: ``DPAggregator.node_update`` with the clip at the update's own norm (the smallest
   clip that leaves it unbiased; any smaller clip scales signal and noise alike), distributed
   noise shares for m = 4 nodes (each site adds N(0, (z C)²/4)) at z ∈ {0.5, 1, 2}, and the
   central mode, where the node only clips (the coordinator adds the noise itself);
4. **dp-sgd**: the task's DP-SGD (Opacus: per-example clip C = 1, noise z C on the step's sum),
   z ∈ {0.5, 1, 2}, one row, one step.

Error: per-feature MSE in standardised units after matching reconstructed rows to true rows,
relative to guessing the feature mean (1.0 = no better than knowing nothing); "recovered" = rows
within RMSE 0.1; label accuracy. Seeded and reproducible; torch runs on one thread.

Run: ``.venv/bin/python benchmarks/gradient_inversion.py [--seed S]`` (48 cases, 1-2 min on 2 busy cores).
Writes ``benchmarks/results/gradient_inversion.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import _inversion as inv
from medfed.core.params import Parameters
from medfed.data.heart import load_fed_heart_disease
from medfed.learn.base import TabularData
from medfed.learn.tasks import LogisticRegressionTask, MLPTask
from medfed.privacy.dpfedavg import DPAggregator, NoiseMode
from medfed.secagg import QuantizationConfig, dequantize_sum, quantize, run_round
from medfed.secagg.messages import MaskedInput

RESULTS = Path(__file__).parent / "results" / "gradient_inversion.json"
LR = 0.01  # HEART_DEFAULTS: SGD, lr 0.01
NOISE_MULTIPLIERS = (0.5, 1.0, 2.0)
SITES = 4
DP_SGD_CLIP = 1.0
SECAGG_CLIP = 1.0  # quantisation range of an update element; updates here are ~1e-3
TASKS = {"logreg": LogisticRegressionTask(), "mlp": MLPTask()}


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One attack on one view, with its score."""

    protection: str
    view: str
    model: str
    batch: int
    steps: int
    attack: str
    relative: float
    mse: float
    recovered: float
    label_accuracy: float
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Victim:
    """The rows the attacker wants and the view it attacks."""

    x: np.ndarray
    y: np.ndarray
    observed: np.ndarray


def flatten(params: Parameters) -> np.ndarray:
    """Every array of ``params`` in float64, concatenated in parameter order."""
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in params.arrays])


def unflatten(flat: np.ndarray, like: Parameters) -> Parameters:
    """``flat`` (float64) as :class:`Parameters` with the names and shapes of ``like``."""
    arrays, start = [], 0
    for a in like.arrays:
        arrays.append(np.array(flat[start : start + a.size].reshape(a.shape)))
        start += a.size
    return Parameters.from_arrays(like.names, tuple(arrays))


def site_update(model: str, global_params: Parameters, x: np.ndarray, y: np.ndarray, **options: float) -> np.ndarray:
    """The flat update ``fit(global) − global`` of the task trained on rows (x, y), batch = all rows."""
    data = TabularData(x_train=x, y_train=y, x_test=x, y_test=y, feature_names=tuple(f"f{i}" for i in range(13)))
    config = {"optimizer": "sgd", "lr": LR, "batch_size": len(y), "local_steps": 1, **options}
    fitted = TASKS[model].fit(global_params, data, config, seed=0).parameters
    return flatten(fitted) - flatten(global_params)


def attacks(
    victim: Victim, model: str, global_params: Parameters, config: inv.AttackConfig, seed: int
) -> Iterator[tuple[str, inv.Score, float]]:
    """(attack name, score, seconds) for the analytic attack (one row only) and gradient matching."""
    if config.batch == 1:
        started = time.perf_counter()
        if model == "logreg":
            rec = inv.analytic_logreg(victim.observed)
        else:
            rec = inv.analytic_first_layer(victim.observed, global_params)
        yield "analytic", inv.score(victim.x, victim.y, rec), time.perf_counter() - started
    started = time.perf_counter()
    rec = inv.invert(victim.observed, global_params, config, seed=seed)
    yield "matching", inv.score(victim.x, victim.y, rec), time.perf_counter() - started


def _rows(rng: np.random.Generator, data: TabularData, n: int) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.choice(len(data.y_train), size=n, replace=False)
    return data.x_train[idx].astype(np.float64), data.y_train[idx].astype(np.float64)


def unprotected(sites: dict[str, TabularData], models: dict[str, Parameters], seed: int) -> Iterator[Row]:
    """Case 1: the coordinator sees one site's update as sent."""
    rng = np.random.default_rng(seed)
    settings = [("logreg", 1, 1), ("logreg", 1, 10), ("mlp", 1, 1), ("mlp", 4, 1), ("mlp", 8, 1)]
    settings += [("mlp", 1, 10), ("mlp", 4, 10)]
    for model, batch, steps in settings:
        x, y = _rows(rng, sites["cleveland"], batch)
        victim = Victim(x=x, y=y, observed=site_update(model, models[model], x, y, local_steps=steps))
        config = inv.AttackConfig(batch=batch, steps=steps, lr=LR, iterations=1000 if batch > 1 else 300)
        for name, s, sec in attacks(victim, model, models[model], config, seed):
            yield _row("none", "site update", model, config, name, s, sec)


def _row(
    protection: str, view: str, model: str, config: inv.AttackConfig, attack: str, s: inv.Score, sec: float
) -> Row:
    return Row(
        protection=protection,
        view=view,
        model=model,
        batch=config.batch,
        steps=config.steps,
        attack=attack,
        relative=s.relative,
        mse=s.mse,
        recovered=s.recovered,
        label_accuracy=s.label_accuracy,
        seconds=sec,
    )


def secagg_views(updates: list[np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Through a real SecAgg+ round: (site 1's masked vector read as a quantised update, the mean)."""
    config = QuantizationConfig(clip=SECAGG_CLIP, max_summands=len(updates))
    rng = np.random.default_rng(seed).bytes  # reproducible randomness: a benchmark, not production
    outcome = run_round([quantize(u, config, rng=rng) for u in updates], threshold=len(updates) - 1, rng=rng)
    masked = next(m for m in outcome.coordinator_view if isinstance(m, MaskedInput) and m.node == 1)
    single = dequantize_sum(masked.vector, config, count=1)
    mean = dequantize_sum(outcome.total, config, count=len(outcome.survivors)) / len(outcome.survivors)
    return single, mean


def secure_aggregation(sites: dict[str, TabularData], models: dict[str, Parameters], seed: int) -> Iterator[Row]:
    """Case 2: four sites, one row each, through SecAgg+; the target is site 1 (Cleveland)."""
    rng = np.random.default_rng(seed + 1)
    for model in TASKS:
        picked = [_rows(rng, data, 1) for data in sites.values()]
        updates = [site_update(model, models[model], x, y) for x, y in picked]
        single, mean = secagg_views(updates, seed)
        (x1, y1) = picked[0]
        one = inv.AttackConfig(batch=1, lr=LR)
        for view, observed in (("masked vector of site 1", single), ("mean as site 1's update", mean)):
            for name, s, sec in attacks(Victim(x=x1, y=y1, observed=observed), model, models[model], one, seed):
                yield _row("secagg", view, model, one, name, s, sec)
        if model == "mlp":
            # The mean of 4 one-row steps is exactly one step on the 4 rows: attack it as such.
            x_all, y_all = np.concatenate([x for x, _ in picked]), np.concatenate([y for _, y in picked])
            four = inv.AttackConfig(batch=SITES, lr=LR, iterations=1000)
            for name, s, sec in attacks(Victim(x=x_all, y=y_all, observed=mean), model, models[model], four, seed):
                yield _row("secagg", "mean as one update of 4 rows", model, four, name, s, sec)


def dp_fedavg(sites: dict[str, TabularData], models: dict[str, Parameters], seed: int) -> Iterator[Row]:
    """Case 3: client-level DP (DP-FedAvg) at the node: clipped, plus its noise share (distributed)."""
    rng = np.random.default_rng(seed + 2)
    for model in TASKS:
        x, y = _rows(rng, sites["cleveland"], 1)
        update = site_update(model, models[model], x, y)
        clip = float(np.linalg.norm(update))
        like = models[model]
        settings = [(NoiseMode.CENTRAL, 1.0)] + [(NoiseMode.DISTRIBUTED, z) for z in NOISE_MULTIPLIERS]
        for mode, z in settings:
            rule = DPAggregator(noise_multiplier=z, expected_nodes=SITES, mode=mode)
            contribution = rule.node_update(unflatten(update, like), clip_norm=clip, rng=np.random.default_rng(seed))
            config = inv.AttackConfig(batch=1, lr=LR, update_clip=clip)
            view = "clipped update (noise added later)" if mode is NoiseMode.CENTRAL else f"noised share z={z:g}"
            for name, s, sec in attacks(
                Victim(x=x, y=y, observed=flatten(contribution.update)), model, like, config, seed
            ):
                yield _row(f"dp-fedavg {mode.value}", view, model, config, name, s, sec)


def dp_sgd(sites: dict[str, TabularData], models: dict[str, Parameters], seed: int) -> Iterator[Row]:
    """Case 4: sample-level DP-SGD inside the site (the task's Opacus path), one row, one step."""
    rng = np.random.default_rng(seed + 3)
    for model in TASKS:
        x, y = _rows(rng, sites["cleveland"], 1)
        for z in NOISE_MULTIPLIERS:
            observed = site_update(model, models[model], x, y, dp_noise_multiplier=z, dp_clip_norm=DP_SGD_CLIP)
            config = inv.AttackConfig(batch=1, lr=LR, per_example_clip=DP_SGD_CLIP)
            for name, s, sec in attacks(Victim(x=x, y=y, observed=observed), model, models[model], config, seed):
                yield _row("dp-sgd", f"z={z:g}, C={DP_SGD_CLIP:g}", model, config, name, s, sec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead (and the cores are shared)
    sites = load_fed_heart_disease()
    models = {name: task.init_parameters({"input_dim": 13}, seed=args.seed) for name, task in TASKS.items()}
    print(
        f"{'protection':<22} {'view':<34} {'model':<6} {'B':>2} {'K':>3} {'attack':<9} "
        f"{'rel.MSE':>9} {'MSE':>9} {'recov':>5} {'label':>5} {'s':>5}"
    )
    rows: list[Row] = []
    started = time.perf_counter()
    for case in (unprotected, secure_aggregation, dp_fedavg, dp_sgd):
        for r in case(sites, models, args.seed):
            rows.append(r)
            print(
                f"{r.protection:<22} {r.view:<34} {r.model:<6} {r.batch:>2} {r.steps:>3} {r.attack:<9} "
                f"{r.relative:>9.3g} {r.mse:>9.3g} {r.recovered:>5.2f} {r.label_accuracy:>5.2f} {r.seconds:>5.1f}",
                flush=True,
            )
    total = time.perf_counter() - started
    print(f"total {total:.0f} s; rel.MSE = MSE / MSE of guessing the feature mean (standardised units)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"seed": args.seed, "seconds": total, "rows": [asdict(r) for r in rows]}, indent=1))


if __name__ == "__main__":
    main()
