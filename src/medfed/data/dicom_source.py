"""A directory of DICOM files as a dataset: an index table (one row per image) and the images.

:func:`index_images` reads every file under the dataset's directory (for validation fully, pixels
decoded: a truncated file fails here, named, see :func:`medfed.data.deid_dicom.read_dicom`; for a
job headers only), takes its ``PatientID`` (consent is applied by it) and its label, and returns
``patient_id``, ``label``, ``modality`` and ``file``. The
``file`` column and every identifier stay at the node: the catalog sees only the schema's columns
(:func:`medfed.data.media.media_schema`), profiled and small-cell suppressed.

:func:`load_images` turns the files that passed the consent filter into normalised, resized float32
pixel arrays (:func:`medfed.data.dicom.normalise`; one image per file, the middle frame of a
multi-frame file). Images that may carry burned-in identifying text (PS3.15 E.1: the
``BurnedInAnnotation`` flag, or no flag on a modality that often has it) are excluded and counted
unless the site declared ``burned_in = "allow"``. No DICOM attribute travels with the pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydicom.dataset import Dataset

from medfed.core.errors import DataError
from medfed.data.deid_dicom import DeidConfig, burned_in_reason, read_dicom
from medfed.data.dicom import ImageConfig, normalise, read_header
from medfed.data.media import ImageOptions

if TYPE_CHECKING:
    from medfed.data.sources import DatasetDecl

#: At most this many problems are listed in one error; the rest are counted.
MAX_LISTED = 20
_LABEL_KEYS = ("SOPInstanceUID", "PatientID", "patient_id")


def image_files(directory: Path) -> list[Path]:
    """Every file under ``directory``, sorted (DICOM files need no extension), except hidden files and
    ``DICOMDIR`` (a PS3.10 media index, not an image). Any other file must be a readable image."""
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory of DICOM files")
    return sorted(
        p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name != "DICOMDIR"
    )


def _options(decl: DatasetDecl) -> ImageOptions:
    if decl.images is None:
        raise DataError(f"dataset {decl.name}: not a dicom dataset")
    return decl.images


def read_label_csv(path: Path, label: str) -> tuple[str, dict[str, int]]:
    """(key column, key -> label) from a labels CSV keyed by SOPInstanceUID, PatientID or patient_id.

    Raises
    ------
    DataError
        The file is unreadable, has no key or label column, a duplicate key, or a label other
        than 0/1; every bad line is named.
    """
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot be read as a labels CSV ({exc})") from None
    key = next((k for k in _LABEL_KEYS if k in frame.columns), "")
    if not key or label not in frame.columns:
        raise DataError(f"{path}: needs one of {list(_LABEL_KEYS)} and a {label!r} column (has {list(frame.columns)})")
    keys, values = frame[key].str.strip(), frame[label].str.strip()
    problems = [f"{path}: line {i + 2}: label {v!r} is not 0 or 1" for i, v in enumerate(values) if v not in ("0", "1")]
    problems += [f"{path}: line {i + 2}: {key} listed twice" for i in np.nonzero(keys.duplicated())[0]]  # no value: PHI
    if problems:
        raise DataError("\n".join(problems[:MAX_LISTED]))
    return key, {k: int(v) for k, v in zip(keys, values, strict=True)}


def _label(ds: Dataset, opts: ImageOptions, table: tuple[str, dict[str, int]] | None) -> int | str:
    """The file's label, or why it has none."""
    if table is not None:
        key, labels = table
        value = str(ds.get(key if key != "patient_id" else "PatientID", "")).strip()
        # never the value itself: a job's error travels to the coordinator, and a PatientID is PHI
        return labels.get(value, f"its {key} is not in the labels CSV")
    if opts.label_attribute not in ds:
        return f"no {opts.label_attribute} attribute to label it by"
    return int(str(ds.get(opts.label_attribute)).strip() in opts.positive)


def index_images(decl: DatasetDecl, *, decode: bool) -> pd.DataFrame:
    """One row per file: ``patient_id``, ``label``, ``modality``, ``file``.

    ``decode=True`` reads every file whole and decodes and normalises its image (what validation
    does, so a truncated file or one whose pixels cannot be read makes the dataset fail before it is
    offered); ``decode=False`` reads headers only (what a job does before the consent filter).

    Raises
    ------
    DataError
        Files that are not readable or are truncated DICOM, have no PatientID, cannot be labelled
        or (with ``decode``) have pixels that cannot be decoded; each named, all at once.
    """
    opts = _options(decl)
    table = read_label_csv(opts.labels, decl.label or "label") if opts.labels is not None else None
    problems: list[str] = []
    rows = []
    files = image_files(decl.path)
    for path in files:
        try:
            if decode:  # validation: the whole file, truncation checked, pixels decoded
                ds = read_dicom(path)
                normalise(ds, ImageConfig(size=opts.size, window=opts.window), path=path)
            else:  # a job: headers only; pixels are read after consent (load_images), and only then
                ds = read_header(path, ("PatientID", "Modality", *_LABEL_KEYS[:2], opts.label_attribute or "Modality"))
        except DataError as exc:
            problems.append(str(exc))
            continue
        patient = str(ds.get("PatientID", "") or "").strip()
        label = _label(ds, opts, table)
        if not patient:
            problems.append(f"{path}: no PatientID, so consent cannot be applied to it")
        if isinstance(label, str):
            problems.append(f"{path}: no label ({label})")
        if patient and not isinstance(label, str):
            modality = str(ds.get("Modality", "") or "").strip() or None
            rows.append({"patient_id": patient, "label": label, "modality": modality, "file": str(path)})
    if not files:
        problems.append(f"{decl.path}: no files")
    if problems:
        more = [f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else []
        listed = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED] + more)
        raise DataError(f"dataset {decl.name}: {len(problems)} problem(s):\n{listed}")
    return pd.DataFrame(rows, columns=["patient_id", "label", "modality", "file"])


@dataclass(frozen=True, slots=True, kw_only=True)
class Images:
    """Normalised images (n, rows, columns) in [0, 1], their {0, 1} labels, and what was left out."""

    pixels: npt.NDArray[np.float32]
    labels: npt.NDArray[np.float32]
    patients: npt.NDArray[np.str_]  # each image's patient id (stays at the node: for the train/test split)
    burned_in_excluded: int


def load_images(decl: DatasetDecl, index: pd.DataFrame) -> Images:
    """The images of ``index``'s files (already consent-filtered), in its order.

    Raises
    ------
    DataError
        A file cannot be read or decoded (named), or no image is left.
    """
    opts = _options(decl)
    # only the burned-in policy of the config is consulted here; the key is a throw-away
    policy = DeidConfig(key=os.urandom(32), burned_in=opts.burned_in)
    config = ImageConfig(size=opts.size, window=opts.window)
    pixels, labels, patients, excluded = [], [], [], 0
    for file, label, patient in zip(index["file"], index["label"], index["patient_id"], strict=True):
        ds = read_dicom(Path(file))
        if burned_in_reason(ds, policy) is not None:
            excluded += 1
            continue
        frames = normalise(ds, config, path=file)
        pixels.append(frames[len(frames) // 2])
        labels.append(float(label))
        patients.append(str(patient))
    if not pixels:
        raise DataError(f"dataset {decl.name}: no image left after consent and the burned-in policy")
    return Images(
        pixels=np.stack(pixels).astype(np.float32),
        labels=np.asarray(labels, dtype=np.float32),
        patients=np.asarray(patients, dtype=str),
        burned_in_excluded=excluded,
    )
