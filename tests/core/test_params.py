"""Parameters are immutable, ordered, float-only, and check each other's shape."""

import numpy as np
import pytest

from medfed import Parameters, ValidationError


def test_from_numpy_copies_and_freezes() -> None:
    src = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    p = Parameters.from_numpy(src)
    src["w"][0, 0] = 5.0
    assert p["w"][0, 0] == 1.0
    assert p.names == ("w", "b")
    with pytest.raises(ValueError):
        p["w"][0, 0] = 2.0
    assert p.nbytes == 36 and p.size == 9


def test_integer_arrays_are_refused() -> None:
    with pytest.raises(ValidationError, match="dtype int64"):
        Parameters.from_numpy({"w": np.arange(3)})


def test_check_like_lists_every_problem() -> None:
    ref = Parameters.from_numpy({"a": np.zeros(3, np.float32), "b": np.zeros((2, 2), np.float32)})
    bad = Parameters.from_numpy({"a": np.array([0, np.nan, np.inf], np.float32), "b": np.zeros((2, 3), np.float32)})
    with pytest.raises(ValidationError) as info:
        ref.check_like(bad, where="site x, round 2")
    text = str(info.value)
    assert "site x, round 2" in text and "2 non-finite" in text and "shape (2, 3)" in text


def test_check_like_names_missing_and_unexpected() -> None:
    ref = Parameters.from_numpy({"a": np.zeros(1, np.float32)})
    other = Parameters.from_numpy({"z": np.zeros(1, np.float32)})
    with pytest.raises(ValidationError, match=r"missing \['a'\], unexpected \['z'\]"):
        ref.check_like(other)
