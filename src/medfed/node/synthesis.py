"""Federated synthesis at a node: answer a :attr:`~medfed.core.records.TaskKind.SYNTHESIZE` task.

The task's payload is the job's ``[synthesis]`` table (:class:`medfed.synth.job.SynthesisSpec`).
The link does what ``medfed synth fit --site-config`` and ``medfed synth release`` do, in one step:

1. reserve the fit's planned (ε, δ) on the dataset's privacy ledger *before* any row is read
   (:class:`BudgetExhausted`, nothing charged, when the budget cannot pay or none is set);
2. read the site's dataset (its training split; a declared dataset through the consent filter
   of the job's purpose), fit MST or AIM, commit the fit's cost (charged even if the fit fails
   after reading data);
3. sample the requested rows, evaluate them against the site's own test split (never used to fit)
   and apply the site's ``[synthetic]`` release policy (:func:`medfed.synth.prepare_release`);
4. send **only released rows**: CSV in ``ResultMessage.payload`` (capped at
   :data:`MAX_RELEASE_BYTES`, whole rows), with the DP cost, the row counts and the gate's scores
   as metrics. A blocked release is an error value (:class:`PermissionDenied`) with every reason:
   the coordinator leaves the site out. Its ledger stays charged: the fit did read the data.

The spend and the release decision are appended to the site's hash-chained audit log when it keeps
one (``budget.spent``, ``data.exported``); with a state directory, the evaluation's HTML report is
written to ``<state_dir>/synthesis/<job id>.html`` (real marginals: it stays at the site).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from medfed.core.errors import BudgetExhausted, ConfigError, PermissionDenied, ValidationError
from medfed.core.records import ResultMessage, ResultStatus, TaskKind, TaskMessage
from medfed.learn.base import TabularData
from medfed.node.middleware import Handler, NodeContext
from medfed.privacy.mechanisms import secure_rng
from medfed.security.audit_events import AuditAction
from medfed.security.fsio import PRIVATE, atomic_write
from medfed.synth.domain import infer_schema
from medfed.synth.evaluate import evaluate
from medfed.synth.job import SynthesisSpec
from medfed.synth.release import ReleasePolicy, prepare_release
from medfed.synth.report import ReportInput, render
from medfed.synth.synthesizer import fit, planned_cost
from medfed.transport.codec import MAX_PAYLOAD_BYTES

log = logging.getLogger(__name__)

#: The released CSV's size limit: the transport's payload limit, less room for nothing else.
MAX_RELEASE_BYTES = MAX_PAYLOAD_BYTES
_REASON_CHARS = re.compile(r"[^\w .,;:()=<>/'%+-]")


def synthesize(task: TaskMessage, ctx: NodeContext, nxt: Handler) -> ResultMessage:
    """Answer a synthesis task here; pass every other task on."""
    if task.kind is not TaskKind.SYNTHESIZE:
        return nxt(task, ctx)
    spec = SynthesisSpec.from_json(task.payload)
    ledger = ctx.ledger
    budget = ledger.status(task.dataset) if ledger is not None else None
    if ledger is None or budget is None:
        raise BudgetExhausted(
            f"dataset {task.dataset!r} at site {ctx.site!r} has no privacy budget: the site admin must set "
            "epsilon_budget for it before a synthesizer may be fitted to it"
        )
    charge = f"synth-{task.task_id[:16]}"
    cost = planned_cost(spec.config())
    ledger.reserve(task.dataset, charge, epsilon=cost.epsilon, delta=cost.delta)  # BudgetExhausted: nothing held
    try:
        train, holdout = site_frames(ctx.dataset(task.dataset), spec.target)
        schema = spec.schema or infer_schema(train)
        if set(schema.names) != set(train.columns):
            raise ValidationError(
                f"the job's schema has columns {sorted(schema.names)}, the dataset {sorted(train.columns)}",
                where=f"site {ctx.site!r} dataset {task.dataset!r}",
            )
    except BaseException:
        ledger.close_job(task.dataset, charge)  # no row was measured: nothing spent
        raise
    rng = secure_rng()
    try:
        fitted = fit(train[list(schema.names)], schema, spec.config(), rng)
    except BaseException:
        ledger.commit(task.dataset, charge, epsilon=cost.epsilon, delta=cost.delta, steps=1)
        ledger.close_job(task.dataset, charge)
        raise
    ledger.commit(task.dataset, charge, epsilon=fitted.cost.epsilon, delta=fitted.cost.delta, steps=1)
    ledger.close_job(task.dataset, charge)
    spent: Fields = {"kind": "synthetic", "method": fitted.method.value, "epsilon": fitted.cost.epsilon}
    _chain(ctx, AuditAction.BUDGET_SPENT, task, spent | {"delta": fitted.cost.delta})
    synthetic = fitted.sample(spec.rows, rng)[list(train.columns)]
    evaluation = evaluate(
        train=train, holdout=holdout, synthetic=synthetic, target=spec.target, subgroups=spec.subgroup_specs()
    )
    policy = ctx.synthetic or ReleasePolicy()
    decision = prepare_release(
        train=train, synthetic=synthetic, evaluation=evaluation, policy=policy, differentially_private=True
    )
    if ctx.state_dir is not None:  # the site's own document: it shows real marginals, so it stays here
        page = render(
            ReportInput(
                title=f"Synthetic data of {task.dataset!r} for job {task.job_id}", method=fitted.method.value,
                epsilon=fitted.cost.epsilon, delta=fitted.cost.delta, train=train, synthetic=synthetic,
                evaluation=evaluation, release_reasons=decision.reasons, dropped_copies=decision.dropped_copies,
            )
        )  # fmt: skip
        path = report_path(ctx.state_dir, task.job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, page.encode("utf-8"), mode=PRIVATE)
    fields: dict[str, str | int | float | bool] = {"kind": "synthetic", "ok": decision.released}
    if not decision.released:
        reasons = "; ".join(decision.reasons)
        log.warning("site %s job %s: synthetic release blocked: %s", ctx.site, task.job_id, reasons)
        _chain(ctx, AuditAction.DATA_EXPORTED, task, fields | {"outcome": "blocked"}, reason=reasons)
        raise PermissionDenied(f"release blocked by site {ctx.site!r}: {reasons}")
    data, rows = capped_csv(decision.rows, MAX_RELEASE_BYTES)
    _chain(ctx, AuditAction.DATA_EXPORTED, task, fields | {"outcome": "released", "rows": rows})
    left = ledger.status(task.dataset)
    lr = evaluation.utility.get("logistic_regression", {})
    metrics = {
        "privacy_epsilon_spent": fitted.cost.epsilon,
        "privacy_delta_spent": fitted.cost.delta,
        "synth_rows": float(rows),
        "synth_dropped_copies": float(decision.dropped_copies),
        "synth_mia_auc": evaluation.mia_auc,
        "synth_workload_error": evaluation.workload_error,
        "synth_tstr_auc": float(lr.get("tstr_auc", float("nan"))),
        "synth_trtr_auc": float(lr.get("trtr_auc", float("nan"))),
    }
    if left is not None:
        metrics["privacy_epsilon_left"] = left.epsilon_left
    log.info("site %s job %s: %d synthetic rows released (ε=%.4g)", ctx.site, task.job_id, rows, fitted.cost.epsilon)
    return ResultMessage(
        task_id=task.task_id,
        job_id=task.job_id,
        round=task.round,
        site=ctx.site,
        status=ResultStatus.OK,
        num_examples=0,  # the site's row count is not released
        metrics=metrics,
        payload=data,
    )


def report_path(state_dir: Path, job_id: str) -> Path:
    """Where a node keeps the HTML report of its synthesis for ``job_id`` (released or blocked)."""
    return state_dir / "synthesis" / f"{job_id}.html"


def site_frames(data: TabularData, target: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The site's training rows (to fit) and test rows (the holdout), features by name plus ``target``.

    Raises
    ------
    ConfigError
        ``target`` is also a feature's name.
    """
    if target in data.feature_names:
        raise ConfigError(f"[synthesis] target {target!r} is a feature of the dataset; name the label column")

    def frame(x: np.ndarray, y: np.ndarray) -> pd.DataFrame:
        df = pd.DataFrame(np.asarray(x, dtype=np.float64), columns=list(data.feature_names))
        df[target] = np.asarray(y, dtype=np.int64)
        return df

    return frame(data.x_train, data.y_train), frame(data.x_test, data.y_test)


