"""Read DICOM series at a node: images normalised for models, metadata as a table without identifiers.

Files are grouped by SeriesInstanceUID and ordered along the slice normal (ImagePositionPatient
projected on the cross product of ImageOrientationPatient's row and column directions, PS3.3
C.7.6.2.1.1), then by InstanceNumber, then by file name. Pixels go through the modality LUT
(RescaleSlope/Intercept, so CT becomes Hounsfield units), a VOI window (PS3.3 C.11.2.1.2, linear),
MONOCHROME1 inversion and colour-to-luminance (ITU-R BT.601 weights), then are resampled bilinearly
to a fixed size as float32 in [0, 1].

The metadata table holds acquisition attributes only (:data:`METADATA_ATTRIBUTES`): no names,
identifiers, UIDs or dates, so it can be profiled or catalogued. A series is named by its position.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pydicom
from pydicom import config as dicom_config
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medfed.core.errors import ConfigError, DataError

FloatImage = npt.NDArray[np.float32]

#: Non-identifying attributes copied into the metadata table (PS3.15 Table E.1-1 keeps them).
METADATA_ATTRIBUTES = (
    "Modality",
    "BodyPartExamined",
    "Manufacturer",
    "ManufacturerModelName",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsStored",
    "PixelSpacing",
    "SliceThickness",
    "KVP",
    "RescaleSlope",
    "RescaleIntercept",
    "ImageType",
    "ViewPosition",
    "InstanceNumber",
)
_READ_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError)


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """A VOI window: values in ``[center - width/2, center + width/2]`` map linearly onto [0, 1]."""

    center: float
    width: float

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ConfigError(f"window width must be > 0, got {self.width!r}")


#: CT soft-tissue window in Hounsfield units, used for CT images without a window of their own.
CT_SOFT_TISSUE = Window(center=40.0, width=400.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageConfig:
    """How images become model input.

    ``window`` overrides every grayscale file's own; ``None`` takes the file's first
    WindowCenter/Width, else :data:`CT_SOFT_TISSUE` for CT, else the image's own min-max range.
    Colour images (already rendered) are scaled by their own min-max range.
    """

    size: tuple[int, int] = (64, 64)
    window: Window | None = None

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise ConfigError(f"image size must be two positive integers, got {self.size!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Series:
    """The files of one series in slice order."""

    index: int
    modality: str
    files: tuple[Path, ...]


def _read(path: Path, *, pixels: bool) -> Dataset:
    try:
        with dicom_config.disable_value_validation():
            ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
            for _ in ds.iterall():  # decode every element now: a truncated file fails here
                pass
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    return ds


def read_header(path: Path | str, keywords: Sequence[str]) -> Dataset:
    """Only the attributes ``keywords`` of one file (quick: nothing else is parsed, no pixel data);
    :class:`DataError` names a file that is not DICOM. Validation reads files whole (:func:`read_image`)."""
    try:
        with dicom_config.disable_value_validation():
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(keywords))
            for _ in ds.iterall():
                pass
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    return ds


def _slice_key(ds: Dataset, path: Path) -> tuple[float, int, str]:
    position = ds.get("ImagePositionPatient")
    orientation = ds.get("ImageOrientationPatient")
    along = 0.0
    if position is not None and orientation is not None and len(orientation) == 6:
        normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
        along = float(np.dot(normal, np.asarray(position, float)))
    number = ds.get("InstanceNumber")
    return along, int(number) if number not in (None, "") else 0, path.name


def scan_series(paths: Iterable[Path | str]) -> tuple[Series, ...]:
    """Group files into series by SeriesInstanceUID, each in slice order (headers only are read).

    Raises
    ------
    DataError
        A file is not readable DICOM or has no SeriesInstanceUID; every such file is listed.
    """
    groups: dict[str, list[tuple[tuple[float, int, str], Path, str]]] = {}
    problems: list[str] = []
    for raw in sorted(Path(p) for p in paths):
        try:
            ds = _read(raw, pixels=False)
        except DataError as exc:
            problems.append(str(exc))
            continue
        uid = str(ds.get("SeriesInstanceUID", "")).strip()
        if not uid:
            problems.append(f"{raw}: no SeriesInstanceUID")
            continue
        groups.setdefault(uid, []).append((_slice_key(ds, raw), raw, str(ds.get("Modality", "")).strip()))
    if problems:
        raise DataError("\n".join(problems))
    ordered = sorted(groups.values(), key=lambda items: min(str(item[1]) for item in items))
    return tuple(
        Series(index=i, modality=items[0][2], files=tuple(path for _, path, _ in sorted(items)))
        for i, items in enumerate(ordered)
    )


def _is_colour(ds: Dataset) -> bool:
    return int(ds.get("SamplesPerPixel", 1) or 1) == 3


def _first(value: object) -> float:
    """The first of a multi-valued DS (a file may list several windows), as a float."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0]
    return float(str(value))


