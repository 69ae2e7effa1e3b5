"""Approval is on by default: the ``[policy]`` forms, the node's record of its approval mode at
start, and the fingerprint cache the node checks before each task."""

from __future__ import annotations

from pathlib import Path

import pytest

from medfed.core.errors import ConfigError, DataError
from medfed.node.fingerprints import FingerprintCache, dataset_fingerprint, dataset_fingerprints
from medfed.node.governance import open_governance
from medfed.node.runtime import DatasetConfig
from medfed.security.audit import read_log
from medfed.security.node_policy import ANY, ApprovalMode, JobFacts, NodePolicy, parse_node_policy

LISTS = {"researchers": ["*"], "purposes": ["*"], "tasks": ["*"], "datasets": ["*"]}


def _facts(**changes: str) -> JobFacts:
    fields = {"job_id": "j1", "name": "n", "researcher": "anyone", "purpose": "whatever", "task": "any_task",
              "dataset": "any", "rounds": 99, "spec_hash": "0" * 64, "spec_text": ""}  # fmt: skip
    return JobFacts(**(fields | changes))  # type: ignore[arg-type]


def test_a_site_without_a_policy_admits_any_job_but_requires_approval() -> None:
    policy = NodePolicy.approval_only("cleveland")
    assert policy.approval is ApprovalMode.REQUIRED
    assert policy.researchers == policy.purposes == policy.tasks == policy.datasets == frozenset({ANY})
    assert policy.violations(_facts()) == []


def test_approval_off_must_be_written_and_is_parsed() -> None:
    assert parse_node_policy(LISTS, site="s").approval is ApprovalMode.REQUIRED
    assert parse_node_policy(LISTS | {"approval": "off"}, site="s").approval is ApprovalMode.OFF
    assert parse_node_policy(LISTS | {"require_approval": True}, site="s").approval is ApprovalMode.REQUIRED
    with pytest.raises(ConfigError, match=r"approval must be one of \['required', 'off'\], got 'no'"):
        parse_node_policy(LISTS | {"approval": "no"}, site="s")
    with pytest.raises(ConfigError, match='write approval = "off"'):
        parse_node_policy(LISTS | {"require_approval": False}, site="s")
    with pytest.raises(ConfigError, match="researchers is required"):  # off still needs the lists
        parse_node_policy({"approval": "off"}, site="s")


@pytest.mark.parametrize(("mode", "reason"), [(ApprovalMode.REQUIRED, False), (ApprovalMode.OFF, True)])
def test_the_node_records_its_approval_mode_at_every_start(tmp_path: Path, mode: ApprovalMode, reason: bool) -> None:
    # Arrange
    policy = parse_node_policy(LISTS | {"approval": mode.value}, site="cleveland")

    # Act: two starts
    for _ in range(2):
        gov = open_governance("cleveland", state_dir=tmp_path, policy=policy)
        assert gov is not None
        assert (gov.approvals is None) is (mode is ApprovalMode.OFF)
        gov.close()

    # Assert
    entries, _ = read_log(tmp_path / "audit.sqlite")
    started = [e.fields for e in entries if e.action == "node.started"]
    assert [s["outcome"] for s in started] == [f"approval-{mode.value}"] * 2
    assert all(("reason" in s) is reason for s in started)
    if reason:
        assert "approval is off" in str(started[0]["reason"])


def test_a_node_built_in_process_without_a_policy_records_no_start(tmp_path: Path) -> None:
    gov = open_governance("cleveland", state_dir=tmp_path, policy=None)
    assert gov is not None and gov.approvals is None
    gov.close()
    entries, _ = read_log(tmp_path / "audit.sqlite")
    assert [e for e in entries if e.action == "node.started"] == []


def test_the_fingerprint_is_recomputed_only_when_the_files_change(tmp_path: Path) -> None:
    # Arrange
    data = tmp_path / "heart"
    data.mkdir()
    (data / "train.csv").write_text("a,label\n1,0\n")
    (data / "test.csv").write_text("a,label\n2,1\n")
    ds = DatasetConfig(name="heart", path=data)
    cache = FingerprintCache()

    # Act / Assert
    first = cache.current(ds)
    assert first == dataset_fingerprint(ds) and cache.current(ds) == first and cache.computed == 1
    (data / "train.csv").write_text("a,label\n1,0\n3,1\n")
    second = cache.current(ds)
    assert second != first and cache.computed == 2
    (data / "extra.csv").write_text("")  # a new file, however small, is a change too
    assert cache.current(ds) != second and cache.computed == 3
    assert dataset_fingerprints({"heart": ds}, ["heart", "lung"]) == {"heart": cache.current(ds)}


def test_a_missing_dataset_has_no_fingerprint_and_says_where(tmp_path: Path) -> None:
    ds = DatasetConfig(name="heart", path=tmp_path / "gone")
    with pytest.raises(DataError, match=r"dataset heart: .*gone does not exist"):
        FingerprintCache().current(ds)


def test_medfed_approvals_names_a_missing_site_before_asking_for_a_login(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from medfed.cli.main import main

    monkeypatch.delenv("MEDFED_TOKEN", raising=False)
    monkeypatch.setenv("MEDFED_TOKEN_FILE", str(tmp_path / "no-token"))
    assert main(["approvals", "list", "--users-db", str(tmp_path / "users.db")]) == 1
    assert "needs --config site.toml, or --approvals-db FILE and --site NAME" in capsys.readouterr().err
