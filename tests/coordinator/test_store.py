"""The coordinator store: WAL mode, atomic round records, state survives reopening."""

import sqlite3
from pathlib import Path

from medfed.coordinator.store import Store
from medfed.core.records import JobState, RoundRecord, SiteMetrics, TaskKind


def _record(rnd: int) -> RoundRecord:
    sites = (
        SiteMetrics(site="a", num_examples=10, metrics={"eval_accuracy": 0.7}),
        SiteMetrics(site="b", num_examples=0, metrics={}, error="data: dataset missing"),
    )
    return RoundRecord(
        job_id="j1", round=rnd, kind=TaskKind.FIT, sites=sites, aggregated={"mean/eval_accuracy": 0.7}, duration_s=0.1
    )


def test_rounds_and_checkpoints_survive_reopening(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    store.add_job(job_id="j1", name="n", owner="alice", spec_toml="x", spec_hash="h", rounds=3)
    store.set_job_state("j1", JobState.RUNNING)
    store.complete_round(_record(1), checkpoint=("/ck/1.npz", "d1"))
    store.complete_round(_record(2), checkpoint=("/ck/2.npz", "d2"))
    store.close()

    again = Store(tmp_path / "s.sqlite")
    job = again.job("j1")
    assert job is not None and job.state is JobState.RUNNING and job.completed_round == 2
    assert again.latest_checkpoint("j1") == (2, "/ck/2.npz", "d2")
    sites = again.site_rows("j1")
    assert {(s["round"], s["site"], s["error"]) for s in sites} >= {(1, "b", "data: dataset missing")}
    assert [r["round"] for r in again.round_rows("j1")] == [1, 2]
    mode = sqlite3.connect(tmp_path / "s.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    again.close()


def test_evaluate_round_does_not_move_completed_round(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    store.add_job(job_id="j1", name="n", owner="alice", spec_toml="x", spec_hash="h", rounds=1)
    store.complete_round(_record(1), checkpoint=("/ck/1.npz", "d1"))
    final = RoundRecord(job_id="j1", round=2, kind=TaskKind.EVALUATE, sites=(), aggregated={}, duration_s=0.0)
    store.complete_round(final, checkpoint=None)
    job = store.job("j1")
    assert job is not None and job.completed_round == 1
    store.close()
