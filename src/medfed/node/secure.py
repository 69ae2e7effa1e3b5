"""The node's contribution link: secure-aggregation masking and client-level DP, around the fit.

For a job whose updates the coordinator only sums (``[secure_aggregation]`` or ``[client_dp]``)
the node does not send its model. After the task trained, this middleware turns the model into a
*contribution*:

- ``weighted``: ``w·Δ`` and ``w`` with ``Δ = model − global`` and ``w = min(n / max_weight, 1)``,
  so the sum of contributions gives the example-weighted mean update (FedAvg's) and nothing else;
- ``dp``: DP-FedAvg's clipped update (plus its noise share in distributed mode), see
  :mod:`medfed.privacy.dpfedavg`.

With secure aggregation the contribution is quantised and masked (SecAgg+ stage 2) and only the
masked ``uint32`` vector leaves the site. The other stages (keys, key shares, unmasking) are
answered here without touching data or the task. Per-round secrets live in memory only, keyed by
the round's session, and are dropped after unmasking (or when newer rounds push them out).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, cast

import numpy as np

from medfed.core.errors import TaskError, ValidationError
from medfed.core.params import Parameters
from medfed.core.records import ResultMessage, ResultStatus, Scalar, TaskKind, TaskMessage
from medfed.node.middleware import Handler, NodeContext
from medfed.privacy.dpfedavg import DPAggregator
from medfed.privacy.mechanisms import combine, secure_rng
from medfed.secagg import advertise, mask_input, quantize_parameters, reveal_shares, share_keys
from medfed.secagg.node import NodeKeys, NodeMasked, NodeShared
from medfed.secagg.wire import (
    CLIENT_DP_PREFIX,
    CONTRIBUTION_FORM,
    CONTRIBUTION_MAX_WEIGHT,
    MASKED_NAME,
    WEIGHT_NAME,
    ContributionForm,
    Stage,
    decode_mask_stage,
    decode_params,
    decode_peers,
    decode_stage,
    decode_unmask,
    encode_advert,
    encode_bundle,
    encode_revealed,
)

if TYPE_CHECKING:
    from medfed.core.params import FloatArray

__all__ = [
    "contribution",
    "secure_aggregation",
]

log = logging.getLogger(__name__)


def _split_config(config: dict[str, Scalar]) -> tuple[dict[str, Scalar], dict[str, Scalar]]:
    """(what the task may see, the contribution keys)."""
    ours = {k: v for k, v in config.items() if k.startswith(("contribution.", CLIENT_DP_PREFIX + "dp_"))}
    return {k: v for k, v in config.items() if k not in ours}, ours


def contribution(
    global_params: Parameters, model: Parameters, num_examples: int, keys: dict[str, Scalar]
) -> tuple[Parameters, dict[str, float]]:
    """The contribution a node sums instead of sending ``model``, and metrics about it."""
    try:
        form = ContributionForm(str(keys.get(CONTRIBUTION_FORM)))
    except ValueError:
        allowed = [f.value for f in ContributionForm]
        raise ValidationError(f"{CONTRIBUTION_FORM} must be one of {allowed}", where="task config") from None
    delta = combine([model, global_params], template=global_params, weights=[1.0, -1.0])
    if form is ContributionForm.DP:
        dp_keys = {k.removeprefix(CLIENT_DP_PREFIX): v for k, v in keys.items() if k.startswith(CLIENT_DP_PREFIX)}
        rule, clip_norm = DPAggregator.from_node_config(dp_keys)
        # no metrics about the update: its norm is what adaptive clipping releases only with noise
        return rule.node_update(delta, clip_norm=clip_norm, rng=secure_rng()).to_parameters(), {}
    max_weight = keys.get(CONTRIBUTION_MAX_WEIGHT, 1)
    if isinstance(max_weight, bool) or not isinstance(max_weight, int) or max_weight < 1:
        raise ValidationError(f"{CONTRIBUTION_MAX_WEIGHT} must be an integer >= 1, got {max_weight!r}")
    w = min(num_examples / max_weight, 1.0)
    scaled = combine([delta], template=delta, weights=[w])
    packed = Parameters.from_arrays((*scaled.names, WEIGHT_NAME), (*scaled.arrays, np.asarray(w, dtype=np.float64)))
    return packed, {}


def _stage_result(task: TaskMessage, ctx: NodeContext, payload: bytes) -> ResultMessage:
    return ResultMessage(
        task_id=task.task_id,
        job_id=task.job_id,
        round=task.round,
        site=ctx.site,
        status=ResultStatus.OK,
        payload=payload,
    )


def secure_aggregation(task: TaskMessage, ctx: NodeContext, nxt: Handler) -> ResultMessage:
    """Answer the SecAgg+ stages; turn a fit's model into a (masked) contribution when asked."""
    sessions = ctx.secagg
    where = f"site {ctx.site!r}, job {task.job_id}, round {task.round}"
    if task.kind.secagg_stage:
        header = decode_stage(task.payload, where=where)
        if task.kind is TaskKind.SECAGG_KEYS and header.stage is Stage.KEYS:
            params = decode_params(task.payload, where=where)
            fresh, advert = advertise(params, header.node)
            sessions.put(header.session, fresh)
            return _stage_result(task, ctx, encode_advert(advert))
        if task.kind is TaskKind.SECAGG_SHARES and header.stage is Stage.SHARES:
            node_keys = sessions.get(header.session, NodeKeys, "shares")
            shared, bundle = share_keys(node_keys, decode_peers(task.payload, where=where))
            sessions.put(header.session, shared)
            return _stage_result(task, ctx, encode_bundle(bundle))
        if task.kind is TaskKind.SECAGG_UNMASK and header.stage is Stage.UNMASK:
            held = sessions.get(header.session, NodeMasked, "unmask")
            _, revealed = reveal_shares(held, decode_unmask(task.payload, where=where))
            sessions.drop(header.session)
            return _stage_result(task, ctx, encode_revealed(revealed))
        raise ValidationError(f"task kind {task.kind.value!r} carries a {header.stage.value!r} message", where=where)

    visible, keys = _split_config(dict(task.config))
    if task.kind is not TaskKind.FIT or not keys:
        if task.payload:
            raise ValidationError("only a fit of a summing job carries a secure-aggregation payload", where=where)
        return nxt(replace(task, config=visible) if keys else task, ctx)
    result = nxt(replace(task, config=visible), ctx)
    if not result.ok:
        return result
    if result.parameters is None:
        raise TaskError(f"{where}: task {task.task!r} returned no model to contribute")
    packed, extra = contribution(task.parameters, result.parameters, result.num_examples, keys)
    metrics = dict(result.metrics) | extra
    if not task.payload:  # client-level DP with central noise: the contribution goes out as is
        return replace(result, parameters=packed, metrics=metrics)
    stage = decode_mask_stage(task.payload, where=where)
    shared = sessions.get(stage.header.session, NodeShared, "mask")
    vector = quantize_parameters(packed, stage.quantization)
    flat = np.concatenate([a.ravel() for a in packed.arrays]) if len(packed) else np.zeros(0)
    metrics["secagg_clipped_fraction"] = float(np.mean(np.abs(flat) > stage.quantization.clip)) if flat.size else 0.0
    masked_state, masked = mask_input(shared, stage.inbox, vector)
    sessions.put(stage.header.session, masked_state)
    return replace(
        result,
        # uint32 is allowed on the wire for exactly this vector (FloatArray is the models' type)
        parameters=Parameters.from_arrays((MASKED_NAME,), (cast("FloatArray", masked.vector),)),
        metrics=metrics,
        payload=json.dumps({"node": masked.node}).encode(),
    )
