"""Proof by attack: model poisoning against FedAvg and medfed's robust rules, on Fed-Heart-Disease.

Two settings (``_poison_fed.py``): **A**, the four real hospitals with one malicious (Cleveland, the
largest); **B**, the pooled training rows split into 50 nodes with 10 (20 %) malicious. Attacks
(``_poison_attacks.py``): sign-flip (−4×), scaling (random direction, 25× the honest norm), a
boosted backdoor (model replacement) and an **adaptive** backdoor whose colluders send one update
with an honest norm and direction. Aggregators: FedAvg, median, trimmed mean, Krum, Multi-Krum,
norm bounding; a rule that cannot tolerate the malicious nodes is refused by
``medfed.aggregation.robust.check_tolerance`` and shown as such. Logistic regression (medfed's
task, torch), seeded; each cell is the mean over ``--seeds`` seeds of the final global model's
clean test accuracy, backdoor success (triggered test rows with heart disease classified "no
disease") and the fraction of malicious updates ``detect_anomalies`` flagged (honest false-positive
rate in the last column).

Run: ``.venv/bin/python benchmarks/poisoning.py [--seeds 2] [--rounds 15]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _poison_attacks as pa  # found through the sys.path entry above
import _poison_fed as pf


def _cell(outcomes: list[pf.Outcome]) -> str:
    if outcomes[0].refused:
        return "refused"
    acc, bd, fm, fh = (
        np.mean([getattr(o, k) for o in outcomes])
        for k in ("clean_accuracy", "backdoor_success", "flagged_malicious", "flagged_honest")
    )
    return f"{acc:6.3f} {bd:6.3f} {fm:6.2f} {fh:6.2f}"


def run_setting(setting: pf.Setting, seeds: range) -> dict[tuple[pa.Attack, pf.Aggregator], list[pf.Outcome]]:
    """Every attack × aggregator of ``setting``, over ``seeds``."""
    return {
        (attack, agg): [pf.run(setting, attack, agg, seed=s) for s in seeds]
        for attack in pa.Attack
        for agg in pf.Aggregator
    }


def print_table(setting: pf.Setting, table: dict[tuple[pa.Attack, pf.Aggregator], list[pf.Outcome]]) -> None:
    """One markdown row per attack × aggregator, then the refusal messages."""
    print(f"\n### Setting {setting.name}\n")
    print("| attack | aggregator | clean acc | backdoor success | flagged (malicious) | flagged (honest) |")
    print("|---|---|---|---|---|---|")
    for (attack, agg), outcomes in table.items():
        cells = _cell(outcomes).split() if not outcomes[0].refused else ["refused", "—", "—", "—"]
        print(f"| {attack.value} | {agg.value} | " + " | ".join(cells) + " |")
    refusals = {agg: o[0].refused for (_, agg), o in table.items() if o[0].refused}
    for agg, message in refusals.items():
        print(f"\n{agg.value}: {message}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    seeds = range(args.seeds)
    start = time.perf_counter()
    for setting in (pf.setting_a(rounds=args.rounds), pf.setting_b(rounds=args.rounds)):
        print_table(setting, run_setting(setting, seeds))
    print(f"\n{args.seeds} seed(s) x {args.rounds} rounds in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
