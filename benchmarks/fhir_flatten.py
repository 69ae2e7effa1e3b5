"""FHIR flattening throughput: medfed's compiled views against fhir.resources models, same run.

    .venv/bin/python benchmarks/fhir_flatten.py [--patients 300] [--repeats 3]

Both sides read the same transaction bundles (carebundle, R4, one file per patient) from disk and
produce the same rows: Patient (id, sex, birth date), Observation codings with value and unit
(top-level and components), Condition codings and MedicationRequest codings.

* ``medfed``: :func:`medfed.data.fhir.flatten` with the built-in views (``json`` + compiled paths);
* ``fhir.resources``: ``Bundle.model_validate_json`` (R4B pydantic models, full validation), then
  attribute access for the same columns.

Reported: resources per second (best of ``--repeats``), and the ratio; the row counts are checked
to be equal, so both sides did the same work.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from carebundle import generate_cohort, to_json
from fhir.resources.R4B.bundle import Bundle

from medfed.data.fhir import builtin_views, flatten

VIEWS = ("patient", "observation", "observation_component", "condition", "medication_request")


def medfed_rows(directory: Path) -> dict[str, int]:
    tables = flatten(directory, builtin_views(*VIEWS))
    return {name: len(frame) for name, frame in tables.items()}


def _codings(resource_id: str, subject: Any, concept: Any, time_: Any, value: Any) -> list[tuple[Any, ...]]:
    ref = subject.reference.removeprefix("urn:uuid:").rsplit("/", 1)[-1] if subject else None
    quantity = (value.value, value.code) if value is not None else (None, None)
    return [(resource_id, ref, time_, *quantity, c.system, c.code) for c in (concept.coding or [])]


def models_rows(directory: Path) -> dict[str, int]:
    rows: dict[str, list[tuple[Any, ...]]] = {name: [] for name in VIEWS}
    for file in sorted(directory.glob("*.json")):
        bundle = Bundle.model_validate_json(file.read_bytes())
        for entry in bundle.entry or []:
            r = entry.resource
            rid = r.id or str(entry.fullUrl).removeprefix("urn:uuid:")
            kind = r.get_resource_type()
            if kind == "Patient":
                rows["patient"].append((rid, r.gender, r.birthDate))
            elif kind == "Observation":
                rows["observation"] += _codings(rid, r.subject, r.code, r.effectiveDateTime, r.valueQuantity)
                for comp in r.component or []:
                    rows["observation_component"] += _codings(
                        rid, r.subject, comp.code, r.effectiveDateTime, comp.valueQuantity
                    )
            elif kind == "Condition":
                rows["condition"] += _codings(rid, r.subject, r.code, r.onsetDateTime, None)
            elif kind == "MedicationRequest" and r.medicationCodeableConcept is not None:
                rows["medication_request"] += _codings(rid, r.subject, r.medicationCodeableConcept, r.authoredOn, None)
    return {name: len(v) for name, v in rows.items()}


def best(fn: Callable[[Path], dict[str, int]], directory: Path, repeats: int) -> tuple[float, dict[str, int]]:
    times, out = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(directory)
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        n_resources = 0
        for i, bundle in enumerate(generate_cohort(count=args.patients, seed=1)):
            n_resources += len(bundle.entry or [])
            (directory / f"b{i:05d}.json").write_text(to_json(bundle), encoding="utf-8")
        t_medfed, rows_medfed = best(medfed_rows, directory, args.repeats)
        t_models, rows_models = best(models_rows, directory, args.repeats)
    if rows_medfed != rows_models:
        raise SystemExit(f"row counts differ: medfed {rows_medfed} vs fhir.resources {rows_models}")
    print(f"{args.patients} patients, {n_resources} resources in {args.patients} bundles; rows {rows_medfed}")
    print(f"medfed views     {n_resources / t_medfed:>10,.0f} resources/s  ({t_medfed:.3f} s)")
    print(f"fhir.resources   {n_resources / t_models:>10,.0f} resources/s  ({t_models:.3f} s)")
    print(f"ratio            {t_models / t_medfed:>10.1f}x")


if __name__ == "__main__":
    main()
