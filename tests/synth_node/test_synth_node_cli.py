"""``medfed synth`` at a site, through the CLI entry: fits charged to the dataset's privacy ledger,
releases gated by the site's ``[synthetic]`` policy, and ``combine`` of released files only.

The sites are provisioned by ``medfed.security.provision`` (real certificates, a real site.toml)
and hold real Fed-Heart-Disease rows (Cleveland at alpha, Hungary at beta).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from integration.support import make_federation
from medfed.cli.config import load_node_config
from medfed.cli.main import main
from medfed.learn.base import TabularData
from medfed.node.datasets import TEST_FRACTION, split_seed
from medfed.node.ledger import PrivacyLedger
from medfed.security.audit import read_log
from medfed.synth.synthesizer import FittedSynthesizer


@pytest.fixture(scope="module")
def heart_sites() -> dict[str, TabularData]:
    from medfed.data.heart import load_fed_heart_disease

    full = load_fed_heart_disease()
    return {"alpha": full["cleveland"], "beta": full["hungary"]}


@pytest.fixture
def sites(tmp_path: Path, heart_sites: dict[str, TabularData]) -> dict[str, Path]:
    """site name -> its site.toml, with a budget of ε = 2, δ = 1e-5 on dataset ``heart``."""
    fed = make_federation(tmp_path / "fed", heart_sites, sites=("alpha", "beta"))
    out = {}
    for site in fed.sites:
        toml = fed.site_toml(site)
        text = toml.read_text()
        assert text.count('label = "label"\n') == 1
        toml.write_text(
            text.replace('label = "label"\n', 'label = "label"\nepsilon_budget = 2.0\ndelta_budget = 1e-5\n')
        )
        out[site] = toml
    return out


def _state(site_toml: Path) -> Path:
    state = load_node_config(site_toml).settings.state_dir
    assert state is not None
    return state


def _fit(site_toml: Path, model: Path, *, epsilon: float, seed: int = 1) -> int:
    return main(
        [
            "synth",
            "fit",
            "--site-config",
            str(site_toml),
            "--dataset",
            "heart",
            "--out",
            str(model),
            "--method",
            "mst",
            "--epsilon",
            str(epsilon),
            "--bins",
            "6",
            "--public-bounds",
            "--seed",
            str(seed),
        ]
    )


def _fit_and_sample(site_toml: Path, tmp: Path, *, seed: int) -> tuple[Path, Path]:
    model, synth = tmp / "model.json", tmp / "synth.csv"
    assert _fit(site_toml, model, epsilon=1.0, seed=seed) == 0
    assert (
        main(["synth", "sample", "--model", str(model), "--rows", "150", "--out", str(synth), "--seed", str(seed)]) == 0
    )
    return model, synth


def _release(site_toml: Path, model: Path, synthetic: Path, out: Path, report: Path | None = None) -> int:
    argv = ["synth", "release", "--site-config", str(site_toml), "--dataset", "heart", "--model", str(model)]
    argv += ["--synthetic", str(synthetic), "--target", "label", "--subgroup", "sex", "--out", str(out)]
    return main(argv + (["--report", str(report)] if report else []))


def test_a_site_fit_is_charged_to_the_dataset_ledger_and_shown_by_node_budget(
    sites: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model.json"
    assert _fit(sites["alpha"], model, epsilon=0.8) == 0
    cost = FittedSynthesizer.load(model).cost
    ledger = PrivacyLedger(_state(sites["alpha"]) / "ledger.sqlite")
    try:
        commits = [e for e in ledger.events("heart") if e["action"] == "commit"]
        assert len(commits) == 1 and str(commits[0]["job_id"]).startswith("synth-")
        job = ledger.job("heart", str(commits[0]["job_id"]))
        assert job is not None and not job.open
        assert job.epsilon_spent == pytest.approx(cost.epsilon) and job.delta_spent == pytest.approx(cost.delta)
        assert cost.epsilon == pytest.approx(0.8, rel=1e-3)
        status = ledger.status("heart")
        assert status is not None and status.epsilon_used == pytest.approx(cost.epsilon)
    finally:
        ledger.close()
    entries, _ = read_log(_state(sites["alpha"]) / "audit.sqlite")
    spent = [e for e in entries if e.action == "budget.spent"]
    assert len(spent) == 1 and spent[0].fields["job_id"] == commits[0]["job_id"]
    assert spent[0].fields["epsilon"] == pytest.approx(cost.epsilon)
    capsys.readouterr()
    assert main(["node", "budget", "--config", str(sites["alpha"])]) == 0
    shown = capsys.readouterr().out
    assert str(commits[0]["job_id"]) in shown and "1.2" in shown  # ε left: 2 - 0.8


def test_over_budget_is_refused_before_any_row_is_read_and_nothing_is_charged(
    sites: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = load_node_config(sites["alpha"]).settings.datasets["heart"].path
    (data_dir / "train.csv").unlink()  # reading it would fail with a DataError instead of the refusal
    model = tmp_path / "model.json"
    assert _fit(sites["alpha"], model, epsilon=2.5) == 1
    err = capsys.readouterr().err
    assert "needs ε=2.5" in err and "only ε=2, δ=1e-05 are left" in err
    assert not model.exists()
    ledger = PrivacyLedger(_state(sites["alpha"]) / "ledger.sqlite")
    try:
        assert [e["action"] for e in ledger.events("heart")] == ["set-budget"]
        status = ledger.status("heart")
        assert status is not None and status.epsilon_used == 0.0
    finally:
        ledger.close()


def test_a_second_fit_beyond_what_is_left_is_refused(sites: dict[str, Path], tmp_path: Path) -> None:
    assert _fit(sites["beta"], tmp_path / "m1.json", epsilon=1.5) == 0
    assert _fit(sites["beta"], tmp_path / "m2.json", epsilon=1.0) == 1
    ledger = PrivacyLedger(_state(sites["beta"]) / "ledger.sqlite")
    try:
        status = ledger.status("heart")
        assert status is not None and status.epsilon_used == pytest.approx(1.5, rel=1e-3)
    finally:
        ledger.close()


def test_a_blocked_release_writes_nothing_and_is_audited(
    sites: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, _ = _fit_and_sample(sites["alpha"], tmp_path, seed=3)
    real_rows = load_node_config(sites["alpha"]).settings.datasets["heart"].path / "train.csv"
    out, report = tmp_path / "release" / "alpha.csv", tmp_path / "report.html"
    assert _release(sites["alpha"], model, real_rows, out, report) == 1  # the real rows, passed off as synthetic
    assert "release blocked: all 199 synthetic rows are exact copies" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "release" / "alpha.release.json").exists()
    assert "exact copies" in report.read_text(encoding="utf-8")  # the site's own report says why
    entries, _ = read_log(_state(sites["alpha"]) / "audit.sqlite")
    exported = [e for e in entries if e.action == "data.exported"]
    assert len(exported) == 1 and exported[0].fields["ok"] is False and exported[0].fields["outcome"] == "blocked"


def test_the_site_policy_can_block_a_release(
    sites: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, synth = _fit_and_sample(sites["alpha"], tmp_path, seed=4)
    with sites["alpha"].open("a") as f:
        f.write("\n[synthetic]\nmax_mia_auc = 0.5\n")  # stricter than any attack on a real table can score
    out = tmp_path / "alpha.csv"
    assert _release(sites["alpha"], model, synth, out) == 1
    assert "exceeds the site's limit 0.5" in capsys.readouterr().err
    assert not out.exists()


def test_released_sites_combine_and_unreleased_files_are_refused(
    sites: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    released = {}
    for site in ("alpha", "beta"):
        (tmp_path / site).mkdir()
        model, synth = _fit_and_sample(sites[site], tmp_path / site, seed=5)
        released[site] = tmp_path / "share" / f"{site}.csv"
        assert _release(sites[site], model, synth, released[site]) == 0, capsys.readouterr().err
        manifest = json.loads((tmp_path / "share" / f"{site}.release.json").read_text())
        assert manifest["site"] == site and manifest["released"] is True
        assert manifest["epsilon"] == pytest.approx(1.0, rel=1e-3) and manifest["rows"] == len(
            pd.read_csv(released[site])
        )
    combined = tmp_path / "combined.csv"
    assert main(["synth", "combine", str(released["alpha"]), str(released["beta"]), "--out", str(combined)]) == 0
    table = pd.read_csv(combined)
    assert table["site"].value_counts().to_dict() == {
        s: len(pd.read_csv(p)) for s, p in released.items()
    }  # every released row, labelled with its site
    assert set(table.columns) == {*pd.read_csv(released["alpha"]).columns, "site"}
    provenance = json.loads((tmp_path / "combined.release.json").read_text())
    assert provenance["format"] == "medfed-synth-combined/1" and set(provenance["sites"]) == {"alpha", "beta"}
    assert provenance["sites"]["beta"]["epsilon"] == pytest.approx(1.0, rel=1e-3)
    assert main(["synth", "combine", str(combined), "--out", str(tmp_path / "again.csv")]) == 1  # not a release
    assert "not a medfed release manifest" in capsys.readouterr().err

    unreleased, out = tmp_path / "alpha" / "synth.csv", tmp_path / "refused.csv"  # sampled, never gated
    assert main(["synth", "combine", str(released["beta"]), str(unreleased), "--out", str(out)]) == 1
    assert "not released by the gate" in capsys.readouterr().err
    with released["alpha"].open("a") as f:  # a row added after the release
        f.write(",".join(["0"] * len(pd.read_csv(released["alpha"]).columns)) + "\n")
    assert main(["synth", "combine", str(released["alpha"]), str(released["beta"]), "--out", str(out)]) == 1
    assert "differs from what the gate released" in capsys.readouterr().err
    assert not out.exists()


def test_a_bad_synthetic_table_names_the_key(
    sites: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with sites["alpha"].open("a") as f:
        f.write('\n[synthetic]\nmax_mia_auc = "high"\nrequire_dpp = true\n')
    assert _release(sites["alpha"], tmp_path / "m.json", tmp_path / "s.csv", tmp_path / "o.csv") == 1
    err = capsys.readouterr().err
    assert "synthetic.max_mia_auc must be" in err and "unknown key synthetic.require_dpp" in err


def test_a_site_fit_without_a_public_schema_is_refused(
    sites: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "synth",
        "fit",
        "--site-config",
        str(sites["alpha"]),
        "--dataset",
        "heart",
        "--out",
        str(tmp_path / "m.json"),
    ]
    assert main([*argv, "--epsilon", "1"]) == 1
    assert "--public-bounds" in capsys.readouterr().err
    assert main([*argv, "--epsilon", "1", "--public-bounds", "--data", "x.csv"]) == 1
    assert (
        main(
            [
                "synth",
                "fit",
                "--site-config",
                str(sites["alpha"]),
                "--dataset",
                "nope",
                "--out",
                "m.json",
                "--epsilon",
                "1",
                "--public-bounds",
            ]
        )
        == 1
    )
    assert "no [datasets.nope]" in capsys.readouterr().err


def test_a_release_needs_a_model_whose_cost_this_sites_ledger_paid(
    sites: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, synth = _fit_and_sample(sites["alpha"], tmp_path, seed=6)
    assert FittedSynthesizer.load(model).ledger_job.startswith("synth-")
    out = tmp_path / "beta.csv"
    assert _release(sites["beta"], model, synth, out) == 1  # alpha's model, presented at beta
    assert "no closed charge" in capsys.readouterr().err
    train = load_node_config(sites["beta"]).settings.datasets["heart"].path / "train.csv"
    local = tmp_path / "local.json"  # fitted from the CSV file, outside the ledger
    fit_local = ["synth", "fit", "--data", str(train), "--out", str(local), "--method", "mst", "--epsilon", "1"]
    assert main([*fit_local, "--seed", "1"]) == 0
    assert _release(sites["beta"], local, synth, out) == 1
    assert "job none" in capsys.readouterr().err
    assert not out.exists()


DECLARED = """
[datasets.cardio]
format = "csv"
path = "data/cardio.csv"
label = "label"
patient_id = "patient_id"
purposes = ["research"]
epsilon_budget = 2.0
delta_budget = 1e-5
"""


def test_a_declared_dataset_is_read_through_its_purpose_and_consent_filter(
    sites: dict[str, Path], heart_sites: dict[str, TabularData], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = heart_sites["alpha"]
    export = pd.DataFrame(d.x_train[:, :8], columns=list(d.feature_names[:8]))  # age ... oldpeak
    export.insert(0, "patient_id", [f"p{i:04d}" for i in range(len(export))])
    export["label"] = d.y_train.astype(int)
    kit = sites["alpha"].parent
    export.to_csv(kit / "data" / "cardio.csv", index=False)
    columns = "".join(
        f'\n[[datasets.cardio.columns]]\nname = "{c}"\ntype = "{"string" if c == "patient_id" else "float"}"\n'
        for c in export.columns
    )
    sites["alpha"].write_text(sites["alpha"].read_text().replace("[node]\n", DECLARED + columns + "\n[node]\n", 1))
    fit = ["synth", "fit", "--site-config", str(sites["alpha"]), "--dataset", "cardio", "--method", "mst"]
    fit += ["--epsilon", "1", "--bins", "4", "--public-bounds", "--seed", "7"]
    assert main([*fit, "--out", str(tmp_path / "m0.json"), "--purpose", "marketing"]) == 1
    assert "purpose 'marketing' not allowed" in capsys.readouterr().err
    ledger = PrivacyLedger(_state(sites["alpha"]) / "ledger.sqlite")
    try:
        status = ledger.status("cardio")
        assert status is not None and status.epsilon_used == 0.0  # refused before any row: nothing charged
    finally:
        ledger.close()
    for i in range(10):  # ten patients opt out: their rows must never reach the fit
        assert main(["consent", "withdraw", f"p{i:04d}", "--config", str(sites["alpha"])]) == 0
    model, synth = tmp_path / "m.json", tmp_path / "s.csv"
    assert main([*fit, "--out", str(model)]) == 0
    job_id = FittedSynthesizer.load(model).ledger_job
    held = np.random.default_rng(split_seed(job_id, "cardio")).random(len(export) - 10) < TEST_FRACTION
    entries, _ = read_log(_state(sites["alpha"]) / "audit.sqlite")
    spent = [e for e in entries if e.action == "budget.spent" and e.fields["job_id"] == job_id]
    assert spent[0].fields["rows"] == int((~held).sum()) and spent[0].fields["purpose"] == "research"
    assert main(["synth", "sample", "--model", str(model), "--rows", "120", "--out", str(synth), "--seed", "7"]) == 0
    sampled = pd.read_csv(synth)
    assert "patient_id" not in sampled.columns and set(sampled.columns) == set(export.columns) - {"patient_id"}
    release = ["synth", "release", "--site-config", str(sites["alpha"]), "--dataset", "cardio", "--model", str(model)]
    out = tmp_path / "share" / "alpha.csv"
    assert main([*release, "--synthetic", str(synth), "--target", "label", "--out", str(out)]) == 0
    assert json.loads((tmp_path / "share" / "alpha.release.json").read_text())["dataset"] == "cardio"


def test_a_fit_that_fails_before_measuring_releases_its_hold(
    sites: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["synth", "fit", "--site-config", str(sites["alpha"]), "--dataset", "heart", "--out", str(tmp_path / "m")]
    assert main([*argv, "--method", "mst", "--target", "outcome", "--epsilon", "1", "--public-bounds"]) == 1
    assert "target 'outcome' is not a column" in capsys.readouterr().err
    ledger = PrivacyLedger(_state(sites["alpha"]) / "ledger.sqlite")
    try:
        assert [e["action"] for e in ledger.events("heart")] == ["set-budget", "reserve", "close"]
        status = ledger.status("heart")
        assert status is not None and status.epsilon_used == 0.0
    finally:
        ledger.close()
