"""Peer run for ``synth_quality.py``: smartnoise-synth AIM, executed inside its own virtualenv.

smartnoise-synth 1.0.x pins Opacus 0.14 and pulls another torch and JAX, which would break
medfed's pins, so it lives in ``/tmp/snsynth-venv``::

    python3.11 -m venv /tmp/snsynth-venv && /tmp/snsynth-venv/bin/pip install smartnoise-synth

Usage (called by ``synth_quality.py``)::

    /tmp/snsynth-venv/bin/python benchmarks/_synth_peer.py TRAIN.csv OUT.csv EPSILON DELTA ROWS BINS

The continuous columns get the same public bounds as medfed's run (the training file's range, as
``infer_schema`` declares it) and ``BinTransformer(bins=BINS)``; the ``target`` column is
categorical. Prints one JSON line: ``{"fit_seconds": ...}``.
"""

from __future__ import annotations

import json
import sys
import time

import pandas as pd
from snsynth import Synthesizer
from snsynth.transform import BinTransformer, LabelTransformer, TableTransformer


def main() -> None:
    train_csv, out_csv, epsilon, delta, rows, bins = sys.argv[1:7]
    df = pd.read_csv(train_csv)
    transformers = []
    for name in df.columns:
        if name == "target":
            transformers.append(LabelTransformer())
        else:
            lo, hi = float(df[name].min()), float(df[name].max())
            transformers.append(BinTransformer(bins=int(bins), lower=lo, upper=hi))
    tt = TableTransformer(transformers)
    synth = Synthesizer.create("aim", epsilon=float(epsilon), delta=float(delta))
    start = time.perf_counter()
    synth.fit(df, transformer=tt, preprocessor_eps=0.0)
    fit_seconds = time.perf_counter() - start
    synth.sample(int(rows)).to_csv(out_csv, index=False)
    print(json.dumps({"fit_seconds": fit_seconds}))


if __name__ == "__main__":
    main()
