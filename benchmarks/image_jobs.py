"""What a task's input costs for DICOM and notes datasets, against the bare work underneath (same run).

    .venv/bin/python benchmarks/image_jobs.py [--copies 4] [--repeats 3]

* Images: :func:`medfed.node.datasets.load_for_job` on a directory of real DICOM files (pydicom,
  pydicom-data and deid-data test files, each copied ``--copies`` times): index every file (read
  fully, truncation check), consent filter, burned-in policy, decode, window, resize to 64×64, split.
  Baseline: ``pydicom.dcmread`` + ``pixel_array`` of the same files, nothing else.
* Notes: ``load_for_job`` on deidgate's 15 notes (×``--copies``) as a JSONL dataset with hashed word
  features. Baseline: :func:`medfed.data.notes.scrub` of the same texts (the scrubber is the floor:
  no note becomes a feature without it).

Best of ``--repeats`` runs each; prints items/s and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import deid_data
import deidgate
import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from medfed.data.consent import ConsentRegistry
from medfed.data.notes import scrub
from medfed.data.sources import parse_dataset
from medfed.node.datasets import load_for_job

IMAGES = (
    "CT_small.dcm", "693_UNCR.dcm", "693_UNCI.dcm", "eCT_Supplemental.dcm", "MR_small.dcm", "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm", "MR_small_RLE.dcm", "MR2_UNCR.dcm", "MR2_UNCI.dcm", "examples_overlay.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm", "humans/ctbrain1.dcm", "humans/ctbrain2.dcm",
)  # fmt: skip


def _source(name: str) -> Path:
    if "/" in name:
        return Path(deid_data.__file__).parent / "data" / name
    path = get_testdata_file(name, download=False)
    if path is None:
        raise SystemExit(f"{name} does not ship with pydicom or pydicom-data")
    return Path(str(path))


def _best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _images(root: Path, copies: int, repeats: int) -> dict[str, float]:
    directory = root / "images"
    directory.mkdir()
    for k in range(copies):
        for name in IMAGES:
            shutil.copyfile(_source(name), directory / f"{k}-{Path(name).name}")
    files = sorted(directory.iterdir())
    decl = parse_dataset(
        "scans",
        {"format": "dicom", "path": "images", "label_attribute": "Modality", "positive": ["CT"]},
        base=root,
        where="benchmark",
    )
    day = dt.date(2026, 6, 1)
    bare = _best(lambda: [np.asarray(pydicom.dcmread(f).pixel_array) for f in files], repeats)
    medfed = _best(lambda: load_for_job(decl, ConsentRegistry(), purpose="research", on=day, job_id="b"), repeats)
    return {"files": len(files), "bare_files_per_s": len(files) / bare, "task_files_per_s": len(files) / medfed,
            "ratio": medfed / bare}  # fmt: skip


def _notes(root: Path, copies: int, repeats: int) -> dict[str, float]:
    path = Path(deidgate.__file__).parent / "data" / "safeharbor_seed.jsonl"
    notes = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] * copies
    records = [
        {"patient_id": f"{n['id']}-{i}", "text": n["text"], "label": int("adversarial" in n["tags"])}
        for i, n in enumerate(notes)
    ]
    (root / "notes.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    decl = parse_dataset("notes", {"format": "notes", "path": "notes.jsonl"}, base=root, where="benchmark")
    day = dt.date(2026, 6, 1)
    bare = _best(lambda: [scrub(r["text"]) for r in records], repeats)
    medfed = _best(lambda: load_for_job(decl, ConsentRegistry(), purpose="research", on=day, job_id="b"), repeats)
    return {"notes": len(records), "scrub_notes_per_s": len(records) / bare, "task_notes_per_s": len(records) / medfed,
            "ratio": medfed / bare}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images = _images(Path(tmp), args.copies, args.repeats)
        notes = _notes(Path(tmp), args.copies, args.repeats)
    print(
        f"images: {images['files']} files; bare decode {images['bare_files_per_s']:.1f} files/s, "
        f"task input {images['task_files_per_s']:.1f} files/s ({images['ratio']:.2f}x the bare decode's time)"
    )
    print(
        f"notes:  {notes['notes']} notes; scrub alone {notes['scrub_notes_per_s']:.1f} notes/s, "
        f"task input {notes['task_notes_per_s']:.1f} notes/s ({notes['ratio']:.2f}x the scrub's time)"
    )


if __name__ == "__main__":
    main()
