"""Dataset declarations, streamed CSV/Parquet reading and the hand-off to tasks, on the UCI heart table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datalayer_support import heart_raw

from medfed.core.errors import ConfigError, DataError, ValidationError
from medfed.data.sources import SourceFormat, fingerprint, iter_batches, parse_dataset, read_table, to_tabular

COLUMNS: list[dict[str, Any]] = [
    {"name": "age", "type": "integer", "unit": "a", "min": 0, "max": 120, "missing": "error"},
    {"name": "sex", "type": "category", "allowed": ["male", "female"], "missing": "error"},
    {"name": "chol", "type": "float", "unit": "mmol/L", "min": 0, "max": 20},
    {"name": "thalch", "type": "float", "min": 40, "max": 250, "missing": "drop_row"},
    {"name": "label", "type": "integer", "allowed": ["0", "1"], "missing": "error"},
]


def hungary_csv(path: Path) -> pd.DataFrame:
    """Hungary's rows as its own system might export them: M/F, mg/dL, its own column names."""
    raw = heart_raw()
    rows = raw.loc[raw["dataset"] == "Hungary"].reset_index(drop=True)
    out = pd.DataFrame(
        {
            "AGE": rows["age"],
            "SEX": rows["sex"].map({"Male": "M", "Female": "F"}),
            "CHOL_MG": rows["chol"],
            "thalch": rows["thalch"],
            "num": (rows["num"] > 0).astype(int),
        }
    )
    out.to_csv(path, index=False)
    return out


def table(path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "format": "csv",
        "path": path.name,
        "columns": COLUMNS,
        "map": {
            "age": "AGE",
            "sex": {"source": "SEX", "values": {"M": "male", "F": "female"}},
            "chol": {"source": "CHOL_MG", "unit": "mg/dL", "analyte": "cholesterol"},
            "label": "num",
        },
        "tags": ["cardiology", "heart disease"],
        "purposes": ["research"],
        "label": "label",
        **extra,
    }


def test_a_declaration_parses_into_frozen_config(tmp_path: Path) -> None:
    hungary_csv(tmp_path / "h.csv")
    decl = parse_dataset("heart", table(tmp_path / "h.csv"), base=tmp_path, where="site.toml")
    assert decl.format is SourceFormat.CSV and decl.path == tmp_path / "h.csv"
    assert decl.schema.names == ("age", "sex", "chol", "thalch", "label")
    assert decl.tags == ("cardiology", "heart disease") and decl.purposes == ("research",)
    with pytest.raises(AttributeError):
        decl.name = "other"  # type: ignore[misc]


def test_a_bad_declaration_lists_every_problem(tmp_path: Path) -> None:
    bad = {"format": "xls", "columns": [{"name": "a", "type": "nope"}], "tags": "cardio", "batch_rows": 0, "colour": 1}
    with pytest.raises(ConfigError) as info:
        parse_dataset("x", bad, base=tmp_path, where="site.toml")
    text = str(info.value)
    assert text.startswith("site.toml: datasets.x: 6 problem(s)")
    for needle in ("'colour'", "'xls'", "needs path", "'nope'", "batch_rows", "tags"):
        assert needle in text


def test_csv_streams_in_batches_and_harmonises_like_the_whole_file(tmp_path: Path) -> None:
    source = hungary_csv(tmp_path / "h.csv")
    decl = parse_dataset("heart", table(tmp_path / "h.csv", batch_rows=50), base=tmp_path, where="t")
    batches = list(iter_batches(decl))
    assert len(batches) >= 5 and [b.first_row for b in batches][:2] == [2, 2 + len(batches[0].frame)]
    result = read_table(decl)
    kept = source["thalch"].notna()
    assert result.dropped == {"thalch": int((~kept).sum())}
    np.testing.assert_allclose(result.frame["chol"], source.loc[kept, "CHOL_MG"] * 10 / 386.65)
    assert set(result.frame["sex"]) == {"male", "female"}


def test_a_bad_cell_in_a_later_batch_names_its_true_line(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    hungary_csv(path)
    lines = path.read_text().splitlines()
    lines[200] = lines[200].replace(",M,", ",X,").replace(",F,", ",X,")
    path.write_text("\n".join(lines) + "\n")
    decl = parse_dataset("heart", table(path, batch_rows=64), base=tmp_path, where="t")
    with pytest.raises(ValidationError) as info:
        read_table(decl)
    assert info.value.where == str(path)
    assert info.value.problems == [
        "line 201, column 'sex': 'X' is not a valid category or not one of ['male', 'female']"
    ]


def test_wrong_encoding_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    hungary_csv(path)
    data = path.read_bytes().replace(b",M,", ",M\xe9,".encode("latin-1"), 1)
    path.write_bytes(data)
    decl = parse_dataset("heart", table(path), base=tmp_path, where="t")
    with pytest.raises(DataError, match=r"h\.csv.*utf-8"):
        read_table(decl)


def test_parquet_is_read_in_record_batches(tmp_path: Path) -> None:
    source = hungary_csv(tmp_path / "h.csv")
    pq.write_table(pa.Table.from_pandas(source), tmp_path / "h.parquet", row_group_size=40)
    decl = parse_dataset(
        "heart", table(tmp_path / "h.parquet", format="parquet", batch_rows=40), base=tmp_path, where="t"
    )
    assert len(list(iter_batches(decl))) == -(-len(source) // 40)
    from_parquet = read_table(decl).frame
    from_csv = read_table(parse_dataset("heart", table(tmp_path / "h.csv"), base=tmp_path, where="t")).frame
    pd.testing.assert_frame_equal(from_parquet, from_csv)


def test_to_tabular_gives_tasks_a_stratified_split(tmp_path: Path) -> None:
    hungary_csv(tmp_path / "h.csv")
    decl = parse_dataset("heart", table(tmp_path / "h.csv"), base=tmp_path, where="t")
    frame = read_table(decl).frame.dropna()
    data = to_tabular(frame, decl.schema, ("age", "chol", "thalch"), "label", 0.34, 43)
    assert data.x_train.dtype == np.float32 and data.feature_names == ("age", "chol", "thalch")
    assert len(data.y_train) + len(data.y_test) == len(frame)
    assert abs(data.y_test.mean() - frame["label"].mean()) < 0.02
    again = to_tabular(frame, decl.schema, ("age", "chol", "thalch"), "label", 0.34, 43)
    np.testing.assert_array_equal(again.x_test, data.x_test)
    with pytest.raises(ValidationError, match="'chol' has missing"):
        to_tabular(read_table(decl).frame, decl.schema, ("chol",), "label", 0.34, 43)


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    hungary_csv(path)
    first = fingerprint(path)
    path.write_text(path.read_text().replace("M", "F", 1))
    assert fingerprint(path) != first and len(first) == 64
