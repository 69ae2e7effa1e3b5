"""A fit round under secure aggregation: the four SecAgg+ stages over the real transport.

Each stage is a task to every site still in the round, with the stage message as payload::

    keys    → each node advertises two public keys          (sites that answer stay in)
    shares  → each node gets its neighbours' keys, returns encrypted key shares
    fit     → each node trains, quantises and masks its contribution; only the masked vector returns
    unmask  → the survivors reveal the shares that remove every mask, also of nodes that dropped

The coordinator sums masked vectors and learns only the sum of the survivors' contributions.
A site that vanishes before masking is left out; one that vanishes after masking is recovered
from its neighbours' shares; fewer survivors than the threshold (or ``rounds.min_nodes``) fail
the attempt, and the round is retried with fresh keys like any other round.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt

from medfed.coordinator.rounds import RoundInProgress, RoundKey
from medfed.core.errors import JobError, MedfedError, ValidationError
from medfed.core.params import Parameters
from medfed.core.records import ResultMessage, Scalar, SecureAggregationSpec, TaskKind
from medfed.secagg import (
    MaskedInput,
    NeighbourGraph,
    QuantizationConfig,
    SecAggError,
    SecAggParams,
    collect_keys,
    dequantize_parameters,
    route_shares,
    sum_masked,
    unmask,
    unmask_request,
)
from medfed.secagg.wire import (
    MASKED_NAME,
    ContributionForm,
    MaskStage,
    Stage,
    StageHeader,
    decode_advert,
    decode_bundle,
    decode_revealed,
    encode_keys_stage,
    encode_mask_stage,
    encode_shares_stage,
    encode_unmask_stage,
)

if TYPE_CHECKING:
    from medfed.coordinator.engine import JobRunner

__all__ = ["SecureRound", "default_threshold"]

log = logging.getLogger(__name__)

_EMPTY = Parameters((), ())
T = TypeVar("T")


def default_threshold(graph: NeighbourGraph) -> int:
    """Two thirds of each node's share holders, and always more than half of them."""
    low, high = graph.max_holders // 2 + 1, graph.min_holders
    return min(high, max(low, math.ceil(2 * high / 3)))


class _AttemptFailedError(Exception):
    """This attempt cannot finish (too few sites); a retry with fresh keys may."""


