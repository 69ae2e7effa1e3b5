"""``medfed data check|profile`` and ``medfed catalog search`` on a site.toml with CSV and FHIR datasets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from datalayer_support import heart_raw, write_bundles

from medfed.cli.data_cmds import register, run
from medfed.core.errors import ConfigError

SITE_TOML = """
[site]
name = "hungary"
coordinator = "127.0.0.1:50443"

[datasets.legacy]
kind = "csv"
path = "data/heart"

[datasets.heart]
format = "csv"
path = "heart.csv"
tags = ["cardiology", "heart disease"]
purposes = ["research"]
label = "heart_disease"
batch_rows = 100

[[datasets.heart.columns]]
name = "age"
type = "float"
unit = "a"
min = 0
max = 100
missing = "error"

[[datasets.heart.columns]]
name = "sex"
type = "category"
allowed = ["male", "female"]

[[datasets.heart.columns]]
name = "chol"
type = "float"
unit = "mmol/L"
min = 0
max = 20

[[datasets.heart.columns]]
name = "heart_disease"
type = "float"
allowed = [0, 1]

[datasets.heart.map]
sex = { source = "SEX", values = { M = "male", F = "female" } }
chol = { source = "CHOL_MG", unit = "mg/dL", analyte = "cholesterol" }
heart_disease = "num"

[datasets.labs]
format = "fhir"
path = "fhir"
as_of = "2026-06-01"
tags = ["diabetes", "primary care"]

[[datasets.labs.columns]]
name = "age"
type = "float"
unit = "a"
min = 0
max = 120

[[datasets.labs.columns]]
name = "glucose"
type = "float"
unit = "mmol/L"

[[datasets.labs.columns]]
name = "diabetes"
type = "float"
allowed = [0, 1]

[datasets.labs.features]
glucose = { code = "loinc|2345-7", unit = "mmol/L" }
diabetes = { kind = "condition", code = ["icd10|E11*"] }
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    raw = heart_raw()
    rows = raw.loc[raw["dataset"] == "Hungary"]
    rows.assign(SEX=rows["sex"].map({"Male": "M", "Female": "F"}), CHOL_MG=rows["chol"], num=(rows["num"] > 0) * 1)[
        ["age", "SEX", "CHOL_MG", "num"]
    ].to_csv(tmp_path / "heart.csv", index=False)
    write_bundles(tmp_path / "fhir", 25, 31)
    (tmp_path / "site.toml").write_text(SITE_TOML)
    return tmp_path / "site.toml"


def medfed(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="medfed")
    register(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(list(argv)))


def test_data_check_passes_good_datasets(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert medfed("data", "check", "--config", str(site)) == 0
    out = capsys.readouterr().out
    assert "ok   heart (csv): 293 rows" in out and "ok   labs (fhir): 25 rows" in out
    assert "legacy" not in out


def test_data_check_fails_and_names_the_bad_cell(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = site.parent / "heart.csv"
    lines = csv.read_text().splitlines()
    lines[150] = "forty," + lines[150].split(",", 1)[1]
    csv.write_text("\n".join(lines) + "\n")
    assert medfed("data", "check", "--config", str(site), "--dataset", "heart") == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL heart") and "line 151, column 'age': 'forty'" in out


def test_data_profile_prints_each_column(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert medfed("data", "profile", "--config", str(site)) == 0
    out = capsys.readouterr().out
    assert "dataset heart: 293 rows" in out and "dataset labs: 25 rows" in out
    assert "glucose" in out and "male:" in out


def test_catalog_search(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert medfed("catalog", "search", "heart disease age>50", "--config", str(site)) == 0
    out = capsys.readouterr().out
    assert out.startswith("hungary/heart: rows 290  age>50:") and "labs" not in out
    assert medfed("catalog", "search", "diabetes glucose", "--config", str(site), "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert [h["dataset"] for h in doc["hits"]] == ["labs"]
    assert {e["dataset"] for e in doc["entries"]} == {"heart", "labs"}
    assert all(len(e["fingerprint"]) == 64 for e in doc["entries"])


def test_a_bad_declaration_is_a_config_error(site: Path) -> None:
    site.write_text(site.read_text().replace('format = "fhir"', 'format = "hl7v2"'))
    with pytest.raises(ConfigError, match=r"(?s)datasets\.labs.*'hl7v2'"):
        medfed("data", "check", "--config", str(site))
    with pytest.raises(ConfigError, match="no datasets"):
        medfed("data", "check", "--config", str(site), "--dataset", "nope")
