"""A job's numbers for the dashboard: progress and chart series (the JSON the job page polls), the
final per-site comparison, and the downloads (signed model, signature, HTML report).

Everything comes from the coordinator's job view (:func:`medfed.coordinator.views.job_view`):
aggregated metrics per round and what each site reported. The coordinator holds no rows, so a
local-only or pooled baseline appears only where a run recorded one (the demo's report does); the
page says so instead of inventing one.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from medfed.coordinator.service import Coordinator
from medfed.core.params import Parameters
from medfed.core.records import Role
from medfed.transport.api import Peer

__all__ = [
    "comparison_rows",
    "model_npz",
    "model_round",
    "progress",
    "report_path",
    "round_series",
    "site_series",
    "trusted_peer",
]

#: Score metrics (0–1) and loss metrics (nats) the charts draw, in legend order.
SCORE_KEYS = ("eval_accuracy", "eval_auc")
LOSS_KEYS = ("eval_loss", "train_loss")
#: The per-site chart's metric, by preference.
SITE_METRICS = ("eval_accuracy", "eval_auc", "eval_loss", "train_loss")


def trusted_peer(user_id: str, source: str = "") -> Peer:
    """The peer the Coordinator sees once the role matrix allowed the request (as PeopleGuard does);
    ``source`` is the browser's address (audited with a model export)."""
    return Peer(name=user_id, role=Role.ADMIN, source=source)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def model_round(stored_round: int, metric: str) -> int:
    """The model a metric describes: evaluation round ``r`` tests the model after round ``r - 1``
    (0: the initial model); training metrics belong to the round that trained (as in the report)."""
    return stored_round - 1 if metric.startswith("eval_") else stored_round


def round_series(view: dict[str, Any]) -> dict[str, Any]:
    """Aggregated (mean over sites) metrics by model: ``{"rounds": [...], "series": {metric: [...]}}``.

    ``rounds`` are "model after round" numbers (:func:`model_round`); ``None`` marks a round
    without that metric (a DP job withholds losses, for instance)."""
    by_round: dict[int, dict[str, float]] = {}
    for row in view.get("round_metrics", []):
        for key, value in row["aggregated"].items():
            number = _number(value)
            name = key.split("/", 1)[1] if key.startswith("mean/") else ""
            if number is not None and name in SCORE_KEYS + LOSS_KEYS:
                by_round.setdefault(model_round(int(row["round"]), name), {})[name] = number
    rounds = sorted(by_round)
    present = [k for k in SCORE_KEYS + LOSS_KEYS if any(k in by_round[r] for r in rounds)]
    return {"rounds": rounds, "series": {k: [by_round[r].get(k) for r in rounds] for k in present}}


def site_series(view: dict[str, Any]) -> dict[str, Any]:
    """One metric per site and round: ``{"metric": name, "rounds": [...], "sites": {site: [...]}}``."""
    rows = [r for r in view.get("site_metrics", []) if not r["error"]]
    metric = next((m for m in SITE_METRICS if any(m in r["metrics"] for r in rows)), "")
    rounds = sorted({model_round(int(r["round"]), metric) for r in rows if metric in r["metrics"]})
    sites: dict[str, dict[int, float | None]] = {}
    for r in rows:
        if metric in r["metrics"]:
            rnd = model_round(int(r["round"]), metric)
            sites.setdefault(str(r["site"]), {})[rnd] = _number(r["metrics"][metric])
    return {
        "metric": metric,
        "rounds": rounds,
        "sites": {site: [values.get(rnd) for rnd in rounds] for site, values in sorted(sites.items())},
    }


def progress(view: dict[str, Any]) -> dict[str, Any]:
    """What the job page polls: state, rounds done, and both chart series."""
    return {
        "job_id": view["job_id"],
        "state": view["state"],
        "finished": view["state"] in ("completed", "failed", "cancelled"),
        "completed_round": int(view["completed_round"]),
        "rounds": int(view["rounds"]),
        "error": view.get("error", ""),
        "round_series": round_series(view),
        "site_series": site_series(view),
    }


def comparison_rows(view: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The final model per site: the last round's metrics each site reported (federated model on
    the site's own test split), plus their mean. Returns (metric names, rows)."""
    rows = [r for r in view.get("site_metrics", []) if not r["error"]]
    evaluated = [r for r in rows if any(k in r["metrics"] for k in SCORE_KEYS)]
    if not evaluated:
        return [], []
    last = max(int(r["round"]) for r in evaluated)
    finals = [r for r in evaluated if int(r["round"]) == last]
    metrics = [k for k in (*SCORE_KEYS, "eval_loss") if any(k in r["metrics"] for r in finals)]
    out = [
        {
            "site": r["site"],
            "examples": int(r["num_examples"]),
            "values": [_number(r["metrics"].get(k)) for k in metrics],
        }
        for r in sorted(finals, key=lambda r: str(r["site"]))
    ]
    means: list[float | None] = []
    for i in range(len(metrics)):
        present = [v for row in out if (v := row["values"][i]) is not None]
        means.append(sum(present) / len(present) if present else None)
    total = sum(row["examples"] for row in out)
    out.append({"site": "mean over sites", "examples": total, "values": means})
    return metrics, out


def model_npz(coordinator: Coordinator, peer: Peer, job_id: str) -> bytes:
    """The final model as a plain ``.npz`` (no pickle); audited as a model export (``data.exported``).

    Its signature (``coordinator.model_signature``) covers the parameters
    (:func:`medfed.crypto.signing.model_digest`), not the file, so ``medfed`` verifies the download
    as it verifies ``medfed job result --out``."""
    params: Parameters = coordinator.fetch_model(peer, job_id)
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **params.to_dict())
    return buf.getvalue()


def report_path(state_dir: Path, job_id: str) -> Path:
    """Where the coordinator process writes a finished job's HTML report."""
    return state_dir / "reports" / f"{job_id}.html"
