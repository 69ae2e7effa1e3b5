"""Query jobs: a federated query (the job's ``[query]`` table) run over the live federation.

:class:`QueryRunner` is the job runner of a spec with a query. Its ``ask`` sends one
:attr:`~medfed.core.records.TaskKind.QUERY` task per site (the query as JSON in the task's
payload) through the runner's round machinery, and decodes each site's answer; sites that refuse
(their policy, their budget) are left out and their reasons kept. One-shot queries combine one
round of answers; GLM and Cox fits and Kaplan–Meier curves drive as many rounds as they need
(:func:`medfed.analytics.fit_glm`, :func:`~medfed.analytics.fit_cox`,
:func:`~medfed.analytics.kaplan_meier`), each recorded like a training round. The result is stored
as JSON (:func:`result_to_json`; read back with :func:`result_from_json`) and rendered as an HTML
page under ``<state>/reports/``.
"""

from __future__ import annotations

import html
import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from medfed.analytics import (
    DescribeResult,
    FitOptions,
    KMCurve,
    KMResult,
    LogRankResult,
    QueryKind,
    QueryResult,
    QuerySpec,
    RegressionResult,
    SiteAnswer,
    TableResult,
    combine,
    fit_cox,
    fit_glm,
    kaplan_meier,
)
from medfed.analytics.models import Ask
from medfed.analytics.spec import Criterion
from medfed.coordinator.engine import JobContext, JobRunner
from medfed.coordinator.rounds import RoundKey
from medfed.core.errors import ConfigError, JobError, ValidationError
from medfed.core.params import Parameters
from medfed.core.records import JobSpec, TaskKind
from medfed.report.analytics_report import render_analytics_page
from medfed.security.fsio import atomic_write

log = logging.getLogger(__name__)

RESULT_VERSION = 1
DEFAULT_OPTIONS = FitOptions()
_NO_PARAMETERS = Parameters.from_arrays((), ())


def query_spec(spec: JobSpec, *, source_name: str = "<job>") -> QuerySpec:
    """The job's query, checked. ``where`` may list criteria as text (``"age >= 60"``).

    Raises
    ------
    ConfigError
        The job has no ``[query]`` table, or it is not a valid query (every problem named).
    """
    if spec.query is None:
        raise ConfigError(f"{source_name}: job {spec.name!r} has no [query] table")
    raw: Any = json.loads(spec.query)
    where = raw.get("where", [])
    try:
        if isinstance(where, list):
            raw["where"] = [_criterion(c) for c in where]
        return QuerySpec.from_json(json.dumps(raw))
    except ValidationError as exc:
        raise ConfigError(f"{source_name}: [query]: {exc}") from None


def _criterion(item: Any) -> Any:
    if not isinstance(item, str):
        return item
    c = Criterion.parse(item)
    return {"column": c.column, "op": c.op.value, "value": c.value}


def run_query(spec: QuerySpec, ask: Ask, options: FitOptions = DEFAULT_OPTIONS) -> QueryResult:
    """Drive ``spec`` through ``ask``: an iterative fit for GLM/Cox/Kaplan–Meier, one round else."""
    if spec.kind is QueryKind.GLM_STATS:
        return fit_glm(ask, spec, options)
    if spec.kind is QueryKind.COX_STATS:
        return fit_cox(ask, spec, options)
    if spec.kind is QueryKind.KAPLAN_MEIER:
        return kaplan_meier(ask, spec, alpha=options.alpha)
    return combine(spec, ask(spec))


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryOutcome:
    """A finished query: its result, which sites answered and why the others did not."""

    query: QuerySpec
    result: QueryResult
    refusals: Mapping[str, str] = field(default_factory=dict)
    rounds: int = 0


