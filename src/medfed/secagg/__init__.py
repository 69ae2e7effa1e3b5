"""medfed.secagg: secure aggregation (SecAgg+, Bell et al. 2020; Bonawitz et al. 2017) as pure stages.

Nodes quantise their updates (:mod:`~medfed.secagg.quantize`), mask them with a self mask and
pairwise masks from a fast PRG, and Shamir-share the seeds among their neighbours so that the
coordinator can sum the masked inputs and remove every mask, also those of nodes that drop after
masking, without ever seeing one node's update. No stage sleeps, polls or touches the network;
randomness is injected (``rng``, the OS CSPRNG by default).
"""

from medfed.secagg.coordinator import (
    KeyRoster,
    MaskedTotal,
    ShareRouting,
    collect_keys,
    route_shares,
    sum_masked,
    unmask,
    unmask_request,
)
from medfed.secagg.errors import SecAggError, UnmaskRefused
from medfed.secagg.graph import NeighbourGraph
from medfed.secagg.messages import (
    CoordinatorMessage,
    EncryptedShare,
    KeyAdvertisement,
    MaskedInput,
    RevealedShares,
    SecAggParams,
    ShareBundle,
    UnmaskRequest,
)
from medfed.secagg.node import (
    NodeKeys,
    NodeMasked,
    NodeShared,
    ShareKind,
    advertise,
    mask_input,
    reveal_shares,
    share_keys,
)
from medfed.secagg.protocol import RoundOutcome, run_round
from medfed.secagg.quantize import (
    QuantizationConfig,
    Rounding,
    dequantize_parameters,
    dequantize_sum,
    quantize,
    quantize_parameters,
)

__all__ = [
    "CoordinatorMessage",
    "EncryptedShare",
    "KeyAdvertisement",
    "KeyRoster",
    "MaskedInput",
    "MaskedTotal",
    "NeighbourGraph",
    "NodeKeys",
    "NodeMasked",
    "NodeShared",
    "QuantizationConfig",
    "RevealedShares",
    "RoundOutcome",
    "Rounding",
    "SecAggError",
    "SecAggParams",
    "ShareBundle",
    "ShareKind",
    "ShareRouting",
    "UnmaskRefused",
    "UnmaskRequest",
    "advertise",
    "collect_keys",
    "dequantize_parameters",
    "dequantize_sum",
    "mask_input",
    "quantize",
    "quantize_parameters",
    "reveal_shares",
    "route_shares",
    "run_round",
    "share_keys",
    "sum_masked",
    "unmask",
    "unmask_request",
]
