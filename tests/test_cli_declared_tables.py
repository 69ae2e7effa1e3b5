"""Which ``[datasets.<name>]`` tables in site.toml are declared datasets (parsed with a schema or a
fixed table) rather than legacy train.csv/test.csv directories."""

from __future__ import annotations

import pytest

from medfed.cli.config import is_declared_dataset


@pytest.mark.parametrize(
    ("table", "declared"),
    [
        ({"format": "csv", "path": "a.csv", "columns": {}}, True),
        ({"format": "dicom", "path": "scans"}, True),
        ({"kind": "dicom", "path": "scans"}, True),  # the older spelling of format
        ({"format": "notes", "path": "notes.jsonl"}, True),
        ({"kind": "notes", "path": "notes.jsonl"}, True),
        ({"kind": "csv", "path": "data/heart", "label": "label"}, False),
        ({"path": "data/heart"}, False),
    ],
)
def test_dicom_and_notes_are_declared_whichever_key_names_the_format(table: dict[str, object], declared: bool) -> None:
    assert is_declared_dataset(table) is declared
