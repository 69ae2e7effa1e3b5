"""DICOM datasets for jobs: a directory of real DICOM files (pydicom, pydicom-data, deid-data) reaches
a task as normalised, labelled images after the consent filter; bad files are named and the dataset
is not offered. The label (CT vs MR) is a plumbing check, not a clinical question."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from media_support import MR_SMALL_PATIENT, SITE_IMAGES, shipped, write_images

from medfed.core.errors import ConfigError, DataError, ValidationError
from medfed.data.consent import ConsentRecord, ConsentRegistry, ConsentStatus
from medfed.data.dicom import ImageConfig, read_image
from medfed.data.sources import DatasetDecl, SourceFormat, parse_dataset, read_table
from medfed.node.datasets import Publisher, catalog_entry, load_for_job, publish
from medfed.node.media_data import split_mask
from medfed.node.runtime import DatasetConfig

DAY = dt.date(2026, 6, 1)
BY_MODALITY = {"format": "dicom", "path": "images", "label_attribute": "Modality", "positive": ["CT"]}


def _decl(root: Path, **extra: object) -> DatasetDecl:
    return parse_dataset("scans", {**BY_MODALITY, **extra}, base=root, where="site.toml")


def _load(decl: DatasetDecl, registry: ConsentRegistry | None = None, job: str = "job-1"):  # type: ignore[no-untyped-def]
    return load_for_job(decl, registry or ConsentRegistry(), purpose="research", on=DAY, job_id=job)


def _all_rows(data) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.concatenate([data.x_train, data.x_test])


def test_a_dicom_directory_reaches_the_task_as_normalised_labelled_images(tmp_path: Path) -> None:
    write_images(tmp_path / "images", SITE_IMAGES["alpha"])
    decl = _decl(tmp_path, image_size=[32, 48])

    job = _load(decl)

    data = job.data
    assert decl.format is SourceFormat.DICOM and data.image_shape == (1, 32, 48)
    assert data.x_train.dtype == np.float32 and data.x_train.shape[1] == 32 * 48 == len(data.feature_names)
    assert len(data.y_train) + len(data.y_test) == 7 and len(data.y_test) == 2  # one CT, one MR patient held out
    rows = _all_rows(data)
    assert rows.min() >= 0.0 and rows.max() <= 1.0
    # 3 CT files (label 1), 4 MR (label 0): the label comes from each file's Modality
    assert sorted(np.concatenate([data.y_train, data.y_test]).tolist()) == [0, 0, 0, 0, 1, 1, 1]
    # every row is one file's normalised pixels, resized; CT_small's is among them, labelled 1
    ct_small = read_image(shipped("CT_small.dcm"), ImageConfig(size=(32, 48)))[0].ravel()
    labels = np.concatenate([data.y_train, data.y_test])
    match = [i for i, row in enumerate(rows) if np.allclose(row, ct_small)]
    assert len(match) == 1 and labels[match[0]] == 1.0
    assert job.metrics() == {
        "policy_rows_read": 7.0,
        "consent_rows_excluded": 0.0,
        "consent_patients_excluded": 0.0,
        "policy_rows_dropped": 0.0,
    }
    # the same job splits the same way every round; another job differently or identically, but valid
    again = _load(decl).data
    np.testing.assert_array_equal(again.x_test, data.x_test)


def test_an_opted_out_patients_images_never_reach_the_task_and_are_counted(tmp_path: Path) -> None:
    write_images(tmp_path / "images", SITE_IMAGES["alpha"])
    decl = _decl(tmp_path)
    opt_out = ConsentRecord(patient_id=MR_SMALL_PATIENT, purpose="*", status=ConsentStatus.DENY, date=DAY)
    mr_small = read_image(shipped("MR_small.dcm"), ImageConfig())[0].ravel()
    assert any(np.allclose(row, mr_small) for row in _all_rows(_load(decl).data))  # there without the opt-out

    job = _load(decl, ConsentRegistry(records=(opt_out,)))

    assert job.consent.rows_excluded == 2 and job.consent.patients_excluded == 1  # MR_small + its big-endian twin
    assert len(job.data.y_train) + len(job.data.y_test) == 5
    assert not any(np.allclose(row, mr_small, atol=1e-3) for row in _all_rows(job.data))


def test_labels_come_from_a_csv_keyed_by_sop_instance_uid_or_patient_id(tmp_path: Path) -> None:
    names = ("CT_small.dcm", "693_UNCR.dcm", "MR_small.dcm", "MR2_UNCR.dcm", "examples_overlay.dcm")
    write_images(tmp_path / "images", names)
    uids = {n: str(pydicom.dcmread(shipped(n), stop_before_pixels=True).SOPInstanceUID) for n in names}
    wanted = {"CT_small.dcm": 0, "693_UNCR.dcm": 1, "MR_small.dcm": 1, "MR2_UNCR.dcm": 0, "examples_overlay.dcm": 0}
    (tmp_path / "labels.csv").write_text(
        "SOPInstanceUID,outcome\n" + "".join(f"{uids[n]},{wanted[n]}\n" for n in names)
    )
    decl = parse_dataset(
        "scans",
        {"format": "dicom", "path": "images", "labels": "labels.csv", "label": "outcome"},
        base=tmp_path,
        where="site.toml",
    )

    table = read_table(decl).frame

    assert sorted(zip(table["modality"], table["label"], strict=True)) == [
        ("CT", 0), ("CT", 1), ("MR", 0), ("MR", 0), ("MR", 1)
    ]  # fmt: skip
    job = _load(decl).data  # a job reads only headers before consent: the same labels
    assert sorted(np.concatenate([job.y_train, job.y_test]).tolist()) == [0, 0, 0, 1, 1]
    (tmp_path / "labels.csv").write_text(f"PatientID,outcome\n1CT1,1\n4MR1,2\n{uids['MR2_UNCR.dcm']},0\n")
    with pytest.raises(DataError) as err:
        read_table(decl)
    assert f"{tmp_path / 'labels.csv'}: line 3: label '2' is not 0 or 1" in str(err.value)
    (tmp_path / "labels.csv").write_text("PatientID,outcome\n1CT1,1\n4MR1,0\n")
    with pytest.raises(DataError) as err:
        read_table(decl)
    message = str(err.value)
    assert f"{tmp_path / 'images' / '693_UNCR.dcm'}: no label (its PatientID is not in the labels CSV)" in message
    assert "CQ500-CT-310" not in message  # the file is named, never the patient: a job's error leaves the site
    assert "3 problem(s)" in message  # 693_UNCR, MR2_UNCR and examples_overlay, all at once


def test_a_truncated_dicom_is_named_the_dataset_is_not_offered_and_a_task_is_refused(tmp_path: Path) -> None:
    write_images(tmp_path / "images", [*SITE_IMAGES["alpha"], "MR_truncated.dcm"])
    decl = _decl(tmp_path)
    bad = tmp_path / "images" / "MR_truncated.dcm"

    with pytest.raises(DataError) as err:
        read_table(decl)
    assert f"{bad}: truncated DICOM file (pixel data holds 8130 bytes, 8192 expected)" in str(err.value)
    offer = publish(
        "alpha", {"scans": DatasetConfig(name="scans", path=decl.path, decl=decl)}, ConsentRegistry(), on=DAY
    )
    assert offer.offered == () and str(bad) in offer.refused["scans"]
    with pytest.raises(DataError) as err:
        _load(decl)
    assert str(bad) in str(err.value)


def test_a_file_without_patient_id_is_refused_by_name_consent_could_not_apply(tmp_path: Path) -> None:
    write_images(tmp_path / "images", ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm"])

    with pytest.raises(DataError) as err:
        read_table(_decl(tmp_path))

    assert f"{tmp_path / 'images' / 'emri_small.dcm'}: no PatientID, so consent cannot be applied" in str(err.value)


def test_images_that_may_carry_burned_in_text_are_excluded_and_counted_unless_allowed(tmp_path: Path) -> None:
    write_images(tmp_path / "images", [*SITE_IMAGES["alpha"], "ultrasounds/GREYSCALE_IMAGE.dcm"])  # BurnedIn YES

    excluded = _load(_decl(tmp_path))
    allowed = _load(_decl(tmp_path, burned_in="allow"))

    assert excluded.metrics()["policy_rows_dropped"] == 1.0
    assert len(excluded.data.y_train) + len(excluded.data.y_test) == 7
    assert allowed.metrics()["policy_rows_dropped"] == 0.0
    assert len(allowed.data.y_train) + len(allowed.data.y_test) == 8


def test_the_catalog_entry_of_a_dicom_dataset_holds_no_identifier(tmp_path: Path) -> None:
    write_images(tmp_path / "images", SITE_IMAGES["alpha"])
    decl = _decl(tmp_path, tags=["imaging"])

    entry = catalog_entry("alpha", decl, ConsentRegistry(), on=DAY).to_dict()

    assert [c["name"] for c in entry["columns"]] == ["patient_id", "label", "modality"]
    assert entry["rows"] == "5-9" and entry["tags"] == ["imaging"]
    text = json.dumps(entry)
    identifiers = set()
    for name in SITE_IMAGES["alpha"]:
        ds = pydicom.dcmread(shipped(name), stop_before_pixels=True)
        identifiers |= {str(ds.PatientID), str(ds.SOPInstanceUID), str(ds.get("PatientName", "")), Path(name).stem}
    assert not [i for i in identifiers if i and i in text]


def test_every_declaration_problem_of_a_dicom_dataset_is_listed_at_once(tmp_path: Path) -> None:
    table = {
        **BY_MODALITY,
        "labels": "labels.csv",
        "image_size": [0, 64],
        "window": {"center": 40, "width": -1},
        "burned_in": "maybe",
        "vocabulary": ["pain"],
        "columns": [{"name": "x"}],
    }
    with pytest.raises(ConfigError) as err:
        parse_dataset("scans", table, base=tmp_path, where="site.toml")
    message = str(err.value)
    assert "site.toml: datasets.scans: 6 problem(s)" in message
    for part in ("exactly one label source", "image_size", "window", "burned_in: 'maybe'", "vocabulary: only a notes",
                 "columns: a dicom dataset has a fixed table"):  # fmt: skip
        assert part in message
    with pytest.raises(ConfigError, match="label_attribute: must be a DICOM keyword such as 'Modality', got 'Modalty'"):
        parse_dataset("scans", {**BY_MODALITY, "label_attribute": "Modalty"}, base=tmp_path, where="site.toml")
    with pytest.raises(ConfigError, match="positive: only a dicom or notes dataset takes this key"):
        parse_dataset("t", {"format": "csv", "path": "t.csv", "columns": [{"name": "a"}], "positive": ["x"]},
                      base=tmp_path, where="site.toml")  # fmt: skip


def test_the_catalog_is_computed_again_when_the_labels_csv_changes(tmp_path: Path) -> None:
    write_images(tmp_path / "images", ["CT_small.dcm", "MR_small.dcm"])
    (tmp_path / "labels.csv").write_text("PatientID,label\n1CT1,1\n4MR1,0\n")
    decl = parse_dataset(
        "scans", {"format": "dicom", "path": "images", "labels": "labels.csv"}, base=tmp_path, where="site.toml"
    )
    publisher = Publisher("alpha", {"scans": DatasetConfig(name="scans", path=decl.path, decl=decl)}, None)

    assert publisher.current(on=DAY).offered == ("scans",)
    assert publisher.current(on=DAY).offered == ("scans",) and publisher.computed == 1
    (tmp_path / "labels.csv").write_text("PatientID,label\n1CT1,1\n")  # MR_small now has no label

    assert publisher.current(on=DAY).offered == () and publisher.computed == 2


def test_a_stray_file_is_named_while_hidden_files_and_dicomdir_are_skipped(tmp_path: Path) -> None:
    images = write_images(tmp_path / "images", ["CT_small.dcm", "MR_small.dcm"])
    (images / ".DS_Store").write_bytes(b"\x00\x01")
    (images / "DICOMDIR").write_bytes(b"\x00" * 200)
    assert len(read_table(_decl(tmp_path)).frame) == 2
    (images / "notes.txt").write_text("not an image")

    with pytest.raises(DataError) as err:
        read_table(_decl(tmp_path))

    assert f"{images / 'notes.txt'}: not a readable DICOM file" in str(err.value)


def test_a_patients_images_stay_on_one_side_of_the_split(tmp_path: Path) -> None:
    write_images(tmp_path / "images", SITE_IMAGES["alpha"])  # 4MR1: MR_small and its big-endian copy
    decl = _decl(tmp_path)
    mr_small = read_image(shipped("MR_small.dcm"), ImageConfig())[0].ravel()
    sides = set()
    for job in range(12):
        data = _load(decl, job=f"job-{job}").data
        in_train = sum(np.allclose(row, mr_small) for row in data.x_train)
        in_test = sum(np.allclose(row, mr_small) for row in data.x_test)
        assert (in_train, in_test) in ((2, 0), (0, 2))
        sides.add(in_test)
    assert sides == {0, 2}  # held out in some jobs, trained on in others: the split is random, by patient


def test_with_too_few_patients_the_split_is_by_row_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=np.float32)
    one_each = np.array(["a"] * 4 + ["b"] * 4)

    test = split_mask(labels, one_each, 0.25, seed=5, where="dataset scans")

    assert test.sum() == 2 and test[:4].sum() == 1 and test[4:].sum() == 1
    assert "dataset scans: too few patients to hold some out; the test split is drawn by row" in caplog.text
    with pytest.raises(ValidationError, match=r"2 examples cannot be split 0\.25"):
        split_mask(labels[3:5], one_each[3:5], 0.25, seed=5, where="dataset scans")
