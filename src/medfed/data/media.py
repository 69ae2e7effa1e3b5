"""Declarations of image (DICOM) and clinical-note datasets: the ``site.toml`` keys beyond a table's.

A ``format = "dicom"`` dataset is a directory of DICOM files; each file is one example, labelled
either from a CSV (``labels``: a ``SOPInstanceUID`` or ``PatientID``/``patient_id`` column and the
label column) or from one of its own attributes (``label_attribute`` and the ``positive`` values
that mean label 1). A ``format = "notes"`` dataset is a JSONL file (one note per line: patient id,
text, label) or FHIR DocumentReference resources with labels from a CSV; notes become features
only through the PHI scrubber (:mod:`medfed.data.notes`). Both have a fixed table schema
(:func:`media_schema`): patient id, label and, for images, the modality. That table is what the
catalog profiles and what consent filters; pixels and text stay at the node.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.datadict import tag_for_keyword

from medfed.data.deid_dicom import BurnedInPolicy
from medfed.data.dicom import Window
from medfed.data.schema import Column, ColumnType, MissingPolicy, Schema

#: Keys only an image dataset takes.
IMAGE_KEYS = frozenset({"labels", "label_attribute", "positive", "image_size", "window", "burned_in"})
#: Keys only a notes dataset takes.
NOTES_KEYS = frozenset({"labels", "text_field", "vocabulary", "hash_buckets"})
#: Hashed word buckets of a notes dataset that declares no vocabulary.
DEFAULT_BUCKETS = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageOptions:
    """How a DICOM directory becomes labelled, normalised images."""

    labels: Path | None = None  # CSV: SOPInstanceUID or PatientID/patient_id, and the label column
    label_attribute: str = ""  # or a DICOM attribute: label 1 when its value is in ``positive``
    positive: tuple[str, ...] = ()
    size: tuple[int, int] = (64, 64)
    window: Window | None = None  # None: each file's own window (see medfed.data.dicom.ImageConfig)
    burned_in: BurnedInPolicy = BurnedInPolicy.EXCLUDE  # images that may carry burned-in text


@dataclass(frozen=True, slots=True, kw_only=True)
class NotesOptions:
    """How clinical notes become features (always through the scrubber)."""

    labels: Path | None = None  # CSV: patient_id and the label column (else the label is in each JSONL record)
    text_field: str = "text"
    vocabulary: tuple[str, ...] = ()  # a federation-wide word list; empty: hashed word buckets
    hash_buckets: int = DEFAULT_BUCKETS


def media_schema(name: str, *, images: bool) -> Schema:
    """The fixed table of a DICOM or notes dataset: one row per image file or note."""
    columns = [
        Column(name="patient_id", type=ColumnType.STRING, missing=MissingPolicy.ERROR),
        Column(name="label", type=ColumnType.INTEGER, minimum=0, maximum=1, missing=MissingPolicy.ERROR),
    ]
    if images:
        columns.append(Column(name="modality", type=ColumnType.STRING))
    return Schema(name=name, columns=tuple(columns))


def _strings(raw: Any, key: str, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        problems.append(f"{key}: must be a list of strings, got {raw!r}")
        return ()
    return tuple(raw)


def _labels(table: Mapping[str, Any], base: Path, problems: list[str]) -> Path | None:
    raw = table.get("labels")
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw:
        problems.append(f"labels: must be the path of a CSV file, got {raw!r}")
        return None
    return base / raw


def _size(raw: Any, problems: list[str]) -> tuple[int, int]:
    ok = isinstance(raw, list) and len(raw) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in raw)
    if not ok or min(raw) < 1 or max(raw) > 1024:
        problems.append(f"image_size: must be [rows, columns], each in 1..1024, got {raw!r}")
        return (64, 64)
    return (int(raw[0]), int(raw[1]))


def _window(raw: Any, problems: list[str]) -> Window | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"center", "width"}:
        problems.append(f"window: must be {{ center = ..., width = ... }}, got {raw!r}")
        return None
    center, width = raw["center"], raw["width"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (center, width)) or width <= 0:
        problems.append(f"window: center must be a number and width a number > 0, got {raw!r}")
        return None
    return Window(center=float(center), width=float(width))


def parse_image_options(table: Mapping[str, Any], *, base: Path, problems: list[str]) -> ImageOptions:
    """The image keys of a ``format = "dicom"`` table; problems are appended, never raised here."""
    problems.extend(f"{k}: only a notes dataset takes this key" for k in sorted(NOTES_KEYS - IMAGE_KEYS) if k in table)
    labels = _labels(table, base, problems)
    attribute = table.get("label_attribute", "")
    if not isinstance(attribute, str) or (attribute and tag_for_keyword(attribute) is None):
        problems.append(f"label_attribute: must be a DICOM keyword such as 'Modality', got {attribute!r}")
        attribute = ""
    positive = _strings(table["positive"], "positive", problems) if "positive" in table else ()
    if (labels is None) == (not attribute):
        problems.append('needs exactly one label source: labels = "<csv>" or label_attribute = "<DICOM keyword>"')
    if attribute and not positive:
        problems.append('label_attribute needs positive = ["<value meaning label 1>", ...]')
    try:
        burned_in = BurnedInPolicy(table.get("burned_in", BurnedInPolicy.EXCLUDE.value))
    except ValueError:
        problems.append(f"burned_in: {table.get('burned_in')!r} is not one of {[p.value for p in BurnedInPolicy]}")
        burned_in = BurnedInPolicy.EXCLUDE
    return ImageOptions(
        labels=labels,
        label_attribute=attribute,
        positive=positive,
        size=_size(table.get("image_size", [64, 64]), problems),
        window=_window(table.get("window"), problems),
        burned_in=burned_in,
    )


def parse_notes_options(table: Mapping[str, Any], *, base: Path, problems: list[str]) -> NotesOptions:
    """The notes keys of a ``format = "notes"`` table; problems are appended, never raised here."""
    problems.extend(f"{k}: only a dicom dataset takes this key" for k in sorted(IMAGE_KEYS - NOTES_KEYS) if k in table)
    text_field = table.get("text_field", "text")
    if not isinstance(text_field, str) or not text_field:
        problems.append(f"text_field: must be a non-empty string, got {text_field!r}")
        text_field = "text"
    vocabulary = _strings(table["vocabulary"], "vocabulary", problems) if "vocabulary" in table else ()
    if len(set(vocabulary)) != len(vocabulary):
        problems.append("vocabulary: words must be unique")
    buckets = table.get("hash_buckets", DEFAULT_BUCKETS)
    if not isinstance(buckets, int) or isinstance(buckets, bool) or not 1 <= buckets <= 1 << 20:
        problems.append(f"hash_buckets: must be an integer in 1..1048576, got {buckets!r}")
        buckets = DEFAULT_BUCKETS
    if vocabulary and "hash_buckets" in table:
        problems.append("declare vocabulary or hash_buckets, not both")
    return NotesOptions(
        labels=_labels(table, base, problems), text_field=text_field, vocabulary=vocabulary, hash_buckets=int(buckets)
    )
