"""Governance at a site: its own policy, its admin's approval of each job spec, and its own
tamper-evident audit log, all checked before a task touches data.

The node does not take the coordinator's word for what a job is. Each task carries the job's
spec text; the node parses it itself, checks that the task asks for what the spec says (task,
dataset, rounds), and derives the :class:`~medfed.security.node_policy.JobFacts` its ``[policy]``
and :class:`~medfed.security.approvals.ApprovalStore` (``state_dir/approvals.db``) judge. An
unknown spec is recorded as pending and refused; once ``medfed approvals approve`` cleared it, a
resubmitted job with the same spec text runs.

With a ``state_dir`` the node keeps ``state_dir/audit.sqlite`` (hash chain, checkpoints signed by
``state_dir/audit-signing.key``): data accessed, refusals, and each result sent with the same
``update_sha256`` the coordinator records, so ``medfed audit participation`` can compare the two.

Approval is on by default: a site started from ``site.toml`` always has a policy (without a
``[policy]`` table, :meth:`NodePolicy.approval_only`), so every job needs its spec approved or a
standing rule. ``[policy] approval = "off"`` turns the step off; the node then writes a
``node.started`` event saying so at every start (and ``medfed node check`` warns). Before a task
reads a dataset, its current content fingerprint (:mod:`medfed.node.fingerprints`) must match the
one the approval pinned: a changed dataset refuses the task (``task.refused``, outcome
``dataset-changed``) and puts the spec back among those awaiting approval. A node built in
process without a policy (tests, simulations) has no approval step: it is not a site.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from medfed.core.config import parse_job_spec
from medfed.core.errors import (
    ConfigError,
    DataError,
    DatasetChanged,
    PermissionDenied,
    Refusal,
    StoreError,
    ValidationError,
)
from medfed.core.records import ResultMessage, TaskKind, TaskMessage
from medfed.crypto.signing import BAD_SIGNATURE, ModelSignature, model_digest, verify_model
from medfed.node.fingerprints import FingerprintCache
from medfed.node.selection import dataset_tags
from medfed.security.approvals import ApprovalStore, Clearance
from medfed.security.audit import AuditLog
from medfed.security.audit_events import AuditAction, AuditEvent
from medfed.security.node_policy import ApprovalMode, JobFacts, NodePolicy
from medfed.security.provision import open_signing_key

if TYPE_CHECKING:
    from medfed.node.middleware import Handler, NodeContext
    from medfed.node.runtime import DatasetConfig

__all__ = ["NodeGovernance", "governance", "job_facts", "open_governance"]

log = logging.getLogger(__name__)

Fields = dict[str, str | int | float | bool]


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeGovernance:
    """A site's audit log (when it has a state directory), policy and approvals (when it set a policy)."""

    site: str
    audit: AuditLog | None = None
    policy: NodePolicy | None = None
    approvals: ApprovalStore | None = None  # None with a policy: approval = "off"
    coordinator_key: bytes | None = None  # the kit's coordinator-signing.pub: every model must verify
    fingerprints: FingerprintCache = field(default_factory=FingerprintCache)

    def check_model(self, task: TaskMessage) -> None:
        """Refuse (:class:`StoreError`, one opaque reason) a model the coordinator did not sign for
        this job and round: unsigned, altered, signed by another key, or replayed from elsewhere."""
        if self.coordinator_key is None or task.kind in (TaskKind.QUERY, TaskKind.SYNTHESIZE):  # no model
            return
        try:
            signature = ModelSignature.from_json_bytes(task.model_signature) if task.model_signature else None
            provenance = verify_model(task.parameters, signature, self.coordinator_key)
            if (provenance.job_id, provenance.rounds) != (task.job_id, task.round - 1):
                raise StoreError(BAD_SIGNATURE)
        except (StoreError, ValidationError):
            self.record(AuditAction.MODEL_REFUSED, {"job_id": task.job_id, "round": task.round})
            raise StoreError(f"site {self.site!r} refuses the model of job {task.job_id!r}, round {task.round}: "
                             f"{BAD_SIGNATURE}") from None  # fmt: skip

    def record(self, action: AuditAction, fields: Fields) -> None:
        """Append to the site's audit log (no-op without one). A failure to audit fails the task."""
        if self.audit is not None:
            self.audit.append(AuditEvent(action=action, actor=self.site, fields={"site": self.site, **fields}))

    def clear(
        self, task: TaskMessage, *, tags: Sequence[str] = (), dataset: DatasetConfig | None = None
    ) -> Clearance | None:
        """Raise :class:`PermissionDenied` unless this site's policy and approvals admit ``task``'s job
        (``tags``: those of the dataset the task resolved to, checked against a tag selector;
        ``dataset``: the one it reads, whose fingerprint must match the approval's)."""
        if self.policy is None:
            return None
        facts = self._facts(task, tags)
        try:
            self.policy.check(facts)
        except PermissionDenied as exc:
            self._refused(task, Refusal.POLICY, facts.spec_hash, exc=exc)
            raise
        if self.approvals is None:  # approval = "off", audited at start
            return None
        current = self._fingerprint(task, dataset)
        try:
            return self.approvals.check(facts, fingerprint=current)
        except DatasetChanged as exc:
            changed: Fields = {"dataset": facts.dataset, "fingerprint": current,
                               "reason": f"dataset {facts.dataset} changed since approval"}  # fmt: skip
            self._refused(task, Refusal.DATASET_CHANGED, facts.spec_hash, changed, exc=exc)
            raise
        except PermissionDenied as exc:
            self._refused(task, Refusal.NOT_CLEARED, facts.spec_hash, exc=exc)
            raise

    def _fingerprint(self, task: TaskMessage, dataset: DatasetConfig | None) -> str:
        if dataset is None or task.kind in (TaskKind.SECAGG_KEYS, TaskKind.SECAGG_SHARES):  # no data read
            return ""
        try:
            return self.fingerprints.current(dataset)
        except DataError:
            return ""  # missing files: the task fails reading them, with the data layer's message

    def _facts(self, task: TaskMessage, tags: Sequence[str]) -> JobFacts:
        try:
            return job_facts(task, tags=tags)
        except PermissionDenied as exc:
            self._refused(task, Refusal.NO_SPEC if not task.spec_toml else Refusal.BAD_SPEC, "", exc=exc)
            raise

    def _refused(
        self,
        task: TaskMessage,
        why: Refusal,
        spec_hash: str,
        extra: Fields | None = None,
        *,
        exc: PermissionDenied,
    ) -> None:
        exc.refusal, exc.spec_hash = why, spec_hash  # travels on the error result (middleware.error_result)
        fields: Fields = {"job_id": task.job_id, "round": task.round, "outcome": why.value, **(extra or {})}
        if spec_hash:
            fields["spec_hash"] = spec_hash
        self.record(AuditAction.TASK_REFUSED, fields)

    def started(self) -> None:
        """Record the site's approval mode at start (``node.started``); loud when approval is off."""
        if self.policy is None:
            return
        fields: Fields = {"outcome": f"approval-{self.policy.approval.value}"}
        if self.policy.approval is ApprovalMode.OFF:
            fields["reason"] = "site approval is off (policy table of site.toml: approval = off)"
            log.warning("site %s: approval is OFF: jobs the [policy] admits run without the site admin's approval",
                        self.site)  # fmt: skip
        self.record(AuditAction.NODE_STARTED, fields)

    def checkpoint(self) -> None:
        """Sign the audit log's head, so entries since the last periodic checkpoint are anchored."""
        if self.audit is not None:
            self.audit.checkpoint()

    def close(self) -> None:
        """Sign the audit log's head and close the stores."""
        if self.audit is not None:
            self.audit.checkpoint()
            self.audit.close()
        if self.approvals is not None:
            self.approvals.close()


