"""A node's local policy: parsing with every problem collected, checks that deny by default, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medfed.core.errors import ConfigError, PermissionDenied
from medfed.security.node_policy import JobFacts, parse_node_policy

GOOD = {
    "researchers": ["alice", "bob"],
    "purposes": ["cardiology"],
    "tasks": ["logistic_regression"],
    "datasets": ["heart", "lung"],
    "max_rounds": 20,
    "dataset_researchers": {"lung": ["bob"]},
}


def job(**kw: object) -> JobFacts:
    base = dict(job_id="j1", name="n", researcher="alice", purpose="cardiology", task="logistic_regression",
                dataset="heart", rounds=5, spec_hash="0" * 64, spec_text="")  # fmt: skip
    return JobFacts(**{**base, **kw})  # type: ignore[arg-type]


def test_allowed_job_passes_and_each_rule_refuses() -> None:
    policy = parse_node_policy(GOOD, site="cleveland")
    policy.check(job())
    for change, words in (
        ({"researcher": "eve"}, "researcher 'eve'"),
        ({"purpose": "sales"}, "purpose 'sales'"),
        ({"task": "mlp"}, "task 'mlp'"),
        ({"dataset": "notes"}, "dataset 'notes'"),
        ({"rounds": 21}, "21 rounds exceed"),
        ({"dataset": "lung"}, "may not use dataset 'lung'"),
    ):
        with pytest.raises(PermissionDenied, match=words):
            policy.check(job(**change))


def test_every_violation_is_named_at_once() -> None:
    policy = parse_node_policy(GOOD, site="cleveland")
    assert len(policy.violations(job(researcher="eve", purpose="x", task="y", dataset="z"))) == 4


def test_wildcard_and_empty_lists() -> None:
    policy = parse_node_policy({**GOOD, "researchers": ["*"], "purposes": []}, site="s")
    with pytest.raises(PermissionDenied, match="purpose"):
        policy.check(job(researcher="anyone"))
    assert len(policy.violations(job(researcher="anyone"))) == 1  # an empty list admits nobody
    parse_node_policy({**GOOD, "researchers": ["*"]}, site="s").check(job(researcher="anyone"))


def test_parse_collects_every_problem() -> None:
    with pytest.raises(ConfigError) as err:
        parse_node_policy({"researchers": "alice", "tasks": [1], "max_rounds": 0, "require_approval": False,
                           "colour": "red", "datasets": ["heart"], "dataset_researchers": {"lung": ["x"]}},
                          site="s")  # fmt: skip
    message = str(err.value)
    for words in ("unknown keys ['colour']", "purposes is required", "researchers must be a list", "tasks must be",
                  "max_rounds must be", "require_approval must be true", "'lung' is not in datasets"):  # fmt: skip
        assert words in message, words
    assert message.startswith("site.toml [policy]: ")


toml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from([*GOOD, "require_approval", "other"]), toml_values, max_size=7))
def test_fuzzed_tables_give_a_policy_or_a_config_error(table: dict[str, object]) -> None:
    try:
        policy = parse_node_policy(table, site="s")
    except ConfigError:
        return
    policy.violations(job())
