"""Job specs parse into frozen records; every problem is reported at once, naming the key."""

import pytest

from medfed import ConfigError, parse_job_spec
from medfed.core.records import JobSpec

GOOD = """
[job]
name = "heart"
task = "logistic_regression"
dataset = "heart"
rounds = 3
seed = 7

[strategy]
name = "FedYogi"
eta = 0.1

[task_options]
local_steps = 10
lr = 0.01

[rounds]
min_nodes = 2
deadline_s = 30
"""


def test_good_spec_parses_into_frozen_record() -> None:
    spec = parse_job_spec(GOOD, source_name="job.toml")
    assert isinstance(spec, JobSpec)
    assert (spec.name, spec.task, spec.dataset, spec.rounds, spec.seed) == (
        "heart",
        "logistic_regression",
        "heart",
        3,
        7,
    )
    assert spec.strategy.name == "fedyogi"
    assert spec.strategy.options == {"eta": 0.1}
    assert spec.task_options == {"local_steps": 10, "lr": 0.01}
    assert spec.policy.min_nodes == 2 and spec.policy.deadline_s == 30.0
    with pytest.raises(AttributeError):
        spec.rounds = 5  # type: ignore[misc]


def test_spec_hash_follows_the_text() -> None:
    a = parse_job_spec(GOOD)
    b = parse_job_spec(GOOD.replace("rounds = 3", "rounds = 4"))
    assert a.spec_hash != b.spec_hash
    assert a.spec_hash == parse_job_spec(GOOD).spec_hash


def test_malformed_toml_names_the_file_and_line() -> None:
    with pytest.raises(ConfigError, match=r"job\.toml: not valid TOML.*line 2"):
        parse_job_spec("[job]\nname = \n", source_name="job.toml")


def test_every_problem_is_listed_once() -> None:
    text = '[job]\nname = "x"\ntask = 3\nrounds = "many"\ncolour = "red"\n[rounds]\nmin_nodes = 0\n'
    with pytest.raises(ConfigError) as info:
        parse_job_spec(text, source_name="bad.toml")
    message = str(info.value)
    for fragment in (
        "missing job.dataset",
        "job.task must be str",
        "job.rounds must be int",
        "job.colour",
        "min_nodes",
    ):
        assert fragment in message


def test_rounds_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="rounds must be >= 1"):
        parse_job_spec(GOOD.replace("rounds = 3", "rounds = 0"))


def test_nested_values_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"task_options\.layers must be a number"):
        parse_job_spec(GOOD.replace("lr = 0.01", "lr = 0.01\nlayers = [1, 2]"))
