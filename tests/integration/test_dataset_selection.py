"""Jobs that select datasets by tag, over the real mTLS runtime.

Three sites: alpha holds generated FHIR bundles declared as ``dm_fhir``, beta a CSV export of
another generated hospital declared as ``dm_export`` — both tagged ``diabetes`` and
``endocrinology`` — and gamma only its legacy heart directory. A job with
``dataset = { tags = ["diabetes", "endocrinology"] }`` runs on alpha and beta, each on its own
dataset, and not on gamma; the job's view says which sites matched, and ``medfed job result``
says how many rows each site read and left out. A tag that matches two datasets at one site is
refused there, naming both. The catalog persists: after a coordinator restart, search still
answers, showing the sites offline with the age of their entries.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from integration.support import Cluster, job_toml, make_federation, start_cluster, wait_job
from integration.test_declared_datasets import AS_OF, CSV_SITE, FHIR_SITE, _write_csv_export, _write_fhir
from medfed.cli.config import load_node_config
from medfed.cli.main import main
from medfed.data.fhir import fhir_features
from medfed.learn.base import TabularData
from medfed.report.html import render_job_report
from medfed.security.audit import read_log

pytestmark = pytest.mark.timeout(300)

SITES = ("alpha", "beta", "gamma")
FHIR_TAGS = 'tags = ["endocrinology", "diabetes", "cohort"]'
#: alpha: the FHIR bundles as dm_fhir (tagged), and the same bundles again as dm_copy (tagged "cohort" only)
ALPHA = FHIR_SITE.replace("datasets.diabetes", "datasets.dm_fhir").replace(
    'tags = ["endocrinology", "diabetes"]', FHIR_TAGS
) + FHIR_SITE.replace("datasets.diabetes", "datasets.dm_copy").replace(
    'tags = ["endocrinology", "diabetes"]', 'tags = ["cohort", "copy"]'
)
BETA = CSV_SITE.replace("datasets.diabetes", "datasets.dm_export")
OPTIONS = {"input_dim": 3, "local_steps": 5, "batch_size": 8, "lr": 0.05}


def _tagged_job(tags: str, *, min_nodes: int, deadline_s: float = 30.0, sites: tuple[str, ...] = ()) -> str:
    spec = job_toml(
        name="by-tag", dataset="PLACEHOLDER", rounds=2, min_nodes=min_nodes, deadline_s=deadline_s, sites=sites,
        task_options=OPTIONS,
    )  # fmt: skip
    return spec.replace('dataset = "PLACEHOLDER"', f"dataset = {{ tags = {tags} }}")


@pytest.fixture
def tagged(tmp_path: Path, heart: dict[str, TabularData]) -> Iterator[Cluster]:
    fed = make_federation(tmp_path / "fed", heart, sites=SITES)
    _write_fhir(fed.kit("alpha") / "data" / "fhir", seed=21)
    _write_csv_export(fed.kit("beta") / "data" / "export.csv", seed=22, scratch=tmp_path / "beta-fhir")
    for site, text in (("alpha", ALPHA), ("beta", BETA)):
        toml = fed.site_toml(site).read_text().replace("[node]\n", '[node]\nstate_dir = "state"\n')
        fed.site_toml(site).write_text(toml + text)
    cluster = start_cluster(fed, tmp_path / "coordinator-state")
    try:
        yield cluster
    finally:
        cluster.close()


def _start(cluster: Cluster) -> None:
    for site in SITES:
        cfg = load_node_config(cluster.fed.site_toml(site))
        cluster.node(site, datasets=cfg.settings.datasets, state_dir=cfg.settings.state_dir)
    cluster.wait_online(SITES)


def _client_toml(cluster: Cluster) -> Path:
    kit = cluster.fed.kit("researcher")
    path = kit / "client-test.toml"  # the kit's client.toml names the plan's port; this cluster picked one
    path.write_text(
        re.sub(r'coordinator = "[^"]+"', f'coordinator = "{cluster.target}"', (kit / "client.toml").read_text())
    )
    return path


def test_a_tag_selected_job_runs_on_the_sites_whose_datasets_carry_the_tags(
    tagged: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange: one patient at alpha opted out; every node running
    cluster = tagged
    opted_out = _alpha_patients_of(cluster)[3]
    consent = cluster.fed.kit("alpha") / "consent.csv"
    consent.write_text(f"patient_id,purpose,status,date\n{opted_out},*,opt-out,2025-01-01\n")
    assert main(["consent", "import", str(consent), "--config", str(cluster.fed.site_toml("alpha"))]) == 0
    _start(cluster)
    client = cluster.client()

    # Act
    job = client.submit_job(_tagged_job('["Diabetes", "endocrinology"]', min_nodes=2), "by-tag.toml")
    view = wait_job(client, job["job_id"], timeout_s=120)

    # Assert: alpha and beta trained, each on its own dataset; gamma was never asked
    assert view["state"] == "completed", view["error"]
    assert {s["site"] for s in view["site_metrics"]} == {"alpha", "beta"}
    assert not any(s["error"] for s in view["site_metrics"])
    assert view["dataset_matches"] == {"alpha": ["dm_fhir"], "beta": ["dm_export"], "gamma": []}
    alpha = [s["metrics"] for s in view["site_metrics"] if s["site"] == "alpha"]
    assert {(m["policy_rows_read"], m["consent_rows_excluded"], m["policy_rows_dropped"]) for m in alpha} == {
        (80.0, 1.0, 0.0)
    }
    # each site's own audit trail names its own dataset for this job
    for site, name in (("alpha", "dm_fhir"), ("beta", "dm_export")):
        entries, _ = read_log(cluster.fed.kit(site) / "state" / "audit.sqlite")
        accessed = {e.fields.get("dataset") for e in entries if e.fields.get("job_id") == job["job_id"]} - {None}
        assert accessed == {name}, (site, accessed)
    # the researcher's CLI says which sites matched and what each left out, in counts
    capsys.readouterr()
    assert main(["job", "result", job["job_id"], "--config", str(_client_toml(cluster))]) == 0
    out = capsys.readouterr().out
    assert "alpha → dm_fhir, beta → dm_export; no match (took no part): gamma" in out
    assert "alpha: 80 rows, 1 excluded by consent (1 patient), 0 invalid (missing-value policy), 79 used" in out
    assert "beta: 80 rows, 0 excluded by consent, 0 invalid (missing-value policy), 80 used" in out
    assert opted_out not in out
    # and so does the HTML report the coordinator writes from the same view
    page = render_job_report(view)
    assert "alpha: 80 rows, 1 excluded by consent (1 patient), 0 invalid (missing-value policy), 79 used" in page
    assert "<td>gamma</td><td>no match: took no part</td>" in page


def test_a_tag_matching_two_datasets_at_a_site_is_refused_there_naming_both(tagged: Cluster) -> None:
    _start(tagged)
    client = tagged.client()
    view = wait_job(client, client.submit_job(_tagged_job('["cohort"]', min_nodes=1), "c.toml")["job_id"], timeout_s=90)
    assert view["state"] == "failed"
    assert "site 'alpha' has 2 datasets tagged ['cohort']: ['dm_copy', 'dm_fhir']" in view["error"], view["error"]
    assert view["dataset_matches"] == {"alpha": ["dm_copy", "dm_fhir"], "beta": [], "gamma": []}
    assert {s["site"] for s in view["site_metrics"]} <= {"alpha"}  # beta and gamma were never asked
    # a job that lists its sites: a listed site without a match takes no part either
    listed = _tagged_job('["diabetes"]', min_nodes=1, sites=("beta", "gamma"))
    view = wait_job(client, client.submit_job(listed, "l.toml")["job_id"], timeout_s=90)
    assert view["state"] == "completed", view["error"]
    assert {s["site"] for s in view["site_metrics"]} == {"beta"}
    # a tag no site carries: nobody is asked, and the error says what the sites' catalogs hold
    job = client.submit_job(_tagged_job('["genomics"]', min_nodes=1, deadline_s=2.0), "g.toml")
    view = wait_job(client, job["job_id"], timeout_s=90)
    assert view["state"] == "failed" and view["site_metrics"] == []
    assert "no online site offers datasets tagged ['genomics']" in view["error"], view["error"]
    assert "alpha's catalog: {'dm_copy': ['cohort', 'copy']" in view["error"]


def test_the_catalog_answers_after_a_coordinator_restart_with_sites_offline(
    tagged: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    _start(tagged)
    before = tagged.client().search_catalog("endocrinology")
    assert [(h["site"], h["dataset"], h["online"]) for h in before["hits"]] == [
        ("alpha", "dm_fhir", True),
        ("beta", "dm_export", True),
    ]
    for node in tagged.nodes:
        node.runtime.stop()
    for node in tagged.nodes:
        node.join(15.0)
    tagged.proc.stop(grace_s=1.0)
    tagged.coordinator.store.close()

    again = start_cluster(tagged.fed, tagged.state_dir)  # same state, no node has come back
    try:
        after = again.client().search_catalog("endocrinology")
        capsys.readouterr()
        assert main(["catalog", "search", "endocrinology", "--federation", "--config", str(_client_toml(again))]) == 0
        printed = capsys.readouterr().out.splitlines()
    finally:
        again.close()
    assert [line.split(":")[0] for line in printed] == ["alpha/dm_fhir", "beta/dm_export"]
    assert all(re.search(r"\(site offline, entry from \d+ (s|min) ago\)$", line) for line in printed), printed
    assert [(h["site"], h["dataset"], h["online"]) for h in after["hits"]] == [
        ("alpha", "dm_fhir", False),
        ("beta", "dm_export", False),
    ]
    assert all(h["age_s"] >= 0 and h["reported_at"] > 0 for h in after["hits"])
    assert after["entries"] == before["entries"]
    assert {s["site"]: s["online"] for s in after["sites"]} == {"alpha": False, "beta": False, "gamma": False}


def _alpha_patients_of(cluster: Cluster) -> list[str]:
    """alpha's patient ids (read here only to check that none of them travels)."""
    decl = load_node_config(cluster.fed.site_toml("alpha")).settings.datasets["dm_fhir"].decl
    assert decl is not None
    feats = fhir_features(decl.path, decl.features, as_of=pd.Timestamp(AS_OF, tz="UTC"))
    return [str(p) for p in feats["patient_id"]]
