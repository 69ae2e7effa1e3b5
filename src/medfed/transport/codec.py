"""The only wire codec: records ⇄ protobuf frames, tensors as raw little-endian chunks.

A message is a header frame (protobuf metadata with a :class:`TensorLayout`) followed by chunk
frames that carry exactly ``layout.total_bytes`` raw bytes, so there is no message-size ceiling
and no pickle anywhere. The receiver preallocates one buffer and views arrays over it with
``np.frombuffer`` (no further copy).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator

import numpy as np

from medfed.core.errors import ConfigError, Refusal, TransportError, ValidationError
from medfed.core.params import ALLOWED_DTYPES, Parameters
from medfed.core.records import PrivacySpec, ResultMessage, ResultStatus, Scalar, TaskKind, TaskMessage
from medfed.transport import medfed_pb2 as pb

#: Bytes per chunk frame. gRPC's default receive limit is 4 MiB; we raise it to 2 × CHUNK_BYTES.
CHUNK_BYTES = 4 * 1024 * 1024
MAX_FRAME_BYTES = 2 * CHUNK_BYTES + 65536


def grpc_options() -> list[tuple[str, int]]:
    """Channel/server options shared by both ends."""
    return [
        ("grpc.max_receive_message_length", MAX_FRAME_BYTES),
        ("grpc.max_send_message_length", MAX_FRAME_BYTES),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


# --- scalars -------------------------------------------------------------------------------


def scalar_to_pb(value: Scalar) -> pb.Scalar:
    if isinstance(value, bool):
        return pb.Scalar(b=value)
    if isinstance(value, int):
        return pb.Scalar(i=value)
    if isinstance(value, float):
        return pb.Scalar(f=value)
    if isinstance(value, str):
        return pb.Scalar(s=value)
    raise ValidationError(f"config value {value!r} is {type(value).__name__}, not a scalar")


def scalar_from_pb(msg: pb.Scalar) -> Scalar:
    which = msg.WhichOneof("value")
    if which is None:
        raise TransportError("empty Scalar in frame")
    value: Scalar = getattr(msg, which)
    return value


# --- tensors -------------------------------------------------------------------------------


def layout_of(params: Parameters) -> pb.TensorLayout:
    metas = [pb.TensorMeta(name=n, dtype=a.dtype.name, shape=list(a.shape)) for n, a in params]
    return pb.TensorLayout(tensors=metas, total_bytes=params.nbytes)


def _little_endian(arr: np.ndarray) -> memoryview:
    if arr.size == 0:
        return memoryview(b"")
    le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return le.data.cast("B")


def iter_chunks(params: Parameters, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Raw bytes of every array in order, cut into chunks of at most ``chunk_bytes``.

    Small arrays are packed together; large ones are sliced without an intermediate copy.
    """
    pending = bytearray()
    for _, arr in params:
        view = _little_endian(arr)
        start = 0
        if pending:
            take = min(chunk_bytes - len(pending), len(view))
            pending += view[:take]
            start = take
            if len(pending) == chunk_bytes:
                yield bytes(pending)
                pending = bytearray()
        while len(view) - start >= chunk_bytes:
            yield bytes(view[start : start + chunk_bytes])
            start += chunk_bytes
        if start < len(view):
            pending += view[start:]
    if pending:
        yield bytes(pending)


class TensorReceiver:
    """Reassembles a :class:`Parameters` from a layout and the chunks that follow it."""

    def __init__(self, layout: pb.TensorLayout, *, where: str) -> None:
        self._where = where
        self._metas = _check_layout(layout, where)
        self._total = layout.total_bytes
        # np.empty: no zero-fill of a buffer every byte of which is about to be written
        self._buf = np.empty(self._total, dtype=np.uint8)
        self._offset = 0

    def feed(self, chunk: bytes) -> None:
        end = self._offset + len(chunk)
        if end > self._total:
            raise TransportError(f"{self._where}: more tensor bytes than the layout's {self._total}")
        self._buf[self._offset : end] = np.frombuffer(chunk, dtype=np.uint8)
        self._offset = end

    def finish(self) -> Parameters:
        if self._offset != self._total:
            raise TransportError(f"{self._where}: stream ended after {self._offset} of {self._total} tensor bytes")
        names, arrays, offset = [], [], 0
        for name, dtype, shape in self._metas:
            count = int(np.prod(shape, dtype=np.int64))
            arr = np.frombuffer(self._buf, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=offset)
            arrays.append(arr.astype(np.dtype(dtype), copy=False).reshape(shape))
            names.append(name)
            offset += count * np.dtype(dtype).itemsize
        return Parameters.from_arrays(tuple(names), tuple(arrays))


#: No tensor's shape may describe more than this many bytes (its dimensions' product, zeros as 1).
MAX_TENSOR_BYTES = 1 << 48


