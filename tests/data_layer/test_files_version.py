"""``medfed.data.digest.files_version``: the cheap (stat-only) version the node's fingerprint cache
and catalog publisher compare before hashing or reading a dataset again."""

from __future__ import annotations

import os
from pathlib import Path

from medfed.data.digest import files_version


def test_a_missing_path_has_the_zero_version(tmp_path: Path) -> None:
    assert files_version(None) == (0, 0, 0)
    assert files_version(tmp_path / "absent") == (0, 0, 0)


def test_a_file_and_a_directory_report_mtime_size_and_count(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.csv").write_bytes(b"y" * 5)
    os.utime(tmp_path / "a.csv", ns=(1_000, 2_000))
    os.utime(tmp_path / "sub" / "b.csv", ns=(1_000, 3_000))

    assert files_version(tmp_path / "a.csv") == (2_000, 10, 1)
    assert files_version(tmp_path) == (3_000, 15, 2)


def test_an_added_empty_old_file_changes_the_version(tmp_path: Path) -> None:
    # neither the newest mtime nor the total size moves: only the count tells
    (tmp_path / "a.csv").write_bytes(b"x" * 10)
    os.utime(tmp_path / "a.csv", ns=(5_000, 5_000))
    before = files_version(tmp_path)

    (tmp_path / "late.csv").write_bytes(b"")
    os.utime(tmp_path / "late.csv", ns=(1_000, 1_000))

    assert files_version(tmp_path) != before
    assert files_version(tmp_path)[:2] == before[:2]
