"""CSV datasets: happy path and every problem reported with file, line and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfed.core.errors import DataError
from medfed.data.tabular import load_csv_dataset

GOOD = "age,bp,label\n1.5,2,0\n3,4e0,1\n"


def write(directory: Path, train: str = GOOD, test: str = GOOD) -> Path:
    (directory / "train.csv").write_text(train)
    (directory / "test.csv").write_text(test)
    return directory


def test_loads_features_and_labels(tmp_path: Path) -> None:
    data = load_csv_dataset(write(tmp_path, test="label,bp,age\n1,7,8\n"))

    assert data.feature_names == ("age", "bp")
    np.testing.assert_array_equal(data.x_train, [[1.5, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(data.x_test, [[8.0, 7.0]])
    np.testing.assert_array_equal(data.y_train, [0.0, 1.0])


def test_missing_files_are_both_named(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_csv_dataset(tmp_path)

    assert "train.csv: file not found" in str(info.value) and "test.csv: file not found" in str(info.value)


def test_missing_label_column(tmp_path: Path) -> None:
    write(tmp_path, test="age,bp,outcome\n1,2,0\n")

    with pytest.raises(DataError, match=r"test\.csv: no label column 'label'"):
        load_csv_dataset(tmp_path)


def test_custom_label_column(tmp_path: Path) -> None:
    write(tmp_path, train="age,y\n1,0\n", test="age,y\n2,1\n")

    assert load_csv_dataset(tmp_path, label="y").feature_names == ("age",)


def test_bad_cells_are_all_named_with_file_line_and_column(tmp_path: Path) -> None:
    write(tmp_path, train="age,bp,label\n1,2,0\n3,high,1\n,4,2\n", test="age,bp,label\n1,inf,0\n")

    with pytest.raises(DataError) as info:
        load_csv_dataset(tmp_path)

    message = str(info.value)
    assert "4 problem" in message
    assert "train.csv: line 3, column 'bp': 'high' is not a finite number" in message
    assert "train.csv: line 4, column 'age': '' is not a finite number" in message
    assert "train.csv: line 4, column 'label': label 2 is not 0 or 1" in message
    assert "test.csv: line 2, column 'bp': 'inf' is not a finite number" in message


def test_columns_must_match_between_splits(tmp_path: Path) -> None:
    write(tmp_path, test="age,label\n1,0\n")

    with pytest.raises(DataError, match=r"differ from train\.csv"):
        load_csv_dataset(tmp_path)
