"""Schema language, unit conversion and harmonisation, on the UCI heart table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from datalayer_support import heart_raw
from hypothesis import given
from hypothesis import strategies as st

from medfed.core.errors import ValidationError
from medfed.data.schema import (
    CONVERSIONS,
    Column,
    ColumnMapping,
    ColumnType,
    MissingPolicy,
    Schema,
    conform,
    convert_units,
    harmonise,
    normalise_unit,
)

HEART_COLUMNS = [
    {"name": "age", "type": "integer", "unit": "a", "min": 0, "max": 120, "missing": "error"},
    {"name": "sex", "type": "category", "allowed": ["male", "female"], "missing": "error"},
    {"name": "chol", "type": "float", "unit": "mmol/L", "min": 0, "max": 20, "missing": "allow"},
    {"name": "trestbps", "type": "float", "unit": "mm[Hg]", "min": 0, "max": 300, "missing": "drop_row"},
    {"name": "fbs", "type": "boolean"},
]


def heart_schema() -> Schema:
    return Schema.from_dicts("heart", HEART_COLUMNS, where="test")


def test_glucose_converts_between_mass_and_molar_units() -> None:
    # 180.16 mg/dL of glucose is 10 mmol/L (molar mass 180.16 g/mol)
    assert convert_units([180.16], from_unit="mg/dL", to_unit="mmol/L", analyte="glucose")[0] == pytest.approx(10.0)
    assert convert_units([10.0], from_unit="mmol/L", to_unit="mg/dl", analyte="glucose")[0] == pytest.approx(180.16)
    assert convert_units([212.0], from_unit="°F", to_unit="Cel")[0] == pytest.approx(100.0)
    # HbA1c 6.5 % (NGSP) is 48 mmol/mol (IFCC), the diagnostic threshold for diabetes
    assert convert_units([6.5], from_unit="%", to_unit="mmol/mol", analyte="hba1c")[0] == pytest.approx(47.5, abs=0.1)


def test_an_unconvertible_unit_is_an_error_naming_both_units() -> None:
    with pytest.raises(ValidationError, match=r"'mg/dL' to 'mmol/L' for 'sodium'"):
        convert_units([140.0], from_unit="mg/dL", to_unit="mmol/L", analyte="sodium")


@given(
    key=st.sampled_from(sorted(CONVERSIONS)),
    value=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
)
def test_every_conversion_round_trips(key: tuple[str, str, str], value: float) -> None:
    analyte, src, dst = key
    there = convert_units([value], from_unit=src, to_unit=dst, analyte=analyte)
    back = convert_units(there, from_unit=dst, to_unit=src, analyte=analyte)[0]
    assert math.isclose(back, value, rel_tol=1e-9, abs_tol=1e-6)


def test_schema_parsing_lists_every_problem_at_once() -> None:
    bad = [
        {"name": "a", "type": "floatish"},
        {"name": "b", "missing": "sometimes", "min": "low"},
        {"type": "float"},
        {"name": "c", "colour": "red"},
        {"name": "d", "min": 5, "max": 1},
    ]
    with pytest.raises(ValidationError) as info:
        Schema.from_dicts("x", bad, where="site.toml: datasets.x")
    problems = info.value.problems
    assert len(problems) == 6
    joined = "\n".join(problems)
    for needle in ("'floatish'", "'sometimes'", "min: 'low'", "columns[2]", "'colour'", "min 5.0 > max 1.0"):
        assert needle in joined
    assert str(info.value).startswith("site.toml: datasets.x: 6 problems")


def test_conform_collects_every_bad_cell_with_line_and_column() -> None:
    raw = heart_raw().head(6)
    frame = pd.DataFrame(
        {
            "age": raw["age"].astype(str).tolist(),
            "sex": raw["sex"].str.lower().tolist(),
            "chol": (raw["chol"] / 38.67).astype(str).tolist(),
            "trestbps": raw["trestbps"].astype(str).tolist(),
            "fbs": raw["fbs"].astype(str).tolist(),
        }
    )
    frame.loc[1, "age"] = "sixty"
    frame.loc[3, "sex"] = "M"
    frame.loc[4, "chol"] = "-1"
    frame.loc[5, "age"] = ""
    with pytest.raises(ValidationError) as info:
        conform(frame, heart_schema(), where="cleveland.csv")
    assert info.value.problems == [
        "line 3, column 'age': 'sixty' is not a valid integer or outside [0.0, 120.0]",
        "line 7, column 'age': missing value not allowed",
        "line 5, column 'sex': 'M' is not a valid category or not one of ['male', 'female']",
        "line 6, column 'chol': '-1' is not a valid float or outside [0.0, 20.0]",
    ]
    assert info.value.where == "cleveland.csv"


def test_drop_row_policy_counts_what_it_excludes() -> None:
    raw = heart_raw()
    frame = pd.DataFrame(
        {
            "age": raw["age"],
            "sex": raw["sex"].str.lower(),
            "chol": raw["chol"] / 38.67,
            "trestbps": raw["trestbps"],
            "fbs": raw["fbs"],
        }
    )
    result = conform(frame, heart_schema(), where="uci")
    assert result.dropped == {"trestbps": int(raw["trestbps"].isna().sum())}
    assert len(result.frame) == len(raw) - int(raw["trestbps"].isna().sum())
    assert result.frame["fbs"].isna().sum() == raw.loc[raw["trestbps"].notna(), "fbs"].isna().sum()


def test_two_hospitals_with_different_coding_produce_the_same_features() -> None:
    raw = heart_raw()
    cleveland = raw.loc[raw["dataset"] == "Cleveland", ["age", "sex", "chol", "trestbps", "fbs"]].reset_index(drop=True)
    # the "other hospital": sex as M/F, cholesterol in mg/dL under another name, booleans as 1/0
    other = pd.DataFrame(
        {
            "AGE_Y": cleveland["age"],
            "gender": cleveland["sex"].map({"Male": "M", "Female": "F"}),
            "chol_mgdl": cleveland["chol"],
            "trestbps": cleveland["trestbps"],
            "fbs": cleveland["fbs"].map({True: "1", False: "0"}),
        }
    )
    schema = heart_schema()
    ours = harmonise(
        cleveland.assign(sex=cleveland["sex"].str.lower(), chol=cleveland["chol"] * 10 / 386.65),
        schema,
        (),
        where="a",
    )
    theirs = harmonise(
        other,
        schema,
        (
            ColumnMapping(target="age", source="AGE_Y"),
            ColumnMapping(target="sex", source="gender", values={"M": "male", "F": "female"}),
            ColumnMapping(target="chol", source="chol_mgdl", unit="mg/dL", analyte="cholesterol"),
        ),
        where="b",
    )
    a = conform(ours, schema, where="a").frame
    b = conform(theirs, schema, where="b").frame
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12)


def test_harmonise_reports_every_mapping_problem() -> None:
    schema = heart_schema()
    frame = heart_raw()[["age", "sex", "chol", "trestbps", "fbs"]]
    with pytest.raises(ValidationError) as info:
        harmonise(
            frame,
            schema,
            (
                ColumnMapping(target="chol", source="chol", unit="g"),
                ColumnMapping(target="nope", source="x"),
            ),
            where="site",
        )
    text = str(info.value)
    assert "unknown column 'nope'" in text and "cannot convert 'g' to 'mmol/L'" in text


def test_column_contracts() -> None:
    assert normalise_unit(" mg/dl ") == "mg/dL"
    with pytest.raises(ValidationError):
        Schema(name="s", columns=(Column(name="a", type=ColumnType.FLOAT), Column(name="a", type=ColumnType.FLOAT)))
    col = Column(name="x", type=ColumnType.FLOAT, missing=MissingPolicy.ERROR)
    out = conform(pd.DataFrame({"x": ["1.5", "2"]}), Schema(name="s", columns=(col,)), where="w")
    np.testing.assert_array_equal(out.frame["x"].to_numpy(), [1.5, 2.0])


def test_many_bad_cells_are_listed_up_to_a_limit_then_counted() -> None:
    raw = heart_raw()
    frame = pd.DataFrame({"age": ["old"] * 60 + raw["age"].astype(str).tolist()[:40]})
    schema = Schema(name="s", columns=(Column(name="age", type=ColumnType.INTEGER),))
    with pytest.raises(ValidationError) as info:
        conform(frame, schema, where="big.csv")
    assert len(info.value.problems) == 51
    assert info.value.problems[-1] == "column 'age': ... and 10 more like this"


def test_a_unit_converted_column_refuses_a_non_numeric_cell_instead_of_dropping_it() -> None:
    schema = Schema.from_dicts(
        "labs", [{"name": "glucose", "type": "float", "unit": "mmol/L", "missing": "allow"}], where="test"
    )
    frame = pd.DataFrame({"GLU": ["100", "high", "", "90"]}, index=[2, 3, 4, 5])
    mapping = (ColumnMapping(target="glucose", source="GLU", unit="mg/dL"),)
    with pytest.raises(ValidationError, match=r"'GLU': 1 value\(s\) are not numbers .* \(rows 3\), e.g. 'high'"):
        harmonise(frame, schema, mapping, where="test")
