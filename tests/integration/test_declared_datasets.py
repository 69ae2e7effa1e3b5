"""Declared datasets over the real mTLS runtime: one site holds generated FHIR R4 bundles
(carebundle), another a CSV export of another generated hospital with its own coding (MRN,
glucose in mg/dL, diabetes as Y/N); both harmonise onto one schema and train one logistic
regression. A patient who opted out never reaches the task (only counts are reported), and a
withdrawal made with ``medfed consent withdraw`` takes effect on the next job."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from carebundle import generate_cohort, to_json

from integration.support import Cluster, job_toml, make_federation, start_cluster, wait_job
from medfed.cli.config import load_node_config
from medfed.cli.main import main
from medfed.core.errors import ConfigError
from medfed.data.fhir import fhir_features
from medfed.data.schema import parse_features
from medfed.learn.base import TabularData
from medfed.node.datasets import Publisher
from medfed.security.audit import read_log

pytestmark = pytest.mark.timeout(240)

SITES = ("alpha", "beta")
AS_OF = "2026-06-01"
PATIENTS = 80
FEATURES = """
[datasets.diabetes.features]
glucose = { code = "loinc|2345-7", unit = "mmol/L" }
hba1c = { code = "loinc|4548-4", unit = "%" }
diabetes = { kind = "condition", code = ["icd10|E11*", "snomed|44054006"] }
"""
COLUMNS = """
[[datasets.diabetes.columns]]
name = "patient_id"
type = "string"

[[datasets.diabetes.columns]]
name = "age"
type = "float"
unit = "a"
min = 0
max = 120

[[datasets.diabetes.columns]]
name = "glucose"
type = "float"
unit = "mmol/L"
min = 0
max = 50

[[datasets.diabetes.columns]]
name = "hba1c"
type = "float"
unit = "%"
min = 0
max = 20

[[datasets.diabetes.columns]]
name = "diabetes"
type = "float"
min = 0
max = 1
"""
FHIR_SITE = f"""
[datasets.diabetes]
format = "fhir"
path = "data/fhir"
as_of = "{AS_OF}"
label = "diabetes"
patient_id = "patient_id"
tags = ["endocrinology", "diabetes"]
purposes = ["research"]
{COLUMNS}{FEATURES}"""
CSV_SITE = f"""
[datasets.diabetes]
format = "csv"
path = "data/export.csv"
label = "diabetes"
patient_id = "patient_id"
tags = ["endocrinology", "diabetes"]
purposes = ["research"]
{COLUMNS}
[datasets.diabetes.map]
patient_id = "MRN"
age = "AGE_Y"
glucose = {{ source = "GLU_MGDL", unit = "mg/dL", analyte = "glucose" }}
hba1c = "HBA1C"
diabetes = {{ source = "DM", values = {{ Y = "1", N = "0" }} }}
"""


def _write_fhir(directory: Path, seed: int) -> None:
    directory.mkdir(parents=True)
    for i, bundle in enumerate(generate_cohort(count=PATIENTS, seed=seed)):
        (directory / f"bundle{i:03d}.json").write_text(to_json(bundle), encoding="utf-8")


def _write_csv_export(path: Path, seed: int, scratch: Path) -> pd.DataFrame:
    """Another generated hospital, exported (CSV or Parquet) the way its own system codes things."""
    _write_fhir(scratch, seed)
    feats = parse_features(
        {
            "glucose": {"code": "loinc|2345-7", "unit": "mmol/L"},
            "hba1c": {"code": "loinc|4548-4", "unit": "%"},
            "diabetes": {"kind": "condition", "code": ["icd10|E11*", "snomed|44054006"]},
        },
        where="test",
    )
    wide = fhir_features(scratch, feats, as_of=pd.Timestamp(AS_OF, tz="UTC"))
    export = pd.DataFrame(
        {
            "MRN": [f"MRN{i:05d}" for i in range(len(wide))],
            "AGE_Y": wide["age"].round(1),
            "GLU_MGDL": (wide["glucose"] * 180.16 / 10.0).round(1),
            "HBA1C": wide["hba1c"],
            "DM": wide["diabetes"].map({1.0: "Y", 0.0: "N"}),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        export.to_parquet(path, index=False)
    else:
        export.to_csv(path, index=False)
    return wide


def _declare(kit: Path, text: str) -> None:
    """Declare a dataset next to the kit's legacy heart directory; give the node a state_dir."""
    toml = (kit / "site.toml").read_text()
    toml = toml.replace("[node]\n", '[node]\nstate_dir = "state"\n')
    (kit / "site.toml").write_text(toml + text)