class QueryRunner(JobRunner):
    """Runs one query job in its own thread (reusing the training runner's round machinery)."""

    def __init__(self, spec: JobSpec, ctx: JobContext, *, options: FitOptions = DEFAULT_OPTIONS) -> None:
        # A query trains nothing: no strategy, task or robust rule (JobRunner.__init__ would build them).
        threading.Thread.__init__(self, name=f"query-{ctx.job_id}", daemon=True)
        self.spec, self.ctx = spec, ctx
        self.query = query_spec(spec, source_name=f"job {ctx.job_id}")
        self.options = options
        self.robust = None
        self.dp = None
        self.cancelled = threading.Event()
        self.refusals: dict[str, str] = {}
        self.asked = 0
        self._sites: list[str] | None = None

    def _run_rounds(self) -> None:  # the body of JobRunner.run: states, errors and hooks stay there
        result = run_query(self.query, self.ask, self.options)
        outcome = QueryOutcome(query=self.query, result=result, refusals=dict(self.refusals), rounds=self.asked)
        self.ctx.store.set_query_result(self.ctx.job_id, result_to_json(outcome))
        path = self.ctx.state_dir / "reports" / f"query-{self.ctx.job_id}.html"
        write_report(outcome, self.spec.name, path)
        log.info("query job %s: %d round(s), result stored, report %s", self.ctx.job_id, self.asked, path)

    def ask(self, spec: QuerySpec) -> dict[str, SiteAnswer]:
        """One round: every site of the first round answers ``spec`` (or refuses, and is left out)."""
        self.asked += 1
        policy = self.spec.policy
        if self._sites is None:
            self._sites = self.wait_for_sites(time.monotonic() + policy.deadline_s)
            if len(self._sites) < policy.min_nodes:
                raise JobError(f"query: {len(self._sites)} of min_nodes={policy.min_nodes} sites online "
                               f"({self._why_no_site()})")  # fmt: skip
        key = RoundKey(job_id=self.ctx.job_id, round=self.asked, kind=TaskKind.QUERY, attempt=0)
        text = spec.to_json().encode()
        payloads = {site: text for site in self._sites}
        round_ = self.run_round(key, _NO_PARAMETERS, sites=self._sites, payloads=payloads, keep_raw=True)
        self._record(round_, self.asked, checkpoint=None)
        answers: dict[str, SiteAnswer] = {}
        for site, result in sorted(round_.raw.items()):
            meta = {k: v for k, v in result.metrics.items() if not k.startswith("privacy_")}
            try:
                answers[site] = SiteAnswer.from_wire(result.parameters or _NO_PARAMETERS, meta)
            except ValidationError as exc:
                self.refusals[site] = f"validation: {exc}"
        for site, metrics in round_.results.items():
            if metrics.error:
                self.refusals.setdefault(site, metrics.error)
        for site in round_.pending:
            self.refusals.setdefault(site, "no answer before the round's deadline")
        if len(answers) < policy.min_nodes:
            why = "; ".join(f"{s}: {r}" for s, r in sorted(self.refusals.items())) or "none"
            raise JobError(
                f"query round {self.asked}: {len(answers)} of min_nodes={policy.min_nodes} sites answered "
                f"(refusals: {why})"
            )
        return answers


# --- results as JSON ---------------------------------------------------------------------------


def _enc(values: Any) -> Any:
    """Arrays and floats as JSON values: NaN as null, ±inf as the strings "inf" / "-inf"."""
    if isinstance(values, np.ndarray):
        return _enc(values.tolist())
    if isinstance(values, list | tuple):
        return [_enc(v) for v in values]
    if isinstance(values, float | np.floating):
        x = float(values)
        return None if math.isnan(x) else ("inf" if x == math.inf else "-inf" if x == -math.inf else x)
    if isinstance(values, np.integer):
        return int(values)
    return values


def _dec(values: Any) -> np.ndarray:
    def one(v: Any) -> Any:
        if isinstance(v, list):
            return [one(x) for x in v]
        return math.nan if v is None else float(v)

    return np.asarray(one(values), dtype=np.float64)


def _frame_enc(frame: pd.DataFrame) -> dict[str, Any]:
    return {
        "index": [str(i) for i in frame.index],
        "index_name": frame.index.name,
        "columns": [str(c) for c in frame.columns],
        "data": _enc(frame.to_numpy(dtype=np.float64)),
    }


def _frame_dec(raw: dict[str, Any]) -> pd.DataFrame:
    index = pd.Index(raw["index"], name=raw["index_name"])
    return pd.DataFrame(_dec(raw["data"]).reshape(len(index), len(raw["columns"])), index=index, columns=raw["columns"])


