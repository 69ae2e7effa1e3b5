"""The building blocks of the Gaussian mechanism on model parameters: norms, clipping, noise.

Pure functions over :class:`~medfed.core.params.Parameters`; randomness comes in as an
``rng: numpy.random.Generator`` argument and is never global. Arithmetic is done in float64 and
each result is cast back to its array's dtype. Inputs are never mutated (their arrays are
read-only anyway).

Where the noise comes from
--------------------------
:func:`secure_rng` is what medfed uses when no generator is injected. Be clear about what it is:
a NumPy ``Generator`` over PCG64DXSM, seeded with 256 bits from the operating system's CSPRNG
(:mod:`secrets`). Nobody can reproduce its noise from a seed, which is what matters most (a noise
stream that someone can regenerate can be subtracted, and then there is no privacy at all). But
PCG64DXSM is *not* a cryptographically secure generator: whoever sees enough of its raw outputs
could in principle reconstruct its state and predict the rest. medfed never publishes raw noise,
only noise added to clipped updates. Nor does medfed defend against floating-point attacks on
sampled noise (Mironov 2012, CCS; Jin et al. 2022 for the Gaussian). Opacus's ``secure_mode``
addresses both with a CSPRNG and summed samples; doing the same here would need a cryptographic
bit generator for NumPy (e.g. ``randomgen``'s AES counter or ChaCha), not a dependency today.

Seeded generators (``np.random.default_rng(seed)``) are for tests and reproducible simulations
only: with a known seed the noise is known.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np

from medfed.core.errors import ValidationError
from medfed.core.params import Parameters


def secure_rng() -> np.random.Generator:
    """A fresh generator seeded with 256 bits from the OS CSPRNG (see the module notes).

    Unpredictable and irreproducible, but not a cryptographically secure generator.
    """
    return np.random.Generator(np.random.PCG64DXSM(secrets.randbits(256)))


def _check_finite(params: Parameters, where: str) -> None:
    # A NaN norm compares False with any bound, so an unchecked NaN would slip past clipping.
    bad = [name for name, arr in params if not np.all(np.isfinite(arr))]
    if bad:
        raise ValidationError(f"non-finite values (NaN or inf) in {bad}", where=where)


def l2_norm(params: Parameters) -> float:
    """The L2 norm of all arrays taken together, as one flat vector (in float64)."""
    total = 0.0
    for arr in params.arrays:
        flat = np.ravel(arr).astype(np.float64, copy=False)
        total += float(np.dot(flat, flat))
    return float(np.sqrt(total))


def clip_update(update: Parameters, clip_norm: float) -> tuple[Parameters, bool]:
    """Scale ``update`` so that its L2 norm over all arrays is at most ``clip_norm``.

    Parameters
    ----------
    update
        A model update (a node's model minus the global model), any dtypes.
    clip_norm
        C > 0, the bound on the norm: the L2 sensitivity of a sum of clipped updates.

    Returns
    -------
    tuple[Parameters, bool]
        The clipped update (the same object when no scaling was needed) and whether it was scaled.

    Raises
    ------
    ValidationError
        ``clip_norm`` is not a finite number > 0, or ``update`` holds NaN or inf.
    """
    if not (np.isfinite(clip_norm) and clip_norm > 0):
        raise ValidationError(f"clip_norm must be a finite number > 0, got {clip_norm!r}", where="clipping")
    _check_finite(update, where="clipping")
    norm = l2_norm(update)
    if norm <= clip_norm:
        return update, False
    # Casting back to the arrays' dtypes rounds each element by at most eps/2 relatively, and
    # float64 summation adds a little more; shrinking by a few eps keeps the bound strict, since
    # the DP guarantee rests on it.
    eps = max([1e-12] + [float(np.finfo(a.dtype).eps) for a in update.arrays])
    factor = clip_norm / norm * (1.0 - 4.0 * eps)
    return update.map(lambda a: np.asarray(a.astype(np.float64) * factor, dtype=a.dtype)), True


def gaussian_noise(like: Parameters, std: float, rng: np.random.Generator) -> Parameters:
    """Independent N(0, ``std``²) noise with the names, shapes and dtypes of ``like``.

    Raises
    ------
    ValidationError
        ``std`` is not a finite number >= 0.
    """
    if not (np.isfinite(std) and std >= 0):
        raise ValidationError(f"noise std must be a finite number >= 0, got {std!r}", where="noise")
    arrays = tuple(np.asarray(rng.normal(0.0, std, size=a.shape), dtype=a.dtype) for a in like.arrays)
    return Parameters.from_arrays(like.names, arrays)


def add_noise(params: Parameters, std: float, rng: np.random.Generator) -> Parameters:
    """``params`` plus independent N(0, ``std``²) noise per element, added in float64."""
    if std == 0:
        return params
    noise = gaussian_noise(params.map(lambda a: a.astype(np.float64)), std, rng)
    return combine([params, noise], template=params)


def combine(items: Sequence[Parameters], *, template: Parameters, weights: Sequence[float] | None = None) -> Parameters:
    """``Σ wᵢ · itemsᵢ`` in float64, cast to ``template``'s dtypes (weights default to 1).

    Raises
    ------
    ValidationError
        An item differs from ``template`` in names or shapes, or holds NaN or inf.
    """
    weights = [1.0] * len(items) if weights is None else list(weights)
    if len(weights) != len(items):
        raise ValidationError(f"{len(items)} items but {len(weights)} weights")
    sums = [np.zeros(a.shape, dtype=np.float64) for a in template.arrays]
    for i, (item, w) in enumerate(zip(items, weights, strict=True)):
        template.check_like(item, where=f"item {i}")
        for acc, arr in zip(sums, item.arrays, strict=True):
            acc += w * arr.astype(np.float64, copy=False)
    arrays = tuple(np.asarray(s, dtype=t.dtype) for s, t in zip(sums, template.arrays, strict=True))
    return Parameters.from_arrays(template.names, arrays)
