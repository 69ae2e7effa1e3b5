"""The clinical-notes PHI scrubber on deidgate's annotated synthetic notes, and note features."""

from __future__ import annotations

import deidgate
import numpy as np
import pytest
from deidgate import load_corpus

from medfed.core.errors import ConfigError, DataError
from medfed.data.notes import PhiType, note_features, scrub

CORPUS = load_corpus()


def test_deidgate_finds_no_surviving_identifier() -> None:
    result = deidgate.check_all(lambda text: scrub(text).text)

    assert len(CORPUS) == 15
    assert result.passed, result.summary()


@pytest.mark.parametrize("sample", CORPUS, ids=lambda s: s["id"])
def test_every_planted_identifier_lies_inside_a_reported_span(sample: dict[str, object]) -> None:
    text = str(sample["text"])
    result = scrub(text)
    covered = {i for span in result.spans for i in range(span.start, span.end)}
    for item in sample["phi"]:  # type: ignore[attr-defined]
        start = text.find(item["value"])
        assert start >= 0
        needed = {i for i in range(start, start + len(item["value"])) if not text[i].isspace()}
        assert needed <= covered, item
        assert item["value"] not in result.text


def test_surrogates_are_typed_and_spans_index_the_original() -> None:
    text = "Seen by Dr. Alan Grant on 03/14/2024; call (559) 555-0142 or fax 312-555-0198, MRN 5583920."

    result = scrub(text)

    assert result.text == "Seen by Dr. [NAME] on [DATE]; call [PHONE] or fax [FAX], MRN [MRN]."
    assert [text[s.start : s.end] for s in result.spans if s.kind is PhiType.NAME] == ["Alan Grant"]
    assert result.counts()[PhiType.DATE] == 1


def test_ages_over_89_go_and_younger_ages_stay() -> None:
    assert scrub("A 94-year-old woman.").text == "A [AGE] woman."
    assert scrub("Patient aged 101 with dementia.").text == "Patient aged [AGE] with dementia."
    assert scrub("A 45-year-old man.").text == "A 45-year-old man."


def test_a_name_found_once_is_removed_everywhere() -> None:
    result = scrub("Mrs. Okonkwo-Baptiste reports pain. Okonkwo-Baptiste was given ibuprofen.")
    assert "Okonkwo" not in result.text


def test_apostrophe_names_and_relatives() -> None:
    assert scrub("Mr. O'Brien presents with CHF.").text == "Mr. [NAME] presents with CHF."
    assert scrub("Mother is a 45 year-old teacher.").text == "Mother is a 45 year-old teacher."


def test_clinical_text_is_left_alone() -> None:
    text = (
        "Patient is presenting with essential hypertension and prediabetes. Blood Pressure 128/82 mm[Hg], "
        "HbA1c 6.1 %. Prescribed lisinopril 10 MG Oral Tablet. Patient currently has Medicare. "
        "Chief Complaint: chest pain for 3 days."
    )
    assert scrub(text).spans == ()


def test_note_features_come_from_scrubbed_text_only() -> None:
    notes = [str(s["text"]) for s in CORPUS]

    features = note_features(notes)

    words = set(features.vocabulary)
    assert features.matrix.shape == (15, len(features.vocabulary))
    assert {"marisol", "ferndale", "ostrowski", "fresno", "visalia", "sunny", "zephyrmail"}.isdisjoint(words)
    assert not [w for w in words if any(c.isdigit() for c in w)]
    assert {"patient", "admitted"} <= words


def test_note_features_with_a_shared_vocabulary() -> None:
    features = note_features(["Atrial fibrillation, admitted.", "No fibrillation."], vocabulary=["fibrillation", "x"])
    np.testing.assert_array_equal(features.matrix, [[1, 0], [1, 0]])
    assert features.vocabulary == ("fibrillation", "x")


def test_bad_input_is_refused() -> None:
    with pytest.raises(DataError, match="a note must be text"):
        scrub(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_features"):
        note_features(["x"], max_features=0)
