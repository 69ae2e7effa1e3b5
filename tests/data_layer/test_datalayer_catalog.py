"""Profiles and the metadata-only catalog, on the UCI heart table and the Eunomia OMOP database."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from datalayer_support import eunomia_path, heart_raw
from hypothesis import given, settings
from hypothesis import strategies as st

from medfed.core.errors import ValidationError
from medfed.data.catalog import CatalogEntry, catalog_entry, coarse_count, search
from medfed.data.profile import profile_frames
from medfed.data.schema import Schema
from medfed.data.sources import iter_harmonised, parse_dataset, read_table

HEART = Schema.from_dicts(
    "heart",
    [
        {"name": "age", "type": "float", "unit": "a", "min": 0, "max": 100},
        {"name": "sex", "type": "category"},
        {"name": "chol", "type": "float", "unit": "mg/dL"},
        {"name": "heart_disease", "type": "float", "allowed": [0, 1]},
    ],
    where="t",
)


def heart_frame(site: str) -> pd.DataFrame:
    raw = heart_raw()
    rows = raw.loc[raw["dataset"] == site]
    return pd.DataFrame(
        {
            "age": rows["age"].astype(float),
            "sex": rows["sex"],
            "chol": rows["chol"],
            "heart_disease": (rows["num"] > 0).astype(float),
        }
    ).reset_index(drop=True)


def test_a_streamed_profile_equals_the_whole_table_profile() -> None:
    frame = heart_frame("Cleveland")
    whole = profile_frames("heart", HEART, [frame])
    streamed = profile_frames("heart", HEART, [frame.iloc[i : i + 37] for i in range(0, len(frame), 37)])
    for a, b in zip(whole.columns, streamed.columns, strict=True):
        assert a.missing == b.missing and a.values == b.values and a.histogram == b.histogram
        if a.mean is not None:
            assert b.mean == pytest.approx(a.mean) and b.std == pytest.approx(a.std)
    chol = whole.column("chol")
    assert chol.mean == pytest.approx(frame["chol"].mean()) and chol.std == pytest.approx(frame["chol"].std())
    assert chol.missing == frame["chol"].isna().sum()
    assert dict(whole.column("sex").values) == frame["sex"].value_counts().to_dict()
    assert sum(n for _, _, n in whole.column("age").histogram) == len(frame)
    assert "chol" in whole.to_text()


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=303), max_size=8))
def test_any_batching_gives_the_same_profile(cuts: list[int]) -> None:
    frame = heart_frame("Cleveland")
    edges = [0, *sorted(cuts), len(frame)]
    batches = [frame.iloc[a:b] for a, b in itertools.pairwise(edges)]
    whole, streamed = profile_frames("h", HEART, [frame]), profile_frames("h", HEART, batches)
    for a, b in zip(whole.columns, streamed.columns, strict=True):
        assert (a.missing, a.values, a.histogram, a.minimum, a.maximum) == (
            b.missing,
            b.values,
            b.histogram,
            b.minimum,
            b.maximum,
        )
        if a.mean is not None:
            assert b.mean == pytest.approx(a.mean) and b.std == pytest.approx(a.std)


def test_coarse_counts_suppress_small_cells() -> None:
    assert [coarse_count(n) for n in (0, 1, 4, 5, 9, 10, 14, 15, 243)] == [
        "0",
        "<5",
        "<5",
        "5-9",
        "5-9",
        "10",
        "10",
        "20",
        "240",
    ]


def entries() -> list[CatalogEntry]:
    out = []
    for site in ("Cleveland", "Switzerland"):
        profile = profile_frames("heart", HEART, [heart_frame(site)])
        out.append(
            catalog_entry(
                site=site.lower(),
                profile=profile,
                tags=("cardiology",),
                codes={"heart_disease": ("snomed|56265001",)},
                purposes=("research",),
                fingerprint="f" * 64,
            )
        )
    return out


def test_search_matches_words_and_ranges_with_coarse_counts() -> None:
    hits = search(entries(), "heart disease age > 60")
    assert [h.site for h in hits] == ["cleveland", "switzerland"]
    cleveland = hits[0]
    frame = heart_frame("Cleveland")
    over_60 = int((frame["age"] >= 60).sum())  # bins of width 10: [60, 70) and up overlap "age > 60"
    assert cleveland.rows == coarse_count(len(frame))
    assert dict(cleveland.estimates)["age>60"] == str(
        sum(int(coarse_count(int(n))) for n in np.histogram(frame["age"], bins=10, range=(0, 100))[0][6:])
    )
    assert abs(int(dict(cleveland.estimates)["age>60"]) - over_60) <= 20
    assert search(entries(), "diabetes") == []
    assert search(entries(), "age > 150") == []
    assert [h.site for h in search(entries(), "cardiology snomed|56265001")] == ["cleveland", "switzerland"]
    with pytest.raises(ValidationError):
        search(entries(), "   ")


def test_an_entry_carries_no_exact_small_count_and_survives_json() -> None:
    entry = entries()[1]  # Switzerland: 123 patients, few young ones
    raw = json.dumps(entry.to_dict())
    assert CatalogEntry.from_dict(json.loads(raw)) == entry
    for column in entry.columns:
        for _, _, n in column.bins:
            assert n in ("0", "<5", "5-9") or (n.isdigit() and int(n) % 10 == 0)
    assert entry.rows == "120"
    with pytest.raises(ValidationError):
        CatalogEntry.from_dict({"site": "x"})


def test_omop_dataset_in_the_catalog(tmp_path: Path) -> None:
    decl = parse_dataset(
        "gibleed",
        {
            "format": "omop",
            "path": str(eunomia_path()),
            "as_of": "2019-01-01",
            "tags": ["gi bleed"],
            "columns": [
                {"name": "age", "type": "float", "unit": "a", "min": 0, "max": 120},
                {"name": "sex", "type": "category"},
                {"name": "osteoarthritis", "type": "float", "allowed": [0, 1]},
            ],
            "features": {"osteoarthritis": {"kind": "condition", "code": "snomed|396275006"}},
        },
        base=tmp_path,
        where="t",
    )
    profile = profile_frames(decl.name, decl.schema, (p.frame for p in iter_harmonised(decl)))
    entry = catalog_entry(
        site="eunomia",
        profile=profile,
        tags=decl.tags,
        codes={"osteoarthritis": decl.features[0].codes},
        purposes=(),
        fingerprint="",
    )
    assert entry.rows == "2690"
    (hit,) = search([entry], "osteoarthritis age>=60")
    assert hit.dataset == "gibleed" and int(dict(hit.estimates)["age>=60"]) > 0
    flag = next(c for c in entry.columns if c.name == "osteoarthritis")
    frame = read_table(decl).frame
    assert flag.positives == coarse_count(int(frame["osteoarthritis"].sum())) != coarse_count(len(frame))
