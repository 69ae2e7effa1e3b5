"""Dataset selectors: job specs select by name or by tags; each node resolves a tag selector against
its own declarations (exactly one match, or a refusal naming the candidates), and governance judges
the resolved name against the spec's selector."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medfed.core.config import parse_job_spec
from medfed.core.errors import ConfigError, DataError, PermissionDenied, ValidationError
from medfed.core.params import Parameters
from medfed.core.records import PrivacySpec, ResultMessage, ResultStatus, TaskKind, TaskMessage
from medfed.core.selectors import DatasetSelector
from medfed.data.sources import parse_dataset
from medfed.learn.base import TabularData, Task
from medfed.node.governance import job_facts, open_governance
from medfed.node.ledger import PrivacyLedger
from medfed.node.middleware import NodeContext, build_chain
from medfed.node.privacy import privacy_budget
from medfed.node.runtime import DatasetConfig
from medfed.node.selection import resolve_dataset, select_dataset
from medfed.security.audit import read_log
from medfed.security.audit_events import AuditAction

HEAD = '[job]\nname = "sel"\ntask = "logistic_regression"\nrounds = 2\n'
BY_TAGS = HEAD + 'dataset = { tags = ["Cardiology", "adult"] }\n'


def _problems(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_job_spec(HEAD + text, source_name="job.toml")
    return str(info.value)


# --- the spec --------------------------------------------------------------------------------


def test_a_name_reads_as_before_and_tags_become_one_canonical_label() -> None:
    by_name = parse_job_spec(HEAD + 'dataset = "heart"\n')
    assert by_name.dataset == "heart" and by_name.selector == DatasetSelector.by_name("heart")
    by_tags = parse_job_spec(BY_TAGS)
    assert by_tags.dataset == "tags:adult,cardiology"
    assert by_tags.selector.tags == ("adult", "cardiology") and by_tags.selector.by_tag
    assert DatasetSelector.from_label(by_tags.dataset) == by_tags.selector


def test_every_problem_of_a_selector_is_listed_once() -> None:
    text = _problems('dataset = { tags = [], name = "x" }\ndatasets = ["a"]\n')
    assert "3 problem(s)" in text
    assert "unknown key job.datasets" in text and "dataset = { tags = [...] }" in text
    assert "unknown key job.dataset.name" in text and "a name goes in dataset" in text
    assert "job.dataset.tags must be a non-empty list" in text


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("dataset = 3\n", "must be a name"),
        ('dataset = "tags:adult"\n', "not starting with 'tags:'"),
        ('dataset = " heart"\n', "no surrounding spaces"),
        ('dataset = { tags = ["adult", "ADULT"] }\n', "lists a tag twice"),
        ('dataset = { tags = ["a!b"] }\n', "not lower-case tokens"),
        ("dataset = { tags = [1] }\n", "non-empty list of non-empty strings"),
        ('dataset = { tags = "adult" }\n', "non-empty list of non-empty strings"),
    ],
)
def test_bad_selectors_are_refused_naming_the_key(line: str, expected: str) -> None:
    text = _problems(line)
    assert "job.toml" in text and "1 problem(s)" in text and expected in text


def test_a_malformed_label_is_refused() -> None:
    for label in ("tags:", "tags:a!"):
        with pytest.raises(ConfigError):
            DatasetSelector.from_label(label)
    with pytest.raises(ConfigError, match="exactly one"):
        DatasetSelector()


# --- resolution at a site ----------------------------------------------------------------------


def _declared(tmp_path: Path, name: str, tags: list[str]) -> DatasetConfig:
    table = {
        "format": "csv",
        "path": f"{name}.csv",
        "tags": tags,
        "columns": [{"name": "patient_id", "type": "string"}],
    }
    decl = parse_dataset(name, table, base=tmp_path, where="site.toml")
    return DatasetConfig(name=name, path=decl.path, decl=decl)


def _site(tmp_path: Path, **tags: list[str]) -> dict[str, DatasetConfig]:
    datasets = {name: _declared(tmp_path, name, t) for name, t in tags.items()}
    datasets["legacy"] = DatasetConfig(name="legacy", path=tmp_path)  # a CSV directory: no tags
    return datasets


def _no_task(name: str) -> Task:
    raise AssertionError(f"the selection tests run no task ({name})")


def _task(spec: str, dataset: str, **changes: object) -> TaskMessage:
    task = TaskMessage(
        task_id="t1", job_id="j1", round=1, kind=TaskKind.FIT, task="logistic_regression", dataset=dataset, seed=0,
        config={}, parameters=Parameters.from_numpy({"w": np.zeros(1, np.float32)}), job_rounds=2, spec_toml=spec,
        owner="alice",
    )  # fmt: skip
    return replace(task, **changes)  # type: ignore[arg-type]


def test_a_site_resolves_tags_to_its_own_dataset(tmp_path: Path) -> None:
    site = _site(tmp_path, cleveland_heart=["cardiology", "Adult", "uci"], kids=["cardiology", "paediatric"])
    task = _task(BY_TAGS, "tags:adult,cardiology")
    assert resolve_dataset(task, "cleveland", site) == "cleveland_heart"
    by_name = _task(HEAD + 'dataset = "kids"\n', "kids")
    assert resolve_dataset(by_name, "cleveland", site) == "kids"  # a name passes through unchanged


def test_no_match_and_several_matches_are_refused_with_the_candidates(tmp_path: Path) -> None:
    task = _task(BY_TAGS, "tags:adult,cardiology")
    with pytest.raises(DataError, match=r"site 'zurich' has no datasets tagged \['adult', 'cardiology'\]"):
        resolve_dataset(task, "zurich", _site(tmp_path, kids=["cardiology", "paediatric"]))
    two = _site(tmp_path, heart_a=["adult", "cardiology"], heart_b=["cardiology", "adult", "icu"])
    with pytest.raises(DataError, match=r"has 2 datasets tagged .*\['heart_a', 'heart_b'\].*exactly one per site"):
        resolve_dataset(task, "va", two)


def test_a_task_whose_label_disagrees_with_its_spec_is_refused(tmp_path: Path) -> None:
    site = _site(tmp_path, heart=["adult", "cardiology"], secret=["genomics"])
    with pytest.raises(PermissionDenied, match="the task selects 'tags:genomics' but its spec selects"):
        resolve_dataset(_task(BY_TAGS, "tags:genomics"), "s", site)
    with pytest.raises(ValidationError, match="dataset selector 'tags:'"):
        resolve_dataset(_task(BY_TAGS, "tags:"), "s", site)


def test_a_refused_selector_is_recorded_in_the_sites_audit_log(tmp_path: Path) -> None:
    site = _site(tmp_path, heart=["adult", "cardiology"])
    governance = open_governance("s", state_dir=tmp_path / "state", policy=None)
    assert governance is not None
    ctx = NodeContext(site="s", datasets=site, task_loader=_no_task, governance=governance)
    with pytest.raises(PermissionDenied):
        select_dataset(_task(BY_TAGS, "tags:genomics"), ctx, lambda task, ctx: pytest.fail("not reached"))
    governance.close()
    entries, _ = read_log(tmp_path / "state" / "audit.sqlite")
    refused = [e.fields for e in entries if e.action == AuditAction.TASK_REFUSED.value]
    assert refused == [{"site": "s", "job_id": "j1", "round": 1, "outcome": "bad-spec"}]


def test_the_chain_after_selection_sees_the_resolved_name(tmp_path: Path) -> None:
    site = _site(tmp_path, heart=["adult", "cardiology"])
    ctx = NodeContext(site="s", datasets=site, task_loader=_no_task)
    seen: list[str] = []

    def handler(task: TaskMessage, ctx: NodeContext) -> ResultMessage:
        seen.append(task.dataset)
        return ResultMessage(task_id=task.task_id, job_id=task.job_id, round=1, site="s", status=ResultStatus.OK)

    assert select_dataset(_task(BY_TAGS, "tags:adult,cardiology"), ctx, handler).ok
    assert seen == ["heart"]


# --- governance judges the resolved dataset ----------------------------------------------------


def test_governance_facts_name_the_sites_dataset_and_check_its_tags() -> None:
    facts = job_facts(_task(BY_TAGS, "heart"), tags=("cardiology", "adult"))
    assert facts.dataset == "heart" and facts.spec_hash == hashlib.sha256(BY_TAGS.encode()).hexdigest()
    with pytest.raises(PermissionDenied, match=r"dataset 'heart' \(spec: 'tags:adult,cardiology'\)"):
        job_facts(_task(BY_TAGS, "heart"), tags=("cardiology",))
    by_name = HEAD + 'dataset = "heart"\n'
    assert job_facts(_task(by_name, "heart")).dataset == "heart"
    with pytest.raises(PermissionDenied, match="dataset 'other'"):
        job_facts(_task(by_name, "other"), tags=("adult", "cardiology"))


# --- properties ----------------------------------------------------------------------------------

_TAGS = st.lists(
    st.from_regex(r"[a-z0-9][a-z0-9._-]{0,10}[a-z0-9]", fullmatch=True), min_size=1, max_size=5, unique=True
)


@given(tags=_TAGS, extra=_TAGS)
@settings(max_examples=200, deadline=None)
def test_a_label_stands_for_its_selector_and_order_case_and_extra_tags_do_not_matter(
    tags: list[str], extra: list[str]
) -> None:
    selector = DatasetSelector.by_tags(tags)
    assert DatasetSelector.from_label(selector.label) == selector
    assert DatasetSelector.by_tags([t.upper() for t in reversed(tags)]) == selector
    assert selector.matches("any", [*extra, *(t.upper() for t in tags)])
    missing = [t for t in tags if t not in extra]
    assert selector.matches("any", extra) is (not missing)
    spec = parse_job_spec(HEAD + f"dataset = {{ tags = {[t.title() for t in tags]!r} }}\n".replace("'", '"'))
    assert spec.selector == selector


def test_the_privacy_ledger_charges_the_sites_own_dataset_of_a_tag_selected_job(tmp_path: Path) -> None:
    # Arrange: a real ledger with a budget on the site's name for the tagged dataset
    site = _site(tmp_path, dm_fhir=["adult", "cardiology"])
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("dm_fhir", epsilon=50.0, delta=1e-4)
    x = np.zeros((40, 2), np.float32)
    data = TabularData(x_train=x, y_train=np.zeros(40, np.float32), x_test=x[:4], y_test=np.zeros(4, np.float32),
                       feature_names=("a", "b"))  # fmt: skip
    ctx = NodeContext(site="s", datasets=site, task_loader=_no_task, data_loader=lambda cfg: data, ledger=ledger)

    def trained(task: TaskMessage, ctx: NodeContext) -> ResultMessage:
        return ResultMessage(task_id=task.task_id, job_id=task.job_id, round=1, site="s", status=ResultStatus.OK)

    chain = build_chain(trained, [select_dataset, privacy_budget])
    task = _task(BY_TAGS, "tags:adult,cardiology", privacy=PrivacySpec(noise_multiplier=1.1, clip_norm=1.0),
                 config={"local_steps": 2, "batch_size": 8})  # fmt: skip

    # Act
    result = chain(task, ctx)

    # Assert: reserved and spent on dm_fhir, the name the site's admin budgeted
    assert result.ok
    job = ledger.job("dm_fhir", "j1")
    assert job is not None and job.epsilon_spent > 0 and job.steps == 2
    status = ledger.status("dm_fhir")
    assert status is not None and status.epsilon_used > 0
    ledger.close()
