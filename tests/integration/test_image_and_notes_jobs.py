"""Image and clinical-note datasets in jobs over real mutual TLS: two sites hold directories of real
DICOM files (pydicom, pydicom-data, deid-data) and deidgate's notes. A cnn job trains on the images
(label: CT vs MR, a plumbing check, not a clinical model) and the model changes; a patient who opted
out is left out and counted; a dataset with a truncated DICOM is not offered and the site says which
file. A logistic regression trains on hashed word features of the scrubbed notes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from data_layer.media_support import MR_SMALL_PATIENT, SITE_IMAGES, deidgate_notes, write_images, write_notes_jsonl
from integration.support import Cluster, job_toml, make_federation, start_cluster, wait_job
from medfed.cli.config import load_node_config
from medfed.cli.main import main
from medfed.learn.base import TabularData
from medfed.learn.registry import load_task

pytestmark = pytest.mark.timeout(240)

SITES = ("alpha", "beta")
DATASETS = """
[datasets.scans]
format = "dicom"
path = "data/images"
label_attribute = "Modality"
positive = ["CT"]
image_size = [32, 32]
purposes = ["research"]
tags = ["imaging"]

[datasets.notes]
format = "notes"
path = "data/notes.jsonl"
hash_buckets = 64

[datasets.broken]
format = "dicom"
path = "data/broken"
label_attribute = "Modality"
positive = ["CT"]
"""
CNN_OPTIONS = {"local_steps": 4, "batch_size": 2, "lr": 0.05, "hidden": 4}


@pytest.fixture
def media(tmp_path: Path, heart: dict[str, TabularData]) -> Iterator[Cluster]:
    fed = make_federation(tmp_path / "fed", heart, sites=SITES)
    notes = deidgate_notes()
    for site, part in zip(SITES, (notes[:8], notes[8:]), strict=True):
        kit = fed.kit(site)
        write_images(kit / "data" / "images", SITE_IMAGES[site])
        write_images(kit / "data" / "broken", ["CT_small.dcm", "MR_small.dcm", "MR_truncated.dcm"])
        write_notes_jsonl(kit / "data" / "notes.jsonl", part)
        toml = (kit / "site.toml").read_text().replace("[node]\n", '[node]\nstate_dir = "state"\n')
        (kit / "site.toml").write_text(toml + DATASETS)
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


def _fits(view: dict, site: str) -> list[dict]:
    return [r for r in view["site_metrics"] if r["site"] == site and r["kind"] == "fit"]


def test_a_cnn_trains_on_two_sites_dicom_and_notes_train_a_model_consent_and_bad_files_honoured(
    media: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    consent = media.fed.kit("alpha") / "consent.csv"
    consent.write_text(f"patient_id,purpose,status,date\n{MR_SMALL_PATIENT},*,opt-out,2025-01-01\n")
    assert main(["consent", "import", str(consent), "--config", str(media.fed.site_toml("alpha"))]) == 0
    _start_nodes(media)
    client = media.client()

    # the dataset with a truncated file is offered by no site, and each site's log names the file
    offered = {n.site: n.datasets for n in media.coordinator.nodes.online()}
    assert offered == {site: ("heart", "notes", "scans") for site in SITES}
    refusals = [r.getMessage() for r in caplog.records if "dataset broken is not offered" in r.getMessage()]
    assert len(refusals) == 2 and all("MR_truncated.dcm: truncated DICOM file" in r for r in refusals)
    broken = job_toml(
        name="broken", task="cnn", dataset="broken", rounds=1, min_nodes=1, deadline_s=2.0, retries=0,
        task_options=CNN_OPTIONS,
    )  # fmt: skip
    refused = wait_job(client, client.submit_job(broken, "broken.toml")["job_id"], timeout_s=60)
    assert refused["state"] == "failed" and "no online site offers" in refused["error"], refused["error"]
    assert "broken" in refused["error"] and not _fits(refused, "alpha") + _fits(refused, "beta")

    job = job_toml(name="scans", task="cnn", dataset="scans", rounds=2, min_nodes=2, task_options=CNN_OPTIONS)
    view = wait_job(client, client.submit_job(job, "scans.toml")["job_id"], timeout_s=150)

    assert view["state"] == "completed", view["error"]
    alpha, beta = _fits(view, "alpha"), _fits(view, "beta")
    assert len(alpha) == len(beta) == 2 and not any(r["error"] for r in alpha + beta)
    # alpha: 7 files, MR_small and its big-endian copy (patient 4MR1) excluded; 5 left, 1 held out
    assert {r["metrics"]["consent_rows_excluded"] for r in alpha} == {2.0}
    assert {r["metrics"]["consent_patients_excluded"] for r in alpha} == {1.0}
    # beta: 7 files; held out by patient, one CT and one MR patient (4MR1 has two files): 4 or 5 train
    assert {r["num_examples"] for r in alpha} == {4} and len({r["num_examples"] for r in beta} & {4, 5}) == 1
    assert {r["metrics"]["consent_rows_excluded"] for r in beta} == {0.0}
    model = client.fetch_model(view["job_id"])
    start = load_task("cnn").init_parameters(CNN_OPTIONS, 7)
    assert model.names == start.names
    assert max(float(np.abs(a - b).max()) for (_, a), (_, b) in zip(model, start, strict=True)) > 0
    assert MR_SMALL_PATIENT not in json.dumps(view)

    notes_job = job_toml(
        name="notes", dataset="notes", rounds=2, min_nodes=2,
        task_options={"input_dim": 64, "local_steps": 5, "batch_size": 2, "lr": 0.1},
    )  # fmt: skip
    notes_view = wait_job(client, client.submit_job(notes_job, "notes.toml")["job_id"], timeout_s=120)
    assert notes_view["state"] == "completed", notes_view["error"]
    assert {r["num_examples"] for r in _fits(notes_view, "alpha")} == {6}
    assert {r["num_examples"] for r in _fits(notes_view, "beta")} == {6}
    assert client.fetch_model(notes_view["job_id"])["weight"].shape == (1, 64)
    seen = json.dumps(notes_view) + json.dumps(client.search_catalog("imaging"))
    # as whole tokens: a short number such as an MRN "2280" may occur inside a float or a random job id
    leaked = [p["value"] for n in deidgate_notes() for p in n["phi"] if _token(p["value"]).search(seen)]
    assert not leaked


def _token(value: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w.]){re.escape(value)}(?![\w])")
