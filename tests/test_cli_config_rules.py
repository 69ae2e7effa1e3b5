"""Small rules of the CLI's config loader: which ``[datasets.<name>]`` tables in site.toml are declared
datasets (parsed with a schema or a fixed table) rather than legacy train.csv/test.csv directories,
and which API token files it reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from medfed.cli.config import is_declared_dataset, read_api_token
from medfed.core.errors import ConfigError


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


def test_a_token_file_others_can_read_is_refused_like_a_key(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("medfed-token\n")
    token_file.chmod(0o644)

    with pytest.raises(ConfigError, match=r"group or others may read it; chmod 600"):
        read_api_token(token_file, environ={})

    token_file.chmod(0o600)
    assert read_api_token(token_file, environ={}) == "medfed-token"
