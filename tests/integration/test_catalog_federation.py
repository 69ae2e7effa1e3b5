"""The federation's catalog over mutual TLS: nodes publish metadata of their declared datasets when
they register (schema, tags, codes, coarse counts with small cells shown as "<5"), and a researcher's
search returns per-site matches — never a row, never an identifier. A node cannot publish for
another site, and a node's certificate cannot search."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.support import Cluster, Processes, make_federation, sites_online, start_cluster, wait_until
from integration.test_declared_datasets import (
    CSV_SITE,
    FHIR_SITE,
    SITES,
    _declare,
    _start_nodes,
    _write_csv_export,
    _write_fhir,
)
from medfed import __version__
from medfed.cli.main import main
from medfed.core.errors import PermissionDenied, ValidationError
from medfed.learn.base import TabularData
from medfed.transport.api import Hello

pytestmark = pytest.mark.timeout(180)

#: beta's export as Parquet this time (the declared-datasets test trains on its CSV twin)
PARQUET_SITE = CSV_SITE.replace('format = "csv"', 'format = "parquet"').replace("export.csv", "export.parquet")
COARSE = re.compile(r"^(0|<5|5-9|[1-9]\d*0)$")  # what catalog.coarse_count may say
ENTRY_KEYS = {"site", "dataset", "rows", "columns", "tags", "features", "codes", "purposes", "fingerprint"}


@pytest.fixture
def published(tmp_path: Path, heart: dict[str, TabularData]) -> Iterator[tuple[Cluster, list[str]]]:
    fed = make_federation(tmp_path / "fed", heart, sites=SITES)
    _write_fhir(fed.kit("alpha") / "data" / "fhir", seed=21)
    wide = _write_csv_export(fed.kit("beta") / "data" / "export.parquet", seed=22, scratch=tmp_path / "beta-fhir")
    _declare(fed.kit("alpha"), FHIR_SITE)
    _declare(fed.kit("beta"), PARQUET_SITE)
    cluster = start_cluster(fed, tmp_path / "coordinator-state")
    try:
        _start_nodes(cluster)
        identities = [str(p) for p in wide["patient_id"]] + [f"MRN{i:05d}" for i in range(len(wide))]
        yield cluster, identities
    finally:
        cluster.close()


def _counts(entry: dict) -> list[str]:
    return (
        [entry["rows"]]
        + [n for c in entry["columns"] for _, _, n in c["bins"]]
        + [c["positives"] for c in entry["columns"] if c["positives"]]
    )


def test_a_researcher_finds_per_site_metadata_and_never_rows(published: tuple[Cluster, list[str]]) -> None:
    cluster, identities = published
    client = cluster.client()
    found = client.search_catalog("diabetes glucose hba1c>6")
    assert [(h["site"], h["dataset"], h["online"]) for h in found["hits"]] == [
        ("alpha", "diabetes", True),
        ("beta", "diabetes", True),
    ]
    for hit, entry in zip(found["hits"], found["entries"], strict=True):
        assert set(entry) == ENTRY_KEYS and entry["site"] == hit["site"]
        assert [c["name"] for c in entry["columns"]] == ["patient_id", "age", "glucose", "hba1c", "diabetes"]
        assert {c["name"]: c["unit"] for c in entry["columns"]}["glucose"] == "mmol/L"  # beta sent mg/dL: harmonised
        assert entry["fingerprint"] and len(entry["fingerprint"]) == 64
        assert entry["rows"] == "80" and set(entry["tags"]) == {"endocrinology", "diabetes"}
        assert all(COARSE.match(n) for n in _counts(entry)), _counts(entry)
        assert dict(hit["estimates"])["hba1c>6"] not in ("0", "")
    # small cells are suppressed on the wire, and nothing identifying travels
    assert any(n == "<5" for e in found["entries"] for n in _counts(e))
    text = json.dumps(found)
    assert not any(p in text for p in identities)
    assert client.search_catalog("cardiology")["hits"] == []
    assert {s["site"]: s["datasets"] for s in found["sites"]} == {"alpha": 1, "beta": 1}


def test_the_cli_searches_the_federation(
    published: tuple[Cluster, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster, _ = published
    kit = cluster.fed.kit("researcher")
    client_toml = kit / "client-test.toml"  # the kit's client.toml names the plan's port; this cluster picked one
    text = (kit / "client.toml").read_text()
    client_toml.write_text(re.sub(r'coordinator = "[^"]+"', f'coordinator = "{cluster.target}"', text))
    assert main(["catalog", "search", "diabetes age>60", "--federation", "--config", str(client_toml)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["alpha/diabetes", "beta/diabetes"]
    assert all("rows 80" in line and "age>60:" in line for line in out)


def test_a_node_cannot_publish_for_another_site_nor_search(published: tuple[Cluster, list[str]]) -> None:
    cluster, _ = published
    entry = cluster.client().search_catalog("diabetes")["entries"][0]  # alpha's entry
    forged = Hello(version=__version__, datasets=("diabetes",), catalog_json=json.dumps([entry]))
    with pytest.raises(ValidationError, match="entry 'diabetes' names site 'alpha'"):
        cluster.link("beta").register(forged)
    unoffered = Hello(version=__version__, datasets=(), catalog_json=json.dumps([entry]))
    with pytest.raises(ValidationError, match="not a dataset the site offers"):
        cluster.link("alpha").register(unoffered)
    with pytest.raises(ValidationError, match="not JSON"):
        cluster.link("alpha").register(Hello(version=__version__, catalog_json="[{"))
    with pytest.raises(PermissionDenied, match="has role 'node'"):
        cluster.client("alpha").search_catalog("diabetes")


def test_real_node_processes_publish_and_the_researcher_cli_finds_them(
    tmp_path: Path, heart: dict[str, TabularData], capsys: pytest.CaptureFixture[str]
) -> None:
    """``medfed coordinator start`` and ``medfed node start --config site.toml`` processes; the
    researcher's kit client.toml, unchanged."""
    fed = make_federation(tmp_path / "fed", heart, sites=SITES)
    _write_fhir(fed.kit("alpha") / "data" / "fhir", seed=21)
    _write_csv_export(fed.kit("beta") / "data" / "export.parquet", seed=22, scratch=tmp_path / "beta-fhir")
    _declare(fed.kit("alpha"), FHIR_SITE)
    _declare(fed.kit("beta"), PARQUET_SITE)
    procs = Processes(fed, tmp_path / "work")
    try:
        procs.coordinator(tmp_path / "state", heartbeat_s=1.0)
        for site in SITES:
            procs.node(site)
        client = procs.client()
        try:
            wait_until(lambda: sites_online(client, set(SITES)), timeout_s=90, what="both nodes online", interval_s=0.2)
        finally:
            client.close()
        capsys.readouterr()
        args = ["catalog", "search", "diabetes hba1c>6", "--federation", "--config", str(fed.client_toml()), "--json"]
        assert main(args) == 0
        found = json.loads(capsys.readouterr().out)
        assert [(h["site"], h["rows"]) for h in found["hits"]] == [("alpha", "80"), ("beta", "80")]
    finally:
        procs.stop_all()