def capped_csv(rows: pd.DataFrame, limit: int) -> tuple[bytes, int]:
    """``rows`` as CSV bytes of at most ``limit`` bytes (whole rows, the first ones), and how many."""
    data = rows.to_csv(index=False).encode("utf-8")
    if len(data) <= limit:
        return data, len(rows)
    lines = data.split(b"\n")
    size, kept = len(lines[0]) + 1, 0
    for line in lines[1:]:
        if not line or size + len(line) + 1 > limit:
            break
        size += len(line) + 1
        kept += 1
    log.warning("synthetic rows capped at %d of %d to fit %d bytes", kept, len(rows), limit)
    return b"\n".join(lines[: kept + 1]) + b"\n", kept


Fields = dict[str, str | int | float | bool]


def _chain(ctx: NodeContext, action: AuditAction, task: TaskMessage, fields: Fields, reason: str = "") -> None:
    """Append to the site's hash-chained audit log, if it keeps one."""
    gov = ctx.governance
    if gov is None:
        return
    fields = fields | {"job_id": task.job_id, "round": task.round, "dataset": task.dataset}
    if not reason:
        gov.record(action, fields)
        return
    try:
        gov.record(action, fields | {"reason": _REASON_CHARS.sub(" ", reason)[:200]})
    except ValidationError:  # the reason text looks like an identifier to the log's PHI check
        gov.record(action, fields | {"reason": "blocked by the site's synthetic release policy"})


__all__ = ["MAX_RELEASE_BYTES", "capped_csv", "report_path", "site_frames", "synthesize"]