def _window(ds: Dataset, config: ImageConfig) -> Window | None:
    if _is_colour(ds):
        return None  # a colour image is already rendered: no VOI window (PS3.3 C.11.2), its own range
    if config.window is not None:
        return config.window
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None and _first(width) > 0:
        return Window(center=_first(center), width=_first(width))
    return CT_SOFT_TISSUE if str(ds.get("Modality", "")) == "CT" else None


def _frames(ds: Dataset, path: Path) -> npt.NDArray[np.float64]:
    """Pixel data as (frames, rows, columns) float64 after the modality LUT; colour as luminance."""
    try:
        with dicom_config.disable_value_validation():
            raw = np.asarray(ds.pixel_array, dtype=np.float64)
    except (*_READ_ERRORS, NotImplementedError, RuntimeError) as exc:
        raise DataError(f"{path}: pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    colour = _is_colour(ds)
    if colour:
        raw = raw @ np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma
    if frames == 1:
        raw = raw[np.newaxis]
    if colour:
        return raw  # the modality LUT applies to grayscale pixels only (PS3.3 C.11.1)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return raw * slope + intercept


def resize_bilinear(images: npt.NDArray[np.floating], size: tuple[int, int]) -> FloatImage:
    """Resample (frames, rows, columns) to (frames, *size) by bilinear interpolation (pixel centres aligned)."""
    _, rows, cols = images.shape
    out_rows, out_cols = size
    y = np.clip((np.arange(out_rows) + 0.5) * rows / out_rows - 0.5, 0, rows - 1)
    x = np.clip((np.arange(out_cols) + 0.5) * cols / out_cols - 0.5, 0, cols - 1)
    y0, x0 = np.floor(y).astype(np.intp), np.floor(x).astype(np.intp)
    y1, x1 = np.minimum(y0 + 1, rows - 1), np.minimum(x0 + 1, cols - 1)
    wy, wx = (y - y0)[:, None], (x - x0)[None, :]
    top = images[:, y0][:, :, x0] * (1 - wx) + images[:, y0][:, :, x1] * wx
    bottom = images[:, y1][:, :, x0] * (1 - wx) + images[:, y1][:, :, x1] * wx
    return np.asarray(top * (1 - wy) + bottom * wy, dtype=np.float32)


def normalise(ds: Dataset, config: ImageConfig, *, path: Path | str = "<dataset>") -> FloatImage:
    """One dataset's frames as float32 (frames, *config.size) in [0, 1]."""
    values = _frames(ds, Path(path))
    window = _window(ds, config)
    if window is not None:
        low = window.center - window.width / 2
        scaled = (values - low) / window.width
    else:
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    scaled = np.clip(scaled, 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        scaled = 1.0 - scaled  # MONOCHROME1: the minimum value is white (PS3.3 C.7.6.3.1.2)
    return resize_bilinear(scaled, config.size)


def read_image(path: Path | str, config: ImageConfig | None = None) -> FloatImage:
    """One file's frames as float32 (frames, rows, columns) in [0, 1]; :class:`DataError` names a bad file."""
    return normalise(_read(Path(path), pixels=True), config or ImageConfig(), path=path)


def load_series(series: Series, config: ImageConfig | None = None) -> FloatImage:
    """A series as one float32 volume (slices or frames, rows, columns) in [0, 1], in slice order."""
    return np.concatenate([read_image(path, config) for path in series.files], axis=0)


def _cell(value: object) -> object:
    if isinstance(value, str | int | float):
        return value
    if isinstance(value, Sequence):
        return "\\".join(str(v) for v in value)
    return str(value)


def metadata_table(series: Sequence[Series]) -> pd.DataFrame:
    """One row per file: ``series`` (its index), ``slice`` (its position) and :data:`METADATA_ATTRIBUTES`.

    Identifying attributes (names, ids, dates, UIDs, institutions) are never read into the table.
    """
    rows = []
    for item in series:
        for position, path in enumerate(item.files):
            ds = _read(path, pixels=False)
            row: dict[str, object] = {"series": item.index, "slice": position}
            for keyword in METADATA_ATTRIBUTES:
                value = ds.get(keyword)
                row[keyword] = None if value is None or value == "" else _cell(value)
            rows.append(row)
    return pd.DataFrame(rows, columns=["series", "slice", *METADATA_ATTRIBUTES])
