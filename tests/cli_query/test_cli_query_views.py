"""Query results as terminal tables: coefficients with ratios and CIs, counts with suppression."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from medfed.analytics import (
    AnswerHistory,
    DisclosurePolicy,
    Family,
    QueryKind,
    QuerySpec,
    SiteAnswer,
    answer,
    combine,
    fit_glm,
    kaplan_meier,
)
from medfed.cli.query_views import print_result, result_tables
from medfed.core.errors import PermissionDenied


def _sites() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(5)
    out = {}
    for site, n in (("north", 120), ("south", 80)):
        age = rng.uniform(30, 90, n)
        sick = (rng.uniform(size=n) < 1 / (1 + np.exp(-(age - 60) / 10))).astype(float)
        out[site] = pd.DataFrame({"age": age, "sick": sick, "time": rng.exponential(100, n).round(), "dead": sick})
    out["tiny"] = out["south"].iloc[:3]
    return out


def _render(result: object) -> str:
    console = Console(record=True, width=200)
    print_result(result, console=console)  # type: ignore[arg-type]
    return console.export_text()


def test_glm_table_reads_like_a_statistics_package() -> None:
    spec = QuerySpec.glm(Family.LOGISTIC, "sick", ("age",))
    sites = {k: v for k, v in _sites().items() if k != "tiny"}
    histories = {s: AnswerHistory() for s in sites}

    def ask(q: QuerySpec) -> dict[str, SiteAnswer]:
        out = {}
        for s, t in sites.items():
            out[s], histories[s] = answer(q, t, DisclosurePolicy(), histories[s], rng=np.random.default_rng())
        return out

    text = _render(fit_glm(ask, spec))
    for word in ("logistic GLM", "n=200", "covariate", "coef", "std err", "P>|z|", "OR", "Intercept", "age"):
        assert word in text


def test_counts_show_suppressed_sites_and_the_refusal_is_not_silent() -> None:
    spec = QuerySpec.count(("age>85",))
    answers = {s: answer(spec, t, DisclosurePolicy(), AnswerHistory(), rng=np.random.default_rng())[0]
               for s, t in _sites().items()}  # fmt: skip
    text = _render(combine(spec, answers))
    assert "per site" in text and "tiny" in text and "<5" in text
    with pytest.raises(PermissionDenied):
        answer(QuerySpec(kind=QueryKind.DESCRIBE, columns=("age",)), _sites()["tiny"], DisclosurePolicy(),
               AnswerHistory(), rng=np.random.default_rng())  # fmt: skip


def test_km_and_describe_tables() -> None:
    sites = {k: v for k, v in _sites().items() if k != "tiny"}

    def ask(q: QuerySpec) -> dict[str, SiteAnswer]:
        return {s: answer(q, t, DisclosurePolicy(), AnswerHistory(), rng=np.random.default_rng())[0]
                for s, t in sites.items()}  # fmt: skip

    km = kaplan_meier(ask, QuerySpec(kind=QueryKind.KAPLAN_MEIER, time="time", event="dead"))
    assert "Kaplan–Meier, 2 sites" in _render(km) and "median" in _render(km)
    spec = QuerySpec(kind=QueryKind.DESCRIBE, columns=("age",))
    tables = result_tables(combine(spec, ask(spec)))
    assert [t.title for t in tables] == ["describe: all sites", "site north", "site south"]
