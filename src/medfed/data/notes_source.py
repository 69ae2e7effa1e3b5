"""Clinical notes as a dataset: an index table (one row per note) and features of the scrubbed text.

Notes are read from a JSONL file (one JSON object per line with the patient id, the text and,
unless a labels CSV is declared, the label) or from FHIR ``DocumentReference`` resources (bundles,
NDJSON or a directory of them: the patient from ``subject.reference``, the text from each
``content[].attachment`` of type ``text/plain``, inline ``data`` in base64; labels from the CSV).
:func:`index_notes` returns ``patient_id``, ``label`` and ``text``; only the first two are ever
profiled. :func:`notes_matrix` is the only way text becomes task input: through
:func:`medfed.data.notes.scrub`, as counts of a declared vocabulary or of hashed word buckets.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medfed.core.errors import DataError
from medfed.data.fhir import iter_resources
from medfed.data.media import NotesOptions
from medfed.data.notes import NoteFeatures, hashed_note_features, note_features

if TYPE_CHECKING:
    from medfed.data.sources import DatasetDecl

MAX_LISTED = 20


def _options(decl: DatasetDecl) -> NotesOptions:
    if decl.notes is None:
        raise DataError(f"dataset {decl.name}: not a notes dataset")
    return decl.notes


def _patient_labels(path: Path, label: str) -> dict[str, int]:
    """patient_id -> label from a labels CSV."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot be read as a labels CSV ({exc})") from None
    if "patient_id" not in frame.columns or label not in frame.columns:
        raise DataError(f"{path}: needs patient_id and {label!r} columns (has {list(frame.columns)})")
    ids, values = frame["patient_id"].str.strip(), frame[label].str.strip()
    problems = [f"{path}: line {i + 2}: label {v!r} is not 0 or 1" for i, v in enumerate(values) if v not in ("0", "1")]
    # never the id itself: a job's error travels to the coordinator
    problems += [f"{path}: line {i + 2}: patient_id listed twice" for i in np.nonzero(ids.duplicated())[0]]
    if problems:
        raise DataError("\n".join(problems[:MAX_LISTED]))
    return {p: int(v) for p, v in zip(ids, values, strict=True)}


def _jsonl(decl: DatasetDecl, opts: NotesOptions, problems: list[str]) -> list[dict[str, Any]]:
    id_key, label_key = decl.patient_id or "patient_id", decl.label or "label"
    rows = []
    try:
        lines = decl.path.read_text(encoding=decl.encoding).splitlines()
    except (OSError, UnicodeDecodeError, LookupError) as exc:
        raise DataError(f"{decl.path}: cannot be read as JSONL ({decl.encoding}): {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{decl.path}: line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not a JSON object ({exc})")
            continue
        if not isinstance(record, dict):
            problems.append(f"{where}: not a JSON object")
            continue
        patient, text = record.get(id_key), record.get(opts.text_field)
        if not isinstance(patient, str | int) or isinstance(patient, bool) or not str(patient).strip():
            problems.append(f"{where}: {id_key}: missing or not a string")
            continue
        if not isinstance(text, str):
            problems.append(f"{where}: {opts.text_field}: missing or not text")
            continue
        label = record.get(label_key) if opts.labels is None else None
        if opts.labels is None and label not in (0, 1):
            problems.append(f"{where}: {label_key}: {label!r} is not 0 or 1")
            continue
        rows.append({"patient_id": str(patient).strip(), "label": label, "text": text, "where": where})
    return rows


def _document_text(resource: dict[str, Any], where: str, problems: list[str]) -> str | None:
    texts = []
    for i, content in enumerate(resource.get("content") or []):
        attachment = content.get("attachment", {}) if isinstance(content, dict) else {}
        if not str(attachment.get("contentType", "text/plain")).startswith("text/plain") or "data" not in attachment:
            continue
        try:
            texts.append(base64.b64decode(str(attachment["data"]), validate=True).decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError) as exc:
            problems.append(f"{where}: DocumentReference.content[{i}].attachment.data: not base64 UTF-8 text ({exc})")
            return None
    if not texts:
        problems.append(f"{where}: DocumentReference has no inline text/plain attachment")
        return None
    return "\n".join(texts)


def _fhir(decl: DatasetDecl, problems: list[str]) -> list[dict[str, Any]]:
    rows = []
    for located in iter_resources(decl.path, problems):
        resource = located.resource
        if resource.get("resourceType") != "DocumentReference":
            continue
        reference = str((resource.get("subject") or {}).get("reference", ""))
        patient = reference.removeprefix("urn:uuid:").rsplit("/", 1)[-1]
        if not patient:
            problems.append(f"{located.where}: DocumentReference.subject.reference: missing")
            continue
        text = _document_text(resource, located.where, problems)
        if text is not None:
            rows.append({"patient_id": patient, "label": None, "text": text, "where": located.where})
    return rows


def index_notes(decl: DatasetDecl) -> pd.DataFrame:
    """One row per note: ``patient_id``, ``label``, ``text`` (the text never leaves the node).

    Raises
    ------
    DataError
        Unreadable files, malformed records (file and line or entry named), a note whose patient
        has no label, or no note at all; every problem at once.
    """
    opts = _options(decl)
    problems: list[str] = []
    is_jsonl = decl.path.is_file() and decl.path.suffix == ".jsonl"
    if not is_jsonl and opts.labels is None:
        raise DataError(f'dataset {decl.name}: FHIR notes need labels = "<csv of patient_id and label>"')
    rows = _jsonl(decl, opts, problems) if is_jsonl else _fhir(decl, problems)
    if opts.labels is not None:
        labels = _patient_labels(opts.labels, decl.label or "label")
        for row in rows:
            row["label"] = labels.get(row["patient_id"])
            if row["label"] is None:
                problems.append(f"{row['where']}: its patient has no label in {opts.labels}")  # no id: PHI
    if not rows and not problems:
        problems.append(f"{decl.path}: no notes")
    if problems:
        more = [f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else []
        listed = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED] + more)
        raise DataError(f"dataset {decl.name}: {len(problems)} problem(s):\n{listed}")
    return pd.DataFrame(rows, columns=["patient_id", "label", "text"])


def notes_matrix(decl: DatasetDecl, texts: list[str]) -> NoteFeatures:
    """Features of ``texts`` after the scrubber: counts of the declared vocabulary, else hashed buckets."""
    opts = _options(decl)
    if opts.vocabulary:
        return note_features(texts, vocabulary=opts.vocabulary)
    return hashed_note_features(texts, buckets=opts.hash_buckets)
