"""``medfed synth fit|sample|evaluate`` on local CSV files, through argparse and dispatch."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import pytest

from medfed.cli import synth_cmds
from medfed.core.errors import ConfigError, PermissionDenied


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medfed")
    synth_cmds.register(parser.add_subparsers(dest="command", required=True))
    return synth_cmds.dispatch(parser.parse_args(argv))


def test_fit_sample_evaluate_release(table: pd.DataFrame, holdout: pd.DataFrame, tmp_path: Path) -> None:
    table.to_csv(tmp_path / "train.csv", index=False)
    holdout.to_csv(tmp_path / "holdout.csv", index=False)
    model, synth = tmp_path / "model.json", tmp_path / "synth.csv"
    fit_args = ["synth", "fit", "--data", str(tmp_path / "train.csv"), "--out", str(model), "--epsilon", "1"]
    assert _run([*fit_args, "--method", "mst", "--dates", "admitted", "--seed", "1"]) == 0
    assert model.exists() and (tmp_path / "model.model.json").exists() and (tmp_path / "model.model.npz").exists()
    assert _run(["synth", "sample", "--model", str(model), "--rows", "300", "--out", str(synth), "--seed", "2"]) == 0
    assert len(pd.read_csv(synth)) == 300
    report, released = tmp_path / "report.html", tmp_path / "released.csv"
    evaluate = ["synth", "evaluate", "--train", str(tmp_path / "train.csv"), "--holdout", str(tmp_path / "holdout.csv")]
    evaluate += ["--synthetic", str(synth), "--target", "label", "--subgroup", "sex", "--subgroup", "age:50,70"]
    assert _run([*evaluate, "--model", str(model), "--report", str(report), "--release", str(released)]) == 0
    assert "Release allowed" in report.read_text(encoding="utf-8")
    assert len(pd.read_csv(released)) == 300


def test_a_blocked_release_fails_with_its_reasons(table: pd.DataFrame, holdout: pd.DataFrame, tmp_path: Path) -> None:
    table.to_csv(tmp_path / "train.csv", index=False)
    holdout.to_csv(tmp_path / "holdout.csv", index=False)
    evaluate = ["synth", "evaluate", "--train", str(tmp_path / "train.csv"), "--holdout", str(tmp_path / "holdout.csv")]
    released = tmp_path / "released.csv"
    with pytest.raises(PermissionDenied, match="not differentially private"):
        _run([*evaluate, "--synthetic", str(tmp_path / "train.csv"), "--target", "label", "--release", str(released)])
    assert not released.exists()


def test_an_unknown_method_is_a_config_error(table: pd.DataFrame, tmp_path: Path) -> None:
    table.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(ConfigError, match="allowed"):
        _run(
            [
                "synth",
                "fit",
                "--data",
                str(tmp_path / "train.csv"),
                "--out",
                str(tmp_path / "m.json"),
                "--epsilon",
                "1",
                "--method",
                "gan",
            ]
        )