def job_facts(task: TaskMessage, *, tags: Sequence[str] = ()) -> JobFacts:
    """The facts a site judges, from the spec text the task carries (never from its labels alone).

    ``task.dataset`` is the site's own dataset (the selection link resolved a tag selector to it;
    ``tags`` are that dataset's tags): the facts name it, so policy and approvals key on it.

    Raises
    ------
    PermissionDenied
        The task carries no spec, the spec does not parse, or the task asks for another task,
        dataset or number of rounds than its spec says.
    """
    where = f"job {task.job_id!r}"
    if not task.spec_toml:
        raise PermissionDenied(f"{where}: the task carries no job spec, so this site cannot judge it")
    try:
        spec = parse_job_spec(task.spec_toml, source_name=f"spec of {where}")
    except ConfigError as exc:
        raise PermissionDenied(f"{where}: its spec does not parse here: {exc}") from None
    claimed = {"task": task.task}
    if task.job_rounds:
        claimed["rounds"] = str(task.job_rounds)
    actual = {"task": spec.task, "rounds": str(spec.rounds)}
    wrong = [f"{k} {v!r} (spec: {actual[k]!r})" for k, v in claimed.items() if v != actual[k]]
    if not spec.selector.matches(task.dataset, tags):
        wrong.append(f"dataset {task.dataset!r} (spec: {spec.dataset!r})")
    if wrong:
        raise PermissionDenied(f"{where}: the task does not match its spec: " + ", ".join(wrong))
    facts = JobFacts.from_spec(spec, job_id=task.job_id, researcher=task.owner, purpose=spec.purpose)
    return replace(facts, dataset=task.dataset)


