"""The query link of the node's policy chain: a site answers federated queries under its own policy.

A :attr:`~medfed.core.records.TaskKind.QUERY` task carries one
:class:`~medfed.analytics.spec.QuerySpec` as JSON in its payload. The node answers it with
:func:`medfed.analytics.answer` under the site's :class:`~medfed.analytics.policy.DisclosurePolicy`
(``[disclosure]`` in ``site.toml``; the researcher's request never sets it) on the rows
:func:`query_table` gives (a declared dataset: consent-filtered for the job's purpose), against the
:class:`~medfed.analytics.policy.AnswerHistory` it keeps in its state directory, so differencing
protection outlives restarts. The history is read, checked and rewritten under one lock per
dataset; a refusal leaves it (and the ledger) as it was.

Differential privacy: a DP query's (ε, δ) is reserved in the dataset's privacy ledger before the
data is touched and committed after the answer; a dataset with a budget is released only under
DP (as for training jobs), and a DP query on a dataset without a budget is refused.

Every query and every answer's digest (never its values) is logged to ``medfed.node.audit`` (each
record carries ``extra["audit"]``). Where the node keeps a hash-chained audit log (its governance,
with a state directory), a refusal is appended as ``task.refused`` with its reason and a DP answer
as ``budget.spent`` with its (ε, δ), both with the query's SHA-256 fingerprint; the governance link
already records each task's data access and the digest of what was sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from medfed.analytics import AnswerHistory, DisclosurePolicy, QuerySpec, answer, epsilon_cost
from medfed.core.config import parse_job_spec
from medfed.core.errors import BudgetExhausted, ConfigError, DataError, PermissionDenied, ValidationError
from medfed.core.records import ResultMessage, ResultStatus, TaskKind, TaskMessage
from medfed.node.middleware import Handler, NodeContext
from medfed.privacy.mechanisms import secure_rng
from medfed.security.audit_events import AuditAction
from medfed.security.fsio import PRIVATE, atomic_write

if TYPE_CHECKING:
    from medfed.data.sources import DatasetDecl

log = logging.getLogger(__name__)
#: Where every query, refusal and answer digest is logged (the hook for the site's audit log).
audit = logging.getLogger("medfed.node.audit")

#: The files a legacy dataset's table is read from, in this order (a CSV dataset directory).
TABLE_FILES = ("train.csv", "test.csv")

_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


def answer_queries(task: TaskMessage, ctx: NodeContext, nxt: Handler) -> ResultMessage:
    """Answer a query task here; pass every other task on."""
    if task.kind is not TaskKind.QUERY:
        return nxt(task, ctx)
    spec = QuerySpec.from_json(task.payload)
    record = {"site": ctx.site, "job": task.job_id, "round": task.round, "dataset": task.dataset}
    fingerprint = hashlib.sha256(spec.to_json().encode()).hexdigest()
    try:
        result, digest = _answer(task, ctx, spec)
    except (PermissionDenied, BudgetExhausted) as exc:
        _audit(record | {"query": spec.to_json(), "refused": str(exc)})
        _chain(ctx, AuditAction.TASK_REFUSED, task, {"kind": "query", "fingerprint": fingerprint}, reason=str(exc))
        raise
    _audit(record | {"query": spec.to_json(), "answer_sha256": digest})
    if spec.dp is not None:
        eps, delta = epsilon_cost(spec)
        fields: Fields = {"kind": "query", "fingerprint": fingerprint}
        _chain(ctx, AuditAction.BUDGET_SPENT, task, fields | {"epsilon": eps, "delta": delta})
    return result


def query_table(ctx: NodeContext, dataset: str, task: TaskMessage | None = None) -> pd.DataFrame:
    """The rows of ``dataset`` a query runs on.

    A dataset declared with ``columns`` in ``site.toml``: harmonised, validated, and without the
    rows of patients who opted out of the job's purpose (the same consent filter training gets,
    decisions read afresh). A legacy CSV directory: every row of both splits.

    Raises
    ------
    DataError
        The dataset is not configured here, or its files are missing or unreadable (named).
    PermissionDenied
        The job's purpose is not among the declared dataset's purposes.
    """
    cfg = ctx.datasets.get(dataset)
    if cfg is None:
        configured = sorted(ctx.datasets)
        raise DataError(f"dataset {dataset!r} is not configured at site {ctx.site!r} (configured: {configured})")
    if cfg.decl is not None:
        return _declared_table(ctx, cfg.decl, task)
    files = [cfg.path / name for name in TABLE_FILES if (cfg.path / name).is_file()]
    if not files:
        raise DataError(f"dataset {dataset!r} at site {ctx.site!r}: no {list(TABLE_FILES)} in {cfg.path}")
    frames = []
    for path in files:
        try:
            frames.append(pd.read_csv(path))
        except (OSError, ValueError) as exc:
            raise DataError(f"dataset {dataset!r}: cannot read {path}: {exc}") from None
    return pd.concat(frames, ignore_index=True)


def _declared_table(ctx: NodeContext, decl: DatasetDecl, task: TaskMessage | None) -> pd.DataFrame:
    from medfed.data.consent import table_for_task
    from medfed.node.datasets import DEFAULT_PURPOSE, read_registry

    purpose = DEFAULT_PURPOSE
    if task is not None and task.spec_toml:
        purpose = parse_job_spec(task.spec_toml, source_name=f"job {task.job_id}").purpose
    on = ctx.today()
    as_of = None if decl.as_of else pd.Timestamp(on, tz="UTC")
    table = table_for_task(decl, read_registry(ctx.state_dir), purpose=purpose, on=on, as_of=as_of)
    log.info(
        "site %s: dataset %s for a %r query: %d row(s) of %d patient(s) excluded by consent",
        ctx.site, decl.name, purpose, table.consent.rows_excluded, table.consent.patients_excluded,
    )  # fmt: skip
    return table.frame


def history_path(state_dir: Path, dataset: str) -> Path:
    return state_dir / "analytics" / f"{dataset}.answers.json"


def load_history(path: Path) -> AnswerHistory:
    """The persisted history, or an empty one when none was written yet."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return AnswerHistory()
    except OSError as exc:
        raise DataError(f"cannot read the answer history {path}: {exc}") from None
    return AnswerHistory.from_json(text)


