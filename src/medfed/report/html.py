"""HTML job reports: one self-contained file (plots embedded as SVG), printable to PDF."""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from medfed.security.fsio import atomic_write

_CSS = """
body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}
th{background:#eee}td:first-child,th:first-child{text-align:left}.err{color:#a00}
svg{max-width:100%;height:auto}pre{white-space:pre-wrap}
@media print{@page{size:A4;margin:15mm}body{margin:0;max-width:none;font-size:10pt}
h2{break-after:avoid}table,svg,pre{break-inside:avoid}th{background:none;border-bottom:2px solid #000}}
"""


def _curves(view: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {"accuracy": [], "auc": [], "loss": [], "train_loss": []}
    for r in view.get("round_metrics", []):
        agg, version = r["aggregated"], int(r["round"]) - 1
        for name, key in (("accuracy", "mean/eval_accuracy"), ("auc", "mean/eval_auc"), ("loss", "mean/eval_loss")):
            if key in agg:
                out[name].append((version, float(agg[key])))
        if "mean/train_loss" in agg:
            out["train_loss"].append((int(r["round"]), float(agg["mean/train_loss"])))
    return out


def metrics_plot_svg(view: dict[str, Any]) -> str:
    """Per-round metrics of the global model (mean over sites), as an inline SVG string.

    Lines differ by marker and style as well as colour, so the plot reads without colour.
    """
    curves = _curves(view)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, marker, style in (("accuracy", "o", "-"), ("auc", "s", "--")):
        if curves[name]:
            xs, ys = zip(*curves[name], strict=True)
            left.plot(xs, ys, marker=marker, linestyle=style, label=f"test {name}")
    left.set(xlabel="model after round", ylabel="score (mean over sites, 0–1)", title="Test accuracy and AUC")
    if left.get_legend_handles_labels()[0]:
        left.legend()
    for name, marker, style in (("loss", "o", "-"), ("train_loss", "^", ":")):
        if curves[name]:
            xs, ys = zip(*curves[name], strict=True)
            right.plot(xs, ys, marker=marker, linestyle=style, label=name.replace("_", " "))
    right.set(xlabel="round", ylabel="binary cross-entropy (nats)", title="Loss")
    if right.get_legend_handles_labels()[0]:
        right.legend()
    else:  # a DP job keeps losses at the sites
        right.text(0.5, 0.5, "not released (kept at the sites)", ha="center", va="center", transform=right.transAxes)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _site_rows(view: dict[str, Any]) -> list[list[str]]:
    finals = [r["round"] for r in view.get("round_metrics", []) if r["kind"] == "evaluate"]
    rows = []
    for s in view.get("site_metrics", []):
        if s["kind"] == "evaluate" and finals and s["round"] == finals[-1]:
            m = s["metrics"]
            rows.append(
                [s["site"], str(s["num_examples"])]
                + [f"{m.get(k, float('nan')):.3f}" for k in ("eval_accuracy", "eval_auc", "eval_loss")]
                + [s["error"]]
            )
    return rows


def render_job_report(view: dict[str, Any], *, comparison: tuple[list[str], list[list[str]]] | None = None) -> str:
    """The report's HTML text. ``comparison`` is an optional extra table (headers, rows)."""
    title = f"medfed job {view['job_id']} — {view['name']}"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>State: <b>{html.escape(view['state'])}</b>; rounds {view['completed_round']}/{view['rounds']}; "
        f"owner {html.escape(view['owner'])}; spec SHA-256 <code>{html.escape(view['spec_hash'])}</code></p>",
    ]
    if view.get("error"):
        parts.append(f"<p class='err'>Error: {html.escape(view['error'])}</p>")
    if comparison is not None:
        parts += ["<h2>Federated vs local-only vs pooled</h2>", _table(*comparison)]
    parts += ["<h2>Per-round metrics</h2>", metrics_plot_svg(view)]
    parts += [
        "<h2>Final model per site</h2>",
        _table(["site", "test examples", "accuracy", "AUC", "loss", "error"], _site_rows(view)),
    ]
    parts += _rows_section(view) + _privacy_section(view) + _anomaly_section(view)
    parts += ["<h2>Job spec</h2>", f"<pre>{html.escape(view.get('spec_toml', ''))}</pre>", "</body></html>"]
    return "\n".join(parts)


def write_job_report(
    view: dict[str, Any], path: Path, *, comparison: tuple[list[str], list[list[str]]] | None = None
) -> Path:
    """Write the report atomically; return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, render_job_report(view, comparison=comparison).encode())
    return path


def _final_sites(view: dict[str, Any]) -> list[dict[str, Any]]:
    rounds = [r["round"] for r in view.get("round_metrics", [])]
    last = max(rounds) if rounds else None
    return [s for s in view.get("site_metrics", []) if s["round"] == last and not s["error"]]


def _rows_section(view: dict[str, Any]) -> list[str]:
    """Which dataset each site used, and the rows its consent and missing-value policies left out."""
    from medfed.report.rows import site_rows_lines

    parts = []
    matches = view.get("dataset_matches") or {}
    if matches:
        rows = [[site, ", ".join(names) or "no match: took no part"] for site, names in sorted(matches.items())]
        parts += ["<h2>Datasets selected per site</h2>", _table(["site", "dataset"], rows)]
    lines = site_rows_lines(view)
    if lines:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
        parts += [
            "<h2>Rows per site</h2>",
            "<p>Counts only: excluded rows never reach the task.</p>",
            f"<ul>{items}</ul>",
        ]
    return parts


def _privacy_section(view: dict[str, Any]) -> list[str]:
    """ε each site charged to its own ledger, when the job asked for differential privacy."""
    rows = [
        [s["site"], f"{s['metrics']['privacy_epsilon_spent']:.3f}", f"{s['metrics']['privacy_epsilon_left']:.3f}"]
        for s in _final_sites(view)
        if "privacy_epsilon_spent" in s["metrics"]
    ]
    if not rows:
        return []
    return ["<h2>Privacy spent per site</h2>", _table(["site", "ε spent by this job", "ε left in the budget"], rows)]


def _anomaly_section(view: dict[str, Any]) -> list[str]:
    """Updates that anomaly detection flagged (only for jobs that asked for it)."""
    reports = view.get("anomalies") or []
    if not reports:
        return []
    flagged = [a for a in reports if a["flags"]]
    head = f"<h2>Anomalous updates</h2><p>{len(flagged)} of {len(reports)} updates flagged.</p>"
    rows = [
        [str(a["round"]), a["site"], f"{a['norm']:.4g}", "—" if a["cosine"] is None else f"{a['cosine']:.3f}",
         f"{a['robust_z']:.1f}", ", ".join(a["flags"]), a["reason"]]
        for a in flagged
    ]  # fmt: skip
    if not rows:
        return [head]
    return [head, _table(["round", "site", "norm", "cosine", "robust z", "flags", "reason"], rows)]
