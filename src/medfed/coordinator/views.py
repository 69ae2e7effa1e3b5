"""Job views: the JSON-able dictionaries the API returns (and the CLI, dashboard and report read)."""

from __future__ import annotations

from typing import Any

from medfed.coordinator.store import JobRow, Store

VIEW_KEYS = (
    "job_id",
    "name",
    "owner",
    "state",
    "rounds",
    "completed_round",
    "error",
    "spec_hash",
    "created",
    "updated",
)


def job_view(store: Store, row: JobRow, *, detail: bool) -> dict[str, Any]:
    """A job's summary; with ``detail``, its per-round aggregated and per-site metrics too, and the
    anomaly reports per fit round and site (empty unless the job asked for anomaly detection)."""
    view: dict[str, Any] = {
        "job_id": row.job_id,
        "name": row.name,
        "owner": row.owner,
        "state": row.state.value,
        "rounds": row.rounds,
        "completed_round": row.completed_round,
        "error": row.error,
        "spec_hash": row.spec_hash,
        "created": row.created,
        "updated": row.updated,
    }
    if detail:
        view["spec_toml"] = row.spec_toml
        view["round_metrics"] = store.round_rows(row.job_id)
        view["site_metrics"] = store.site_rows(row.job_id)
        view["anomalies"] = store.anomaly_rows(row.job_id)
        # per online site, the datasets the job's selector matched there (empty: it took no part)
        view["dataset_matches"] = store.dataset_matches(row.job_id)
        query = store.query_result(row.job_id)
        if query is not None:  # a query job's result: read it with medfed.coordinator.queries.result_from_json
            view["query_result"] = query
        synthesis = store.synthesis_result(row.job_id)
        if synthesis is not None:  # a synthesis job's table: read it with medfed.coordinator.synthesis.result_from_json
            view["synthesis_result"] = synthesis
    return view