def _check_layout(layout: pb.TensorLayout, where: str) -> list[tuple[str, str, tuple[int, ...]]]:
    problems: list[str] = []
    metas: list[tuple[str, str, tuple[int, ...]]] = []
    seen: set[str] = set()
    total = 0
    for meta in layout.tensors:
        if meta.dtype not in ALLOWED_DTYPES:
            problems.append(f"tensor {meta.name!r} has dtype {meta.dtype!r}, allowed: {list(ALLOWED_DTYPES)}")
            continue
        if any(d < 0 for d in meta.shape):
            problems.append(f"tensor {meta.name!r} has a negative dimension {list(meta.shape)}")
            continue
        shape = tuple(int(d) for d in meta.shape)
        # exact integer products: np.prod in int64 wraps around, and numpy refuses a shape whose
        # dimensions multiply past its limit even when one of them is 0
        if math.prod(max(d, 1) for d in shape) * np.dtype(meta.dtype).itemsize > MAX_TENSOR_BYTES:
            problems.append(f"tensor {meta.name!r} has an impossible shape {list(shape)}")
            continue
        if meta.name in seen:
            problems.append(f"tensor name {meta.name!r} repeats")
        seen.add(meta.name)
        total += math.prod(shape) * np.dtype(meta.dtype).itemsize
        metas.append((meta.name, meta.dtype, shape))
    if not problems and total != layout.total_bytes:
        problems.append(f"layout says {layout.total_bytes} bytes but its tensors need {total}")
    if problems:
        raise ValidationError(problems, where=where)
    return metas


# --- tasks and results ---------------------------------------------------------------------

#: The largest stage payload (keys, encrypted shares, revealed shares): tiny next to a model.
MAX_PAYLOAD_BYTES = 1 << 20


