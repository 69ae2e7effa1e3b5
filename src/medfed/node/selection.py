"""The dataset-selection link of the node's policy chain: the node, not the coordinator, decides
which of its datasets a job uses.

A task names a :class:`~medfed.core.selectors.DatasetSelector` by its label (``TaskMessage.dataset``).
A name passes through unchanged. A tag selector (``tags:adult,cardiology``) is checked against the
job's spec text the task carries, then resolved against this site's declared datasets and their
``tags`` in ``site.toml``: exactly one must match, else the task is refused with the candidates
named. Every later link (governance, approvals, the privacy ledger, the task) sees the resolved
name, so a site's policy, approvals and budgets keep keying on its own dataset names.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from medfed.core.config import parse_job_spec
from medfed.core.errors import ConfigError, PermissionDenied, Refusal, ValidationError
from medfed.core.records import ResultMessage, TaskMessage
from medfed.core.selectors import DatasetSelector
from medfed.security.audit_events import AuditAction

if TYPE_CHECKING:
    from medfed.node.middleware import Handler, NodeContext
    from medfed.node.runtime import DatasetConfig

__all__ = ["dataset_tags", "resolve_dataset", "select_dataset"]

log = logging.getLogger(__name__)


def dataset_tags(datasets: Mapping[str, DatasetConfig]) -> dict[str, tuple[str, ...]]:
    """Each configured dataset's tags (a legacy CSV directory has none)."""
    return {name: cfg.decl.tags if cfg.decl is not None else () for name, cfg in datasets.items()}


def resolve_dataset(task: TaskMessage, site: str, datasets: Mapping[str, DatasetConfig]) -> str:
    """The name of the dataset at ``site`` that ``task``'s selector picks.

    Raises
    ------
    ValidationError
        The task's selector label is malformed.
    PermissionDenied
        A tag-selected task whose spec text selects something else (or does not parse).
    DataError
        No dataset here carries the tags, or several do (named).
    """
    try:
        selector = DatasetSelector.from_label(task.dataset)
    except ConfigError as exc:
        raise ValidationError(f"task of job {task.job_id!r}: dataset selector {task.dataset!r}: {exc}") from None
    if not selector.by_tag:
        return selector.name
    if task.spec_toml:  # the spec, not the coordinator's label, says what the job selects
        try:
            spec = parse_job_spec(task.spec_toml, source_name=f"spec of job {task.job_id!r}")
        except ConfigError as exc:
            raise PermissionDenied(f"job {task.job_id!r}: its spec does not parse here: {exc}") from None
        if spec.dataset != task.dataset:
            raise PermissionDenied(
                f"job {task.job_id!r}: the task selects {task.dataset!r} but its spec selects {spec.dataset!r}"
            )
    return selector.resolve(dataset_tags(datasets), site=site)


def select_dataset(task: TaskMessage, ctx: NodeContext, nxt: Handler) -> ResultMessage:
    """Resolve the task's dataset selector here; the rest of the chain sees the site's own name.
    A task whose selector disagrees with its spec is refused and, with a site audit log, recorded
    there as governance records a task that asks for something its spec does not say."""
    try:
        name = resolve_dataset(task, ctx.site, ctx.datasets)
    except PermissionDenied:
        if ctx.governance is not None:
            fields: dict[str, str | int | float | bool] = {"job_id": task.job_id, "round": task.round}
            ctx.governance.record(AuditAction.TASK_REFUSED, fields | {"outcome": Refusal.BAD_SPEC.value})
        raise
    if name == task.dataset:
        return nxt(task, ctx)
    log.debug("site %s, job %s: %s -> dataset %r", ctx.site, task.job_id, task.dataset, name)
    return nxt(replace(task, dataset=name), ctx)
