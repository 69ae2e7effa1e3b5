"""Invariants of the scrubber and of the keyed UID and date-shift functions, for any input."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from medfed.data.deid_dicom import new_uid, pseudonym, shift_days
from medfed.data.notes import scrub

KEY = b"property-test-key-0123456789abcd"
NOTE_ALPHABET = st.sampled_from([*"abcXYZ019 -./,:()@'\n", "Dr. ", "MRN ", "May ", " is a 95 year-old", "Smith"])


@settings(max_examples=200, deadline=None)
@given(st.lists(NOTE_ALPHABET, max_size=60).map("".join))
def test_spans_are_ordered_disjoint_and_rebuild_the_scrubbed_text(text: str) -> None:
    result = scrub(text)

    rebuilt, cursor = [], 0
    for span in result.spans:
        assert cursor <= span.start < span.end <= len(text)
        rebuilt += [text[cursor : span.start], f"[{span.kind.value}]"]
        cursor = span.end
    rebuilt.append(text[cursor:])
    assert "".join(rebuilt) == result.text


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=64))
def test_new_uids_are_valid_and_stable(uid: str) -> None:
    replaced = new_uid(KEY, uid)
    assert re.fullmatch(r"2\.25\.(0|[1-9]\d*)", replaced) and len(replaced) <= 64
    assert new_uid(KEY, uid) == replaced
    assert new_uid(b"another-site-key-0123456789abcde", uid) != replaced


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=32), st.integers(min_value=1, max_value=3650))
def test_date_shift_is_bounded_non_zero_and_per_patient(patient: str, max_days: int) -> None:
    days = shift_days(KEY, patient, max_days)
    assert days != 0 and -max_days <= days <= max_days
    assert shift_days(KEY, patient, max_days) == days
    assert pseudonym(KEY, patient) == pseudonym(KEY, patient)
