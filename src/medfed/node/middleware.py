"""The node's policy chain: middleware around the task handler.

``Handler = (task, ctx) -> result``; ``Middleware = (task, ctx, next) -> result``. Cross-cutting
concerns wrap the handler instead of living inside it, and each link is small and tested alone.
Failures become error *values* in the result, so they travel to the coordinator.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from medfed.core.errors import DataError, MedfedError, PermissionDenied, TaskError, ValidationError, error_kind
from medfed.core.params import Parameters
from medfed.core.records import ResultMessage, ResultStatus, TaskKind, TaskMessage
from medfed.learn.base import TabularData, Task
from medfed.secagg.sessions import SecAggSessions

if TYPE_CHECKING:
    from pathlib import Path

    from medfed.analytics.policy import DisclosurePolicy
    from medfed.data.sources import DatasetDecl
    from medfed.node.datasets import JobData
    from medfed.node.governance import NodeGovernance
    from medfed.node.ledger import PrivacyLedger
    from medfed.node.runtime import DatasetConfig
    from medfed.synth.release import ReleasePolicy

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
    governance: NodeGovernance | None = None  # the site's audit log, policy and approvals; None: none kept
    secagg: SecAggSessions = field(default_factory=SecAggSessions)
    disclosure: DisclosurePolicy | None = None  # the site's policy for queries; None: the defaults
    synthetic: ReleasePolicy | None = None  # the site's [synthetic] release policy; None: the defaults
    state_dir: Path | None = None  # where the node persists what it answered (differencing protection)
    today: Callable[[], dt.date] = field(default=lambda: dt.datetime.now(dt.UTC).date())  # consent is dated
    _cache: dict[str, TabularData] = field(default_factory=dict)
    _tasks: dict[str, Task] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _current: TaskMessage | None = None  # the task being handled: declared datasets load per job
    _job_data: dict[tuple[str, str], JobData] = field(default_factory=dict)

    def begin(self, task: TaskMessage) -> None:
        """Note the task about to be handled (its job and purpose select a declared dataset's rows)."""
        self._current = task

    def dataset(self, name: str) -> TabularData:
        """The harmonised table of dataset ``name``: a legacy CSV directory is loaded once; a declared
        dataset once per job, consent-filtered for the job's purpose (a withdrawal counts from the next job)."""
        cfg = self.datasets.get(name)
        if cfg is None:
            raise DataError(
                f"dataset {name!r} is not configured at site {self.site!r} (configured: {sorted(self.datasets)})"
            )
        if cfg.decl is not None and self.data_loader is None:
            return self._declared(name, cfg.decl).data
        with self._lock:
            if name not in self._cache:
                if self.data_loader is not None:
                    self._cache[name] = self.data_loader(cfg)
                else:
                    from medfed.data.tabular import load_csv_dataset

                    self._cache[name] = load_csv_dataset(cfg.path, label=cfg.label)
            return self._cache[name]

    def _declared(self, name: str, decl: DatasetDecl) -> JobData:
        from medfed.core.config import parse_job_spec
        from medfed.node.datasets import DEFAULT_PURPOSE, load_for_job, read_registry

        task = self._current
        job_id = task.job_id if task is not None else ""
        with self._lock:
            if (name, job_id) not in self._job_data:
                spec_toml = getattr(task, "spec_toml", "")
                spec = parse_job_spec(spec_toml, source_name=f"job {job_id}") if spec_toml else None
                purpose = str(getattr(spec, "purpose", DEFAULT_PURPOSE))
                try:
                    loaded = load_for_job(
                        decl, read_registry(self.state_dir), purpose=purpose, on=self.today(), job_id=job_id
                    )
                except (DataError, ValidationError) as exc:
                    log.warning("site %s, job %s: dataset %s cannot be used:\n%s", self.site, job_id, name, exc)
                    raise DataError(site_safe_reason(name, exc)) from None
                log.info(
                    "site %s, job %s: dataset %s for purpose %r: %d row(s) of %d patient(s) excluded by consent",
                    self.site, job_id, name, purpose, loaded.consent.rows_excluded, loaded.consent.patients_excluded,
                )  # fmt: skip
                for key in [k for k in self._job_data if k[0] == name]:  # an older job's table: not needed again
                    del self._job_data[key]
                self._job_data[(name, job_id)] = loaded
            return self._job_data[(name, job_id)]

    def policy_metrics(self, name: str) -> dict[str, float]:
        """Counts of what consent and missing-value policies left out of a declared dataset for the
        current job (empty for legacy datasets)."""
        cfg = self.datasets.get(name)
        if cfg is None or cfg.decl is None or self.data_loader is not None:
            return {}
        return self._declared(name, cfg.decl).metrics()

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


def site_safe_reason(name: str, exc: DataError | ValidationError) -> str:
    """What the coordinator (and the researcher) may learn when a declared dataset fails at load.

    The full report names rows, files and cell values (a reader's own error can quote a line of
    the file): it stays in the site's log, where ``medfed data check`` shows it to the site admin.
    Rows never leave a site, not even inside an error message.
    """
    if isinstance(exc, ValidationError):
        what = f"failed validation ({len(exc.problems)} problem(s))"
    else:
        what = "could not be read"
    where = "its log and `medfed data check` say where (row values stay at the site)"
    return f"dataset {name!r} {what} at this site; {where}"


def error_result(task: TaskMessage, site: str, exc: BaseException) -> ResultMessage:
    refused = exc if isinstance(exc, PermissionDenied) else None
    return ResultMessage(
        task_id=task.task_id,
        job_id=task.job_id,
        round=task.round,
        site=site,
        status=ResultStatus.ERROR,
        error_kind=error_kind(exc),
        error_message=f"site {site!r}, round {task.round}: {exc}",
        refusal=None if refused is None else refused.refusal,
        refusal_spec="" if refused is None else refused.spec_hash,
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
    """errors → dataset selection (a tag selector resolved to this site's dataset) → audit → governance
    (site policy, approval, audit log) → queries, synthesis (answered here) → privacy budget →
    contribution (secure aggregation, client DP) → output check → task."""
    from medfed.node.governance import governance
    from medfed.node.privacy import privacy_budget
    from medfed.node.secure import secure_aggregation
    from medfed.node.selection import select_dataset

    return [
        errors_as_values, select_dataset, audit_log, governance, _answer_queries, _synthesize, privacy_budget,
        secure_aggregation, check_output,
    ]  # fmt: skip


# Analytics (scipy) and synthesis (scikit-learn) cost ~3 s of imports: a node loads them on its
# first query or synthesis task, not at start-up, so a restarted node rejoins a federation quickly.


def _answer_queries(task: TaskMessage, ctx: NodeContext, nxt: Handler) -> ResultMessage:
    if task.kind is not TaskKind.QUERY:
        return nxt(task, ctx)
    from medfed.node.analytics import answer_queries

    return answer_queries(task, ctx, nxt)


def _synthesize(task: TaskMessage, ctx: NodeContext, nxt: Handler) -> ResultMessage:
    if task.kind is not TaskKind.SYNTHESIZE:
        return nxt(task, ctx)
    from medfed.node.synthesis import synthesize

    return synthesize(task, ctx, nxt)


def run_task(task: TaskMessage, ctx: NodeContext) -> ResultMessage:
    """The innermost handler: evaluate the received model, then (for fit) train locally."""
    if task.kind.secagg_stage:
        raise TaskError(f"this node's policy chain has no secure-aggregation link for {task.kind.value!r}")
    data = ctx.dataset(task.dataset)
    impl = ctx.task(task.task)
    n_eval, ev = impl.evaluate(task.parameters, data, task.config)
    metrics = {f"eval_{k}": float(v) for k, v in ev.items()} | {"eval_examples": float(n_eval)}
    metrics |= ctx.policy_metrics(task.dataset)
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
