"""Job specs parse into frozen records; every problem is reported at once, naming the key."""

import pytest

from medfed import ConfigError, parse_job_spec
from medfed.core.records import JobSpec, RobustSpec

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


# --- [robust] ------------------------------------------------------------------------------


def test_no_robust_table_means_no_robust_spec() -> None:
    assert parse_job_spec(GOOD).robust is None


def test_robust_table_parses_rule_options_and_detection() -> None:
    text = GOOD + '\n[robust]\nrule = "trimmed_mean"\nbyzantine = 1\ntrim_fraction = 0.25\n'

    spec = parse_job_spec(text)

    assert spec.robust == RobustSpec(rule="trimmed_mean", options={"byzantine": 1, "trim_fraction": 0.25})
    assert spec.robust.detect_anomalies  # on by default with a rule
    assert spec.robust.keeps_updates
    with pytest.raises(AttributeError):
        spec.robust.rule = "krum"  # type: ignore[misc]


def test_anomaly_detection_alone_keeps_the_weighted_mean() -> None:
    spec = parse_job_spec(GOOD + "\n[robust]\ndetect_anomalies = true\n")

    assert spec.robust == RobustSpec(rule=None, options={}, detect_anomalies=True)
    assert spec.robust.keeps_updates


def test_robust_rule_without_anomaly_detection() -> None:
    spec = parse_job_spec(GOOD + '\n[robust]\nrule = "median"\ndetect_anomalies = false\n')

    assert spec.robust is not None
    assert (spec.robust.rule, spec.robust.detect_anomalies) == ("median", False)


def test_robust_table_problems_are_listed_with_the_others() -> None:
    text = GOOD.replace("rounds = 3", 'rounds = "x"') + (
        '\n[robust]\nrule = 3\ndetect_anomalies = "yes"\nbyzantine = [1]\n'
    )

    with pytest.raises(ConfigError) as info:
        parse_job_spec(text, source_name="bad.toml")

    message = str(info.value)
    for fragment in (
        "bad.toml",
        "job.rounds must be int",
        "robust.rule must be str",
        "robust.detect_anomalies must be bool",
        "robust.byzantine must be a number",
    ):
        assert fragment in message


def test_robust_options_need_a_rule() -> None:
    with pytest.raises(ConfigError, match=r"robust options \[.byzantine.\] need robust\.rule"):
        parse_job_spec(GOOD + "\n[robust]\nbyzantine = 1\n")
    with pytest.raises(ConfigError, match=r"need robust\.rule"):
        RobustSpec(options={"byzantine": 1})


def test_robust_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"\[robust\] must be a table"):
        parse_job_spec('robust = "median"\n' + GOOD)
