"""The analytics report: KM curves with CI bands inline, regression and count tables, escaped."""

from __future__ import annotations

import numpy as np
import pandas as pd
from lifelines.datasets import load_lung

from medfed.analytics import (
    AnswerHistory,
    DisclosurePolicy,
    QueryKind,
    QueryResult,
    QuerySpec,
    SiteAnswer,
    answer,
    combine,
    fit_cox,
    kaplan_meier,
)
from medfed.report.analytics_report import render_analytics_page, render_analytics_section


def _results() -> dict[str, QueryResult]:
    lung = load_lung().dropna(subset=["inst"])
    # Two sites (institution 1 and the rest) under the default policy: the real node-side path.
    sites = {"inst <1>": lung[lung["inst"] == 1], "others & co": lung[lung["inst"] != 1]}
    histories = {s: AnswerHistory() for s in sites}
    rng = np.random.default_rng(0)

    def ask(spec: QuerySpec) -> dict[str, SiteAnswer]:
        out = {}
        for s, t in sites.items():
            out[s], histories[s] = answer(spec, t, DisclosurePolicy(), histories[s], rng=rng)
        return out

    km_spec = QuerySpec(kind=QueryKind.KAPLAN_MEIER, time="time", event="status", group="sex", levels=((1.0, 2.0),))
    count = QuerySpec.count(("age>80",))
    return {
        "Survival by sex": kaplan_meier(ask, km_spec),
        "Cox <model>": fit_cox(ask, QuerySpec.cox("time", "status", ("age", "sex"))),
        "Patients over 80": combine(count, ask(count)),
    }


def test_page_is_self_contained_with_km_bands_and_tables() -> None:
    page = render_analytics_page("Lung <study>", _results())
    assert page.count("<svg") == 1 and "<script" not in page
    assert "https://" not in page and "http://" not in page.replace("http://www.w3.org/", "")
    assert "Lung &lt;study&gt;" in page and "Cox &lt;model&gt;" in page and "inst &lt;1&gt;" in page
    assert "Log-rank test" in page and "HR" in page and "Efron" in page
    # The CI bands are drawn: one filled path per group besides the step lines.
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert svg.count("fill-opacity") >= 2 or svg.count("opacity: 0.2") >= 2


def test_suppressed_cells_are_flagged_not_guessed() -> None:
    lung = load_lung().dropna(subset=["inst"])
    spec = QuerySpec.count(("age>80",))  # 2 patients: under 5 at both sites
    answers = {
        s: answer(spec, t, DisclosurePolicy(), AnswerHistory(), rng=np.random.default_rng())[0]
        for s, t in {"a": lung.iloc[:100], "b": lung.iloc[100:]}.items()
    }
    html = render_analytics_section({"old": combine(spec, answers)})
    assert "&lt;5" in html and "≥" in html and "small-cell suppression" in html
    assert pd.Series([a["counts"][0] for a in answers.values()]).isna().any()


def test_describe_and_crosstab_sections() -> None:
    lung = load_lung().dropna(subset=["inst"])
    sites = {"a": lung.iloc[:120], "b": lung.iloc[120:]}
    rng = np.random.default_rng(0)
    desc = QuerySpec(kind=QueryKind.DESCRIBE, columns=("age",))
    tab = QuerySpec(kind=QueryKind.CROSSTAB, columns=("sex", "ph.ecog"), levels=((1.0, 2.0), (0.0, 1.0, 2.0)))
    results: dict[str, QueryResult] = {
        name: combine(
            spec, {s: answer(spec, t, DisclosurePolicy(), AnswerHistory(), rng=rng)[0] for s, t in sites.items()}
        )
        for name, spec in (("Age", desc), ("Sex by ECOG", tab))
    }
    html = render_analytics_section(results)
    assert html.count("<table>") == 4  # describe: all sites + 2 sites; crosstab: combined
    assert f"{lung['age'].mean():.4g}" in html and "<th>0.0</th>" in html and "<svg" not in html
