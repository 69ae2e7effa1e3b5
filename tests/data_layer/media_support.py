"""Real image and note files for the DICOM and notes dataset tests: pydicom's and pydicom-data's test
files, deid-data's DICOMs (fake identifiers), deidgate's notes with marked identifiers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import deid_data
import deidgate
from pydicom.data import get_testdata_file

DEID_DATA = Path(deid_data.__file__).parent / "data"
#: Two sites' image directories: CT and MR files (label: CT = 1), patient ids as the files carry them.
SITE_IMAGES = {
    "alpha": ("CT_small.dcm", "693_UNCR.dcm", "humans/ctbrain1.dcm", "MR_small.dcm", "MR_small_bigendian.dcm",
              "MR2_UNCR.dcm", "examples_overlay.dcm"),
    "beta": ("693_UNCI.dcm", "eCT_Supplemental.dcm", "humans/ctbrain2.dcm", "MR_small_implicit.dcm", "MR2_UNCI.dcm",
             "MR-SIEMENS-DICOM-WithOverlays.dcm", "MR_small_RLE.dcm"),
}  # fmt: skip
#: PatientID of MR_small*.dcm (two files at each site)
MR_SMALL_PATIENT = "4MR1"


def shipped(name: str) -> Path:
    """A file from deid-data (``humans/...``, ``ultrasounds/...``) or from pydicom / pydicom-data,
    never fetched over the network."""
    if "/" in name:
        return DEID_DATA / name
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} does not ship with pydicom or pydicom-data"
    return Path(str(path))


def write_images(directory: Path, names: tuple[str, ...] | list[str]) -> Path:
    """Copy the named files into ``directory`` (flat, under their base names)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(shipped(name), directory / Path(name).name)
    return directory


def deidgate_notes() -> list[dict[str, Any]]:
    """deidgate's 15 notes, each with its marked identifiers (``phi``: value and category)."""
    path = Path(deidgate.__file__).parent / "data" / "safeharbor_seed.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_notes_jsonl(path: Path, notes: list[dict[str, Any]]) -> Path:
    """A notes dataset: one record per note, patient = the note's id, label = deidgate's
    "adversarial" tag (a plumbing label, not a clinical one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"patient_id": n["id"], "text": n["text"], "label": int("adversarial" in n["tags"])}) for n in notes
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
