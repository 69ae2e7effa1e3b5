"""The node's policy chain: middleware around the task handler.

``Handler = (task, ctx) -> result``; ``Middleware = (task, ctx, next) -> result``. Cross-cutting
concerns wrap the handler instead of living inside it, and each link is small and tested alone.
Failures become error *values* in the result, so they travel to the coordinator.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from medfed.core.errors import DataError, MedfedError, TaskError, ValidationError, error_kind
from medfed.core.params import Parameters
from medfed.core.records import ResultMessage, ResultStatus, TaskKind, TaskMessage
from medfed.learn.base import TabularData, Task
from medfed.secagg.sessions import SecAggSessions

if TYPE_CHECKING:
    from medfed.node.ledger import PrivacyLedger
    from medfed.node.runtime import DatasetConfig

log = logging.getLogger(__name__)

Handler = Callable[[TaskMessage, "NodeContext"], ResultMessage]
Middleware = Callable[[TaskMessage, "NodeContext", Handler], ResultMessage]


@dataclass(slots=True, kw_only=True)
class NodeContext:
    """What the handler may use at a site: its datasets and installed tasks."""

    site: str
    datasets: dict[str, DatasetConfig]
    task_loader: Callable[[str], Task]
    data_loader: Callable[[DatasetConfig], TabularData] | None = None
    ledger: PrivacyLedger | None = None
    secagg: SecAggSessions = field(default_factory=SecAggSessions)
    _cache: dict[str, TabularData] = field(default_factory=dict)
    _tasks: dict[str, Task] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def dataset(self, name: str) -> TabularData:
        """The harmonised table of dataset ``name``, loaded once."""
        cfg = self.datasets.get(name)
        if cfg is None:
            raise DataError(
                f"dataset {name!r} is not configured at site {self.site!r} (configured: {sorted(self.datasets)})"
            )
        with self._lock:
            if name not in self._cache:
                if self.data_loader is not None:
                    self._cache[name] = self.data_loader(cfg)
                else:
                    from medfed.data.tabular import load_csv_dataset

                    self._cache[name] = load_csv_dataset(cfg.path, label=cfg.label)
            return self._cache[name]

    def task(self, name: str) -> Task:
        """The installed task ``name``, loaded once (scanning entry points costs ~10 ms)."""
        with self._lock:
            if name not in self._tasks:
                self._tasks[name] = self.task_loader(name)
            return self._tasks[name]


def build_chain(handler: Handler, middleware: Sequence[Middleware]) -> Handler:
    """Wrap ``handler`` so that ``middleware[0]`` runs outermost."""
    wrapped = handler
    for mw in reversed(middleware):
        wrapped = _bind(mw, wrapped)
    return wrapped


def _bind(mw: Middleware, nxt: Handler) -> Handler:
    return lambda task, ctx: mw(task, ctx, nxt)


def error_result(task: TaskMessage, site: str, exc: BaseException) -> ResultMessage:
    return ResultMessage(
        task_id=task.task_id,
        job_id=task.job_id,
        round=task.round,
        site=site,
        status=ResultStatus.ERROR,
        error_kind=error_kind(exc),
        error_message=f"site {site!r}, round {task.round}: {exc}",
    )


def errors_as_values(task: TaskMessage, ctx: NodeContext, nxt: Handler) -> ResultMessage:
    """Outermost link: any failure becomes an error result the coordinator can report."""
    try:
        return nxt(task, ctx)
    except MedfedError as exc:
        log.warning("site %s, job %s, round %d: %s", ctx.site, task.job_id, task.round, exc)
        return error_result(task, ctx.site, exc)
    except Exception as exc:
        log.exception("site %s: task %s crashed", ctx.site, task.task)
        return error_result(task, ctx.site, exc)


def audit_log(task: TaskMessage, ctx: NodeContext, nxt: Handler) -> ResultMessage:
    """Log what ran on this site's data, how long it took and how it ended (never any rows)."""
    start = time.monotonic()
    result = nxt(task, ctx)
    log.info(
        "site=%s job=%s round=%d kind=%s task=%s dataset=%s status=%s examples=%d seconds=%.2f",
        ctx.site, task.job_id, task.round, task.kind.value, task.task, task.dataset,
        result.status.value, result.num_examples, time.monotonic() - start,
    )  # fmt: skip
    return result


def check_output(task: TaskMessage, ctx: NodeContext, nxt: Handler) -> ResultMessage:
    """Refuse to send parameters that do not match what we received or are not finite."""
    result = nxt(task, ctx)
    if result.ok and result.parameters is not None:
        task.parameters.check_like(result.parameters, where=f"task {task.task!r} output at site {ctx.site!r}")
    return result


def default_middleware() -> list[Middleware]:
    """errors → audit → privacy budget → contribution (secure aggregation, client DP) → output check → task."""
    from medfed.node.privacy import privacy_budget
    from medfed.node.secure import secure_aggregation

    return [errors_as_values, audit_log, privacy_budget, secure_aggregation, check_output]


def run_task(task: TaskMessage, ctx: NodeContext) -> ResultMessage:
    """The innermost handler: evaluate the received model, then (for fit) train locally."""
    if task.kind.secagg_stage:
        raise TaskError(f"this node's policy chain has no secure-aggregation link for {task.kind.value!r}")
    data = ctx.dataset(task.dataset)
    impl = ctx.task(task.task)
    n_eval, ev = impl.evaluate(task.parameters, data, task.config)
    metrics = {f"eval_{k}": float(v) for k, v in ev.items()} | {"eval_examples": float(n_eval)}
    if task.kind is TaskKind.EVALUATE:
        return _ok(task, ctx, num_examples=n_eval, metrics=metrics, parameters=None)
    out = impl.fit(task.parameters, data, task.config, task.seed)
    if out.num_examples <= 0:
        raise ValidationError(f"task {task.task!r} trained on {out.num_examples} examples")
    metrics |= {f"train_{k}": float(v) for k, v in out.metrics.items()}
    return _ok(task, ctx, num_examples=out.num_examples, metrics=metrics, parameters=out.parameters)


def _ok(
    task: TaskMessage, ctx: NodeContext, *, num_examples: int, metrics: dict[str, float], parameters: Parameters | None
) -> ResultMessage:
    return ResultMessage(
        task_id=task.task_id,
        job_id=task.job_id,
        round=task.round,
        site=ctx.site,
        status=ResultStatus.OK,
        num_examples=num_examples,
        metrics=metrics,
        parameters=parameters,
    )