#: (site, dataset) -> (job id, table): one job's rows, read once for all steps of an iterative fit
_tables: dict[tuple[str, str], tuple[str, pd.DataFrame]] = {}


def _job_table(ctx: NodeContext, task: TaskMessage) -> pd.DataFrame:
    """:func:`query_table` once per job: the steps of one fit see the same rows (as training reads
    a dataset once per job); the next job reads afresh (a consent withdrawal counts from then)."""
    key = (ctx.site, task.dataset)
    with _locks_guard:
        held = _tables.get(key)
    if held is not None and held[0] == task.job_id:
        return held[1]
    table = query_table(ctx, task.dataset, task)
    with _locks_guard:
        _tables[key] = (task.job_id, table)
    return table


def _lock(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(path, threading.Lock())


def _answer(task: TaskMessage, ctx: NodeContext, spec: QuerySpec) -> tuple[ResultMessage, str]:
    if ctx.state_dir is None:
        raise ConfigError(
            f"site {ctx.site!r} answers queries only with [node] state_dir set: it must record what it answered"
        )
    policy = ctx.disclosure or DisclosurePolicy()
    ledger = ctx.ledger
    budget = ledger.status(task.dataset) if ledger is not None else None
    if spec.dp is None and budget is not None:
        raise PermissionDenied(
            f"refused: dataset {task.dataset!r} at site {ctx.site!r} is released only under differential privacy "
            f"(budget ε={budget.epsilon_total:.4g}); this query asks for no DP"
        )
    if spec.dp is not None and (ledger is None or budget is None):
        raise BudgetExhausted(
            f"dataset {task.dataset!r} at site {ctx.site!r} has no privacy budget: the site admin must set "
            "epsilon_budget for it before a differentially private query may run"
        )
    table = _job_table(ctx, task)
    path = history_path(ctx.state_dir, task.dataset)
    charge = f"query-{task.task_id}"
    eps, delta = epsilon_cost(spec)
    metrics: dict[str, float] = {}
    with _lock(path):
        history = load_history(path)
        if ledger is not None and spec.dp is not None:
            ledger.reserve(task.dataset, charge, epsilon=eps, delta=delta)
            try:
                site_answer, new_history = answer(spec, table, policy, history, rng=secure_rng())
            except BaseException:
                ledger.close_job(task.dataset, charge)  # nothing was released: release the hold
                raise
            ledger.commit(task.dataset, charge, epsilon=eps, delta=delta, steps=1)
            ledger.close_job(task.dataset, charge)
            left = ledger.status(task.dataset)
            metrics = {"privacy_epsilon_spent": eps, "privacy_delta_spent": delta}
            if left is not None:
                metrics["privacy_epsilon_left"] = left.epsilon_left
        else:
            site_answer, new_history = answer(spec, table, policy, history, rng=secure_rng())
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, new_history.to_json().encode(), mode=PRIVATE)
    params, meta = site_answer.to_wire()
    result = ResultMessage(
        task_id=task.task_id,
        job_id=task.job_id,
        round=task.round,
        site=ctx.site,
        status=ResultStatus.OK,
        num_examples=0,  # the cohort's size is released only through the answer, under the policy
        metrics=meta | metrics,
        parameters=params,
    )
    return result, site_answer.digest()


def _audit(record: dict[str, Any]) -> None:
    audit.info("query %s", json.dumps(record, sort_keys=True), extra={"audit": record})


#: What an audit reason may hold (the log's TEXT field); anything else becomes a space.
_REASON_CHARS = re.compile(r"[^\w .,;:()=<>/'%+-]")
#: Digit runs the log would take for record numbers (in random task ids): shortened.
_LONG_DIGITS = re.compile(r"\d{6,}")


Fields = dict[str, str | int | float | bool]


def _chain(ctx: NodeContext, action: AuditAction, task: TaskMessage, fields: Fields, reason: str = "") -> None:
    """Append to the site's hash-chained audit log, if it keeps one (the governance link records
    every task's data access and result; this adds what only the query link knows)."""
    gov = ctx.governance
    if gov is None:
        return
    fields = fields | {"job_id": task.job_id, "round": task.round, "dataset": task.dataset}
    if not reason:
        gov.record(action, fields)
        return
    try:
        text = _LONG_DIGITS.sub(lambda m: m.group()[:5] + "x", _REASON_CHARS.sub(" ", reason))
        gov.record(action, fields | {"reason": text[:200]})
    except ValidationError:  # the reason text looks like an identifier to the log's PHI check
        gov.record(action, fields | {"reason": "refused by the site's disclosure policy or budget"})


__all__ = ["TABLE_FILES", "answer_queries", "history_path", "load_history", "query_table"]
