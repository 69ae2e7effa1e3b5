"""Named float parameter arrays: the only thing that travels between coordinator and nodes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from medfed.core.errors import ValidationError

FloatArray = npt.NDArray[np.floating]

#: dtypes allowed on the wire and on disk (little-endian). ``uint32`` carries only secure
#: aggregation's masked integer vectors; models and updates are floats.
ALLOWED_DTYPES = ("float16", "float32", "float64", "uint32")


@dataclass(frozen=True, slots=True)
class Parameters:
    """An ordered, immutable mapping of names to float arrays.

    Arrays are made read-only on construction, so a ``Parameters`` can be shared between threads
    and strategies without copies. Build one with :meth:`from_numpy` or :meth:`from_arrays`.
    """

    names: tuple[str, ...]
    arrays: tuple[FloatArray, ...]

    def __post_init__(self) -> None:
        problems: list[str] = []
        if len(self.names) != len(self.arrays):
            problems.append(f"{len(self.names)} names but {len(self.arrays)} arrays")
        if len(set(self.names)) != len(self.names):
            problems.append("duplicate parameter names")
        for name, arr in zip(self.names, self.arrays, strict=False):
            if not isinstance(arr, np.ndarray):
                problems.append(f"{name!r} is {type(arr).__name__}, not a numpy array")
            elif arr.dtype.name not in ALLOWED_DTYPES:
                problems.append(f"{name!r} has dtype {arr.dtype}, allowed: {list(ALLOWED_DTYPES)}")
        if problems:
            raise ValidationError(problems, where="parameters")
        for arr in self.arrays:
            arr.flags.writeable = False

    @classmethod
    def from_numpy(cls, arrays: Mapping[str, npt.ArrayLike], *, dtype: str | None = None) -> Parameters:
        """Build from a name → array mapping, keeping its order; copies the arrays."""
        names = tuple(arrays)
        out = tuple(np.array(arrays[n], dtype=dtype, copy=True) for n in names)
        return cls(names, out)

    @classmethod
    def from_arrays(cls, names: tuple[str, ...], arrays: tuple[FloatArray, ...]) -> Parameters:
        """Build from arrays the caller hands over (no copy; they become read-only)."""
        return cls(tuple(names), tuple(arrays))

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[tuple[str, FloatArray]]:
        return iter(zip(self.names, self.arrays, strict=True))

    def __getitem__(self, name: str) -> FloatArray:
        try:
            return self.arrays[self.names.index(name)]
        except ValueError:
            raise KeyError(name) from None

    def to_dict(self) -> dict[str, FloatArray]:
        """A name → array dict of the (read-only) arrays."""
        return dict(zip(self.names, self.arrays, strict=True))

    @property
    def nbytes(self) -> int:
        """Total size of the arrays in bytes."""
        return sum(a.nbytes for a in self.arrays)

    @property
    def size(self) -> int:
        """Total number of scalars."""
        return sum(a.size for a in self.arrays)

    def spec(self) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
        """(name, dtype, shape) of every array, for shape checks."""
        return tuple((n, a.dtype.name, tuple(a.shape)) for n, a in self)

    def map(self, fn: Callable[[FloatArray], npt.ArrayLike]) -> Parameters:
        """Apply ``fn(array) -> array`` to every array, keeping names."""
        return Parameters(self.names, tuple(np.asarray(fn(a)) for a in self.arrays))

    def check_like(self, other: Parameters, *, where: str = "") -> None:
        """Raise :class:`ValidationError` unless ``other`` has the same names, dtypes, shapes and
        only finite values; every problem is listed."""
        problems: list[str] = []
        if other.names != self.names:
            missing = sorted(set(self.names) - set(other.names))
            extra = sorted(set(other.names) - set(self.names))
            problems.append(f"parameter names differ (missing {missing}, unexpected {extra})")
        else:
            for name, mine, theirs in zip(self.names, self.arrays, other.arrays, strict=True):
                if mine.shape != theirs.shape:
                    problems.append(f"{name!r} has shape {theirs.shape}, expected {mine.shape}")
                elif mine.dtype.kind != theirs.dtype.kind:  # float widths may differ; floats vs integers may not
                    problems.append(f"{name!r} has dtype {theirs.dtype}, expected {mine.dtype}")
                elif not np.all(np.isfinite(theirs)):
                    bad = int(np.size(theirs) - np.count_nonzero(np.isfinite(theirs)))
                    problems.append(f"{name!r} has {bad} non-finite values (NaN or inf)")
        if problems:
            raise ValidationError(problems, where=where)

    def allclose(self, other: Parameters, *, atol: float = 1e-8, rtol: float = 1e-5) -> bool:
        """True when names match and every array is close."""
        return self.names == other.names and all(
            a.shape == b.shape and bool(np.allclose(a, b, atol=atol, rtol=rtol))
            for a, b in zip(self.arrays, other.arrays, strict=True)
        )