@pytest.fixture
def declared(tmp_path: Path, heart: dict[str, TabularData]) -> Iterator[Cluster]:
    fed = make_federation(tmp_path / "fed", heart, sites=SITES)
    _write_fhir(fed.kit("alpha") / "data" / "fhir", seed=21)
    _write_csv_export(fed.kit("beta") / "data" / "export.csv", seed=22, scratch=tmp_path / "beta-fhir")
    _declare(fed.kit("alpha"), FHIR_SITE)
    _declare(fed.kit("beta"), CSV_SITE)
    cluster = start_cluster(fed, tmp_path / "coordinator-state")
    try:
        yield cluster
    finally:
        cluster.close()


def _start_nodes(cluster: Cluster) -> None:
    for site in SITES:
        cfg = load_node_config(cluster.fed.site_toml(site))
        cluster.node(site, datasets=cfg.settings.datasets, state_dir=cfg.settings.state_dir)
    cluster.wait_online(SITES)


def _fit_metrics(view: dict, site: str) -> list[dict]:
    return [r for r in view["site_metrics"] if r["site"] == site and r["kind"] == "fit"]


def _alpha_patients(cluster: Cluster) -> list[str]:
    cfg = load_node_config(cluster.fed.site_toml("alpha"))
    decl = cfg.settings.datasets["diabetes"].decl
    assert decl is not None
    feats = fhir_features(decl.path, decl.features, as_of=pd.Timestamp(AS_OF, tz="UTC"))
    return [str(p) for p in feats["patient_id"]]


JOB = job_toml(
    name="diabetes",
    dataset="diabetes",
    rounds=2,
    min_nodes=2,
    task_options={"input_dim": 3, "local_steps": 5, "batch_size": 8, "lr": 0.05},
)