def _checked_payload(payload: bytes, where: str) -> bytes:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise TransportError(f"{where}: payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    return bytes(payload)


def _checked_spec(spec_toml: str, where: str) -> str:
    if len(spec_toml.encode()) > MAX_PAYLOAD_BYTES:
        raise TransportError(f"{where}: job spec of {len(spec_toml.encode())} bytes exceeds {MAX_PAYLOAD_BYTES}")
    return spec_toml


def _privacy_to_pb(spec: PrivacySpec | None) -> pb.PrivacyHeader | None:
    if spec is None:
        return None
    return pb.PrivacyHeader(
        noise_multiplier=spec.noise_multiplier,
        clip_norm=spec.clip_norm,
        delta=spec.delta,
        eval_epsilon=spec.eval_epsilon,
    )


def _privacy_from_pb(h: pb.TaskHeader, where: str) -> PrivacySpec | None:
    if not h.HasField("privacy"):
        return None
    p = h.privacy
    try:
        return PrivacySpec(
            noise_multiplier=p.noise_multiplier, clip_norm=p.clip_norm, delta=p.delta, eval_epsilon=p.eval_epsilon
        )
    except ConfigError as exc:
        raise TransportError(f"{where}: malformed privacy header: {exc}") from None


def task_frames(task: TaskMessage) -> Iterator[pb.Frame]:
    header = pb.TaskHeader(
        task_id=task.task_id,
        job_id=task.job_id,
        round=task.round,
        kind=task.kind.value,
        task=task.task,
        dataset=task.dataset,
        seed=task.seed,
        config={k: scalar_to_pb(v) for k, v in task.config.items()},
        layout=layout_of(task.parameters),
        job_rounds=task.job_rounds,
        privacy=_privacy_to_pb(task.privacy),
        payload=_checked_payload(task.payload, f"task {task.task_id}"),
        spec_toml=_checked_spec(task.spec_toml, f"task {task.task_id}"),
        owner=task.owner,
        model_signature=_checked_payload(task.model_signature, f"task {task.task_id}"),
    )
    yield pb.Frame(task=header)
    for chunk in iter_chunks(task.parameters):
        yield pb.Frame(chunk=chunk)


def result_frames(result: ResultMessage) -> Iterator[pb.Frame]:
    params = result.parameters
    header = pb.ResultHeader(
        task_id=result.task_id,
        job_id=result.job_id,
        round=result.round,
        status=result.status.value,
        num_examples=result.num_examples,
        metrics=dict(result.metrics),
        has_parameters=params is not None,
        layout=layout_of(params) if params is not None else None,
        error_kind=result.error_kind,
        error_message=result.error_message,
        payload=_checked_payload(result.payload, f"result of task {result.task_id}"),
        refusal="" if result.refusal is None else result.refusal.value,
        refusal_spec=result.refusal_spec,
    )
    yield pb.Frame(result=header)
    if params is not None:
        for chunk in iter_chunks(params):
            yield pb.Frame(chunk=chunk)


def _read_tensors(layout: pb.TensorLayout, frames: Iterator[pb.Frame], where: str) -> Parameters:
    receiver = TensorReceiver(layout, where=where)
    for frame in frames:
        if frame.WhichOneof("body") != "chunk":
            raise TransportError(f"{where}: expected a chunk frame, got {frame.WhichOneof('body')!r}")
        receiver.feed(frame.chunk)
    return receiver.finish()


def read_task(frames: Iterable[pb.Frame]) -> TaskMessage | float:
    """Decode a task stream; a :class:`NoTask` reply decodes to its retry delay in seconds."""
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise TransportError("task stream was empty")
    body = first.WhichOneof("body")
    if body == "none":
        return float(first.none.retry_after_s)
    if body != "task":
        raise TransportError(f"task stream must start with a task header, got {body!r}")
    h = first.task
    where = f"task {h.task_id} (job {h.job_id}, round {h.round})"
    try:
        kind = TaskKind(h.kind)
    except ValueError:
        raise TransportError(f"{where}: unknown kind {h.kind!r}, allowed {[k.value for k in TaskKind]}") from None
    return TaskMessage(
        task_id=h.task_id,
        job_id=h.job_id,
        round=h.round,
        kind=kind,
        task=h.task,
        dataset=h.dataset,
        seed=h.seed,
        config={k: scalar_from_pb(v) for k, v in h.config.items()},
        parameters=_read_tensors(h.layout, it, where),
        job_rounds=h.job_rounds,
        privacy=_privacy_from_pb(h, where),
        payload=_checked_payload(h.payload, where),
        spec_toml=_checked_spec(h.spec_toml, where),
        owner=h.owner,
        model_signature=_checked_payload(h.model_signature, where),
    )


def read_result(frames: Iterable[pb.Frame], *, site: str) -> ResultMessage:
    """Decode a result stream sent by ``site`` (the site comes from its certificate, not the frame)."""
    it = iter(frames)
    first = next(it, None)
    if first is None or first.WhichOneof("body") != "result":
        raise TransportError(f"result stream from {site!r} must start with a result header")
    h = first.result
    where = f"result of task {h.task_id} from site {site!r} (job {h.job_id}, round {h.round})"
    try:
        status = ResultStatus(h.status)
    except ValueError:
        raise TransportError(f"{where}: unknown status {h.status!r}") from None
    refusal = _checked_refusal(h.refusal, h.refusal_spec, where)
    params = _read_tensors(h.layout, it, where) if h.has_parameters else None
    return ResultMessage(
        task_id=h.task_id,
        job_id=h.job_id,
        round=h.round,
        site=site,
        status=status,
        num_examples=h.num_examples,
        metrics=dict(h.metrics),
        parameters=params,
        error_kind=h.error_kind,
        error_message=h.error_message,
        payload=_checked_payload(h.payload, where),
        refusal=refusal,
        refusal_spec=h.refusal_spec,
    )


_SPEC_HASH = re.compile(r"[0-9a-f]{64}")


def _checked_refusal(refusal: str, spec: str, where: str) -> Refusal | None:
    """A result header's refusal reason: one of :class:`Refusal` or empty (an old node sends none);
    the spec hash: empty or 64 lowercase hex digits, and only with a reason."""
    problems = []
    reason = None
    if refusal:
        try:
            reason = Refusal(refusal)
        except ValueError:
            problems.append(f"unknown refusal {refusal[:40]!r} (known: {', '.join(r.value for r in Refusal)})")
    if spec and not _SPEC_HASH.fullmatch(spec):
        problems.append(f"refusal_spec {spec[:80]!r} is not a SHA-256 in hex")
    elif spec and not refusal:
        problems.append("refusal_spec without a refusal")
    if problems:
        raise TransportError(f"{where}: " + "; ".join(problems))
    return reason


def model_frames(params: Parameters, *, signature: bytes = b"") -> Iterator[pb.Frame]:
    """A bare model stream (layout in an ``ok`` result header, the coordinator's signature and
    provenance JSON in its payload), for model downloads."""
    header = pb.ResultHeader(
        status="ok", has_parameters=True, layout=layout_of(params), payload=_checked_payload(signature, "model")
    )
    yield pb.Frame(result=header)
    for chunk in iter_chunks(params):
        yield pb.Frame(chunk=chunk)


def read_model(frames: Iterable[pb.Frame], *, where: str) -> Parameters:
    return read_signed_model(frames, where=where)[0]


def read_signed_model(frames: Iterable[pb.Frame], *, where: str) -> tuple[Parameters, bytes]:
    """The model and the signature bytes that came with it (empty if the coordinator sent none)."""
    it = iter(frames)
    first = next(it, None)
    if first is None or first.WhichOneof("body") != "result":
        raise TransportError(f"{where}: model stream must start with a header")
    signature = _checked_payload(first.result.payload, where)
    return _read_tensors(first.result.layout, it, where), signature
