"""The privacy link of the node's policy chain: no DP release without the ledger.

For a job with a ``[privacy]`` table the node itself computes what each task costs on *its*
data (DP-SGD: Poisson sampling rate = batch size / train rows, steps = local steps; ε by the PLD
accountant at the job's δ), reserves the whole job's cost before the first step, tells the task
to run DP-SGD, and commits the real spend after each task. A dataset with a budget refuses jobs
without differential privacy; a DP job on a dataset without a budget is refused too (the data
owner has not said what may be spent). The spend travels back as metrics, so the job result
shows it per site.

A job that ends without its final evaluation here (it failed, was cancelled, or went on without
this site) leaves its reservation open. :func:`release_ended_jobs` gives the unspent rest back:
the node asks the coordinator which of its open reservations belong to jobs that are over (at
every registration and every few seconds while it holds any) and closes those in its ledger.
The node pulls rather than waits for a pushed "job ended" task because both facts already live
in durable stores (the ledger's open accounts, the coordinator's job states): nothing has to be
queued, and a node that was offline or restarted, or a coordinator that restarted, needs no
replay: the next question finds every ended job. The coordinator is not trusted with amounts:
the ledger releases only what the job reserved and did not commit, once; a job the coordinator
does not know keeps its hold; and a job said to be over cannot reserve again, so a false "ended"
can only stop that job, never overspend.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Collection, Mapping
from dataclasses import replace

import numpy as np

from medfed.core.errors import BudgetExhausted, ConfigError
from medfed.core.records import JobState, PrivacySpec, ResultMessage, TaskKind, TaskMessage
from medfed.learn.options import TrainOptions
from medfed.node.ledger import PrivacyLedger, Release
from medfed.node.middleware import Handler, NodeContext
from medfed.privacy.accounting import epsilon
from medfed.privacy.mechanisms import secure_rng
from medfed.secagg.wire import CLIENT_DP_PREFIX
from medfed.security.audit_events import AuditAction
from medfed.transport.api import BudgetFigures

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1024)
def dp_sgd_epsilon(spec: PrivacySpec, *, sampling_rate: float, steps: int) -> float:
    """ε of ``steps`` DP-SGD steps at ``sampling_rate`` (0 for no steps); PLD accountant.

    Cached: a PLD evaluation costs ~0.5 s here and the same job asks the same questions.
    """
    if steps <= 0:
        return 0.0
    return epsilon(noise_multiplier=spec.noise_multiplier, sampling_rate=sampling_rate, steps=steps, delta=spec.delta)


def _refuse_non_dp(task: TaskMessage, ctx: NodeContext, ledger: PrivacyLedger | None) -> None:
    status = ledger.status(task.dataset) if ledger is not None else None
    if status is not None:
        raise BudgetExhausted(
            f"dataset {task.dataset!r} at site {ctx.site!r} is released only under differential privacy "
            f"(budget ε={status.epsilon_total:.4g}, δ={status.delta_total:.3g}); the job has no [privacy] table"
        )


def privacy_budget(task: TaskMessage, ctx: NodeContext, nxt: Handler) -> ResultMessage:
    """Reserve before, commit after; refuse what the site's budget cannot pay."""
    ledger = ctx.ledger
    if task.kind.secagg_stage:  # keys and shares only: no data is touched, nothing is released
        return nxt(task, ctx)
    if task.privacy is None and _client_dp(task) is not None:
        return _client_level(task, ctx, nxt)
    if task.privacy is None:
        _refuse_non_dp(task, ctx, ledger)
        return nxt(task, ctx)
    if ledger is None or ledger.status(task.dataset) is None:
        raise BudgetExhausted(
            f"dataset {task.dataset!r} at site {ctx.site!r} has no privacy budget: the site admin must set "
            "epsilon_budget and delta_budget for it before a differentially private job may run"
        )
    spec = task.privacy
    if task.kind is TaskKind.EVALUATE:
        return _final_evaluation(task, ctx, nxt, ledger, eval_epsilon=spec.eval_epsilon, site_level=False)
    opts = TrainOptions.parse(task.config, with_hidden=True, where=f"task {task.task!r}")
    n_train = len(ctx.dataset(task.dataset).y_train)
    q = min(1.0, opts.batch_size / n_train)
    before = ledger.job(task.dataset, task.job_id)
    steps_before = before.steps if before is not None else 0
    rounds_before = steps_before // opts.local_steps
    # basic composition of the training (PLD over all DP-SGD steps) and the metric releases
    planned = dp_sgd_epsilon(spec, sampling_rate=q, steps=max(task.job_rounds * opts.local_steps, 1))
    planned += spec.eval_epsilon * (task.job_rounds + 1)
    after = dp_sgd_epsilon(spec, sampling_rate=q, steps=steps_before + opts.local_steps)
    after += spec.eval_epsilon * (rounds_before + 1)
    ledger.reserve(task.dataset, task.job_id, epsilon=max(planned, after), delta=spec.delta)
    config = dict(task.config) | {"dp_noise_multiplier": spec.noise_multiplier, "dp_clip_norm": spec.clip_norm}
    result = nxt(replace(task, config=config), ctx)
    if result.ok:
        ledger.commit(task.dataset, task.job_id, epsilon=after, delta=spec.delta, steps=steps_before + opts.local_steps)
        result = release_metrics(result, eval_epsilon=spec.eval_epsilon, site_level=False)
    return _with_spend(result, task, ledger)


