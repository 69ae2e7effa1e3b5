"""The synthetic-data report: one self-contained HTML page (plots inline as SVG), printable.

Marginals real vs synthetic, correlation heat-maps side by side, utility bars, privacy risk and
subgroup tables, plus the release decision and the privacy cost. :func:`render` returns the page
as a string; writing it is the caller's edge (the CLI writes it atomically where it is told).
The page shows real marginals and correlations: it is the site's document, not a DP release.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from medfed.synth.evaluate import Evaluation

_MAX_MARGINALS = 12
_CSS = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}
th{background:#eee}td:first-child,th:first-child{text-align:left}.bad{color:#a00;font-weight:bold}.ok{color:#070}
@media print{body{margin:0}}
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportInput:
    """What the report shows; ``release_reasons`` empty means the release passed the gate."""

    title: str
    method: str
    epsilon: float | None  # None for a non-DP synthesizer
    delta: float | None
    train: pd.DataFrame
    synthetic: pd.DataFrame
    evaluation: Evaluation
    release_reasons: tuple[str, ...]
    dropped_copies: int


def render(r: ReportInput) -> str:
    """The report page for ``r``."""
    e = r.evaluation
    privacy = "not differentially private" if r.epsilon is None else f"(ε = {r.epsilon:.3g}, δ = {r.delta:.1e})-DP"
    verdict = (
        '<p class="ok">Release allowed.</p>'
        if not r.release_reasons
        else '<p class="bad">Release blocked:</p><ul>'
        + "".join(f"<li>{html.escape(x)}</li>" for x in r.release_reasons)
        + "</ul>"
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(r.title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{html.escape(r.title)}</h1>",
        f"<p>Synthesizer <b>{html.escape(r.method)}</b>, {html.escape(privacy)}; {len(r.synthetic)} synthetic rows, "
        f"{len(r.train)} real training rows; {r.dropped_copies} exact copies of training rows dropped "
        "before release.</p>",
        verdict,
        "<h2>Fidelity</h2>",
        _table(
            ["score", "value", "reads"],
            [
                ["2-way workload error (mean TV)", f"{e.workload_error:.3f}", "0 = identical pairwise marginals"],
                ["correlation difference (mean |Δr|)", f"{e.correlation_difference:.3f}", "0 = same correlations"],
                ["detection AUC", f"{e.detection_auc:.3f}", "0.5 = a classifier cannot tell real from synthetic"],
                ["mean column score (1 − KS / 1 − TV)", f"{np.mean(list(e.column_scores.values())):.3f}", "1 = same"],
            ],
        ),
        _svg(_marginals(r.train, r.synthetic)),
        _svg(_correlations(r.train, r.synthetic)),
        "<h2>Utility (real holdout)</h2>",
        _table(
            ["model", "TSTR AUC", "TRTR AUC", "TSTR accuracy", "TRTR accuracy"],
            [
                [m, *(f"{s[k]:.3f}" for k in ("tstr_auc", "trtr_auc", "tstr_accuracy", "trtr_accuracy"))]
                for m, s in e.utility.items()
            ],
        ),
        _svg(_utility(e)),
        "<h2>Privacy risk</h2>",
        _table(
            ["score", "value", "reads"],
            [
                ["exact copies of training rows", f"{e.exact_copies} ({100 * e.exact_copy_rate:.1f} %)", "must be 0"],
                [
                    "median DCR to train / to holdout",
                    f"{e.dcr_train_median:.3f} / {e.dcr_holdout_median:.3f}",
                    "train much closer than holdout = memorisation",
                ],
                ["share closer to train than holdout", f"{e.closer_to_train_share:.3f}", "0.5 = no preference"],
                ["membership-inference AUC", f"{e.mia_auc:.3f}", "0.5 = attacker guesses"],
            ],
        ),
        "<h2>Subgroups</h2>",
        _table(
            ["subgroup", "value", "real share", "synthetic share", "TSTR acc.", "TRTR acc.", "erased?"],
            [
                [
                    s.subgroup,
                    s.value,
                    f"{s.real_share:.3f}",
                    f"{s.synthetic_share:.3f}",
                    f"{s.tstr_accuracy:.3f}",
                    f"{s.trtr_accuracy:.3f}",
                    "ERASED" if s.erased else "",
                ]
                for s in e.subgroups
            ],
        )
        if e.subgroups
        else "<p>No subgroups were given.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def _marginals(train: pd.DataFrame, synthetic: pd.DataFrame) -> Figure:
    columns = list(train.columns)[:_MAX_MARGINALS]
    ncols = 4
    nrows = max(1, -(-len(columns) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(12, 2.6 * nrows), squeeze=False)
    for ax, name in zip(axes.ravel(), columns, strict=False):
        real, syn = train[name], synthetic[name]
        if pd.api.types.is_numeric_dtype(real) and real.nunique() > 2:
            bins = np.histogram_bin_edges(real.dropna().to_numpy(dtype=float), bins=20)
            ax.hist(real.dropna(), bins=bins, density=True, alpha=0.5, label="real", hatch="//")
            ax.hist(pd.to_numeric(syn, errors="coerce").dropna(), bins=bins, density=True, alpha=0.5, label="synthetic")
        else:
            p = real.astype(str).value_counts(normalize=True)
            q = synthetic[name].astype(str).value_counts(normalize=True).reindex(p.index, fill_value=0.0)
            x = np.arange(len(p))
            ax.bar(x - 0.2, p.to_numpy(), 0.4, label="real", hatch="//")
            ax.bar(x + 0.2, q.to_numpy(), 0.4, label="synthetic")
            ax.set_xticks(x, [str(v)[:8] for v in p.index])
        ax.set_title(str(name)[:28], fontsize=9)
    for ax in axes.ravel()[len(columns) :]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=8)
    fig.suptitle(f"Marginals, real vs synthetic (first {len(columns)} columns)")
    fig.tight_layout()
    return fig


def _correlations(train: pd.DataFrame, synthetic: pd.DataFrame) -> Figure:
    numeric = [c for c in train.columns if pd.api.types.is_numeric_dtype(train[c])]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, (label, df) in zip(axes, (("real", train), ("synthetic", synthetic)), strict=True):
        corr = df[numeric].apply(pd.to_numeric, errors="coerce").corr().to_numpy() if numeric else np.zeros((1, 1))
        im = ax.imshow(np.nan_to_num(corr), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(f"Correlations, {label}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="Pearson r")
    return fig


def _utility(e: Evaluation) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    models = list(e.utility)
    x = np.arange(len(models))
    ax.bar(x - 0.2, [e.utility[m]["trtr_auc"] for m in models], 0.4, label="train real (TRTR)", hatch="//")
    ax.bar(x + 0.2, [e.utility[m]["tstr_auc"] for m in models], 0.4, label="train synthetic (TSTR)")
    ax.set_xticks(x, [m.replace("_", " ") for m in models])
    ax.set(ylim=(0, 1), ylabel="AUC on the real holdout", title="Utility")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