def open_governance(
    site: str,
    *,
    state_dir: Path | None,
    policy: NodePolicy | None,
    coordinator_key: bytes | None = None,
    clock: Callable[[], float] = time.time,
) -> NodeGovernance | None:
    """The site's governance; ``None`` when it has nothing to check and no state directory to log in."""
    if state_dir is None:
        if policy is not None:
            raise ConfigError(f"site {site!r} sets a [policy]: the node needs [node] state_dir for its approvals")
        return None if coordinator_key is None else NodeGovernance(site=site, coordinator_key=coordinator_key)
    key = open_signing_key(state_dir / "audit-signing.key")
    audit = AuditLog(state_dir / "audit.sqlite", signer=key, clock=clock)
    approvals = None
    if policy is not None and policy.approval is ApprovalMode.REQUIRED:
        approvals = ApprovalStore(
            state_dir / "approvals.db", site=site, audit=_approval_note, clock=clock, audit_log=audit
        )
    gov = NodeGovernance(site=site, audit=audit, policy=policy, approvals=approvals, coordinator_key=coordinator_key)
    gov.started()
    return gov


def _spent(ctx: NodeContext, task: TaskMessage) -> tuple[float, float]:
    """(ε, δ) the ledger records as spent by ``task``'s job on its dataset; zeros without one."""
    job = ctx.ledger.job(task.dataset, task.job_id) if ctx.ledger is not None else None
    return (0.0, 0.0) if job is None else (job.epsilon_spent, job.delta_spent)


def _result_digest(result: ResultMessage) -> str:
    # the same digest as medfed.coordinator.audit_hooks.result_digest (a sibling package, so not
    # importable here); the participation tests compare what both sides recorded
    if result.parameters is not None:
        return model_digest(result.parameters)
    if result.payload:
        return hashlib.sha256(result.payload).hexdigest()
    return ""


def _approval_note(event: str, fields: Mapping[str, str | int | float | bool]) -> None:
    # the refusal that follows a pending spec goes to the audit log; this is the operator's hint
    log.info("%s %s", event, dict(fields))


def governance(task: TaskMessage, ctx: NodeContext, nxt: Handler) -> ResultMessage:
    """Policy link: clear the job (policy, approval), audit the access, audit the result sent."""
    gov = ctx.governance
    if gov is None:
        return nxt(task, ctx)
    clearance = gov.clear(
        task, tags=dataset_tags(ctx.datasets).get(task.dataset, ()), dataset=ctx.datasets.get(task.dataset)
    )
    gov.check_model(task)
    access: Fields = {"job_id": task.job_id, "round": task.round, "kind": task.kind.value}
    if task.kind is not TaskKind.SECAGG_KEYS and task.kind is not TaskKind.SECAGG_SHARES:
        access["dataset"] = task.dataset
    if clearance is not None:
        access["spec_hash"] = clearance.spec_hash
        if clearance.fingerprint:
            access["fingerprint"] = clearance.fingerprint
    gov.record(AuditAction.DATA_ACCESSED, access)
    before = _spent(ctx, task)
    result = nxt(task, ctx)
    after = _spent(ctx, task)
    # the privacy link committed a spend: say how much (a query's spend is recorded by the query link)
    if task.kind not in (TaskKind.QUERY, TaskKind.SYNTHESIZE) and (after[0] > before[0] or after[1] > before[1]):
        spend: Fields = {"job_id": task.job_id, "round": task.round, "dataset": task.dataset}
        gov.record(AuditAction.BUDGET_SPENT, spend | {"epsilon": after[0] - before[0], "delta": after[1] - before[1]})
    if result.ok:
        sent: Fields = {"job_id": task.job_id, "round": task.round, "ok": True}
        digest = _result_digest(result)
        if digest:
            sent["update_sha256"] = digest
        gov.record(AuditAction.RESULT_SENT, sent)
    return result