def test_fhir_and_csv_sites_train_one_model_and_consent_is_honoured_job_by_job(
    declared: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = declared
    alpha_toml = cluster.fed.site_toml("alpha")
    patients = _alpha_patients(cluster)
    opted_out, withdrawing = patients[3], patients[10]
    consent_csv = cluster.fed.kit("alpha") / "consent.csv"
    consent_csv.write_text(f"patient_id,purpose,status,date\n{opted_out},*,opt-out,2025-01-01\n")
    assert main(["consent", "import", str(consent_csv), "--config", str(alpha_toml)]) == 0
    _start_nodes(cluster)
    client = cluster.client()

    first = wait_job(client, client.submit_job(JOB, "diabetes.toml")["job_id"], timeout_s=90)
    assert first["state"] == "completed", first["error"]
    alpha, beta = _fit_metrics(first, "alpha"), _fit_metrics(first, "beta")
    assert len(alpha) == len(beta) == 2 and not any(r["error"] for r in alpha + beta)
    # the FHIR site left out its one opted-out patient, the CSV site nobody; both trained on the same 3 features
    assert {r["metrics"]["consent_patients_excluded"] for r in alpha} == {1.0}
    assert {r["metrics"]["consent_rows_excluded"] for r in alpha} == {1.0}
    assert {r["metrics"]["consent_patients_excluded"] for r in beta} == {0.0}
    # 80 patients, 1 excluded, 25% held out for evaluation (stratified): 59 or 60 train rows at alpha
    assert {r["num_examples"] for r in alpha} <= {59, 60}
    assert {r["num_examples"] for r in beta} <= {60}
    assert all(0.0 <= r["metrics"]["eval_accuracy"] <= 1.0 for r in alpha + beta)
    model = client.fetch_model(first["job_id"])
    assert model["weight"].shape == (1, 3)
    # counts travel, identities never: no patient id anywhere in what the researcher can see
    text = json.dumps(first) + json.dumps(client.list_jobs())
    assert not any(p in text for p in patients)

    capsys.readouterr()
    assert main(["consent", "withdraw", withdrawing, "--config", str(alpha_toml)]) == 0
    assert "applies from the next job" in capsys.readouterr().out
    assert main(["consent", "list", "--config", str(alpha_toml)]) == 0
    assert "2 deny" in capsys.readouterr().out

    second = wait_job(client, client.submit_job(JOB, "diabetes.toml")["job_id"], timeout_s=90)
    assert second["state"] == "completed", second["error"]
    assert {r["metrics"]["consent_patients_excluded"] for r in _fit_metrics(second, "alpha")} == {2.0}
    assert {r["metrics"]["consent_patients_excluded"] for r in _fit_metrics(second, "beta")} == {0.0}
    assert not any(p in json.dumps(second) for p in patients)
    # the site's audit trail has both changes, in counts: no patient identifier
    entries, _ = read_log(cluster.fed.kit("alpha") / "state" / "audit.sqlite")
    changes = [e.fields for e in entries if e.fields.get("resource") == "consent"]
    assert [(c["outcome"], c["count"]) for c in changes] == [("imported", 1), ("withdrawn", 1)]
    assert not any(p in json.dumps([e.fields for e in entries]) for p in patients)


def test_a_job_for_a_purpose_the_dataset_does_not_serve_fails_with_the_reason(declared: Cluster) -> None:
    _start_nodes(declared)
    client = declared.client()
    job = JOB.replace('[job]\nname = "diabetes"\n', '[job]\nname = "marketing"\npurpose = "marketing"\n')
    view = wait_job(client, client.submit_job(job, "marketing.toml")["job_id"], timeout_s=90)
    assert view["state"] == "failed"
    for site in SITES:
        assert (
            f"{site}: permission: site '{site}', round 1: dataset diabetes: purpose 'marketing' not allowed"
            in (view["error"])
        )


def test_a_declared_dataset_with_an_error_is_named_at_load_and_legacy_csv_still_loads(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    base = '[site]\nname = "s"\ncoordinator = "127.0.0.1:1"\n[tls]\nca = "ca.pem"\ncert = "cert.pem"\nkey = "key.pem"\n'
    site.write_text(base + '[datasets.d]\nformat = "fhir"\npath = "x"\nlabel = 3\ncolor = "red"\ncolumns = []\n')
    with pytest.raises(ConfigError) as err:
        load_node_config(site)
    assert "datasets.d" in str(err.value) and "'color'" in str(err.value) and "label" in str(err.value)
    site.write_text(base + '[datasets.heart]\nkind = "csv"\npath = "data"\nlabel = "label"\n')
    legacy = load_node_config(site).settings.datasets["heart"]
    assert legacy.decl is None and legacy.path == tmp_path / "data"


def test_a_declared_dataset_that_fails_validation_is_not_offered_and_the_site_log_says_why(
    declared: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    export = declared.fed.kit("beta") / "data" / "export.csv"
    lines = export.read_text().splitlines()
    cells = lines[4].split(",")
    cells[3] = "high"  # HBA1C on line 5: not a number
    lines[4] = ",".join(cells)
    export.write_text("\n".join(lines) + "\n")
    _start_nodes(declared)
    offered = {n.site: n.datasets for n in declared.coordinator.nodes.online()}
    assert offered == {"alpha": ("diabetes", "heart"), "beta": ("heart",)}  # the legacy CSV dirs stay
    assert [h["site"] for h in declared.client().search_catalog("diabetes")["hits"]] == ["alpha"]
    refusal = next(r.getMessage() for r in caplog.records if "is not offered" in r.getMessage())
    assert "site beta: dataset diabetes is not offered" in refusal and "export.csv" in refusal and "line 5" in refusal


def test_the_catalog_is_read_again_only_when_consent_data_or_the_day_changed(
    declared: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_node_config(declared.fed.site_toml("alpha")).settings
    publisher = Publisher(cfg.site, cfg.datasets, cfg.state_dir)
    day = dt.date(2026, 6, 1)
    first = publisher.current(on=day)
    assert first.offered == ("diabetes", "heart") and [e.dataset for e in first.entries] == ["diabetes"]
    assert publisher.current(on=day) is first and publisher.computed == 1  # a re-registration: nothing re-read
    assert main(["consent", "withdraw", "someone", "--config", str(declared.fed.site_toml("alpha"))]) == 0
    assert publisher.current(on=day) is not first and publisher.computed == 2
    publisher.current(on=day + dt.timedelta(days=1))
    assert publisher.computed == 3
    bundle = next((declared.fed.kit("alpha") / "data" / "fhir").glob("*.json"))
    bundle.write_text(bundle.read_text() + " ")
    publisher.current(on=day + dt.timedelta(days=1))
    assert publisher.computed == 4
    capsys.readouterr()


def test_node_check_validates_declared_datasets(declared: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    export = declared.fed.kit("beta") / "data" / "export.csv"
    export.write_text(export.read_text().replace("\nMRN00003,", "\n,", 1))  # a patient without an id
    checks = {}
    for site in SITES:
        toml = declared.fed.site_toml(site)
        local = toml.with_name("site-check.toml")  # the kit names the plan's port; this cluster picked one
        local.write_text(re.sub(r'coordinator = "[^"]+"', f'coordinator = "{declared.target}"', toml.read_text()))
        checks[site] = main(["node", "check", "--config", str(local)]), capsys.readouterr().out
    assert checks["alpha"][0] == 0, checks["alpha"][1]
    assert (
        "dataset diabetes: ok (fhir, 80 rows, 0 excluded by policy), tags: endocrinology, diabetes"
        in checks["alpha"][1]
    )
    assert checks["beta"][0] == 1
    assert "dataset diabetes: not offered to jobs: dataset diabetes: 1 row(s) without a patient id" in checks["beta"][1]


def test_consent_cli_shows_one_patient_and_refuses_a_bad_file_whole(
    declared: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = str(declared.fed.site_toml("alpha"))
    good = declared.fed.kit("alpha") / "good.csv"
    good.write_text("patient_id,purpose,status,date\np1,research,opt-in,2025-01-01\n")
    assert main(["consent", "import", str(good), "--config", toml]) == 0
    assert main(["consent", "withdraw", "p1", "--purpose", "research", "--on", "2026-02-01", "--config", toml]) == 0
    capsys.readouterr()
    assert main(["consent", "list", "--patient", "p1", "--on", "2026-01-15", "--config", toml]) == 0
    assert capsys.readouterr().out.strip() == "research: permit on 2026-01-15"
    assert main(["consent", "list", "--patient", "p1", "--on", "2026-02-01", "--config", toml]) == 0
    assert capsys.readouterr().out.strip() == "research: deny on 2026-02-01"
    bad = declared.fed.kit("alpha") / "bad.csv"
    bad.write_text("patient_id,purpose,status,date\np2,*,opt-out,2025-01-01\np3,*,maybe,2025-01-01\n")
    assert main(["consent", "import", str(bad), "--config", toml]) == 1
    assert f"{bad}: line 3: status: 'maybe'" in capsys.readouterr().err
    assert main(["consent", "list", "--config", toml]) == 0
    assert capsys.readouterr().out.strip().endswith(": 1 deny, 1 permit")  # nothing of the bad file was stored
