"""Checkpoints: exact round trip, atomic writes, tampering and truncation refused."""

from pathlib import Path

import numpy as np
import pytest

from medfed.coordinator.checkpoints import load_checkpoint, save_checkpoint, save_model
from medfed.core.errors import StoreError
from medfed.core.params import Parameters


def _params() -> tuple[Parameters, Parameters]:
    model = Parameters.from_numpy({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float64)})
    state = Parameters.from_numpy({"m/w": np.full((2, 3), 0.5, np.float32)})
    return model, state


def test_round_trip_keeps_names_order_dtypes(tmp_path: Path) -> None:
    model, state = _params()
    digest = save_checkpoint(tmp_path / "ck.npz", model, state)
    got_model, got_state = load_checkpoint(tmp_path / "ck.npz", digest)
    assert got_model.names == ("w", "b") and got_model.spec() == model.spec()
    assert got_model.allclose(model) and got_state.allclose(state)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary left behind


def test_tampered_checkpoint_is_refused(tmp_path: Path) -> None:
    model, state = _params()
    path = tmp_path / "ck.npz"
    digest = save_checkpoint(path, model, state)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="fails its integrity check"):
        load_checkpoint(path, digest)


def test_missing_checkpoint_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unreadable"):
        load_checkpoint(tmp_path / "nope.npz", "0" * 64)


def test_saved_model_loads_without_pickle(tmp_path: Path) -> None:
    model, _ = _params()
    save_model(tmp_path / "m.npz", model)
    with np.load(tmp_path / "m.npz", allow_pickle=False) as npz:
        assert list(npz.files) == ["w", "b"]
        np.testing.assert_array_equal(npz["w"], model["w"])


def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    model, state = _params()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot write"):
        save_checkpoint(blocker / "sub" / "ck.npz", model, state)
