"""The node's side of an ended job: only answers it asked for, only finished states, audited."""

from pathlib import Path

import pytest

from integration.support import Federation
from medfed.cli.config import load_node_config
from medfed.cli.main import main
from medfed.learn.registry import load_task
from medfed.node.governance import open_governance
from medfed.node.ledger import PrivacyLedger
from medfed.node.middleware import NodeContext
from medfed.node.privacy import release_ended_jobs
from medfed.node.runtime import open_ledger
from medfed.security.audit import read_log


@pytest.fixture
def ctx(tmp_path: Path) -> NodeContext:
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("heart", epsilon=5.0, delta=1e-5)
    governance = open_governance("alpha", state_dir=tmp_path, policy=None)
    return NodeContext(site="alpha", datasets={}, task_loader=load_task, ledger=ledger, governance=governance)


def test_ended_jobs_release_their_rest_and_are_audited(ctx: NodeContext, tmp_path: Path) -> None:
    ledger = ctx.ledger
    assert ledger is not None
    ledger.reserve("heart", "j1", epsilon=2.0, delta=1e-6)
    ledger.commit("heart", "j1", epsilon=0.5, delta=1e-6, steps=5)
    ledger.reserve("heart", "j2", epsilon=1.0, delta=1e-6)

    released = release_ended_jobs(ctx, {"j1": "failed", "j2": "cancelled"}, asked={"j1", "j2"})

    assert sorted((r.job_id, r.epsilon) for r in released) == [("j1", pytest.approx(1.5)), ("j2", 1.0)]
    assert ledger.open_jobs() == []
    assert ledger.status("heart").epsilon_used == pytest.approx(0.5)  # type: ignore[union-attr]
    entries, _ = read_log(tmp_path / "audit.sqlite")
    audited = [e.fields for e in entries if e.action == "budget.released"]
    assert [(f["job_id"], f["outcome"], f["dataset"]) for f in audited] == [
        ("j1", "failed", "heart"),
        ("j2", "cancelled", "heart"),
    ]
    assert float(audited[0]["epsilon"]) == pytest.approx(1.5)


def test_answers_not_asked_for_or_not_final_release_nothing(ctx: NodeContext, tmp_path: Path) -> None:
    ledger = ctx.ledger
    assert ledger is not None
    ledger.reserve("heart", "j1", epsilon=1.0, delta=1e-6)
    ledger.reserve("heart", "j2", epsilon=1.0, delta=1e-6)

    released = release_ended_jobs(ctx, {"j1": "running", "j2": "failed", "j9": "failed"}, asked={"j1"})

    assert released == []
    assert ledger.open_jobs() == ["j1", "j2"]
    entries, _ = read_log(tmp_path / "audit.sqlite")
    assert [e for e in entries if e.action == "budget.released"] == []


def test_a_second_answer_releases_nothing_more(ctx: NodeContext) -> None:
    ledger = ctx.ledger
    assert ledger is not None
    ledger.reserve("heart", "j1", epsilon=1.0, delta=1e-6)
    release_ended_jobs(ctx, {"j1": "completed"}, asked={"j1"})

    again = release_ended_jobs(ctx, {"j1": "completed"}, asked={"j1"})

    assert again == []
    assert [e["action"] for e in ledger.events("heart")].count("close") == 1


def test_node_budget_shows_what_a_release_gave_back(fed: Federation, capsys: pytest.CaptureFixture[str]) -> None:
    # Arrange: a site whose dataset has a budget; a job reserved, spent part, then ended
    toml = fed.site_toml("alpha")
    text = toml.read_text()
    toml.write_text(text.replace('label = "label"\n', 'label = "label"\nepsilon_budget = 4.0\n', 1))
    ledger = open_ledger(load_node_config(toml).settings)
    assert ledger is not None
    ledger.reserve("heart", "job77", epsilon=3.0, delta=1e-6)
    ledger.commit("heart", "job77", epsilon=1.25, delta=1e-6, steps=5)
    ledger.release_job("job77", reason="job failed")
    ledger.close()

    # Act
    code = main(["node", "budget", "--config", str(toml)])

    # Assert
    out = capsys.readouterr().out
    assert code == 0
    (line,) = [x for x in out.splitlines() if "close" in x and "job=job77" in x]
    assert "ε=1.75" in line and "released; job failed" in line
