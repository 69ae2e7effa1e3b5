"""FHIR R4/R4B at the node: bundles and NDJSON bulk exports, flattened by views into tables.

:func:`iter_resources` reads a bundle (``.json``), a bulk export (``.ndjson``, one resource a line)
or a directory of them, and yields each resource with where it came from (file and entry index, or
file and line). :func:`flatten` runs :class:`~medfed.data.fhir_views.ViewDefinition` s over them in
one pass; :func:`fhir_features` turns Patient, Observation, Condition and MedicationRequest into one
harmonised row per patient, with LOINC/SNOMED/ICD-10/RxNorm codes mapped to named features and
units converted. A malformed resource is an error naming the file, the line or entry and the path;
all of them are collected, then one :class:`~medfed.core.errors.DataError` is raised.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medfed.core.errors import DataError, ValidationError
from medfed.data.fhir_views import ViewDefinition, evaluate
from medfed.data.schema import EVENT_COLUMNS, FeatureSpec, pivot_events

#: Resource types medfed flattens; others in a bundle (Practitioner, DiagnosticReport...) are skipped.
RESOURCE_TYPES = ("Patient", "Observation", "Condition", "Encounter", "MedicationRequest", "DocumentReference")
#: At most this many malformed resources are listed; the rest are counted.
MAX_LISTED = 50


@dataclass(frozen=True, slots=True)
class Located:
    """A resource and where it was read: ``file: entry 3`` or ``file: line 17``."""

    where: str
    resource: dict[str, Any]


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in (".json", ".ndjson") and p.is_file())
    if path.is_file():
        return [path]
    raise DataError(f"{path}: no such file or directory")


def _bundle(path: Path, problems: list[str]) -> Iterator[Located]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{path}: not a JSON document ({exc})")
        return
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        yield from _checked(doc, f"{path}", problems)
        return
    entries = doc.get("entry", [])
    if not isinstance(entries, list):
        problems.append(f"{path}: Bundle.entry is not a list")
        return
    for i, entry in enumerate(entries):
        where = f"{path}: entry {i}"
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and "id" not in resource:
            # a transaction bundle carries identity in fullUrl (urn:uuid:...), references point at it
            full_url = entry.get("fullUrl", "")
            if isinstance(full_url, str) and full_url:
                resource["id"] = full_url.removeprefix("urn:uuid:").rsplit("/", 1)[-1]
        yield from _checked(resource, where, problems)


def _ndjson(path: Path, problems: list[str]) -> Iterator[Located]:
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                resource = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                problems.append(f"{path}: line {number}: not a JSON resource ({exc})")
                continue
            yield from _checked(resource, f"{path}: line {number}", problems)


def _checked(resource: Any, where: str, problems: list[str]) -> Iterator[Located]:
    if not isinstance(resource, dict):
        problems.append(f"{where}: resource is not a JSON object")
    elif not isinstance(resource.get("resourceType"), str):
        problems.append(f"{where}: resourceType: missing")
    elif resource["resourceType"] in RESOURCE_TYPES and not isinstance(resource.get("id"), str):
        problems.append(f"{where}: {resource['resourceType']}.id: missing or not a string")
    else:
        yield Located(where, resource)


def iter_resources(path: Path, problems: list[str]) -> Iterator[Located]:
    """Every resource under ``path``; malformed ones are appended to ``problems`` (never dropped)."""
    for file in _files(path):
        yield from (_ndjson(file, problems) if file.suffix == ".ndjson" else _bundle(file, problems))


def _raise(problems: list[str], what: str) -> None:
    if problems:
        listed = problems[:MAX_LISTED] + (
            [f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else []
        )
        raise DataError(f"{what}: {len(problems)} malformed resource(s):\n" + "\n".join(f"  - {p}" for p in listed))


def flatten(path: Path, views: tuple[ViewDefinition, ...]) -> dict[str, pd.DataFrame]:
    """One frame per view, from a single pass over the resources under ``path``.

    Raises
    ------
    DataError
        Malformed JSON or resources, or values of the wrong FHIR type (file, line/entry and path).
    """
    problems: list[str] = []
    by_type: dict[str, list[ViewDefinition]] = {}
    for view in views:
        by_type.setdefault(view.resource, []).append(view)
    rows: dict[str, list[dict[str, Any]]] = {v.name: [] for v in views}
    for located in iter_resources(path, problems):
        for view in by_type.get(located.resource["resourceType"], ()):
            try:
                rows[view.name].extend(evaluate(view, located.resource, where=located.where))
            except ValidationError as exc:
                problems.extend(exc.problems)
    _raise(problems, str(path))
    return {v.name: pd.DataFrame(rows[v.name], columns=list(v.column_names)) for v in views}


# --- built-in views ---------------------------------------------------------------------------


def _col(name: str, path: str, kind: str = "string") -> dict[str, str]:
    return {"name": name, "path": path, "type": kind}


def _coded(resource: str, name: str, code: str, subject: str, time: str, value: bool = False) -> dict[str, Any]:
    """A view with one row per coding of ``code``: patient, system, code, time (and value, unit)."""
    inner = [_col("system", "system"), _col("code", "code")]
    top = [_col("id", "getResourceKey()"), _col("patient_id", f"{subject}.getReferenceKey()"), _col("time", time)]
    if value:
        top += [_col("value", "value.ofType(Quantity).value", "decimal"), _col("unit", "value.ofType(Quantity).code")]
    return {
        "name": name,
        "resource": resource,
        "select": [{"column": top}, {"forEach": f"{code}.coding", "column": inner}],
    }


#: Views medfed ships for the six resource types (SQL-on-FHIR-shaped dicts; sites may add their own).
BUILTIN_VIEWS: Mapping[str, dict[str, Any]] = {
    "patient": {
        "name": "patient",
        "resource": "Patient",
        "select": [
            {"column": [_col("patient_id", "getResourceKey()"), _col("sex", "gender"), _col("birth_date", "birthDate")]}
        ],
    },
    "observation": _coded("Observation", "observation", "code", "subject", "effective.ofType(dateTime)", value=True),
    "observation_component": {
        "name": "observation_component",
        "resource": "Observation",
        "select": [
            {"column": [_col("id", "getResourceKey()"), _col("patient_id", "subject.getReferenceKey()")]},
            {"column": [_col("time", "effective.ofType(dateTime)")]},
            {
                "forEach": "component",
                "column": [
                    _col("value", "value.ofType(Quantity).value", "decimal"),
                    _col("unit", "value.ofType(Quantity).code"),
                ],
                "select": [{"forEach": "code.coding", "column": [_col("system", "system"), _col("code", "code")]}],
            },
        ],
    },
    "condition": _coded("Condition", "condition", "code", "subject", "onset.ofType(dateTime)"),
    "medication_request": _coded(
        "MedicationRequest", "medication_request", "medication.ofType(CodeableConcept)", "subject", "authoredOn"
    ),
    "encounter": {
        "name": "encounter",
        "resource": "Encounter",
        "select": [
            {
                "column": [
                    _col("id", "getResourceKey()"),
                    _col("patient_id", "subject.getReferenceKey()"),
                    _col("status", "status"),
                    _col("class", "class.code"),
                    _col("start", "period.start"),
                    _col("end", "period.end"),
                ]
            }
        ],
    },
    "document_reference": {
        "name": "document_reference",
        "resource": "DocumentReference",
        "select": [
            {
                "column": [
                    _col("id", "getResourceKey()"),
                    _col("patient_id", "subject.getReferenceKey()"),
                    _col("date", "date"),
                    _col("type", "type.coding.code.first()"),
                ]
            },
            # the note text stays in the attachment: notes become features only through the scrubber
            {"forEachOrNull": "content", "column": [_col("content_type", "attachment.contentType")]},
        ],
    },
}


def builtin_views(*names: str) -> tuple[ViewDefinition, ...]:
    """The named built-in views (all when none are named), parsed."""
    unknown = [n for n in names if n not in BUILTIN_VIEWS]
    if unknown:
        raise ValidationError(f"unknown views {unknown} (known: {sorted(BUILTIN_VIEWS)})")
    return tuple(ViewDefinition.from_dict(BUILTIN_VIEWS[n]) for n in names or tuple(BUILTIN_VIEWS))


def fhir_features(path: Path, features: tuple[FeatureSpec, ...], *, as_of: pd.Timestamp) -> pd.DataFrame:
    """One row per Patient under ``path``: ``patient_id``, ``age``, ``sex`` and each feature.

    Raises
    ------
    DataError
        Malformed resources; or a measurement whose unit cannot be converted (names file and entry).
    """
    views = builtin_views("patient", "observation", "observation_component", "condition", "medication_request")
    tables = flatten(path, views)
    parts = [
        tables[name].assign(where=tables[name]["id"].map(lambda i, n=name: f"{path}: {n} {i}"))
        for name in ("observation", "observation_component", "condition", "medication_request")
        if len(tables[name])
    ]
    empty = pd.DataFrame({c: pd.Series(dtype="object") for c in EVENT_COLUMNS})
    events = pd.concat(parts, ignore_index=True) if parts else empty
    for column in ("value", "unit"):
        if column not in events:
            events[column] = None
    events["time"] = pd.to_datetime(events["time"], errors="coerce", format="ISO8601", utc=True)
    try:
        return pivot_events(tables["patient"], events[list(EVENT_COLUMNS)], features, as_of=as_of)
    except ValidationError as exc:
        raise DataError(str(exc)) from None
