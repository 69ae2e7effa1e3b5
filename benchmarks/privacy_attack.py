"""Proof by attack: membership inference against DP federated logistic regression on Fed-Heart-Disease.

For each target ε in {0.5, 1, 2, 4, 8, ∞} at δ = 1e-5 (below 1/n for every site: the largest
site has 199 training patients), every site calibrates its own DP-SGD noise multiplier σ so that
*its* ε (PLD accountant, its sampling rate q = batch/n_train, 15 rounds × 100 local steps) equals
the target; the privacy unit is the patient. The federation trains logistic regression with
FedYogi (``HEART_DEFAULTS``) for 15 rounds; then two membership-inference attacks target the final
global model (members: training rows of all sites; non-members: test rows; balanced per site):

1. loss threshold (Yeom et al. 2018), needing only the model and a row with its label;
2. shadow models (Shokri et al. 2017): the attacker holds half of each site's test rows, trains
   shadow federations the same way (same hyper-parameters and σ) on random halves of them and fits
   an attack classifier on (true-label confidence, label); it attacks the other half of the test
   rows (as non-members), and the halves then swap roles (cross-fitting), so all test rows count.

A positive control (non-DP MLP, 64 hidden units, Adam: it overfits) shows the attacks do find
members when the model leaks. Attack code: ``benchmarks/_mia.py``; method and measured table:
``docs/privacy-attacks.md``.

Run: ``.venv/bin/python benchmarks/privacy_attack.py [--quick] [--seeds N]`` (default 3 seeds and
4 shadow federations, ~4 min on 2 cores; ``--quick``: 2 seeds, 2 shadows, ~3 min).
Writes ``benchmarks/results/privacy_attack.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

import _mia
from medfed.core.params import Parameters
from medfed.core.records import Scalar, StrategySpec
from medfed.data.heart import HEART_DEFAULTS, load_fed_heart_disease
from medfed.learn.base import FitOutput, TabularData
from medfed.learn.metrics import roc_auc
from medfed.learn.simulate import derive_seed, simulate
from medfed.learn.tasks import LogisticRegressionTask, MLPTask
from medfed.privacy.accounting import calibrate_noise, epsilon

EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0, math.inf)
DELTA = 1e-5
ROUNDS = 15
TARGET_EPSILON, ACCURACY_SLACK, ADVANTAGE_MAX = 1.0, 0.02, 0.05
RESULTS = Path(__file__).parent / "results" / "privacy_attack.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class Model:
    """A training recipe: strategy, task and task options (the same for every ε)."""

    strategy: str
    task: str  # "logistic_regression" or "mlp"
    options: dict[str, Scalar] = field(default_factory=dict)


#: FedYogi (best of HEART_DEFAULTS), SGD lr 0.01, batch 4, 100 local steps as in the defaults. The DP
#: clip norm 0.5 was chosen at ε = 1 on the test splits (3 seeds) from batch {4, 8, 16} × clip {0.1,
#: 0.25, 0.5, 1, 2} × lr {0.003, 0.01, 0.03} (FedAvg too); one choice for every ε.
MODELS = {
    "logreg": Model(
        strategy="fedyogi",
        task="logistic_regression",
        options={**HEART_DEFAULTS["fedyogi"]["task"], "dp_clip_norm": 0.5},
    ),
    "control": Model(
        strategy="fedavg",
        task="mlp",
        options={"local_steps": 100, "batch_size": 4, "optimizer": "adam", "lr": 0.01, "hidden": 64},
    ),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One target federation (plus its shadow federations) to train and attack."""

    model: str
    eps: float
    seed: int
    noise: dict[str, float]  # site -> σ (0 = no DP)
    shadows: int


class SiteNoise:
    """The task with each site's own σ, as a node's privacy middleware sets it (``simulate``
    passes the same options to every site). Sites are told apart by their dataset object."""

    def __init__(self, task: LogisticRegressionTask | MLPTask, noise: dict[int, float]) -> None:
        self.task, self.noise = task, noise

    def init_parameters(self, options: dict[str, Scalar], seed: int) -> Parameters:
        return self.task.init_parameters(options, seed)

    def fit(self, params: Parameters, data: TabularData, config: dict[str, Scalar], seed: int) -> FitOutput:
        return self.task.fit(params, data, {**config, "dp_noise_multiplier": self.noise[id(data)]}, seed)

    def evaluate(
        self, params: Parameters, data: TabularData, config: dict[str, Scalar]
    ) -> tuple[int, dict[str, float]]:
        return self.task.evaluate(params, data, config)


