from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Scalar(_message.Message):
    __slots__ = ("f", "i", "s", "b")
    F_FIELD_NUMBER: _ClassVar[int]
    I_FIELD_NUMBER: _ClassVar[int]
    S_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    f: float
    i: int
    s: str
    b: bool
    def __init__(self, f: _Optional[float] = ..., i: _Optional[int] = ..., s: _Optional[str] = ..., b: _Optional[bool] = ...) -> None: ...

class TensorMeta(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class TensorLayout(_message.Message):
    __slots__ = ("tensors", "total_bytes", "sha256")
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[TensorMeta]
    total_bytes: int
    sha256: bytes
    def __init__(self, tensors: _Optional[_Iterable[_Union[TensorMeta, _Mapping]]] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class PrivacyHeader(_message.Message):
    __slots__ = ("noise_multiplier", "clip_norm", "delta", "eval_epsilon")
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    EVAL_EPSILON_FIELD_NUMBER: _ClassVar[int]
    noise_multiplier: float
    clip_norm: float
    delta: float
    eval_epsilon: float
    def __init__(self, noise_multiplier: _Optional[float] = ..., clip_norm: _Optional[float] = ..., delta: _Optional[float] = ..., eval_epsilon: _Optional[float] = ...) -> None: ...

class TaskHeader(_message.Message):
    __slots__ = ("task_id", "job_id", "round", "kind", "task", "dataset", "seed", "config", "layout", "job_rounds", "privacy", "payload", "spec_toml", "owner", "model_signature")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Scalar, _Mapping]] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    JOB_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SPEC_TOML_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    MODEL_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    job_id: str
    round: int
    kind: str
    task: str
    dataset: str
    seed: int
    config: _containers.MessageMap[str, Scalar]
    layout: TensorLayout
    job_rounds: int
    privacy: PrivacyHeader
    payload: bytes
    spec_toml: str
    owner: str
    model_signature: bytes
    def __init__(self, task_id: _Optional[str] = ..., job_id: _Optional[str] = ..., round: _Optional[int] = ..., kind: _Optional[str] = ..., task: _Optional[str] = ..., dataset: _Optional[str] = ..., seed: _Optional[int] = ..., config: _Optional[_Mapping[str, Scalar]] = ..., layout: _Optional[_Union[TensorLayout, _Mapping]] = ..., job_rounds: _Optional[int] = ..., privacy: _Optional[_Union[PrivacyHeader, _Mapping]] = ..., payload: _Optional[bytes] = ..., spec_toml: _Optional[str] = ..., owner: _Optional[str] = ..., model_signature: _Optional[bytes] = ...) -> None: ...

class ResultHeader(_message.Message):
    __slots__ = ("task_id", "job_id", "round", "status", "num_examples", "metrics", "has_parameters", "layout", "error_kind", "error_message", "payload", "refusal", "refusal_spec")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    HAS_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_SPEC_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    job_id: str
    round: int
    status: str
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    has_parameters: bool
    layout: TensorLayout
    error_kind: str
    error_message: str
    payload: bytes
    refusal: str
    refusal_spec: str
    def __init__(self, task_id: _Optional[str] = ..., job_id: _Optional[str] = ..., round: _Optional[int] = ..., status: _Optional[str] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., has_parameters: _Optional[bool] = ..., layout: _Optional[_Union[TensorLayout, _Mapping]] = ..., error_kind: _Optional[str] = ..., error_message: _Optional[str] = ..., payload: _Optional[bytes] = ..., refusal: _Optional[str] = ..., refusal_spec: _Optional[str] = ...) -> None: ...

