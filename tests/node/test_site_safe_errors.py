"""A declared dataset that fails at load tells the coordinator only that it failed: the cells,
rows and file lines of the full report stay in the site's log (rows never leave a site, not even
inside an error message)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from test_middleware import PARAMS, FakeTask, _task

from medfed.core.records import ResultStatus
from medfed.data.sources import parse_dataset
from medfed.node.middleware import NodeContext, errors_as_values, run_task
from medfed.node.runtime import DatasetConfig

SECRET = "Jane-Doe-1970"  # a cell a clerk typed into the wrong column


def _ctx(tmp_path: Path, csv_text: str) -> NodeContext:
    (tmp_path / "d.csv").write_text(csv_text)
    decl = parse_dataset(
        "d",
        {
            "format": "csv",
            "path": "d.csv",
            "label": "label",
            "columns": [
                {"name": "patient_id", "type": "string", "missing": "error"},
                {"name": "age", "type": "integer", "min": 0, "max": 120, "missing": "error"},
                {"name": "label", "type": "integer", "allowed": ["0", "1"], "missing": "error"},
            ],
        },
        base=tmp_path,
        where="site.toml",
    )
    return NodeContext(
        site="alpha",
        datasets={"d": DatasetConfig(name="d", path=tmp_path / "d.csv", decl=decl)},
        task_loader=lambda name: FakeTask(PARAMS),
        state_dir=tmp_path / "state",
    )


def _run(ctx: NodeContext) -> str:
    task = _task()
    ctx.begin(task)
    result = errors_as_values(task, ctx, run_task)
    assert result.status is ResultStatus.ERROR
    return result.error_message


def test_a_bad_cell_is_counted_for_the_coordinator_and_named_only_in_the_sites_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = "".join(f"p{i},{40 + i},{i % 2}\n" for i in range(12))
    ctx = _ctx(tmp_path, f"patient_id,age,label\n{rows}p99,{SECRET},1\n")

    with caplog.at_level(logging.WARNING, logger="medfed.node.middleware"):
        message = _run(ctx)

    assert "dataset 'd' failed validation (1 problem(s)) at this site" in message
    assert SECRET not in message and "p99" not in message and "line" not in message
    assert SECRET in caplog.text  # the site admin still sees where and what


def test_an_unreadable_file_says_so_without_quoting_it(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, f"patient_id,age,label\np1,40,0\np2,41,1,{SECRET},extra\n")

    message = _run(ctx)

    assert "dataset 'd'" in message and "at this site" in message
    assert SECRET not in message
