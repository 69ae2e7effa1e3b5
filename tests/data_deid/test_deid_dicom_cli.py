"""``medfed data deid-dicom SRC... --out DIR`` on deid-data's files that carry fake identifiers."""

from __future__ import annotations

from pathlib import Path

import deid_data
import pytest

from medfed.cli.main import main
from medfed.data.deid_dicom import read_dicom

DATA = Path(deid_data.__file__).parent / "data"


def test_the_cli_writes_deidentified_files_and_lists_what_it_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "deid.key").write_bytes(b"site-secret-for-tests-0123456789\n")
    site = tmp_path / "site.toml"
    site.write_text('[deid]\nkey_file = "deid.key"\nmax_shift_days = 30\n')
    sources = sorted((DATA / "animals").glob("*.dcm"))
    names = {str(read_dicom(p).PatientName) for p in sources}
    assert "Wetzel" in " ".join(names)  # the fake identifiers are there before

    assert (
        main(["data", "deid-dicom", str(DATA / "animals"), "--out", str(tmp_path / "out"), "--config", str(site)]) == 0
    )
    out = capsys.readouterr().out
    written = sorted((tmp_path / "out").glob("*.dcm"))
    assert f"wrote {len(written)} de-identified file(s)" in out
    excluded = [line for line in out.splitlines() if line.startswith("excluded ")]
    assert len(written) + len(excluded) == len(sources) and written
    for path in written:
        ds = read_dicom(path)
        assert ds.PatientIdentityRemoved == "YES"
        assert not any(n and n in path.read_bytes().decode("latin-1") for n in names)


def test_the_cli_refuses_a_missing_key_and_a_used_output_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = str(DATA / "animals")
    assert main(["data", "deid-dicom", src, "--out", str(tmp_path / "o")]) == 1
    assert "needs the site's key" in capsys.readouterr().err
    (tmp_path / "k").write_bytes(b"short")
    assert main(["data", "deid-dicom", src, "--out", str(tmp_path / "o"), "--key-file", str(tmp_path / "k")]) == 1
    assert "at least 16 bytes" in capsys.readouterr().err
    (tmp_path / "k").write_bytes(b"site-secret-for-tests-0123456789")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "old.dcm").write_bytes(b"")
    assert main(["data", "deid-dicom", src, "--out", str(tmp_path / "used"), "--key-file", str(tmp_path / "k")]) == 1
    assert "must be a new or empty directory" in capsys.readouterr().err
