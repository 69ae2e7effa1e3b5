"""Federated analytics in the HTML report: KM curves with confidence bands, regression tables.

Self-contained like :mod:`medfed.report.html`: plots are inline SVG rendered by matplotlib, no
scripts, no CDN. These functions only render text; the caller writes the file (with the one
atomic writer, as :func:`medfed.report.html.write_job_report` does).
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from medfed.analytics import DescribeResult, KMResult, QueryResult, RegressionResult, TableResult

_CSS = """
body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}
th{background:#eee}td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:90%}
@media print{body{margin:0}}
"""
_STYLES = ("-", "--", ":", "-.")


def km_plot_svg(result: KMResult, *, time_unit: str = "days") -> str:
    """Kaplan–Meier curves as steps with shaded log(−log) bands, as an inline SVG string.

    Groups differ by line style as well as colour, so the plot reads in black and white.
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, curve in enumerate(result.curves):
        (line,) = ax.step(
            curve.timeline, curve.survival, where="post", linestyle=_STYLES[i % len(_STYLES)],
            label=f"{curve.label} (n={int(curve.at_risk[0])})",
        )  # fmt: skip
        ax.fill_between(curve.timeline, curve.ci_lower, curve.ci_upper, step="post", alpha=0.2, color=line.get_color())
    level = round(100 * (1 - result.alpha))
    title = f"Kaplan–Meier estimate with {level}% CI ({len(result.sites)} sites pooled)"
    ax.set(xlabel=f"time ({time_unit})", ylabel="survival probability", ylim=(0, 1.02), title=title)
    ax.legend()
    fig.tight_layout()
    buf = io.StringIO()
    # No creator URL or date in the file: nothing that looks like an external reference, same bytes each run.
    fig.savefig(buf, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def frame_html(frame: pd.DataFrame, *, digits: int = 4) -> str:
    """A DataFrame as an escaped HTML table (numbers to ``digits`` significant figures)."""

    def cell(value: object) -> str:
        if not isinstance(value, float | np.floating):
            return str(value)
        x = float(value)
        if not np.isfinite(x):
            return "—" if np.isnan(x) else ("not reached" if x > 0 else "-inf")
        return f"{x:.{digits}g}" if x == 0 or abs(x) >= 1e-4 else f"{x:.2e}"

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [frame.index.name or "", *frame.columns])
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in (idx, *row)) + "</tr>"
        for idx, row in zip(frame.index, frame.itertuples(index=False), strict=True)
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def _regression(result: RegressionResult) -> list[str]:
    what = {"cox": "Cox proportional hazards, stratified by site (Efron ties)"}.get(
        result.model, f"{result.model} GLM by federated Newton–Raphson"
    )
    facts = f"n = {result.n}; log-likelihood {result.loglik:.4f}; {result.iterations} iterations; "
    facts += f"{len(result.sites)} sites" + (f"; {result.events} events" if result.model == "cox" else "")
    return [f"<p>{html.escape(what)}. {html.escape(facts)}.</p>", frame_html(result.summary())]


def _table(result: TableResult) -> list[str]:
    parts = [frame_html(result.frame())]
    if result.hidden.any():
        parts.append(
            f"<p class='note'>“≥” marks cells where some sites withheld a count under {result.min_cell} "
            "(small-cell suppression): the combined figure is what was released.</p>"
        )
    if result.noised:
        parts.append("<p class='note'>Counts carry differential-privacy noise added at each site.</p>")
    per_site = pd.DataFrame({s: result.frame(s).to_numpy().ravel() for s in result.per_site})
    if len(result.row_labels) * len(result.col_labels) == 1:
        per_site.index = pd.Index(["count"], name="site")
        parts += ["<h3>Per site</h3>", frame_html(per_site)]
    return parts


def _section(name: str, result: QueryResult, time_unit: str) -> list[str]:
    parts = [f"<h2>{html.escape(name)}</h2>"]
    if isinstance(result, KMResult):
        parts += [km_plot_svg(result, time_unit=time_unit), frame_html(result.summary())]
        if result.logrank is not None:
            lr = result.logrank
            parts.append(f"<p>Log-rank test: χ² = {lr.statistic:.3f}, df = {lr.df}, p = {lr.p_value:.4g}.</p>")
    elif isinstance(result, RegressionResult):
        parts += _regression(result)
    elif isinstance(result, TableResult):
        parts += _table(result)
    elif isinstance(result, DescribeResult):
        parts += ["<h3>All sites</h3>", frame_html(result.combined)]
        for site, frame in result.per_site.items():
            parts += [f"<h3>{html.escape(site)}</h3>", frame_html(frame)]
    return parts


def render_analytics_section(results: Mapping[str, QueryResult], *, time_unit: str = "days") -> str:
    """An HTML fragment with one subsection per named result, in order."""
    parts: list[str] = []
    for name, result in results.items():
        parts += _section(name, result, time_unit)
    return "\n".join(parts)


def render_analytics_page(title: str, results: Mapping[str, QueryResult], *, time_unit: str = "days") -> str:
    """A whole self-contained HTML page of analytics results."""
    head = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
    body = render_analytics_section(results, time_unit=time_unit)
    return f"{head}<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>"
