"""Stored query results: every result type survives JSON (NaN cells, infinite medians) and prints
the same tables afterwards; a tampered or foreign record is refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from lifelines.datasets import load_lung
from rich.console import Console

from medfed.analytics import (
    AnswerHistory,
    DisclosurePolicy,
    Family,
    QueryKind,
    QueryResult,
    QuerySpec,
    SiteAnswer,
    TableResult,
    answer,
    combine,
    fit_cox,
    fit_glm,
    kaplan_meier,
)
from medfed.cli.query_views import print_result
from medfed.coordinator.queries import QueryOutcome, result_from_json, result_to_json, write_report
from medfed.core.errors import ValidationError

POLICY = DisclosurePolicy(min_cell=5, min_cohort=1, differencing_threshold=1)


@pytest.fixture(scope="module")
def sites() -> dict[str, pd.DataFrame]:
    lung = load_lung().dropna(subset=["inst"])
    return {f"s{i}": lung[lung["inst"] % 3 == i].reset_index(drop=True) for i in range(3)}


def _ask(sites: dict[str, pd.DataFrame]) -> Callable[[QuerySpec], dict[str, SiteAnswer]]:
    def ask(q: QuerySpec) -> dict[str, SiteAnswer]:
        rng = np.random.default_rng(0)
        return {s: answer(q, t, POLICY, AnswerHistory(), rng=rng)[0] for s, t in sites.items()}

    return ask


def _text(result: QueryResult) -> str:
    console = Console(record=True, width=200)
    print_result(result, console=console)
    return console.export_text()


def _results(sites: dict[str, pd.DataFrame]) -> dict[str, tuple[QuerySpec, QueryResult]]:
    ask = _ask(sites)
    specs = {
        "count": QuerySpec.count(("age>=78",)),  # a few patients per site: withheld cells
        "crosstab": QuerySpec(kind=QueryKind.CROSSTAB, columns=("sex", "ph.ecog"), levels=((1, 2), (0, 1, 2, 3))),
        "describe": QuerySpec(kind=QueryKind.DESCRIBE, columns=("age", "wt.loss")),
        "km": QuerySpec(kind=QueryKind.KAPLAN_MEIER, time="time", event="status", group="sex", levels=((1, 2),)),
        "glm": QuerySpec.glm(Family.POISSON, "status", ("age", "sex")),
        "cox": QuerySpec.cox("time", "status", ("age", "sex")),
    }
    out: dict[str, tuple[QuerySpec, QueryResult]] = {}
    for name, spec in specs.items():
        if name == "glm":
            out[name] = (spec, fit_glm(ask, spec))
        elif name == "cox":
            out[name] = (spec, fit_cox(ask, spec))
        elif name == "km":
            out[name] = (spec, kaplan_meier(ask, spec))
        else:
            out[name] = (spec, combine(spec, ask(spec)))
    return out


def test_every_result_type_round_trips_and_prints_the_same(sites: dict[str, pd.DataFrame]) -> None:
    results = _results(sites)
    count = results["count"][1]
    assert isinstance(count, TableResult) and np.isnan(np.concatenate(list(count.per_site.values()))).any()
    for name, (spec, result) in results.items():
        outcome = QueryOutcome(query=spec, result=result, refusals={"s9": "permission: refused"}, rounds=3)

        text = result_to_json(outcome)
        back = result_from_json(text)

        assert "NaN" not in text and "Infinity" not in text, name  # strict JSON
        assert back.query == spec and back.refusals == {"s9": "permission: refused"} and back.rounds == 3
        assert type(back.result) is type(result), name
        assert _text(back.result) == _text(result), name


@pytest.mark.parametrize(
    "mutate",
    [
        lambda raw: raw.update(version=2),
        lambda raw: raw["result"].update(type="pickle"),
        lambda raw: raw["query"].update(kind="median"),
        lambda raw: raw.pop("refusals"),
    ],
)
def test_a_foreign_or_tampered_record_is_refused(
    sites: dict[str, pd.DataFrame], mutate: Callable[[dict[str, Any]], object]
) -> None:
    spec = QuerySpec.count(("age>=60",))
    outcome = QueryOutcome(query=spec, result=combine(spec, _ask(sites)(spec)))
    raw = json.loads(result_to_json(outcome))
    mutate(raw)

    with pytest.raises(ValidationError, match="query result"):
        result_from_json(json.dumps(raw))


def test_the_report_names_the_sites_left_out(sites: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    spec, result = _results(sites)["km"]
    outcome = QueryOutcome(query=spec, result=result, refusals={"s9": "permission: <5 patients & refused"})

    write_report(outcome, "km by sex", tmp_path / "reports" / "km.html")

    page = (tmp_path / "reports" / "km.html").read_text()
    assert "<svg" in page and "Sites left out" in page and "&lt;5 patients &amp; refused" in page
