"""Render job views in the terminal: status tables, per-round metrics and a live progress bar."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medfed.core.errors import JobError

console = Console()

FINISHED = ("completed", "failed", "cancelled")


def fit_rounds(view: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in view.get("round_metrics", []) if r["kind"] == "fit"]


def final_round(view: dict[str, Any]) -> dict[str, Any] | None:
    finals = [r for r in view.get("round_metrics", []) if r["kind"] == "evaluate"]
    return finals[-1] if finals else None


def model_curve(view: dict[str, Any], metric: str = "accuracy") -> list[tuple[int, float]]:
    """(model version, mean over sites of ``eval_<metric>``): round r's fit tasks evaluate model
    r-1 before training; the final evaluate round evaluates the last model."""
    points = []
    for r in view.get("round_metrics", []):
        value = r["aggregated"].get(f"mean/eval_{metric}")
        if value is not None:
            points.append((int(r["round"]) - 1, float(value)))
    return points


def print_job(view: dict[str, Any], *, detail: bool) -> None:
    state = view["state"]
    colour = {"completed": "green", "failed": "red", "cancelled": "yellow"}.get(state, "cyan")
    console.print(
        f"job [bold]{view['job_id']}[/] {view['name']!r} by {view['owner']}: [{colour}]{state}[/] "
        f"— round {view['completed_round']}/{view['rounds']}"
    )
    if view.get("error"):
        console.print(f"[red]error:[/] {view['error']}")
    if not detail:
        return
    table = Table(title="Global model per round (mean over sites)")
    for col in ("model after round", "accuracy", "AUC", "loss", "sites ok", "seconds"):
        table.add_column(col, justify="right")
    for r in view.get("round_metrics", []):
        agg = r["aggregated"]
        table.add_row(
            str(int(r["round"]) - 1),
            _fmt(agg.get("mean/eval_accuracy")),
            _fmt(agg.get("mean/eval_auc")),
            _fmt(agg.get("mean/eval_loss")),
            str(int(agg.get("sites_ok", 0))),
            f"{r['duration_s']:.2f}",
        )
    console.print(table)
    final = final_round(view)
    if final is not None:
        sites = Table(title="Final model per site (test split)")
        for col in ("site", "test examples", "accuracy", "AUC", "loss", "error"):
            sites.add_column(col)
        for s in view["site_metrics"]:
            if s["kind"] == "evaluate" and s["round"] == final["round"]:
                m = s["metrics"]
                sites.add_row(
                    s["site"], str(s["num_examples"]), _fmt(m.get("eval_accuracy")), _fmt(m.get("eval_auc")),
                    _fmt(m.get("eval_loss")), s["error"],
                )  # fmt: skip
        console.print(sites)
    print_rows(view)
    print_anomalies(view)


def print_rows(view: dict[str, Any]) -> None:
    """Which dataset each site used (a tag-selected job) and the rows its policies left out."""
    from medfed.report.rows import site_rows_lines

    matches = view.get("dataset_matches") or {}
    if matches:
        used = ", ".join(f"{site} → {', '.join(names)}" for site, names in sorted(matches.items()) if names)
        none = sorted(site for site, names in matches.items() if not names)
        skipped = f"; no match (took no part): {', '.join(none)}" if none else ""
        console.print(f"datasets matched: {used or 'none'}{skipped}", markup=False, soft_wrap=True)
    lines = site_rows_lines(view)
    if lines:
        console.print("rows per site (counts only; excluded rows never reach the task):")
        for line in lines:
            console.print(f"  {line}", markup=False, soft_wrap=True)


def print_anomalies(view: dict[str, Any]) -> None:
    """The flagged updates of a job that asked for anomaly detection, or one line saying none was."""
    reports = view.get("anomalies") or []
    if not reports:
        return
    flagged = [a for a in reports if a["flags"]]
    rounds = len({a["round"] for a in reports})
    if not flagged:
        console.print(f"anomaly detection: no update flagged in {rounds} fit round(s)")
        return
    table = Table(title=f"Anomalies: {len(flagged)} of {len(reports)} updates flagged in {rounds} fit round(s)")
    for col in ("round", "site", "norm", "cosine", "robust z", "flags", "reason"):
        table.add_column(col, justify="right" if col in ("round", "norm", "cosine", "robust z") else "left")
    for a in flagged:
        table.add_row(
            str(a["round"]), a["site"], f"{a['norm']:.4g}", _fmt(a["cosine"]), f"{a['robust_z']:.1f}",
            "\n".join(a["flags"]), a["reason"],
        )  # fmt: skip
    console.print(table)


def print_job_list(listing: dict[str, Any]) -> None:
    table = Table(title="Jobs")
    for col in ("job", "name", "owner", "state", "round"):
        table.add_column(col)
    for j in listing["jobs"]:
        table.add_row(j["job_id"], j["name"], j["owner"], j["state"], f"{j['completed_round']}/{j['rounds']}")
    console.print(table)
    sites = Table(title="Sites")
    for col in ("site", "online", "version", "datasets"):
        sites.add_column(col)
    for s in listing.get("sites", []):
        sites.add_row(s["site"], "yes" if s["online"] else "no", s["version"], ", ".join(s["datasets"]))
    console.print(sites)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def watch_job(client: Any, job_id: str, *, timeout_s: float = 24 * 3600, interval_s: float = 0.3) -> dict[str, Any]:
    """Follow a job with a progress bar (one step per round) until it finishes or ``timeout_s``."""
    view = client.get_job(job_id)
    deadline = time.monotonic() + timeout_s
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[acc]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(f"job {job_id} rounds", total=view["rounds"], acc="")
        while view["state"] not in FINISHED:
            if time.monotonic() > deadline:
                raise JobError(f"job {job_id} still {view['state']} after {timeout_s:.0f}s")
            time.sleep(interval_s)
            view = client.get_job(job_id)
            curve = model_curve(view)
            acc = f"mean accuracy {curve[-1][1]:.3f}" if curve else ""
            progress.update(bar, completed=view["completed_round"], acc=acc)
    print_job(view, detail=True)
    return dict(view)