class SecureRound:
    """Runs one secure fit round of a job (with retries) through its runner's transport."""

    def __init__(self, runner: JobRunner, spec: SecureAggregationSpec) -> None:
        self.runner, self.spec = runner, spec

    def run(
        self, rnd: int, params: Parameters, template: Parameters, config: dict[str, Scalar]
    ) -> tuple[RoundInProgress, Parameters]:
        policy = self.runner.spec.policy
        reason = ""
        for attempt in range(policy.max_round_retries + 1):
            try:
                return self._attempt(rnd, attempt, params, template, config)
            except _AttemptFailedError as exc:
                reason = str(exc)
                log.warning("job %s round %d (secure, attempt %d): %s", self.runner.ctx.job_id, rnd, attempt + 1, exc)
        raise JobError(f"round {rnd} (secure aggregation) failed: {reason}")

    # --- one attempt ------------------------------------------------------------------------

    def _stage(
        self,
        rnd: int,
        attempt: int,
        kind: TaskKind,
        sites: list[str],
        payloads: dict[str, bytes],
        params: Parameters = _EMPTY,
        extra_config: dict[str, Scalar] | None = None,
    ) -> RoundInProgress:
        key = RoundKey(job_id=self.runner.ctx.job_id, round=rnd, kind=kind, attempt=attempt)
        return self.runner.run_round(
            key, params, sites=sites, payloads=payloads, keep_raw=True, extra_config=extra_config
        )

    def _ok(self, round_: RoundInProgress, ids: dict[str, int], need: int, what: str) -> dict[str, ResultMessage]:
        """The accepted results of a stage; too few of them fail the attempt."""
        got = {site: msg for site, msg in round_.raw.items() if site in ids}
        if len(got) < need:
            errors = "; ".join(f"{s}: {m.error}" for s, m in sorted(round_.results.items()) if m.error)
            missing = sorted(round_.pending)
            raise _AttemptFailedError(
                f"{what}: {len(got)} sites answered, {need} needed"
                + (f"; errors: {errors}" if errors else "")
                + (f"; no answer from {missing}" if missing else "")
            )
        return got

    def _attempt(
        self, rnd: int, attempt: int, params: Parameters, template: Parameters, config: dict[str, Scalar]
    ) -> tuple[RoundInProgress, Parameters]:
        runner, spec = self.runner, self.spec
        started = time.monotonic()
        min_nodes = max(2, runner.spec.policy.min_nodes)
        sites = sorted(runner.wait_for_sites(started + runner.spec.policy.deadline_s))
        if len(sites) < min_nodes:
            raise _AttemptFailedError(
                f"secure aggregation needs at least {min_nodes} sites (2, and rounds.min_nodes); "
                f"{len(sites)} eligible online"
            )
        ids = {site: i + 1 for i, site in enumerate(sites)}
        n = len(sites)
        if spec.neighbours and spec.neighbours < n - 1:
            graph = NeighbourGraph.harary(ids.values(), degree=spec.neighbours)
        else:
            graph = NeighbourGraph.complete(ids.values())
        threshold = spec.threshold or default_threshold(graph)
        session = f"{runner.ctx.job_id}/{rnd}/{attempt}".encode()
        try:
            sa = SecAggParams(graph=graph, threshold=threshold, vector_size=template.size, session=session)
            quant = QuantizationConfig(clip=spec.clip_range, max_summands=n, bits=spec.bits)
        except ValidationError as exc:  # the job's settings cannot work with this many sites
            raise JobError(f"round {rnd}: secure aggregation over {n} sites: {exc}") from None
        need = max(threshold, min_nodes)

        # stage 0: keys
        r0 = self._stage(rnd, attempt, TaskKind.SECAGG_KEYS, sites, {s: encode_keys_stage(sa, ids[s]) for s in sites})
        t_keys = time.monotonic()
        adverts = {}
        for site, msg in self._ok(r0, ids, need, "key advertisement").items():
            advert = self._decoded(decode_advert, msg, site)
            if advert.node != ids[site]:
                log.warning("site %s advertised keys for node %d, not its own %d", site, advert.node, ids[site])
                continue
            adverts[site] = advert
        roster = self._secagg(lambda: collect_keys(sa, adverts.values()))

        # stage 1: key shares
        alive = sorted(adverts)
        payloads = {s: encode_shares_stage(session, ids[s], roster.view_for(ids[s])) for s in alive}
        r1 = self._stage(rnd, attempt, TaskKind.SECAGG_SHARES, alive, payloads)
        t_shares = time.monotonic()
        bundles = [self._decoded(decode_bundle, m, s) for s, m in self._ok(r1, ids, need, "key sharing").items()]
        bundles = [b for b in bundles if b.sender in roster.adverts]
        routing = self._secagg(lambda: route_shares(roster, bundles))

        # stage 2: train, quantise, mask
        sharers = sorted(s for s in alive if ids[s] in {b.sender for b in bundles})
        form = ContributionForm(str(config.get("contribution.form", ContributionForm.WEIGHTED.value)))
        max_weight = int(config.get("contribution.max_weight", 1))
        payloads = {
            s: encode_mask_stage(
                MaskStage(
                    header=StageHeader(stage=Stage.MASK, session=session, node=ids[s]),
                    inbox=routing.inbox(ids[s]),
                    quantization=quant,
                    form=form,
                    max_weight=max_weight,
                )
            )
            for s in sharers
        }
        fit = self._stage(rnd, attempt, TaskKind.FIT, sharers, payloads, params=params, extra_config=config)
        masked = []
        for site, msg in self._ok(fit, ids, need, "masked input").items():
            vector = self._masked_vector(msg, site, template.size)
            if vector is not None:
                masked.append(MaskedInput(node=ids[site], vector=vector))
        t_fit = time.monotonic()
        total = self._secagg(lambda: sum_masked(routing, masked))
        request = unmask_request(total)

        # stage 3: unmask
        survivors = sorted(s for s in sharers if ids[s] in request.survivors)
        payloads = {s: encode_unmask_stage(session, ids[s], request) for s in survivors}
        r3 = self._stage(rnd, attempt, TaskKind.SECAGG_UNMASK, survivors, payloads)
        revealed = [self._decoded(decode_revealed, m, s) for s, m in self._ok(r3, ids, threshold, "unmasking").items()]
        vector = self._secagg(lambda: unmask(total, revealed))
        summed = dequantize_parameters(vector, quant, like=template, count=len(request.survivors))
        t_end = time.monotonic()
        fit.notes |= {
            "secagg_keys_s": t_keys - started,
            "secagg_shares_s": t_shares - t_keys,
            "secagg_fit_s": t_fit - t_shares,
            "secagg_unmask_s": t_end - t_fit,
            "secagg_sites": float(n),
            "secagg_survivors": float(len(request.survivors)),
            "secagg_dropped": float(len(request.dropped)),
            "secagg_threshold": float(threshold),
        }
        fit.duration_s = t_end - started
        return fit, summed

    # --- checks -----------------------------------------------------------------------------

    @staticmethod
    def _secagg(step: Callable[[], T]) -> T:
        try:
            return step()
        except (SecAggError, ValidationError) as exc:
            raise _AttemptFailedError(str(exc)) from None

    @staticmethod
    def _decoded(decode: Callable[..., T], msg: ResultMessage, site: str) -> T:
        try:
            return decode(msg.payload, where=f"secure aggregation message from site {site!r}")
        except MedfedError as exc:
            raise _AttemptFailedError(str(exc)) from None

    @staticmethod
    def _masked_vector(msg: ResultMessage, site: str, size: int) -> npt.NDArray[np.uint32] | None:
        p = msg.parameters
        if p is None or p.names != (MASKED_NAME,) or p.arrays[0].dtype != np.uint32 or p.arrays[0].shape != (size,):
            log.warning("site %s sent a malformed masked input; it counts as dropped", site)
            return None
        return p.arrays[0].view(np.uint32)