#: Metrics a DP job's site may send as they are: counts the coordinator needs and the ledger's figures.
_PUBLIC_METRICS = ("eval_examples",)


def release_metrics(
    result: ResultMessage, *, eval_epsilon: float, site_level: bool, rng: np.random.Generator | None = None
) -> ResultMessage:
    """What a DP job's site sends of its metrics: the test accuracy with Laplace noise (ε =
    ``eval_epsilon``; the count of correct predictions changes by at most 1 when one patient
    changes, by the whole test size when the protected unit is the site (``site_level``)), example
    counts, and nothing else computed on its data.

    The noised accuracy is clipped to [0, 1] (post-processing); ``eval_accuracy_noise_scale`` says
    how noisy it is (Laplace scale in accuracy units), so that readers can judge it.
    """
    metrics = dict(result.metrics)
    out = {k: v for k, v in metrics.items() if k in _PUBLIC_METRICS or k.startswith("privacy_")}
    n, accuracy = metrics.get("eval_examples"), metrics.get("eval_accuracy")
    if eval_epsilon > 0 and n and accuracy is not None:
        rng = secure_rng() if rng is None else rng
        scale = (n if site_level else 1.0) / eval_epsilon
        noisy = accuracy * n + float(rng.laplace(0.0, scale))
        out["eval_accuracy"] = min(1.0, max(0.0, noisy / n))
        out["eval_accuracy_noise_scale"] = scale / n
    withheld = set(metrics) - set(out)
    out["metrics_withheld"] = float(len(withheld))
    return replace(result, metrics=out)


def _final_evaluation(
    task: TaskMessage, ctx: NodeContext, nxt: Handler, ledger: PrivacyLedger, *, eval_epsilon: float, site_level: bool
) -> ResultMessage:
    """The final model's evaluation: charge its one metric release, then close the job's hold."""
    job = ledger.job(task.dataset, task.job_id)
    spent = job.epsilon_spent if job is not None else 0.0
    delta = job.delta_spent if job is not None else 0.0
    steps = job.steps if job is not None else 0
    if eval_epsilon > 0:
        ledger.reserve(task.dataset, task.job_id, epsilon=spent + eval_epsilon, delta=delta)
    result = nxt(task, ctx)
    if result.ok and eval_epsilon > 0:
        ledger.commit(task.dataset, task.job_id, epsilon=spent + eval_epsilon, delta=delta, steps=steps)
    if result.ok:
        result = release_metrics(result, eval_epsilon=eval_epsilon, site_level=site_level)
    ledger.close_job(task.dataset, task.job_id)
    return _with_spend(result, task, ledger)


def _client_dp(task: TaskMessage) -> tuple[float, float, float] | None:
    """(z, δ, eval ε) of a client-level DP-FedAvg job from the task config, or ``None``."""
    z = task.config.get(CLIENT_DP_PREFIX + "dp_noise_multiplier")
    if z is None:
        return None
    delta = task.config.get(CLIENT_DP_PREFIX + "dp_delta", 1e-5)
    eval_eps = task.config.get(CLIENT_DP_PREFIX + "dp_eval_epsilon", 0.0)
    if (
        not isinstance(z, int | float)
        or not isinstance(delta, int | float)
        or not isinstance(eval_eps, int | float)
        or isinstance(z, bool)
        or not z > 0
        or not 0 < delta < 1
        or not eval_eps >= 0
    ):
        raise ConfigError(
            f"client-level DP config is malformed: noise multiplier {z!r}, delta {delta!r}, eval epsilon {eval_eps!r}"
        )
    return float(z), float(delta), float(eval_eps)


