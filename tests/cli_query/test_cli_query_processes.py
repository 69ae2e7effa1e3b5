"""The deployed path: a ``medfed coordinator`` process, three ``medfed node`` processes reading
their ``site.toml`` (one with a stricter ``[disclosure]`` table), and ``medfed query submit``."""

from __future__ import annotations

from pathlib import Path

import pytest

from integration.support import Processes, sites_online, standing_rule, wait_until
from medfed.cli.main import main

SITES = ("alpha", "beta", "gamma")

QUERY = """
[job]
name = "feasibility"
dataset = "heart"

[rounds]
min_nodes = 2
deadline_s = 60

[query]
kind = "describe"
columns = ["chol", "age"]
"""


@pytest.mark.timeout(240)
def test_query_submit_against_real_processes_honours_each_sites_policy(
    processes: Processes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fed = processes.fed
    strict = fed.site_toml("gamma")  # gamma answers only cohorts of 1000 patients or more
    strict.write_text(strict.read_text() + "\n[disclosure]\nmin_cohort = 1000\n")
    processes.coordinator(tmp_path / "state")
    for site in SITES:  # approval is on by default: each site admin covers this feasibility query
        standing_rule(fed, site, task="query")
        processes.node(site)
    client = processes.client()
    try:
        wait_until(lambda: sites_online(client, set(SITES)), timeout_s=90, what="three node processes online")
    finally:
        client.close()
    spec = tmp_path / "feasibility.toml"
    spec.write_text(QUERY)

    code = main(["query", "submit", str(spec), "--wait", "--timeout", "120", "--config", str(fed.client_toml())])

    out = capsys.readouterr().out
    assert code == 0, out
    assert "describe: all sites" in out and "site alpha" in out and "site beta" in out
    assert "sites left out" in out and "gamma" in out and "minimum of 1000 patients" in out
    assert list((tmp_path / "state" / "reports").glob("query-*.html"))
    # each node kept what it answered in its own state directory
    assert (fed.kit("alpha") / "state" / "analytics" / "heart.answers.json").is_file()
    assert not (fed.kit("gamma") / "state" / "analytics" / "heart.answers.json").exists()
