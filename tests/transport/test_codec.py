"""The wire codec: tensors as raw chunks, any size, exact round trip, malformed streams refused."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medfed.core.errors import TransportError, ValidationError
from medfed.core.params import Parameters
from medfed.core.records import ResultMessage, ResultStatus, TaskKind, TaskMessage
from medfed.transport import codec
from medfed.transport import medfed_pb2 as pb

shapes = st.lists(st.lists(st.integers(0, 7), min_size=0, max_size=3), min_size=1, max_size=5)
dtypes = st.sampled_from(["float16", "float32", "float64"])


def _params(shape_list: list[list[int]], dtype: str) -> Parameters:
    rng = np.random.default_rng(0)
    return Parameters.from_numpy({f"t{i}": rng.standard_normal(s).astype(dtype) for i, s in enumerate(shape_list)})


def _task(params: Parameters) -> TaskMessage:
    return TaskMessage(
        task_id="t1", job_id="j1", round=3, kind=TaskKind.FIT, task="mlp", dataset="heart", seed=11,
        config={"lr": 0.1, "steps": 5, "opt": "adam", "prox": True}, parameters=params,
    )  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(shape_list=shapes, dtype=dtypes, chunk=st.integers(1, 64))
def test_chunks_reassemble_exactly(shape_list: list[list[int]], dtype: str, chunk: int) -> None:
    params = _params(shape_list, dtype)
    receiver = codec.TensorReceiver(codec.layout_of(params), where="test")
    chunks = list(codec.iter_chunks(params, chunk_bytes=chunk))
    assert all(0 < len(c) <= chunk for c in chunks)
    for c in chunks:
        receiver.feed(c)
    out = receiver.finish()
    assert out.names == params.names
    for a, b in zip(out.arrays, params.arrays, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_task_round_trip_keeps_config_types() -> None:
    task = _task(_params([[3, 2], [4]], "float32"))
    back = codec.read_task(codec.task_frames(task))
    assert isinstance(back, TaskMessage)
    assert back.config == task.config
    assert {k: type(v) for k, v in back.config.items()} == {"lr": float, "steps": int, "opt": str, "prox": bool}
    assert back.parameters.allclose(task.parameters)
    assert (back.kind, back.round, back.seed) == (TaskKind.FIT, 3, 11)


def test_result_round_trip_with_error_value() -> None:
    res = ResultMessage(
        task_id="t", job_id="j", round=1, site="ignored", status=ResultStatus.ERROR,
        error_kind="data", error_message="dataset 'x' missing",
    )  # fmt: skip
    back = codec.read_result(codec.result_frames(res), site="cleveland")
    assert back.site == "cleveland"  # identity comes from the certificate, not the frame
    assert back.status is ResultStatus.ERROR and back.parameters is None
    assert back.error_message == "dataset 'x' missing"


def test_truncated_stream_is_refused() -> None:
    frames = list(codec.task_frames(_task(_params([[1000]], "float32"))))
    with pytest.raises(TransportError, match="stream ended after"):
        codec.read_task(frames[:-1])


def test_extra_bytes_are_refused() -> None:
    frames = [*codec.task_frames(_task(_params([[4]], "float32"))), pb.Frame(chunk=b"xx")]
    with pytest.raises(TransportError, match="more tensor bytes"):
        codec.read_task(frames)


def test_layout_with_forbidden_dtype_is_refused() -> None:
    layout = pb.TensorLayout(tensors=[pb.TensorMeta(name="w", dtype="object", shape=[1])], total_bytes=8)
    with pytest.raises(ValidationError, match="dtype 'object'"):
        codec.TensorReceiver(layout, where="test")


def test_layout_size_mismatch_is_refused() -> None:
    layout = pb.TensorLayout(tensors=[pb.TensorMeta(name="w", dtype="float32", shape=[2])], total_bytes=12)
    with pytest.raises(ValidationError, match="tensors need 8"):
        codec.TensorReceiver(layout, where="test")


def test_no_task_decodes_to_retry_delay() -> None:
    assert codec.read_task([pb.Frame(none=pb.NoTask(retry_after_s=0.25))]) == 0.25


def test_large_tensor_is_sliced_into_bounded_chunks() -> None:
    params = Parameters.from_numpy({"big": np.zeros(3 * codec.CHUNK_BYTES // 4 + 5, np.float32)})
    sizes = [len(c) for c in codec.iter_chunks(params)]
    assert max(sizes) <= codec.CHUNK_BYTES and sum(sizes) == params.nbytes and len(sizes) == 4