@functools.lru_cache(maxsize=256)
def client_dp_epsilon(noise_multiplier: float, *, rounds: int, delta: float) -> float:
    """ε of ``rounds`` client-level releases: every site takes part in every round (q = 1)."""
    if rounds <= 0:
        return 0.0
    return epsilon(noise_multiplier=noise_multiplier, sampling_rate=1.0, steps=rounds, delta=delta)


def _client_level(task: TaskMessage, ctx: NodeContext, nxt: Handler) -> ResultMessage:
    """Client-level DP-FedAvg: a site's whole dataset is the privacy unit, so the site's ledger
    pays the ε of the job's rounds (a guarantee for the site implies one for each of its patients).
    """
    ledger = ctx.ledger
    z, delta, eval_eps = _client_dp(task) or (0.0, 0.0, 0.0)
    if ledger is None or ledger.status(task.dataset) is None:
        # no budget set: nothing to charge, but the site-level guarantee still bounds what leaves
        result = nxt(task, ctx)
        return release_metrics(result, eval_epsilon=eval_eps, site_level=True)
    if task.kind is TaskKind.EVALUATE:
        return _final_evaluation(task, ctx, nxt, ledger, eval_epsilon=eval_eps, site_level=True)
    before = ledger.job(task.dataset, task.job_id)
    rounds_before = before.steps if before is not None else 0
    planned = client_dp_epsilon(z, rounds=max(task.job_rounds, 1), delta=delta) + eval_eps * (task.job_rounds + 1)
    after = client_dp_epsilon(z, rounds=rounds_before + 1, delta=delta) + eval_eps * (rounds_before + 1)
    ledger.reserve(task.dataset, task.job_id, epsilon=max(planned, after), delta=delta)
    result = nxt(task, ctx)
    if result.ok:
        ledger.commit(task.dataset, task.job_id, epsilon=after, delta=delta, steps=rounds_before + 1)
        result = release_metrics(result, eval_epsilon=eval_eps, site_level=True)
    return _with_spend(result, task, ledger)


def release_ended_jobs(ctx: NodeContext, ended: Mapping[str, str], *, asked: Collection[str]) -> list[Release]:
    """Close the ledger accounts of the jobs the coordinator says are over (``ended``: job id ->
    final state) and audit each release as ``budget.released``.

    Only answers about jobs the node ``asked`` about and in a finished :class:`JobState` count; the
    ledger computes each amount (reserved - committed), so nothing here can release more.
    """
    ledger = ctx.ledger
    if ledger is None:
        return []
    done: list[Release] = []
    for job_id, state in sorted(ended.items()):
        if job_id not in asked or state not in _FINISHED:
            log.warning("site %s: ignoring the coordinator's answer %r for job %r", ctx.site, state, job_id)
            continue
        for release in ledger.release_job(job_id, reason=f"job {state}"):
            done.append(release)
            if ctx.governance is not None:
                fields: dict[str, str | int | float | bool] = {"job_id": job_id, "dataset": release.dataset}
                fields |= {"outcome": state, "epsilon": release.epsilon, "delta": release.delta}
                ctx.governance.record(AuditAction.BUDGET_RELEASED, fields)
            log.info("site %s: job %s %s; released ε=%.4g of its hold on %s", ctx.site, job_id, state,
                     release.epsilon, release.dataset)  # fmt: skip
    return done


_FINISHED = frozenset(s.value for s in JobState if s.finished)


def budget_figures(ledger: PrivacyLedger | None) -> tuple[BudgetFigures, ...]:
    """The ledger's figures per dataset as the node reports them (numbers only, no patient data)."""
    if ledger is None:
        return ()
    keys = ("epsilon_total", "delta_total", "epsilon_used", "delta_used", "epsilon_held", "delta_held")
    return tuple(BudgetFigures(dataset=row[0], **dict(zip(keys, row[1:], strict=True))) for row in ledger.figures())


def _with_spend(result: ResultMessage, task: TaskMessage, ledger: PrivacyLedger) -> ResultMessage:
    job = ledger.job(task.dataset, task.job_id)
    status = ledger.status(task.dataset)
    if job is None or status is None or not result.ok:
        return result
    extra = {
        "privacy_epsilon_spent": job.epsilon_spent,
        "privacy_delta_spent": job.delta_spent,
        "privacy_epsilon_left": status.epsilon_left,
        "privacy_epsilon_total": status.epsilon_total,  # the site's budget, so the dashboard can show total/left
    }
    return replace(result, metrics=dict(result.metrics) | extra)