class NoTask(_message.Message):
    __slots__ = ("retry_after_s",)
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    retry_after_s: float
    def __init__(self, retry_after_s: _Optional[float] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("task", "result", "chunk", "none")
    TASK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    NONE_FIELD_NUMBER: _ClassVar[int]
    task: TaskHeader
    result: ResultHeader
    chunk: bytes
    none: NoTask
    def __init__(self, task: _Optional[_Union[TaskHeader, _Mapping]] = ..., result: _Optional[_Union[ResultHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ..., none: _Optional[_Union[NoTask, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("version", "datasets", "tasks", "catalog_json")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_JSON_FIELD_NUMBER: _ClassVar[int]
    version: str
    datasets: _containers.RepeatedScalarFieldContainer[str]
    tasks: _containers.RepeatedScalarFieldContainer[str]
    catalog_json: str
    def __init__(self, version: _Optional[str] = ..., datasets: _Optional[_Iterable[str]] = ..., tasks: _Optional[_Iterable[str]] = ..., catalog_json: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("site", "heartbeat_interval_s", "coordinator_version")
    SITE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    site: str
    heartbeat_interval_s: float
    coordinator_version: str
    def __init__(self, site: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., coordinator_version: _Optional[str] = ...) -> None: ...

class Beat(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: str
    def __init__(self, status: _Optional[str] = ...) -> None: ...

class BeatAck(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: _Optional[bool] = ...) -> None: ...

class Poll(_message.Message):
    __slots__ = ("wait_s",)
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    wait_s: float
    def __init__(self, wait_s: _Optional[float] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("accepted", "message")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    message: str
    def __init__(self, accepted: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class OpenJobs(_message.Message):
    __slots__ = ("job_ids", "budgets")
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    budgets: _containers.RepeatedCompositeFieldContainer[BudgetFigures]
    def __init__(self, job_ids: _Optional[_Iterable[str]] = ..., budgets: _Optional[_Iterable[_Union[BudgetFigures, _Mapping]]] = ...) -> None: ...

class BudgetFigures(_message.Message):
    __slots__ = ("dataset", "epsilon_total", "delta_total", "epsilon_used", "delta_used", "epsilon_held", "delta_held")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EPSILON_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DELTA_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EPSILON_USED_FIELD_NUMBER: _ClassVar[int]
    DELTA_USED_FIELD_NUMBER: _ClassVar[int]
    EPSILON_HELD_FIELD_NUMBER: _ClassVar[int]
    DELTA_HELD_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    epsilon_total: float
    delta_total: float
    epsilon_used: float
    delta_used: float
    epsilon_held: float
    delta_held: float
    def __init__(self, dataset: _Optional[str] = ..., epsilon_total: _Optional[float] = ..., delta_total: _Optional[float] = ..., epsilon_used: _Optional[float] = ..., delta_used: _Optional[float] = ..., epsilon_held: _Optional[float] = ..., delta_held: _Optional[float] = ...) -> None: ...

class EndedJobs(_message.Message):
    __slots__ = ("states",)
    class StatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATES_FIELD_NUMBER: _ClassVar[int]
    states: _containers.ScalarMap[str, str]
    def __init__(self, states: _Optional[_Mapping[str, str]] = ...) -> None: ...

class JobRequest(_message.Message):
    __slots__ = ("spec_toml", "source_name")
    SPEC_TOML_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    spec_toml: str
    source_name: str
    def __init__(self, spec_toml: _Optional[str] = ..., source_name: _Optional[str] = ...) -> None: ...

class JobQuery(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CatalogQuery(_message.Message):
    __slots__ = ("query",)
    QUERY_FIELD_NUMBER: _ClassVar[int]
    query: str
    def __init__(self, query: _Optional[str] = ...) -> None: ...

class JobView(_message.Message):
    __slots__ = ("job_id", "json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    json: str
    def __init__(self, job_id: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class LoginRequest(_message.Message):
    __slots__ = ("user_id", "password", "totp_code", "break_glass_reason")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    TOTP_CODE_FIELD_NUMBER: _ClassVar[int]
    BREAK_GLASS_REASON_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    password: str
    totp_code: str
    break_glass_reason: str
    def __init__(self, user_id: _Optional[str] = ..., password: _Optional[str] = ..., totp_code: _Optional[str] = ..., break_glass_reason: _Optional[str] = ...) -> None: ...

class LoginReply(_message.Message):
    __slots__ = ("session", "expires_at", "role", "emergency")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    EMERGENCY_FIELD_NUMBER: _ClassVar[int]
    session: str
    expires_at: float
    role: str
    emergency: bool
    def __init__(self, session: _Optional[str] = ..., expires_at: _Optional[float] = ..., role: _Optional[str] = ..., emergency: _Optional[bool] = ...) -> None: ...
