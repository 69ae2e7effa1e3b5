"""Read a site's harmonised table from ``train.csv`` and ``test.csv`` (a header row, numeric
features, a {0, 1} label column); every problem is collected and reported with file, line and
column before anything is raised."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medfed.core.errors import DataError
from medfed.learn.base import TabularData

SPLITS = ("train", "test")
#: At most this many bad cells are listed per file; the rest are counted.
MAX_LISTED = 20


def _read(path: Path, label: str, problems: list[str]) -> pd.DataFrame | None:
    try:
        # strings, no NA guessing, blank lines kept: so every cell can be checked and line numbers hold
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot be read as CSV ({exc})")
        return None
    if label not in frame.columns:
        problems.append(f"{path}: no label column {label!r} (columns: {list(frame.columns)})")
        return None
    return frame


def _numeric(path: Path, frame: pd.DataFrame, label: str, problems: list[str]) -> np.ndarray | None:
    """The frame as float64, or ``None`` after listing every cell that is not a finite number."""
    values = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad_rows, bad_cols = np.nonzero(~np.isfinite(values))
    for row, col in zip(bad_rows[:MAX_LISTED].tolist(), bad_cols[:MAX_LISTED].tolist(), strict=True):
        # line numbers as an editor shows them: the header is line 1
        cell = frame.iat[row, col]
        problems.append(f"{path}: line {row + 2}, column {frame.columns[col]!r}: {cell!r} is not a finite number")
    if len(bad_rows) > MAX_LISTED:
        problems.append(f"{path}: ... and {len(bad_rows) - MAX_LISTED} more non-numeric cells")
    labels = values[:, list(frame.columns).index(label)]
    wrong = np.nonzero(np.isfinite(labels) & (labels != 0) & (labels != 1))[0]
    for row in wrong[:MAX_LISTED].tolist():
        problems.append(f"{path}: line {row + 2}, column {label!r}: label {labels[row]:g} is not 0 or 1")
    return None if len(bad_rows) or len(wrong) else values


def load_csv_dataset(directory: Path | str, *, label: str = "label") -> TabularData:
    """Load ``<directory>/train.csv`` and ``<directory>/test.csv`` into a :class:`TabularData`.

    Feature columns are every column but ``label``, in the train file's order; the test file must
    have the same columns, in any order.

    Raises
    ------
    DataError
        Missing or unreadable files, a missing label column, differing columns, non-numeric or
        non-finite cells (file, line and column named), labels other than 0/1; all listed at once.
    """
    root = Path(directory)
    problems: list[str] = []
    frames: dict[str, pd.DataFrame] = {}
    for split in SPLITS:
        path = root / f"{split}.csv"
        if not path.is_file():
            problems.append(f"{path}: file not found")
        elif (frame := _read(path, label, problems)) is not None:
            frames[split] = frame
    if len(frames) == len(SPLITS) and set(frames["train"].columns) != set(frames["test"].columns):
        problems.append(
            f"{root / 'test.csv'}: columns {sorted(frames['test'].columns)} differ from train.csv's "
            f"{sorted(frames['train'].columns)}"
        )
    arrays: dict[str, np.ndarray] = {}
    for split, frame in frames.items():
        if (values := _numeric(root / f"{split}.csv", frame, label, problems)) is not None:
            arrays[split] = values
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise DataError(f"dataset {root}: {len(problems)} problem(s):\n{lines}")
    features = tuple(c for c in frames["train"].columns if c != label)
    x, y = {}, {}
    for split, values in arrays.items():
        columns = list(frames[split].columns)
        x[split] = values[:, [columns.index(f) for f in features]].astype(np.float32)
        y[split] = values[:, columns.index(label)].astype(np.float32)
    return TabularData(
        x_train=x["train"], y_train=y["train"], x_test=x["test"], y_test=y["test"], feature_names=features
    )