def _result_enc(result: QueryResult) -> dict[str, Any]:
    if isinstance(result, RegressionResult):
        return {
            "type": "regression", "model": result.model, "names": list(result.names), "coef": _enc(result.coef),
            "se": _enc(result.se), "loglik": _enc(result.loglik), "n": result.n, "iterations": result.iterations,
            "sites": list(result.sites), "scale": _enc(result.scale), "events": result.events, "alpha": result.alpha,
        }  # fmt: skip
    if isinstance(result, TableResult):
        return {
            "type": "table", "kind": result.kind.value, "row_labels": list(result.row_labels),
            "col_labels": list(result.col_labels), "per_site": {s: _enc(v) for s, v in result.per_site.items()},
            "combined": _enc(result.combined), "hidden": _enc(result.hidden), "min_cell": result.min_cell,
            "noised": result.noised,
        }  # fmt: skip
    if isinstance(result, KMResult):
        lr = result.logrank
        return {
            "type": "kaplan_meier", "sites": list(result.sites), "alpha": result.alpha,
            "curves": [
                {"label": c.label} | {k: _enc(getattr(c, k)) for k in _CURVE_ARRAYS} for c in result.curves
            ],
            "logrank": None if lr is None else {
                "statistic": _enc(lr.statistic), "df": lr.df, "p_value": _enc(lr.p_value),
                "observed": _enc(lr.observed), "expected": _enc(lr.expected),
            },
        }  # fmt: skip
    return {
        "type": "describe",
        "columns": list(result.columns),
        "per_site": {s: _frame_enc(f) for s, f in result.per_site.items()},
        "combined": _frame_enc(result.combined),
    }


_CURVE_ARRAYS = ("timeline", "survival", "ci_lower", "ci_upper", "at_risk", "events", "censored")


def _result_dec(raw: dict[str, Any]) -> QueryResult:
    kind = raw["type"]
    if kind == "regression":
        return RegressionResult(
            model=raw["model"], names=tuple(raw["names"]), coef=_dec(raw["coef"]), se=_dec(raw["se"]),
            loglik=float(_dec(raw["loglik"])), n=int(raw["n"]), iterations=int(raw["iterations"]),
            sites=tuple(raw["sites"]), scale=float(_dec(raw["scale"])), events=int(raw["events"]),
            alpha=float(raw["alpha"]),
        )  # fmt: skip
    if kind == "table":
        return TableResult(
            kind=QueryKind(raw["kind"]), row_labels=tuple(raw["row_labels"]), col_labels=tuple(raw["col_labels"]),
            per_site={s: _dec(v) for s, v in raw["per_site"].items()}, combined=_dec(raw["combined"]),
            hidden=_dec(raw["hidden"]).astype(int), min_cell=int(raw["min_cell"]), noised=bool(raw["noised"]),
        )  # fmt: skip
    if kind == "kaplan_meier":
        curves = tuple(KMCurve(label=str(c["label"]), **{k: _dec(c[k]) for k in _CURVE_ARRAYS}) for c in raw["curves"])
        lr = raw["logrank"]
        logrank = None if lr is None else LogRankResult(
            statistic=float(_dec(lr["statistic"])), df=int(lr["df"]), p_value=float(_dec(lr["p_value"])),
            observed=_dec(lr["observed"]), expected=_dec(lr["expected"]),
        )  # fmt: skip
        return KMResult(curves=curves, logrank=logrank, sites=tuple(raw["sites"]), alpha=float(raw["alpha"]))
    if kind == "describe":
        return DescribeResult(
            columns=tuple(raw["columns"]),
            per_site={s: _frame_dec(f) for s, f in raw["per_site"].items()},
            combined=_frame_dec(raw["combined"]),
        )
    raise ValueError(f"unknown result type {kind!r}")


def result_to_json(outcome: QueryOutcome) -> str:
    return json.dumps(
        {
            "version": RESULT_VERSION,
            "query": json.loads(outcome.query.to_json()),
            "refusals": dict(outcome.refusals),
            "rounds": outcome.rounds,
            "result": _result_enc(outcome.result),
        },
        sort_keys=True,
        allow_nan=False,
    )