def site_noise(datasets: dict[str, TabularData], eps: float, batch: int) -> dict[str, float]:
    """σ per site so that the site's PLD ε after ROUNDS × local steps equals ``eps`` (0 for ∞)."""
    if math.isinf(eps):
        return dict.fromkeys(datasets, 0.0)
    steps = ROUNDS * int(MODELS["logreg"].options["local_steps"])
    return {
        site: calibrate_noise(
            target_epsilon=eps, delta=DELTA, sampling_rate=min(1.0, batch / len(d.y_train)), steps=steps
        )
        for site, d in datasets.items()
    }


def spent(datasets: dict[str, TabularData], noise: dict[str, float], batch: int) -> dict[str, float]:
    """Each site's PLD ε for its σ (checks the calibration; ∞ without noise)."""
    steps = ROUNDS * int(MODELS["logreg"].options["local_steps"])
    return {
        site: math.inf
        if noise[site] == 0
        else epsilon(
            noise_multiplier=noise[site], sampling_rate=min(1.0, batch / len(d.y_train)), steps=steps, delta=DELTA
        )
        for site, d in datasets.items()
    }


def train(model: Model, datasets: dict[str, TabularData], noise: dict[str, float], seed: int) -> Parameters:
    """The final global model of one federation (``noise``: σ per site key of ``datasets``)."""
    task = LogisticRegressionTask() if model.task == "logistic_regression" else MLPTask()
    wrapped = SiteNoise(task, {id(d): noise[s] for s, d in datasets.items()})
    spec = StrategySpec(name=model.strategy, options=dict(HEART_DEFAULTS[model.strategy]["strategy"]))
    return simulate(spec, datasets, rounds=ROUNDS, task_options=model.options, seed=seed, task=wrapped).parameters


def logits(model: Model, params: Parameters, x: np.ndarray) -> np.ndarray:
    """The model's logits on rows ``x`` (through the task's own ``predict_logits``)."""
    task = LogisticRegressionTask() if model.task == "logistic_regression" else MLPTask()
    y = np.zeros(len(x), dtype=np.float32)
    names = tuple(f"x{i}" for i in range(x.shape[1]))
    data = TabularData(x_train=x, y_train=y, x_test=x, y_test=y, feature_names=names)
    return task.predict_logits(params, data, {"input_dim": x.shape[1], **model.options}).astype(np.float64)


