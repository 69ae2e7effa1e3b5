"""The round loop of one job: dispatch, wait (deadline, dropouts), aggregate, checkpoint, resume."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from medfed.aggregation.anomaly import AnomalyRecord
from medfed.aggregation.base import Strategy
from medfed.coordinator.audit_hooks import CoordinatorAudit
from medfed.coordinator.checkpoints import AtRest, load_checkpoint, save_checkpoint, save_model
from medfed.coordinator.nodes import NodeRegistry, matching_datasets
from medfed.coordinator.robustness import RobustPlan, aggregate_round, robust_plan
from medfed.coordinator.rounds import RoundInProgress, RoundKey
from medfed.coordinator.secure_rounds import SecureRound
from medfed.coordinator.store import Store
from medfed.core.errors import JobError, MedfedError
from medfed.core.params import Parameters
from medfed.core.records import JobSpec, JobState, RoundRecord, Scalar, TaskKind, TaskMessage
from medfed.learn.base import Task
from medfed.privacy.dpfedavg import AdaptiveClipping, DPContribution, DPFedAvg, NoiseMode
from medfed.privacy.mechanisms import combine
from medfed.secagg.wire import CLIENT_DP_PREFIX, CONTRIBUTION_FORM, CONTRIBUTION_MAX_WEIGHT, WEIGHT_NAME

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobContext:
    """What a runner needs besides its spec."""

    job_id: str
    store: Store
    nodes: NodeRegistry
    state_dir: Path
    rounds_by_task: dict[str, RoundInProgress]  # shared index: task_id -> open round
    lock: threading.Lock
    on_finish: Callable[[str], None]
    owner: str = ""  # the submitting user: sites' policies check it
    audit: CoordinatorAudit | None = None  # records the finish and signs the final model
    at_rest: AtRest | None = None  # seals checkpoints and the final model; None: plaintext


class JobRunner(threading.Thread):
    """Runs (or resumes) one job to the end in its own thread."""

    def __init__(self, spec: JobSpec, strategy: Strategy, task: Task, ctx: JobContext) -> None:
        super().__init__(name=f"job-{ctx.job_id}", daemon=True)
        self.spec, self.strategy, self.task, self.ctx = spec, strategy, task, ctx
        self.robust: RobustPlan | None = robust_plan(spec)  # ConfigError: checked at submission too
        self.dp: DPFedAvg | None = client_dp_rule(spec, strategy)
        self.cancelled = threading.Event()

    # --- entry -----------------------------------------------------------------------------

    def run(self) -> None:
        store, job_id = self.ctx.store, self.ctx.job_id
        store.set_job_state(job_id, JobState.RUNNING)
        try:
            self._run_rounds()
        except _CancelledError:
            store.set_job_state(job_id, JobState.CANCELLED, error="cancelled by a user")
        except MedfedError as exc:
            log.error("job %s failed: %s", job_id, exc)
            store.set_job_state(job_id, JobState.FAILED, error=str(exc))
        except Exception as exc:
            log.exception("job %s crashed", job_id)
            store.set_job_state(job_id, JobState.FAILED, error=f"internal error: {type(exc).__name__}: {exc}")
        else:
            store.set_job_state(job_id, JobState.COMPLETED)
        self._audit_finish()
        self.ctx.on_finish(job_id)

    def _audit_finish(self) -> None:
        row = self.ctx.store.job(self.ctx.job_id)
        if self.ctx.audit is not None and row is not None:
            try:
                self.ctx.audit.job_finished(job_id=self.ctx.job_id, state=row.state.value)
            except MedfedError as exc:  # the coordinator is stopping (log closed): the job's state stands
                log.warning("job %s: finish not audited: %s", self.ctx.job_id, exc)

    def _checkpoint_path(self, rnd: int) -> Path:
        return self.ctx.state_dir / "checkpoints" / self.ctx.job_id / f"round-{rnd:05d}.npz"

    def _start_point(self) -> tuple[int, Parameters, Parameters]:
        ck = self.ctx.store.latest_checkpoint(self.ctx.job_id)
        if ck is not None:
            rnd, stored, digest = ck
            params, state = load_checkpoint(Path(stored), digest, at_rest=self.ctx.at_rest)
            log.info("job %s resumes after round %d", self.ctx.job_id, rnd)
            return rnd, params, state
        params = self.task.init_parameters(dict(self.spec.task_options), self.spec.seed)
        state = self.dp.initial_state(params) if self.dp is not None else self.strategy.initial_state(params)
        path = self._checkpoint_path(0)
        digest = save_checkpoint(path, params, state, at_rest=self.ctx.at_rest)
        self.ctx.store.add_checkpoint(self.ctx.job_id, 0, str(path), digest)
        return 0, params, state

    def _run_rounds(self) -> None:
        done, params, state = self._start_point()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ckpt-{self.ctx.job_id}") as writer:
            pending: Future[None] | None = None
            for rnd in range(done + 1, self.spec.rounds + 1):
                anomalies: tuple[AnomalyRecord, ...] = ()
                if self.spec.sums_contributions:
                    round_, summed = self._contribution_round(rnd, params, state)
                    new_params, state = self._step_from_sum(rnd, params, summed, state)
                else:
                    round_ = self._round_with_retries(rnd, TaskKind.FIT, params)
                    mean, anomalies = self._round_mean(round_, rnd, params)
                    new_params, state = self.strategy.aggregate(rnd, params, mean, state)
                params.check_like(new_params, where=f"strategy {self.spec.strategy.name!r}, round {rnd}")
                params = new_params
                # The checkpoint (fsync included) is written while the next round runs; rounds are
                # committed in order, each only once its checkpoint is durable, so a crash resumes
                # from the last committed round and at most re-runs the one in flight.
                if pending is not None:
                    pending.result()
                pending = writer.submit(self._persist, round_, rnd, params, state, anomalies)
            if pending is not None:
                pending.result()
        final = self._round_with_retries(self.spec.rounds + 1, TaskKind.EVALUATE, params)
        self._record(final, self.spec.rounds + 1, checkpoint=None)
        model_path = self.ctx.state_dir / "models" / f"{self.ctx.job_id}.npz"
        save_model(model_path, params, at_rest=self.ctx.at_rest)
        if self.ctx.audit is not None:
            self.ctx.audit.sign_final_model(
                job_id=self.ctx.job_id, spec=self.spec, params=params, model_path=model_path
            )

    # --- summed contributions: secure aggregation, client-level DP -------------------------------

    def _contribution_template(self, params: Parameters) -> Parameters:
        """What one node's contribution (and their sum) looks like."""
        if self.dp is not None:
            return DPContribution(params, 0.0).to_parameters()
        return Parameters.from_arrays((*params.names, WEIGHT_NAME), (*params.arrays, np.zeros((), np.float64)))

    def _contribution_config(self, state: Parameters) -> dict[str, Scalar]:
        if self.dp is not None and self.spec.client_dp is not None:
            config: dict[str, Scalar] = {CLIENT_DP_PREFIX + k: v for k, v in self.dp.node_config(state).items()}
            config[CONTRIBUTION_FORM] = "dp"
            config[CLIENT_DP_PREFIX + "dp_delta"] = self.spec.client_dp.delta
            config[CLIENT_DP_PREFIX + "dp_eval_epsilon"] = self.spec.client_dp.eval_epsilon
            return config
        secure = self.spec.secure_aggregation
        return {CONTRIBUTION_FORM: "weighted", CONTRIBUTION_MAX_WEIGHT: secure.max_weight if secure else 1}

    def _contribution_round(
        self, rnd: int, params: Parameters, state: Parameters
    ) -> tuple[RoundInProgress, Parameters]:
        """Run a fit round whose nodes send contributions; return the round and their sum."""
        template = self._contribution_template(params)
        extra = self._contribution_config(state)
        if self.spec.secure_aggregation is not None:
            return SecureRound(self, self.spec.secure_aggregation).run(rnd, params, template, extra)
        round_ = self._round_with_retries(rnd, TaskKind.FIT, params, template=template, extra_config=extra)
        if round_.mean is None or round_.mean.count == 0:
            raise JobError(f"round {rnd}: no contributions to sum")
        count = round_.mean.count
        summed = combine([round_.mean.result()], template=template, weights=[float(count)])
        return round_, summed

    def _step_from_sum(
        self, rnd: int, params: Parameters, summed: Parameters, state: Parameters
    ) -> tuple[Parameters, Parameters]:
        """The strategy's step from the sum of this round's contributions."""
        if self.dp is not None:
            return self.dp.aggregate_sum(rnd, params, DPContribution.from_parameters(summed), state)
        weight = float(summed[WEIGHT_NAME])
        if not weight > 0:
            raise JobError(f"round {rnd}: the summed contribution weight is {weight}, not > 0")
        update = Parameters.from_arrays(summed.names[:-1], summed.arrays[:-1])
        proposal = combine([params, update], template=params, weights=[1.0, 1.0 / weight])
        return self.strategy.aggregate(rnd, params, proposal, state)

    def _round_mean(
        self, round_: RoundInProgress, rnd: int, current: Parameters
    ) -> tuple[Parameters, tuple[AnomalyRecord, ...]]:
        """What the strategy gets as the round's mean (robust or weighted) and the anomaly reports."""
        if round_.mean is None:
            raise JobError(f"round {rnd}: a fit round without a mean")
        mean = round_.mean.result()
        if self.robust is None:
            return mean, ()
        mean, anomalies = aggregate_round(self.robust, rnd, round_.kept, mean=mean, reference=current)
        round_.kept.clear()  # O(nodes × model): release before the next round gathers its own
        for a in anomalies:
            if a.flagged:
                log.warning("job %s round %d: update of site %s flagged: %s", self.ctx.job_id, rnd, a.site, a.reason)
        return mean, anomalies

    def _persist(
        self,
        round_: RoundInProgress,
        rnd: int,
        params: Parameters,
        state: Parameters,
        anomalies: tuple[AnomalyRecord, ...] = (),
    ) -> None:
        path = self._checkpoint_path(rnd)
        digest = save_checkpoint(path, params, state, at_rest=self.ctx.at_rest)
        self._record(round_, rnd, checkpoint=(str(path), digest), anomalies=anomalies)

    def _record(
        self,
        round_: RoundInProgress,
        rnd: int,
        *,
        checkpoint: tuple[str, str] | None,
        anomalies: tuple[AnomalyRecord, ...] = (),
    ) -> None:
        record = RoundRecord(
            job_id=self.ctx.job_id,
            round=rnd,
            kind=round_.key.kind,
            sites=round_.site_metrics(),
            aggregated=round_.aggregated_metrics(),
            duration_s=round_.duration_s,
        )
        self.ctx.store.complete_round(record, checkpoint=checkpoint, anomalies=anomalies)

    # --- one round -------------------------------------------------------------------------

    def _round_with_retries(
        self,
        rnd: int,
        kind: TaskKind,
        params: Parameters,
        *,
        template: Parameters | None = None,
        extra_config: dict[str, Scalar] | None = None,
    ) -> RoundInProgress:
        """Run a round; retry it (new tasks) while sites went missing, up to the policy's limit.

        When every asked site answered and too few succeeded, the errors are deterministic (a
        missing dataset, a bad configuration): retrying would only repeat them.
        """
        policy = self.spec.policy
        for attempt in range(policy.max_round_retries + 1):
            key = RoundKey(job_id=self.ctx.job_id, round=rnd, kind=kind, attempt=attempt)
            if template is None:
                round_ = self.run_round(key, params)
            else:
                round_ = self.run_round(key, params, template=template, unit_weights=True, extra_config=extra_config)
            if len(round_.ok_sites) >= policy.min_nodes:
                return round_
            errors = "; ".join(f"{s}: {m.error}" for s, m in sorted(round_.results.items()) if m.error)
            missing = sorted(round_.pending)
            reason = (
                f"{len(round_.ok_sites)} of min_nodes={policy.min_nodes} sites succeeded (attempt {attempt + 1})"
                + (f"; errors: {errors}" if errors else "")
                + (f"; no answer from {missing}" if missing else "")
                + ("" if round_.sites else f"; no eligible site online ({self._why_no_site()})")
            )
            log.warning("job %s round %d: %s", self.ctx.job_id, rnd, reason)
            self.ctx.store.record_refusals(self.ctx.job_id, rnd, kind, round_.site_metrics())
            if round_.sites and not missing:
                break
        raise JobError(f"round {rnd} ({kind.value}) failed: {reason}")

    def _why_no_site(self) -> str:
        """Say what the job needs and what the online sites offer (a dataset missing everywhere
        must be named, not reported as a bare timeout)."""
        online = self.ctx.nodes.online()
        if self.spec.sites:
            return f"the job asks for sites {list(self.spec.sites)}; online: {[n.site for n in online]}"
        selector = self.spec.selector
        if selector.by_tag:
            tagged = {n.site: {e.dataset: list(e.tags) for e in n.catalog} for n in online}
            offers = "; ".join(f"{site}'s catalog: {entries}" for site, entries in tagged.items())
        else:
            offers = "; ".join(f"{n.site} offers {list(n.datasets)}" for n in online)
        return f"no online site offers {selector.describe()}: {offers or 'no site is online'}"

    def _eligible_sites(self) -> list[str]:
        """The online sites to ask: those the job lists (a name-selected job asks them whatever they
        offer, as before; their error says what is missing), else those whose offer matches; a tag
        selector always needs a match, so a listed site without one takes no part."""
        online = self.ctx.nodes.online()
        selector = self.spec.selector
        if self.spec.sites:
            listed = [n for n in online if n.site in self.spec.sites]
            return [n.site for n in listed if not selector.by_tag or matching_datasets(n, selector)]
        return [n.site for n in online if matching_datasets(n, selector)]

    def wait_for_sites(self, deadline: float) -> list[str]:
        cond = self.ctx.nodes.cond
        with cond:
            while True:
                self._check_cancel()
                sites = self._eligible_sites()
                if len(sites) >= self.spec.policy.min_nodes or time.monotonic() >= deadline:
                    break
                cond.wait(min(1.0, max(deadline - time.monotonic(), 0.0)))
        self._record_matches()
        return sites

    def _record_matches(self) -> None:
        """Keep, per online site, which of its datasets the job's selector matched (none: the site
        takes no part), so the job's view says which sites matched; written only when it changed."""
        selector = self.spec.selector
        matches = {n.site: list(matching_datasets(n, selector)) for n in self.ctx.nodes.online()}
        known = self.ctx.store.dataset_matches(self.ctx.job_id)
        changed = {site: found for site, found in matches.items() if known.get(site) != sorted(found)}
        if changed:
            self.ctx.store.set_dataset_matches(self.ctx.job_id, changed)

    def run_round(
        self,
        key: RoundKey,
        params: Parameters,
        *,
        sites: list[str] | None = None,
        payloads: dict[str, bytes] | None = None,
        template: Parameters | None = None,
        unit_weights: bool = False,
        keep_raw: bool = False,
        extra_config: dict[str, Scalar] | None = None,
    ) -> RoundInProgress:
        """Send one task to each site (``sites``, or every eligible one), wait, collect.

        ``template`` is what fit results must look like (default: ``params``; ``None`` for the
        secure-aggregation stages, whose results the caller checks from ``keep_raw``).
        """
        started = time.monotonic()
        deadline = started + self.spec.policy.deadline_s
        if sites is None:
            sites = self.wait_for_sites(deadline)
        config = dict(self.spec.task_options)
        if key.kind is TaskKind.FIT:
            config |= self.strategy.fit_config(key.round) | (extra_config or {})
        elif key.kind is TaskKind.EVALUATE and self.spec.client_dp is not None:
            # the node closes the job's reservation in its ledger when it sees the final evaluation
            config[CLIENT_DP_PREFIX + "dp_noise_multiplier"] = self.spec.client_dp.noise_multiplier
            config[CLIENT_DP_PREFIX + "dp_delta"] = self.spec.client_dp.delta
            config[CLIENT_DP_PREFIX + "dp_eval_epsilon"] = self.spec.client_dp.eval_epsilon
        tasks = {uuid.uuid4().hex: site for site in sites}
        keep = self.robust is not None and key.kind is TaskKind.FIT
        expected = params if template is None and payloads is None else template
        round_ = RoundInProgress(key, tasks, expected, keep_updates=keep, unit_weights=unit_weights, keep_raw=keep_raw)
        with self.ctx.lock:
            self.ctx.rounds_by_task.update({tid: round_ for tid in tasks})
        signed = b""
        if self.ctx.audit is not None:  # one signature per round: every site gets the same model
            signed = self.ctx.audit.sign_round_model(
                job_id=self.ctx.job_id, spec=self.spec, aggregated=key.round - 1, params=params
            )
        for task_id, site in tasks.items():
            message = replace(self._task(task_id, key, config, params), model_signature=signed)
            if payloads is not None:
                message = replace(message, payload=payloads[site])
            self.ctx.nodes.enqueue(site, message)
        try:
            self._await(round_, deadline)
        finally:
            round_.close()
            self.ctx.nodes.withdraw(set(tasks))
            with self.ctx.lock:
                for tid in tasks:
                    self.ctx.rounds_by_task.pop(tid, None)
        round_.duration_s = time.monotonic() - started
        return round_

    def _task(self, task_id: str, key: RoundKey, config: dict[str, Scalar], params: Parameters) -> TaskMessage:
        return TaskMessage(
            task_id=task_id,
            job_id=key.job_id,
            round=key.round,
            kind=key.kind,
            task=self.spec.task,
            dataset=self.spec.dataset,
            job_rounds=self.spec.rounds,
            privacy=self.spec.privacy,
            seed=self.spec.seed * 1_000_003 + key.round,
            config=config,
            parameters=params,
            spec_toml=self.spec.source,
            owner=self.ctx.owner,
        )

    def _await(self, round_: RoundInProgress, deadline: float) -> None:
        """Wait until every asked site answered, the deadline passed, or the rest went silent."""
        cond = self.ctx.nodes.cond
        with cond:
            while True:
                self._check_cancel()
                pending = round_.pending
                if not pending:
                    return
                if all(not self.ctx.nodes.alive(s) for s in pending):
                    log.warning("round %d: %s stopped heartbeating", round_.key.round, sorted(pending))
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("round %d: deadline passed waiting for %s", round_.key.round, sorted(pending))
                    return
                cond.wait(min(remaining, self.ctx.nodes.stale_after_s / 2))

    def _check_cancel(self) -> None:
        if self.cancelled.is_set():
            raise _CancelledError


class _CancelledError(Exception):
    pass


def client_dp_rule(spec: JobSpec, strategy: Strategy) -> DPFedAvg | None:
    """The job's DP-FedAvg around ``strategy`` (its ``[client_dp]`` table), or ``None``."""
    cdp = spec.client_dp
    if cdp is None:
        return None
    adaptive = (
        AdaptiveClipping(target_quantile=cdp.target_quantile, learning_rate=cdp.clip_learning_rate)
        if cdp.adaptive
        else None
    )
    return DPFedAvg(
        inner=strategy,
        clip_norm=cdp.clip_norm,
        noise_multiplier=cdp.noise_multiplier,
        expected_nodes=cdp.expected_nodes,
        mode=NoiseMode(cdp.noise),
        adaptive=adaptive,
    )