def result_from_json(text: str) -> QueryOutcome:
    """Read what :func:`result_to_json` wrote (a job view's ``query_result``).

    Raises
    ------
    ValidationError
        The text is not a stored query result of this version.
    """
    try:
        raw = json.loads(text)
        version = raw.get("version")
        if version == RESULT_VERSION:
            return QueryOutcome(
                query=QuerySpec.from_json(json.dumps(raw["query"])),
                result=_result_dec(raw["result"]),
                refusals={str(k): str(v) for k, v in raw["refusals"].items()},
                rounds=int(raw["rounds"]),
            )
    except ValidationError as exc:
        raise ValidationError(f"its {exc}", where="query result") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValidationError(f"malformed: {exc!r}", where="query result") from None
    raise ValidationError(f"unknown version {version!r} (expected {RESULT_VERSION})", where="query result")


# --- the researcher's Python API ------------------------------------------------------------------


class JobClient(Protocol):
    """What :func:`ask_federation` needs of a client (``medfed.transport.grpc_client.ResearcherClient``)."""

    def submit_job(self, spec_toml: str, source_name: str) -> dict[str, Any]: ...

    def get_job(self, job_id: str) -> dict[str, Any]: ...


def query_job_toml(spec: QuerySpec, *, name: str, dataset: str, min_nodes: int = 1, deadline_s: float = 120.0) -> str:
    """The job file that runs ``spec`` on ``dataset`` at every site offering it."""
    fields = json.loads(spec.to_json())
    lines = [
        "[job]", f"name = {_toml(name)}", f"dataset = {_toml(dataset)}", "",
        "[rounds]", f"min_nodes = {min_nodes}", f"deadline_s = {float(deadline_s)!r}", "",
        "[query]", *(f"{key} = {_toml(value)}" for key, value in fields.items()),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValidationError(f"{value!r} cannot be written in a job file", where="query")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + " }"
    raise ValidationError(f"{type(value).__name__} cannot be written in a job file", where="query")


def ask_federation(
    client: JobClient,
    spec: QuerySpec,
    *,
    dataset: str,
    name: str = "query",
    min_nodes: int = 1,
    timeout_s: float = 600.0,
    interval_s: float = 0.2,
) -> QueryOutcome:
    """Run ``spec`` as a query job and wait for its result (the Python twin of ``medfed query submit --wait``).

    Raises
    ------
    JobError
        The job failed (every site's refusal is in the message) or did not finish in ``timeout_s``.
    """
    toml = query_job_toml(spec, name=name, dataset=dataset, min_nodes=min_nodes)
    view = client.submit_job(toml, f"<query {name}>")
    deadline = time.monotonic() + timeout_s
    while view["state"] not in ("completed", "failed", "cancelled"):
        if time.monotonic() > deadline:
            raise JobError(f"query job {view['job_id']} still {view['state']} after {timeout_s:.0f}s")
        time.sleep(interval_s)
        view = client.get_job(view["job_id"])
    if view["state"] != "completed" or "query_result" not in view:
        raise JobError(f"query job {view['job_id']} {view['state']}: {view.get('error', '')}")
    return result_from_json(view["query_result"])


def write_report(outcome: QueryOutcome, title: str, path: Path) -> None:
    """The result as a self-contained HTML page (tables; Kaplan–Meier curves with their CIs)."""
    page = render_analytics_page(title, {title: outcome.result})
    if outcome.refusals:  # who is missing from the pooled answer, and why: part of the result
        refused = sorted(outcome.refusals.items())
        items = "".join(f"<li><b>{html.escape(site)}</b>: {html.escape(why)}</li>" for site, why in refused)
        page = page.replace("</body>", f"<h2>Sites left out</h2><ul>{items}</ul></body>", 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, page.encode())


__all__ = [
    "JobClient", "QueryOutcome", "QueryRunner", "ask_federation", "query_job_toml", "query_spec", "result_from_json",
    "result_to_json", "run_query", "write_report",
]  # fmt: skip
