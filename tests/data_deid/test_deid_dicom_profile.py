"""PS3.15 Basic Profile de-identification on deid-data's DICOM files, which carry fake identifiers."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import deid_data
import pydicom
import pytest
from pydicom import config as dicom_config
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from medfed.core.errors import ConfigError, DataError
from medfed.data.deid_dicom import (
    PROFILE,
    Action,
    BurnedInPolicy,
    DeidConfig,
    deidentify,
    deidentify_file,
    deidentify_files,
    read_dicom,
    shift_days,
)

DATA = Path(deid_data.__file__).parent / "data"
FILES = sorted(DATA.rglob("*.dcm"))
KEY = b"site-secret-for-tests-0123456789"
ALLOW = DeidConfig(key=KEY, burned_in=BurnedInPolicy.ALLOW)


def _strings(value: object) -> list[str]:
    if isinstance(value, bytes | bytearray):
        return []
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        return [s for v in value for s in _strings(v)]
    return [str(value).strip()]


def _identifying_values(ds: Dataset) -> set[str]:
    """Every value of an attribute the profile does not keep, anywhere in the dataset (sequences too).

    A value that is also the meaning of a coded concept in the same file ("CT BRAIN WO IVCON") names a
    procedure, not a person, and is left out; so are values shorter than four characters ("M", "F").
    """
    with dicom_config.disable_value_validation():
        elements = list(ds.iterall()) + list(ds.file_meta.iterall())
        meanings = {str(e.value).strip() for e in elements if e.keyword == "CodeMeaning"}
        found = set()
        for element in elements:
            if element.tag in PROFILE and PROFILE[element.tag][0] is not Action.KEEP and element.VR not in ("SQ", "TM"):
                found.update(s for s in _strings(element.value) if len(s) >= 4 and s not in meanings)
    return found


def _bytes_without_pixels(ds: Dataset) -> bytes:
    """The encoded file, pixel data left out: 40 MB of pixels hold short strings like '1234' by chance."""
    copy = ds.copy()
    if "PixelData" in copy:
        del copy.PixelData
    buffer = io.BytesIO()
    with dicom_config.disable_value_validation():
        copy.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def test_deid_data_ships_the_files_with_fake_identifiers() -> None:
    assert len(FILES) >= 13
    assert "Wetzel" in str(read_dicom(DATA / "animals" / "cat.dcm").PatientName)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_identifying_value_survives_anywhere_in_the_output(path: Path) -> None:
    original = read_dicom(path)
    secrets = _identifying_values(original)
    assert secrets, "the file carries identifying values to remove"

    out, report = deidentify(original, ALLOW, source=str(path))

    encoded = _bytes_without_pixels(out)
    survivors = sorted(s for s in secrets if s.encode() in encoded)
    assert survivors == []
    assert out.PatientIdentityRemoved == "YES"
    assert [item.CodeValue for item in out.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert not [e for e in out.iterall() if e.tag.is_private]
    assert not any(s in repr(report) for s in secrets)  # the report names attributes, never values


def test_the_original_dataset_is_not_changed() -> None:
    original = read_dicom(DATA / "animals" / "cat.dcm")
    before = str(original.PatientName)
    deidentify(original, ALLOW)
    assert str(original.PatientName) == before


def test_uids_are_replaced_consistently_under_the_2_25_root() -> None:
    first, _ = deidentify(read_dicom(DATA / "humans" / "ctbrain1.dcm"), ALLOW)
    second, _ = deidentify(read_dicom(DATA / "humans" / "ctbrain2.dcm"), ALLOW)
    other_site, _ = deidentify(read_dicom(DATA / "humans" / "ctbrain1.dcm"), DeidConfig(key=b"x" * 32))
    original = read_dicom(DATA / "humans" / "ctbrain1.dcm")

    assert first.SeriesInstanceUID == second.SeriesInstanceUID != original.SeriesInstanceUID
    assert first.SOPInstanceUID != original.SOPInstanceUID
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert first.SeriesInstanceUID.startswith("2.25.") and len(first.SeriesInstanceUID) <= 64
    assert other_site.SeriesInstanceUID != first.SeriesInstanceUID
    assert first.SOPClassUID == original.SOPClassUID  # what the object is stays known


def test_dates_shift_by_one_offset_per_patient() -> None:
    original = read_dicom(DATA / "animals" / "cat.dcm")
    out, report = deidentify(original, ALLOW)

    def day(value: str) -> dt.date:
        return dt.datetime.strptime(value[:8], "%Y%m%d").date()

    offset = day(out.StudyDate) - day(original.StudyDate)
    assert offset.days == shift_days(KEY, str(original.PatientID), 365)
    assert 1 <= abs(offset.days) <= 365
    assert day(out.PatientBirthDate) - day(original.PatientBirthDate) == offset
    assert day(out.AcquisitionDateTime) - day(original.AcquisitionDateTime) == offset
    assert out.AcquisitionDateTime[8:] == original.AcquisitionDateTime[8:]
    assert report.dates_shifted >= 4
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"


def test_profile_actions_follow_table_e1_1() -> None:
    by_keyword = {keyword: action for action, keyword in PROFILE.values()}
    assert by_keyword["PatientName"] is Action.ZERO
    assert by_keyword["OperatorsName"] is Action.REMOVE
    assert by_keyword["SOPInstanceUID"] is Action.UID
    assert by_keyword["InstitutionName"] is Action.REMOVE_ZERO_OR_DUMMY
    out, report = deidentify(read_dicom(DATA / "animals" / "cat.dcm"), ALLOW)
    assert "OperatorsName" not in out and "InstitutionAddress" not in out
    assert str(out.PatientName).startswith("ANON-") and out.PatientName == out.PatientID
    assert out.InstitutionName == "ANONYMIZED"
    assert report.private_removed > 0 and report.counts()["X"] > 0


def test_burned_in_annotation_is_refused_unless_the_policy_allows_it(tmp_path: Path) -> None:
    flagged = DATA / "ultrasounds" / "GREYSCALE_IMAGE.dcm"
    refusing = DeidConfig(key=KEY)

    with pytest.raises(DataError, match=r"GREYSCALE_IMAGE\.dcm: refused, BurnedInAnnotation is YES"):
        deidentify_file(flagged, tmp_path / "out.dcm", refusing)
    batch = deidentify_files([flagged, DATA / "animals" / "cat.dcm"], tmp_path / "batch", refusing)

    assert [path.name for path, _ in batch.excluded] == ["GREYSCALE_IMAGE.dcm"]
    assert len(batch.written) == 1
    assert pydicom.dcmread(batch.written[0][0]).PatientIdentityRemoved == "YES"
    assert not (tmp_path / "out.dcm").exists()


def test_a_malformed_file_is_named(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 10)
    real = Path(str(get_testdata_file("CT_small.dcm", download=False))).read_bytes()
    cut_in_element, cut_between_elements = tmp_path / "cut1.dcm", tmp_path / "cut2.dcm"
    cut_in_element.write_bytes(real[:1000])
    cut_between_elements.write_bytes(real[: real.index(b"\xe0\x7f\x10\x00")])  # just before (7FE0,0010)
    short_pixels = get_testdata_file("MR_truncated.dcm", download=False)

    with pytest.raises(DataError, match=r"junk\.dcm: not a readable DICOM file"):
        read_dicom(junk)
    with pytest.raises(DataError, match=r"cut1\.dcm: not a readable DICOM file"):
        deidentify_file(cut_in_element, tmp_path / "out.dcm", ALLOW)
    with pytest.raises(DataError, match=r"cut2\.dcm: truncated DICOM file \(image attributes but no pixel data\)"):
        read_dicom(cut_between_elements)
    with pytest.raises(DataError, match=r"MR_truncated\.dcm: truncated DICOM file \(pixel data holds 8130 bytes"):
        read_dicom(Path(str(short_pixels)))


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        DeidConfig(key=b"short")
    with pytest.raises(ConfigError, match="max_shift_days"):
        DeidConfig(key=KEY, max_shift_days=0)
    assert "site-secret" not in repr(ALLOW)
