"""Configuration of federated queries: a site's ``[disclosure]`` table and a job's ``[query]`` table."""

from __future__ import annotations

import json

import pytest

from integration.support import Federation
from medfed.analytics import DisclosurePolicy, DPRequest, Family, Mechanism, QueryKind, QuerySpec
from medfed.cli.config import load_node_config
from medfed.coordinator.queries import query_job_toml, query_spec
from medfed.core.config import parse_job_spec
from medfed.core.errors import ConfigError


def test_site_toml_disclosure_sets_the_nodes_policy(fed: Federation) -> None:
    path = fed.site_toml("alpha")
    path.write_text(path.read_text() + "\n[disclosure]\nmin_cell = 11\nmin_cohort = 20\nkm_time_grain = 7\n")

    policy = load_node_config(path).settings.disclosure

    assert policy == DisclosurePolicy(min_cell=11, min_cohort=20, km_time_grain=7.0)


def test_without_disclosure_the_defaults_apply(fed: Federation) -> None:
    assert load_node_config(fed.site_toml("beta")).settings.disclosure == DisclosurePolicy()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("min_cel = 3", "unknown key disclosure.min_cel"),
        ('min_cell = "5"', "disclosure.min_cell must be int"),
        ("allow_dp = 1", "disclosure.allow_dp must be bool"),
        ("min_cell = 0", "min_cell must be an integer >= 1"),
        ("require_dp = true\nallow_dp = false", "require_dp needs allow_dp"),
    ],
)
def test_a_bad_disclosure_table_names_the_file_and_the_key(fed: Federation, table: str, message: str) -> None:
    path = fed.site_toml("gamma")
    path.write_text(path.read_text() + f"\n[disclosure]\n{table}\n")

    with pytest.raises(ConfigError) as err:
        load_node_config(path)

    assert str(path) in str(err.value) and message in str(err.value)


QUERY_JOB = '[job]\nname = "q"\ndataset = "lung"\n\n[query]\nkind = "count"\nwhere = ["age >= 60", "sex == 2"]\n'


def test_a_query_job_needs_no_task_and_its_criteria_may_be_text() -> None:
    spec = parse_job_spec(QUERY_JOB, source_name="q.toml")

    query = query_spec(spec)

    assert spec.query is not None and json.loads(spec.query)["kind"] == "count"
    assert query.kind is QueryKind.COUNT and [str(c) for c in query.where] == ["age>=60", "sex==2"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("\n[privacy]\nnoise_multiplier = 1.0\n", "[privacy] does not apply to a query job"),
        ("when = 2024-01-01\n", "[query] holds a value JSON cannot carry"),
    ],
)
def test_a_query_job_refuses_training_tables_and_non_json_values(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"q\.toml") as err:
        parse_job_spec(QUERY_JOB + extra, source_name="q.toml")
    assert message in str(err.value)


def test_a_malformed_query_is_a_config_error_listing_each_problem() -> None:
    spec = parse_job_spec(QUERY_JOB.replace('"count"', '"mode"').replace('"sex == 2"', '"sex ~ 2"'))

    with pytest.raises(ConfigError) as err:
        query_spec(spec, source_name="q.toml")

    assert "q.toml" in str(err.value) and "sex ~ 2" in str(err.value)


def test_a_training_job_is_unchanged() -> None:
    text = '[job]\nname = "t"\ntask = "logistic_regression"\ndataset = "heart"\nrounds = 2\n'
    assert parse_job_spec(text).query is None
    with pytest.raises(ConfigError, match=r"missing job\.task"):
        parse_job_spec('[job]\nname = "t"\ndataset = "heart"\nrounds = 2\n')


@pytest.mark.parametrize(
    "spec",
    [
        QuerySpec.count(("age >= 60", "sex == 2"), dp=DPRequest(mechanism=Mechanism.GAUSSIAN, epsilon=0.5, delta=1e-6)),
        QuerySpec(kind=QueryKind.HISTOGRAM, columns=("age",), bins=(30.0, 50.0, 70.0, 90.0)),
        QuerySpec(kind=QueryKind.CROSSTAB, columns=("sex", "site"), levels=((1.0, 2.0), ("a", 'b "quoted"'))),
        QuerySpec(kind=QueryKind.KAPLAN_MEIER, time="time", event="status", group="sex", levels=((1.0, 2.0),)),
        QuerySpec.glm(Family.POISSON, "status", ("age", "sex"), ("ph.ecog != 3",)),
        QuerySpec.cox("time", "status", ("age",)).replace(beta=(0.25,)),
    ],
)
def test_the_python_api_writes_a_job_file_that_reads_back_as_the_same_query(spec: QuerySpec) -> None:
    text = query_job_toml(spec, name="api", dataset="lung", min_nodes=2, deadline_s=30)

    job = parse_job_spec(text, source_name="api")

    assert job.dataset == "lung" and job.policy.min_nodes == 2 and job.policy.deadline_s == 30.0
    assert query_spec(job) == spec
