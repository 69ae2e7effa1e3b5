"""Reading DICOM series from pydicom's and pydicom-data's test files into model input and a metadata table."""

from __future__ import annotations

from pathlib import Path

import deid_data
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medfed.core.errors import ConfigError, DataError
from medfed.data.dicom import (
    METADATA_ATTRIBUTES,
    ImageConfig,
    Window,
    load_series,
    metadata_table,
    read_image,
    resize_bilinear,
    scan_series,
)

CT_BRAIN = sorted((Path(deid_data.__file__).parent / "data" / "humans").glob("*.dcm"))


def _shipped(name: str) -> Path:
    """A test file from pydicom or pydicom-data, never fetched over the network."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} does not ship with pydicom or pydicom-data"
    return Path(str(path))


def test_series_are_grouped_by_uid_and_read_as_model_input() -> None:
    files = [_shipped("CT_small.dcm"), _shipped("MR_small.dcm"), _shipped("emri_small.dcm"), *CT_BRAIN]

    series = scan_series(files)
    volumes = [load_series(s, ImageConfig(size=(32, 48))) for s in series]

    assert sorted(len(s.files) for s in series) == [1, 1, 1, 2]
    brain = next(s for s in series if len(s.files) == 2)
    assert brain.modality == "CT" and [p.name for p in brain.files] == ["ctbrain1.dcm", "ctbrain2.dcm"]
    assert sorted(v.shape[0] for v in volumes) == [1, 1, 2, 10]  # emri_small is 10 frames
    for volume in volumes:
        assert volume.dtype == np.float32 and volume.shape[1:] == (32, 48)
        assert volume.min() >= 0.0 and volume.max() <= 1.0 and volume.std() > 0


def test_ct_pixels_become_hounsfield_units_then_the_window() -> None:
    path = _shipped("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    window = Window(center=40.0, width=400.0)
    expected = np.clip((hu - (40.0 - 200.0)) / 400.0, 0, 1)

    image = read_image(path, ImageConfig(size=(128, 128), window=window))  # native size: no resampling

    np.testing.assert_allclose(image[0], expected, atol=1e-6)


def test_monochrome1_is_inverted() -> None:
    path = _shipped("RG3_UNCR.dcm")  # a computed radiograph stored MONOCHROME1
    ds = pydicom.dcmread(path)
    window = Window(center=float(ds.WindowCenter), width=float(ds.WindowWidth))
    raw = np.clip((ds.pixel_array.astype(np.float64) - (window.center - window.width / 2)) / window.width, 0, 1)

    image = read_image(path, ImageConfig(size=(ds.Rows, ds.Columns), window=window))

    np.testing.assert_allclose(image[0], 1.0 - raw, atol=1e-6)


def test_resampling_keeps_constants_and_is_the_identity_at_native_size() -> None:
    rng = np.random.default_rng(3)
    images = rng.random((2, 7, 9))
    assert np.allclose(resize_bilinear(images, (7, 9)), images.astype(np.float32))
    assert np.allclose(resize_bilinear(np.full((1, 5, 5), 0.25), (13, 3)), 0.25)


def test_metadata_table_holds_no_identifiers() -> None:
    files = [_shipped("CT_small.dcm"), *CT_BRAIN]
    names = [str(pydicom.dcmread(f, stop_before_pixels=True).PatientName) for f in files]
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in files]

    table = metadata_table(scan_series(files))

    assert list(table.columns) == ["series", "slice", *METADATA_ATTRIBUTES]
    assert len(table) == 3
    rendered = table.to_csv()
    assert not [value for value in [*names, *uids] if value and value in rendered]
    assert set(table["Modality"]) == {"CT"}


def test_a_bad_file_is_named(tmp_path: Path) -> None:
    junk = tmp_path / "scan.dcm"
    junk.write_bytes(b"\x00" * 64)

    with pytest.raises(DataError, match=r"scan\.dcm: not a readable DICOM file"):
        scan_series([junk, _shipped("CT_small.dcm")])
    with pytest.raises(DataError, match=r"MR_truncated\.dcm: pixel data cannot be decoded"):
        read_image(_shipped("MR_truncated.dcm"))


def test_image_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="window width"):
        Window(center=0.0, width=0.0)
    with pytest.raises(ConfigError, match="image size"):
        ImageConfig(size=(0, 10))