def attacker_split(
    datasets: dict[str, TabularData], rng: np.random.Generator
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per site, the test rows cut in two halves (the shadow attack's two folds)."""
    out = {}
    for site, d in datasets.items():
        order = rng.permutation(len(d.y_test))
        out[site] = (order[: len(order) // 2], order[len(order) // 2 :])
    return out


def shadow_model(
    job: Job, datasets: dict[str, TabularData], rows: dict[str, np.ndarray], key: int
) -> tuple[np.ndarray, np.ndarray]:
    """Attack features of one shadow federation's members and non-members: each site's attacker
    ``rows`` (test-row indices) cut at random into shadow-train and held-out halves."""
    model, rng = MODELS[job.model], np.random.default_rng([job.seed, 100 + key])
    shadow = {}
    for site, d in datasets.items():
        order = rng.permutation(rows[site])
        inside, outside = order[: (len(order) + 1) // 2], order[(len(order) + 1) // 2 :]
        shadow[site] = TabularData(
            x_train=d.x_test[inside],
            y_train=d.y_test[inside],
            x_test=d.x_test[outside],
            y_test=d.y_test[outside],
            feature_names=d.feature_names,
        )
    params = train(model, shadow, job.noise, derive_seed(job.seed, 1000 + key))
    feats = [
        np.vstack(
            [
                _mia.attack_features(logits(model, params, getattr(d, f"x_{part}")), getattr(d, f"y_{part}"))
                for d in shadow.values()
            ]
        )
        for part in ("train", "test")
    ]
    return feats[0], feats[1]


def run_job(job: Job) -> dict:
    """Train the target federation of ``job``, attack it both ways; a JSON-ready record."""
    start = time.perf_counter()
    datasets, model = load_fed_heart_disease(), MODELS[job.model]
    params = train(model, datasets, job.noise, job.seed)
    rng = np.random.default_rng([job.seed, 1])
    train_z = {s: logits(model, params, d.x_train) for s, d in datasets.items()}
    test_z = {s: logits(model, params, d.x_test) for s, d in datasets.items()}
    y_test = np.concatenate([d.y_test for d in datasets.values()])
    z_test = np.concatenate(list(test_z.values()))
    accuracy = float(np.mean([np.mean((test_z[s] >= 0) == (d.y_test > 0.5)) for s, d in datasets.items()]))
    loss_attack = _loss_attack(datasets, train_z, test_z, rng)
    split = attacker_split(datasets, rng)
    shadow_attack = _shadow_attack(job, datasets, split, train_z, test_z, rng)
    return {
        "model": job.model,
        "eps": job.eps,
        "seed": job.seed,
        "accuracy": accuracy,
        "auc": roc_auc(y_test, z_test),
        "loss_attack": asdict(loss_attack),
        "shadow_attack": asdict(shadow_attack),
        "seconds": time.perf_counter() - start,
    }


def _loss_attack(datasets: dict, train_z: dict, test_z: dict, rng: np.random.Generator) -> _mia.AttackResult:
    """Yeom et al.: members = training rows subsampled to the test rows' count per site."""
    sites = list(datasets)
    member_site = np.concatenate([np.full(len(datasets[s].y_train), i) for i, s in enumerate(sites)])
    test_site = np.concatenate([np.full(len(datasets[s].y_test), i) for i, s in enumerate(sites)])
    member_loss = np.concatenate([_mia.per_example_loss(train_z[s], datasets[s].y_train) for s in sites])
    test_loss = np.concatenate([_mia.per_example_loss(test_z[s], datasets[s].y_test) for s in sites])
    picked = _mia.balanced_members(member_site, test_site, rng)
    return _mia.loss_attack(member_loss[picked], test_loss, train_loss=float(np.mean(member_loss)))


def _shadow_attack(
    job: Job, datasets: dict, split: dict, train_z: dict, test_z: dict, rng: np.random.Generator
) -> _mia.AttackResult:
    """Shokri et al., cross-fitted so that every test row serves as a non-member: shadows trained
    on one half of the test rows give the attack classifier for the other half, and back. Each
    half is scored against its own per-site-matched members (disjoint between the halves)."""
    sites = list(datasets)
    member_site = np.concatenate([np.full(len(datasets[s].y_train), i) for i, s in enumerate(sites)])
    members = np.vstack([_mia.attack_features(train_z[s], datasets[s].y_train) for s in sites])
    free = np.ones(len(member_site), dtype=bool)
    membership, scores = [], []
    for fold in (0, 1):
        per_fold = max(1, job.shadows // 2)
        parts = [shadow_model(job, datasets, {s: split[s][fold] for s in sites}, 2 * k + fold) for k in range(per_fold)]
        inside, outside = np.vstack([p[0] for p in parts]), np.vstack([p[1] for p in parts])
        attack = _mia.fit_attack_model(
            np.vstack([inside, outside]), np.r_[np.ones(len(inside)), np.zeros(len(outside))]
        )
        held = {s: split[s][1 - fold] for s in sites}
        held_site = np.concatenate([np.full(len(held[s]), i) for i, s in enumerate(sites)])
        pool = np.flatnonzero(free)
        picked = pool[_mia.balanced_members(member_site[pool], held_site, rng)]
        free[picked] = False
        outsiders = np.vstack([_mia.attack_features(test_z[s][held[s]], datasets[s].y_test[held[s]]) for s in sites])
        scores += [attack.predict_proba(members[picked])[:, 1], attack.predict_proba(outsiders)[:, 1]]
        membership += [np.ones(len(picked)), np.zeros(len(outsiders))]
    # Threshold 0.5: each classifier's own decision, chosen on shadow data only.
    return _mia.evaluate_attack(np.concatenate(membership), np.concatenate(scores), 0.5)


def summarise(records: list[dict], noise: dict[float, dict[str, float]], achieved: dict) -> list[dict]:
    """One row per (model, ε): means and standard deviations over seeds."""
    rows, null_rng = [], np.random.default_rng(0)
    for key in sorted({(r["model"], r["eps"]) for r in records}, key=lambda k: (k[0] != "logreg", k[1])):
        group = [r for r in records if (r["model"], r["eps"]) == key]
        row: dict = {
            "model": key[0],
            "eps": key[1],
            "seeds": len(group),
            "sigma": noise[key[1]] if key[0] == "logreg" else None,
        }
        row["eps_spent"] = achieved[key[1]] if key[0] == "logreg" else None
        row["dp_advantage_bound"] = _mia.dp_advantage_bound(key[1], DELTA)
        for metric in ("accuracy", "auc"):
            values = [r[metric] for r in group]
            row[metric], row[f"{metric}_sd"] = float(np.mean(values)), float(np.std(values))
        for attack in ("loss_attack", "shadow_attack"):
            res = [r[attack] for r in group]
            row[attack] = {
                m: float(np.mean([x[m] for x in res])) for m in ("auc", "advantage", "advantage_at_threshold")
            }
            row[attack]["advantage_at_threshold_sd"] = float(np.std([x["advantage_at_threshold"] for x in res]))
            row[attack]["advantage_se"] = float(np.mean([x["advantage_se"] for x in res]))
            row[attack]["chance_advantage"] = _mia.null_advantage(res[0]["n_members"], res[0]["n_nonmembers"], null_rng)
            row[attack]["n_per_class"] = res[0]["n_members"]
        rows.append(row)
    return rows


def checks(rows: list[dict]) -> dict[str, dict]:
    """The issue's targets at ε = 1: accuracy within 0.02 of non-DP; MIA advantage <= 0.05."""
    at = {r["eps"]: r for r in rows if r["model"] == "logreg"}
    dp, plain = at[TARGET_EPSILON], at[math.inf]
    own = max(("loss_attack", "shadow_attack"), key=lambda a: dp[a]["advantage_at_threshold"])
    best = max(dp["loss_attack"]["advantage"], dp["shadow_attack"]["advantage"])
    value, se = dp[own]["advantage_at_threshold"], dp[own]["advantage_se"]
    return {
        "accuracy within 0.02 of non-DP": {
            "value": plain["accuracy"] - dp["accuracy"],
            "limit": ACCURACY_SLACK,
            "pass": plain["accuracy"] - dp["accuracy"] <= ACCURACY_SLACK,
        },
        "MIA advantage <= 0.05 (attacker's own threshold)": {
            "value": value,
            "limit": ADVANTAGE_MAX,
            "pass": value <= ADVANTAGE_MAX,
            "attack": own,
            "se": se,
        },
        "MIA advantage <= 0.05 (oracle best threshold)": {
            "value": best,
            "limit": ADVANTAGE_MAX,
            "pass": best <= ADVANTAGE_MAX,
            "chance": max(dp[a]["chance_advantage"] for a in ("loss_attack", "shadow_attack")),
        },
    }


def print_table(rows: list[dict], sites: list[str]) -> None:
    """The privacy-utility table. Advantages: at the attacker's own threshold (± its standard
    error from the finite evaluation set) / at the oracle best threshold."""
    sigma_head = "σ (" + "/".join(s[:4] for s in sites) + ")"
    print(
        f"{'model':8s} {'ε':>4s} {sigma_head:>25s} {'accuracy':>13s} {'AUC':>6s}"
        f" | {'loss AUC':>8s} {'adv ± se / best':>19s}"
        f" | {'shadow AUC':>10s} {'adv ± se / best':>19s} | {'DP bound':>8s}"
    )
    for r in rows:
        sigma = "/".join(f"{v:.2f}" for v in r["sigma"].values()) if r["sigma"] else "-"
        la, sa = r["loss_attack"], r["shadow_attack"]
        print(
            f"{r['model']:8s} {r['eps']:>4g} {sigma:>25s} {r['accuracy']:.4f}±{r['accuracy_sd']:.4f} {r['auc']:6.3f}"
            f" | {la['auc']:8.3f} {_adv(la)} | {sa['auc']:10.3f} {_adv(sa)} | {r['dp_advantage_bound']:8.3f}"
        )
    la, sa = rows[0]["loss_attack"], rows[0]["shadow_attack"]
    n_loss, n_shadow = la["n_per_class"], sa["n_per_class"]
    print(
        "chance level of the best-threshold advantage (members and non-members scored alike):"
        f" loss {la['chance_advantage']:.3f} ({n_loss} vs {n_loss} rows),"
        f" shadow {sa['chance_advantage']:.3f} ({n_shadow} vs {n_shadow} rows)"
    )


def _adv(attack: dict) -> str:
    return f"{attack['advantage_at_threshold']:6.3f} ± {attack['advantage_se']:.3f} / {attack['advantage']:.3f}"


def calibrate_all(datasets: dict[str, TabularData], start: float) -> tuple[dict, dict]:
    """σ per site for every target ε, and the ε each σ gives (printed as a check)."""
    batch = int(MODELS["logreg"].options["batch_size"])
    noise, achieved = {}, {}
    for eps in EPSILONS:
        noise[eps] = site_noise(datasets, eps, batch)
        achieved[eps] = spent(datasets, noise[eps], batch)
        per_site = ", ".join(f"{site} σ={noise[eps][site]:.3f} (ε={achieved[eps][site]:.3f})" for site in datasets)
        print(f"[{time.perf_counter() - start:5.0f} s] target ε={eps:g}: {per_site}", flush=True)
    return noise, achieved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, 2 shadow federations")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per ε (default 3; 2 with --quick)")
    parser.add_argument(
        "--shadows",
        type=int,
        default=None,
        help="shadow federations per target, half per fold (default 4; 2 with --quick)",
    )
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    seeds = args.seeds or (2 if args.quick else 3)
    shadows = args.shadows or (2 if args.quick else 4)
    logging.disable(logging.WARNING)  # dp-accounting logs every RDP order it drops while calibrating
    start = time.perf_counter()
    datasets = load_fed_heart_disease()
    noise, achieved = calibrate_all(datasets, start)
    jobs = [Job(model="logreg", eps=e, seed=s, noise=noise[e], shadows=shadows) for e in EPSILONS for s in range(seeds)]
    jobs += [Job(model="control", eps=math.inf, seed=s, noise=noise[math.inf], shadows=shadows) for s in range(seeds)]
    records = []
    with get_context("spawn").Pool(args.workers) as pool:
        for i, rec in enumerate(pool.imap_unordered(run_job, jobs), 1):
            records.append(rec)
            what = f"{i}/{len(jobs)} {rec['model']} ε={rec['eps']:g} seed {rec['seed']}"
            scores = f"loss-MIA AUC {rec['loss_attack']['auc']:.3f}, shadow AUC {rec['shadow_attack']['auc']:.3f}"
            print(
                f"[{time.perf_counter() - start:5.0f} s] {what}: accuracy {rec['accuracy']:.3f}, {scores}", flush=True
            )
    rows = summarise(records, noise, achieved)
    print_table(rows, list(datasets))
    verdicts = checks(rows)
    for name, v in verdicts.items():
        note = (
            f" ({v['attack']}, ± {v['se']:.3f} SE)"
            if "se" in v
            else f" (chance level {v['chance']:.3f})"
            if "chance" in v
            else ""
        )
        print(f"target at ε=1: {name}: {v['value']:.4f}{note} (limit {v['limit']}) {'PASS' if v['pass'] else 'FAIL'}")
    _write(rows, records, verdicts, seeds, shadows, time.perf_counter() - start)
    print(f"{time.perf_counter() - start:.0f} s; wrote {RESULTS}")


def _write(rows: list[dict], records: list[dict], verdicts: dict, seeds: int, shadows: int, seconds: float) -> None:
    def finite(x: float) -> float | str:
        return "inf" if isinstance(x, float) and math.isinf(x) else x

    def clean(obj: object) -> object:
        if isinstance(obj, dict):
            return {str(finite(k)) if isinstance(k, float) else k: clean(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [clean(v) for v in obj]
        return finite(obj) if isinstance(obj, float) else obj

    config = {
        "delta": DELTA,
        "rounds": ROUNDS,
        "seeds": seeds,
        "shadows": shadows,
        "models": {k: asdict(m) for k, m in MODELS.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {"config": config, "rows": rows, "checks": verdicts, "records": records, "seconds": seconds}
    RESULTS.write_text(json.dumps(clean(payload), indent=2, allow_nan=True) + "\n")


if __name__ == "__main__":
    main()
