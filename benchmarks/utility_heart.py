"""Utility of each strategy on Fed-Heart-Disease, against FLamby's published table.

FLamby's protocol (Ogier du Terrail et al. 2022): logistic regression, 15 rounds x 100 local
steps of batch 4, 5 seeds; the metric is the unweighted mean of the four sites' test accuracies.
Strategies run with ``HEART_DEFAULTS``. Local-only: each site's model, trained alone for the
same 15 x 100 steps, scored on all four test sets. Pooled: one model on every site's train split
for 4 x 15 x 100 steps. In-process (``medfed.learn.simulate``), no network.

Run: ``.venv/bin/python benchmarks/utility_heart.py [--seeds 5]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from medfed.core.records import StrategySpec
from medfed.data.heart import HEART_DEFAULTS, load_fed_heart_disease
from medfed.learn.simulate import pool, simulate, train_alone

ROUNDS = 15
#: FLamby, Fed-Heart-Disease, mean test accuracy over the 4 sites (5 seeds).
FLAMBY = {"fedavg": 0.685, "fedprox": 0.685, "fedadam": 0.726, "fedyogi": 0.731, "fedadagrad": 0.731, "pooled": 0.735}
BARS = {"best strategy": 0.73, "fedavg": 0.685}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    seeds = range(parser.parse_args().seeds)
    datasets = load_fed_heart_disease()
    rows: dict[str, list[float]] = {}
    start = time.perf_counter()
    for name, defaults in HEART_DEFAULTS.items():
        spec = StrategySpec(name=name, options=defaults["strategy"])
        rows[name] = [
            simulate(spec, datasets, rounds=ROUNDS, task_options=defaults["task"], seed=s).final.mean_accuracy
            for s in seeds
        ]
    task = dict(HEART_DEFAULTS["fedavg"]["task"])
    steps = ROUNDS * int(task["local_steps"])
    for site, data in datasets.items():
        options = {**task, "local_steps": steps}
        rows[f"local {site}"] = [_mean(train_alone(data, datasets, task_options=options, seed=s)) for s in seeds]
    options = {**task, "local_steps": steps * len(datasets)}
    rows["pooled"] = [_mean(train_alone(pool(datasets), datasets, task_options=options, seed=s)) for s in seeds]
    _print(rows, time.perf_counter() - start)


def _mean(sites: dict[str, dict[str, float]]) -> float:
    return float(np.mean([m["accuracy"] for m in sites.values()]))


def _print(rows: dict[str, list[float]], elapsed: float) -> None:
    print(f"{'method':26s} {'accuracy':>9s} {'sd':>7s} {'FLamby':>7s}")
    for name, accs in rows.items():
        ref = FLAMBY.get(name)
        print(f"{name:26s} {np.mean(accs):9.4f} {np.std(accs):7.4f} {'' if ref is None else f'{ref:.3f}':>7s}")
    local = [np.mean(v) for k, v in rows.items() if k.startswith("local ")]
    best = max(HEART_DEFAULTS, key=lambda n: np.mean(rows[n]))
    print(f"{'local-only (mean of sites)':26s} {np.mean(local):9.4f}")
    checks = {"best strategy": np.mean(rows[best]), "fedavg": np.mean(rows["fedavg"])}
    for bar, value in checks.items():
        verdict = "ok" if value >= BARS[bar] else "BELOW"
        print(f"bar {bar} >= {BARS[bar]}: {value:.4f} {verdict}" + (f" ({best})" if bar == "best strategy" else ""))
    print(f"{elapsed:.0f} s")


if __name__ == "__main__":
    main()
