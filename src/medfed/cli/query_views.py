"""Render federated query results in the terminal as rich tables, like a statistics package."""

from __future__ import annotations

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from medfed.analytics import DescribeResult, KMResult, QueryResult, RegressionResult, TableResult


def _num(value: object, digits: int = 4) -> str:
    if not isinstance(value, float | np.floating):
        return str(value)
    x = float(value)
    if not np.isfinite(x):
        return "—" if np.isnan(x) else ("not reached" if x > 0 else "-inf")
    return f"{x:.{digits}g}" if x == 0 or abs(x) >= 1e-4 else f"{x:.2e}"


def frame_table(frame: pd.DataFrame, *, title: str, first: str = "") -> Table:
    """A DataFrame as a rich table; numbers right-aligned to 4 significant figures."""
    table = Table(title=title)
    table.add_column(first or str(frame.index.name or ""))
    for col in frame.columns:
        table.add_column(str(col), justify="right")
    for idx, row in zip(frame.index, frame.itertuples(index=False), strict=True):
        table.add_row(str(idx), *(_num(v) for v in row))
    return table


def regression_table(result: RegressionResult) -> Table:
    kind = "Cox PH, stratified by site" if result.model == "cox" else f"{result.model} GLM"
    extra = f", {result.events} events" if result.model == "cox" else ""
    title = f"{kind}: n={result.n}{extra}, {len(result.sites)} sites, log-lik {result.loglik:.3f}"
    return frame_table(result.summary(), title=title, first="covariate")


def count_tables(result: TableResult) -> list[Table]:
    """The combined table, plus one row per site for a plain count."""
    combined = Table(title=f"{result.kind.value}: all sites" + (" (DP noise)" if result.noised else ""))
    combined.add_column("")
    for col in result.col_labels:
        combined.add_column(col, justify="right")
    for label, row in zip(result.row_labels, result.frame().itertuples(index=False), strict=True):
        combined.add_row(label, *row)
    tables = [combined]
    if len(result.row_labels) * len(result.col_labels) == 1:
        sites = Table(title=f"per site (under {result.min_cell} shown as <{result.min_cell})")
        sites.add_column("site")
        sites.add_column("count", justify="right")
        for site in result.per_site:
            sites.add_row(site, str(result.frame(site).iloc[0, 0]))
        tables.append(sites)
    return tables


def km_table(result: KMResult) -> Table:
    title = f"Kaplan–Meier, {len(result.sites)} sites pooled"
    if result.logrank is not None:
        lr = result.logrank
        title += f"; log-rank χ²={lr.statistic:.3f}, df={lr.df}, p={lr.p_value:.4g}"
    return frame_table(result.summary(), title=title, first="group")


def result_tables(result: QueryResult) -> list[Table]:
    """Everything worth showing about one result, as rich tables."""
    if isinstance(result, RegressionResult):
        return [regression_table(result)]
    if isinstance(result, TableResult):
        return count_tables(result)
    if isinstance(result, KMResult):
        return [km_table(result)]
    if isinstance(result, DescribeResult):
        per_site = [frame_table(f, title=f"site {s}", first="column") for s, f in result.per_site.items()]
        return [frame_table(result.combined, title="describe: all sites", first="column"), *per_site]
    raise TypeError(f"no view for {type(result).__name__}")


def print_result(result: QueryResult, *, console: Console | None = None) -> None:
    out = console or Console()
    for table in result_tables(result):
        out.print(table)
