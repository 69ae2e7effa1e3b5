"""``medfed query submit|result`` and ``medfed job result`` on a query job, in-process, against a
live coordinator over mutual TLS with three in-process nodes."""

from __future__ import annotations

from pathlib import Path

import pytest
from lifelines.datasets import load_lung

from integration.support import RESEARCHER, Cluster, wait_job
from medfed.cli.main import main
from medfed.node.runtime import DatasetConfig

SITES = ("alpha", "beta", "gamma")

#: Survival by sex on NCCTG lung data, its institutions spread over the three sites.
KM_QUERY = """
[job]
name = "km-by-sex"
dataset = "lung"

[rounds]
min_nodes = 3
deadline_s = 30

[query]
kind = "kaplan_meier"
time = "time"
event = "status"
group = "sex"
levels = [[1, 2]]
"""


def _client_toml(cluster: Cluster) -> Path:
    """The researcher's client.toml, pointed at the in-process coordinator's port."""
    kit = cluster.fed.client_toml(RESEARCHER)
    text = kit.read_text().replace(f"127.0.0.1:{cluster.fed.port}", cluster.target)
    path = kit.with_name("client-inprocess.toml")
    path.write_text(text)
    return path


@pytest.fixture
def running(cluster: Cluster, tmp_path: Path) -> Cluster:
    """Three nodes, each with its heart rows and every third lung institution's patients."""
    lung = load_lung().dropna(subset=["inst"])
    for i, site in enumerate(SITES):
        directory = tmp_path / "lung" / site
        directory.mkdir(parents=True)
        lung[lung["inst"] % 3 == i].to_csv(directory / "train.csv", index=False)
        datasets = {"heart": cluster.fed.dataset(site), "lung": DatasetConfig(name="lung", path=directory)}
        cluster.node(site, datasets=datasets, state_dir=tmp_path / "nodes" / site)
    cluster.wait_online(SITES)
    return cluster


def test_query_submit_waits_prints_the_tables_and_writes_the_report(
    running: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "km.toml"
    spec.write_text(KM_QUERY)
    html = tmp_path / "km.html"
    config = str(_client_toml(running))

    code = main(["query", "submit", str(spec), "--wait", "--timeout", "120", "--html", str(html), "--config", config])

    out = capsys.readouterr().out
    assert code == 0, out
    assert "Kaplan–Meier, 3 sites pooled" in out and "log-rank" in out
    assert "<svg" in html.read_text()
    job_id = out.split("query job ", 1)[1].split()[0]
    assert main(["query", "result", job_id, "--config", config]) == 0
    assert "Kaplan–Meier" in capsys.readouterr().out
    assert main(["job", "result", job_id, "--config", config]) == 0  # a query job's result is its tables
    assert "Kaplan–Meier" in capsys.readouterr().out


def test_a_malformed_query_is_refused_at_submission_naming_the_problem(
    running: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text(KM_QUERY.replace('kind = "kaplan_meier"', 'kind = "median"').replace("[rounds]", "[strategy]"))

    code = main(["query", "submit", str(spec), "--config", str(_client_toml(running))])

    err = capsys.readouterr().err
    assert code == 1
    assert "bad.toml" in err and "[strategy] does not apply to a query job" in err
    assert not running.coordinator.store.jobs()  # nothing was stored


def test_a_refused_query_fails_with_each_sites_reason(
    running: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a describe query on a cohort of nobody: every site refuses it (minimum cohort 10 by default)
    spec = tmp_path / "tiny.toml"
    spec.write_text(
        '[job]\nname = "tiny"\ndataset = "heart"\n\n[rounds]\ndeadline_s = 30\n\n'
        '[query]\nkind = "describe"\ncolumns = ["chol"]\nwhere = ["age > 1000"]\n'
    )
    config = str(_client_toml(running))

    code = main(["query", "submit", str(spec), "--wait", "--timeout", "120", "--config", config])

    assert code == 1
    err = capsys.readouterr().err
    assert "failed" in err and "minimum of 10 patients" in err
    view = wait_job(running.client(), running.coordinator.store.jobs()[0].job_id, timeout_s=10)
    errors = {s["site"]: s["error"] for s in view["site_metrics"]}
    assert set(errors) == set(SITES) and all("permission" in e for e in errors.values())
