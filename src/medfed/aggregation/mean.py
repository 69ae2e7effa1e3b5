"""Streaming example-weighted mean: add results as they arrive, O(model) memory."""

from __future__ import annotations

import threading

import numpy as np

from medfed.core.errors import ValidationError
from medfed.core.params import FloatArray, Parameters

#: Elements scaled per step: bounds the scratch buffer (8 MiB of float64) whatever the model size.
_CHUNK = 1 << 20


class WeightedMean:
    """Accumulates ``sum(w_i * x_i) / sum(w_i)`` in float64, thread-safe.

    Each :meth:`add` checks the result against the template (names, shapes, finiteness) before it
    touches the sums, so a bad result is refused whole and leaves the accumulator unchanged.
    """

    def __init__(self, template: Parameters) -> None:
        self._template = template
        self._sums: list[FloatArray] = [np.zeros(a.shape, dtype=np.float64) for a in template.arrays]
        largest = max((a.size for a in template.arrays), default=0)
        self._scratch = np.empty(min(largest, _CHUNK), dtype=np.float64)
        self._weight = 0.0
        self._count = 0
        self._lock = threading.Lock()

    def add(self, params: Parameters, weight: float, *, where: str = "") -> None:
        """Add one result with weight ``weight`` (> 0), or raise :class:`ValidationError`."""
        if isinstance(weight, bool) or not weight > 0 or not np.isfinite(weight):
            raise ValidationError(f"weight must be a positive number, got {weight!r}", where=where)
        self._template.check_like(params, where=where)
        with self._lock:
            for acc, arr in zip(self._sums, params.arrays, strict=True):
                self._accumulate(acc.reshape(-1), np.ravel(arr), float(weight))
            self._weight += float(weight)
            self._count += 1

    def _accumulate(self, acc: FloatArray, arr: FloatArray, weight: float) -> None:
        # The product is formed in float64 (``dtype=``), not in the array's own dtype, and in
        # chunks through one scratch buffer: no temporary of model size per node.
        for start in range(0, acc.size, _CHUNK):
            stop = min(start + _CHUNK, acc.size)
            buf = self._scratch[: stop - start]
            np.multiply(arr[start:stop], weight, out=buf, dtype=np.float64)
            acc[start:stop] += buf

    @property
    def count(self) -> int:
        """Number of results added."""
        return self._count

    @property
    def total_weight(self) -> float:
        """Sum of the weights added."""
        return self._weight

    def result(self) -> Parameters:
        """The weighted mean, in the template's dtypes."""
        if self._count == 0:
            raise ValidationError("no results to average")
        with self._lock:
            # np.asarray: arithmetic on a 0-d array returns a numpy scalar, not an array
            arrays = tuple(
                np.asarray(acc / self._weight, dtype=t.dtype)
                for acc, t in zip(self._sums, self._template.arrays, strict=True)
            )
        return Parameters.from_arrays(self._template.names, arrays)
