"""What a task receives from a DICOM or clinical-notes dataset: consent first, then pixels or scrubbed text.

Both start from the dataset's index (one row per image file or note, with the patient id). The
consent filter removes the rows of patients who may not be used for the job's purpose *before*
any pixel is decoded or any note is featurised, so an opted-out patient's images and notes never
reach a task; only the counts of what was excluded travel. Images become a :class:`TabularData`
of flattened, normalised pixels with ``image_shape`` set; notes become ``log(1 + count)`` of the
words of the scrubbed text (:func:`medfed.data.notes_source.notes_matrix`). Evaluation rows are
held out by patient (:func:`split_mask`), so one patient's slices or notes are not on both sides.
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import numpy.typing as npt

from medfed.core.errors import DataError, PermissionDenied, ValidationError
from medfed.data.consent import ConsentRegistry, ConsentReport, apply_consent
from medfed.data.dicom_source import index_images, load_images
from medfed.data.notes_source import index_notes, notes_matrix
from medfed.data.sources import DatasetDecl, SourceFormat
from medfed.learn.base import TabularData

log = logging.getLogger(__name__)


def _check_purpose(decl: DatasetDecl, purpose: str) -> None:
    if decl.purposes and purpose not in decl.purposes:
        raise PermissionDenied(f"dataset {decl.name}: purpose {purpose!r} not allowed (allowed: {list(decl.purposes)})")


def split_mask(
    labels: npt.NDArray[np.float32], patients: npt.NDArray[np.str_], test_fraction: float, seed: int, *, where: str
) -> npt.NDArray[np.bool_]:
    """A test mask that keeps each patient's images or notes on one side, the same for the same ``seed``.

    Patients are drawn at random per class (a patient's class: the label of its first row), so the
    slices of one scan or the notes of one stay are never split between training and evaluation.
    With too few patients for that (a side would be empty), rows are drawn per class instead and a
    warning is logged: evaluation is then optimistic.

    Raises
    ------
    ValidationError
        Even the row-wise split leaves a side empty.
    """
    _, first, group = np.unique(patients, return_index=True, return_inverse=True)
    test = _stratified(labels[first], test_fraction, np.random.default_rng(seed))[group]
    if test.all() or not test.any():
        log.warning("%s: too few patients to hold some out; the test split is drawn by row", where)
        test = _stratified(labels, test_fraction, np.random.default_rng(seed))
    if test.all() or not test.any():
        raise ValidationError(f"{len(labels)} examples cannot be split {test_fraction}", where=where)
    return test


def _stratified(labels: npt.NDArray[np.float32], fraction: float, rng: np.random.Generator) -> npt.NDArray[np.bool_]:
    """``fraction`` of each class's items, at random."""
    test = np.zeros(len(labels), dtype=bool)
    for cls in (0.0, 1.0):
        idx = rng.permutation(np.nonzero(labels == cls)[0])
        test[idx[: round(len(idx) * fraction)]] = True
    return test


def _tabular(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.float32],
    names: tuple[str, ...],
    test: npt.NDArray[np.bool_],
    image_shape: tuple[int, int, int] | None,
) -> TabularData:
    return TabularData(
        x_train=np.ascontiguousarray(x[~test]),
        y_train=y[~test],
        x_test=np.ascontiguousarray(x[test]),
        y_test=y[test],
        feature_names=names,
        image_shape=image_shape,
    )


def media_for_job(
    decl: DatasetDecl, registry: ConsentRegistry, *, purpose: str, on: dt.date, split: tuple[float, int]
) -> tuple[TabularData, ConsentReport, int]:
    """(task input, what consent excluded, images excluded by the burned-in policy) of a media dataset.

    ``split`` is (test fraction, seed).

    Raises
    ------
    PermissionDenied
        ``purpose`` is not among the dataset's declared purposes.
    DataError, ValidationError
        The dataset cannot be read (the bad file named), or too few examples remain to split.
    """
    _check_purpose(decl, purpose)
    fraction, seed = split
    where = f"dataset {decl.name}"
    if decl.format is SourceFormat.DICOM:
        index, report = apply_consent(
            index_images(decl, decode=False), registry, purpose=purpose, id_column="patient_id", on=on
        )
        if index.empty:
            raise DataError(f"{where}: no image left after the consent filter")
        images = load_images(decl, index)
        n, rows, cols = images.pixels.shape
        x = images.pixels.reshape(n, rows * cols)
        names = tuple(f"pixel_{r}_{c}" for r in range(rows) for c in range(cols))
        test = split_mask(images.labels, images.patients, fraction, seed, where=where)
        return _tabular(x, images.labels, names, test, (1, rows, cols)), report, images.burned_in_excluded
    if decl.format is SourceFormat.NOTES:
        index, report = apply_consent(index_notes(decl), registry, purpose=purpose, id_column="patient_id", on=on)
        if index.empty:
            raise DataError(f"{where}: no note left after the consent filter")
        features = notes_matrix(decl, index["text"].tolist())
        y = index["label"].to_numpy(dtype=np.float32)
        test = split_mask(y, index["patient_id"].to_numpy(dtype=str), fraction, seed, where=where)
        return _tabular(np.log1p(features.matrix), y, features.vocabulary, test, None), report, 0
    raise DataError(f"{where}: {decl.format.value} is not an image or notes format")
