"""Bounded fuzzing of the parsers that take outside input: job specs (TOML, as the coordinator checks
a submission), a site's ``site.toml``, query specs, the wire codec's frames and the secure-aggregation
stage payloads. Any input must parse or raise a medfed error (:class:`MedfedError`) naming the
problem; nothing else may escape (a ``KeyError``, ``TypeError`` or ``ValueError`` is a crash)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medfed.aggregation.strategies import make_strategy
from medfed.analytics.spec import Criterion, QuerySpec
from medfed.cli.config import load_node_config
from medfed.coordinator.queries import query_spec
from medfed.coordinator.robustness import robust_plan
from medfed.coordinator.synthesis import synthesis_spec
from medfed.core.config import parse_job_spec
from medfed.core.errors import MedfedError
from medfed.core.params import Parameters
from medfed.core.records import ResultMessage, ResultStatus, TaskKind, TaskMessage
from medfed.secagg import wire
from medfed.transport import codec
from medfed.transport import medfed_pb2 as pb

#: Bounded for the suite; MEDFED_FUZZ_EXAMPLES=5000 for a longer hunt.
FUZZ = settings(
    max_examples=int(os.environ.get("MEDFED_FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# --- building blocks ------------------------------------------------------------------------

scalars = (
    st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["", "0", "1.5", "fedavg", "median", "heart", "*", "tag:x", "age >= 60", "²", "10e999"])
)
json_values = st.recursive(
    st.none() | scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
toml_values = st.recursive(
    scalars.filter(lambda v: not isinstance(v, float) or v == v),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


def toml_key(key: str) -> str:
    return json.dumps(key)  # a TOML basic string key


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(v, repr(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_doc(tables: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, table in tables.items():
        lines.append(f"[{'.'.join(toml_key(p) for p in name.split('.'))}]")
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def table(keys: list[str], values: st.SearchStrategy[Any] = toml_values) -> st.SearchStrategy[dict[str, Any]]:
    """A TOML table with some of ``keys`` (and now and then an unknown one)."""
    return st.dictionaries(st.sampled_from([*keys, "bogus"]), values, max_size=len(keys) + 1)


def mutations(seed: str) -> st.SearchStrategy[str]:
    """``seed`` with characters replaced, cut, or appended; and random text."""
    flips = st.dictionaries(st.integers(0, len(seed) - 1), st.characters(), min_size=1, max_size=4)

    def flip(fs: dict[int, str]) -> str:
        chars = list(seed)
        for i, c in fs.items():
            chars[i] = c
        return "".join(chars)

    return (
        st.text(max_size=200)
        | flips.map(flip)
        | st.integers(0, len(seed) - 1).map(lambda n: seed[:n])
        | st.text(min_size=1, max_size=30).map(lambda t: seed + t)
    )


# --- job specs --------------------------------------------------------------------------------

VALID_JOB = """
[job]
name = "fuzz"
task = "logistic_regression"
dataset = "heart"
rounds = 2
seed = 1
sites = ["alpha", "beta", "gamma"]

[strategy]
name = "fedavg"

[task_options]
input_dim = 13
lr = 0.1

[rounds]
min_nodes = 3
deadline_s = 30.0

[robust]
rule = "median"
byzantine = 1
"""

GOOD_JOB = {"name": "fuzz", "task": "logistic_regression", "dataset": "heart", "rounds": 2, "sites": ["a", "b", "c"]}
job_tables = st.fixed_dictionaries(
    {"job": st.just(GOOD_JOB) | table(["name", "task", "dataset", "rounds", "seed", "sites", "purpose"])},
    optional={
        "strategy": table(["name", "server_lr", "proximal_mu", "beta1", "tau"]),
        "task_options": table(["input_dim", "lr", "local_steps", "hidden"]),
        "rounds": table(["min_nodes", "deadline_s", "max_round_retries"]),
        "privacy": table(["noise_multiplier", "clip_norm", "delta", "eval_epsilon"]),
        "robust": table(["rule", "byzantine", "trim_ratio", "norm_bound", "detect_anomalies"]),
        "secure_aggregation": table(["enabled", "threshold", "neighbours", "clip", "bits"]),
        "client_dp": table(["noise_multiplier", "clip_norm", "target_delta"]),
        "query": table(["kind", "where", "columns", "outcome", "covariates", "family", "time", "event", "dp"]),
        "synthesis": table(["method", "epsilon", "delta", "rows", "columns"]),
    },
)


def check_job(text: str) -> None:
    """What the coordinator does with a submitted spec before it stores it."""
    try:
        spec = parse_job_spec(text, source_name="fuzz.toml")
        if spec.query is not None:
            query_spec(spec, source_name="fuzz.toml")
        elif spec.synthesis is not None:
            synthesis_spec(spec, source_name="fuzz.toml")
        else:
            make_strategy(spec.strategy)
            robust_plan(spec)
    except MedfedError:
        pass


@FUZZ
@given(tables=job_tables)
def test_structured_job_specs(tables: dict[str, dict[str, Any]]) -> None:
    check_job(toml_doc(tables))


@FUZZ
@given(text=mutations(VALID_JOB))
def test_mutated_job_specs(text: str) -> None:
    check_job(text)


def test_the_valid_job_seed_parses() -> None:
    spec = parse_job_spec(VALID_JOB)
    assert spec.rounds == 2 and robust_plan(spec) is not None


# --- site.toml ----------------------------------------------------------------------------------

GOOD_SITE = {"name": "alpha", "coordinator": "127.0.0.1:50443"}
GOOD_TLS = {"ca": "ca.pem", "cert": "cert.pem", "key": "key.pem"}
site_tables = st.fixed_dictionaries(
    {
        "site": st.just(GOOD_SITE) | table(["name", "coordinator", "server_name"]),
        "tls": st.just(GOOD_TLS) | table(["ca", "cert", "key"]),
    },
    optional={
        "datasets.heart": table(["path", "kind", "format", "label", "epsilon_budget", "delta_budget", "columns"]),
        "node": table(["poll_wait_s", "backoff_max_s", "state_dir", "log_file"]),
        "policy": table(["researchers", "purposes", "tasks", "datasets"]),
        "disclosure": table(["min_cell", "dominance", "max_queries"]),
    },
)


def check_site(text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "site.toml"
        for name in ("ca.pem", "cert.pem", "key.pem"):
            (Path(d) / name).write_text("-----BEGIN CERTIFICATE-----\n")
        path.write_text(text, encoding="utf-8")
        with contextlib.suppress(MedfedError):
            load_node_config(path)


@FUZZ
@given(tables=site_tables)
def test_structured_site_toml(tables: dict[str, dict[str, Any]]) -> None:
    check_site(toml_doc(tables))


@FUZZ
@given(doc=st.dictionaries(st.sampled_from(["site", "tls", "datasets", "node", "policy", "disclosure"]), toml_values))
def test_site_toml_with_tables_of_the_wrong_type(doc: dict[str, Any]) -> None:
    top = "\n".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items() if k not in ("site", "tls"))
    check_site(top + "\n" + toml_doc({"site": GOOD_SITE, "tls": GOOD_TLS}))


@FUZZ
@given(blob=st.binary(max_size=60))
def test_site_toml_that_is_not_text(blob: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "site.toml"
        path.write_bytes(blob)
        with contextlib.suppress(MedfedError):
            load_node_config(path)


# --- query specs ------------------------------------------------------------------------------

query_docs = st.fixed_dictionaries(
    {},
    optional={
        k: json_values
        for k in ("kind", "where", "columns", "outcome", "covariates", "family", "time", "event", "dp", "bins", "alpha")
    },
)


@FUZZ
@given(doc=query_docs | json_values)
def test_query_spec_json(doc: Any) -> None:
    with contextlib.suppress(MedfedError):
        QuerySpec.from_json(json.dumps(doc))


@FUZZ
@given(text=st.text(max_size=40) | mutations("age >= 60") | mutations("sex == 'female'"))
def test_query_criteria(text: str) -> None:
    with contextlib.suppress(MedfedError):
        Criterion.parse(text)


# --- wire frames ------------------------------------------------------------------------------

PARAMS = Parameters.from_numpy({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2)})
TASK = TaskMessage(task_id="t1", job_id="j1", round=1, kind=TaskKind.FIT, task="mlp", dataset="heart", seed=3,
                   config={"lr": 0.1, "steps": 5}, parameters=PARAMS)  # fmt: skip
RESULT = ResultMessage(task_id="t1", job_id="j1", round=1, site="alpha", status=ResultStatus.OK, parameters=PARAMS,
                       num_examples=10, metrics={"loss": 0.5})  # fmt: skip
TASK_FRAMES = [f.SerializeToString() for f in codec.task_frames(TASK)]
RESULT_FRAMES = [f.SerializeToString() for f in codec.result_frames(RESULT)]


@st.composite
def mutated_frames(draw: st.DrawFn, frames: list[bytes]) -> list[bytes]:
    """Valid serialised frames with a few bytes of one flipped, and perhaps the stream cut short."""
    out = list(frames)
    i = draw(st.integers(0, len(out) - 1))
    blob = bytearray(out[i])
    for _ in range(draw(st.integers(1, 4))):
        if blob:
            blob[draw(st.integers(0, len(blob) - 1))] ^= draw(st.integers(1, 255))
    out[i] = bytes(blob)
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    return out


def frames_of(blobs: list[bytes]) -> list[pb.Frame] | None:
    try:
        return [pb.Frame.FromString(b) for b in blobs]
    except DecodeError:
        return None  # gRPC refuses a message that is not a Frame before medfed sees it


layouts = st.builds(
    lambda names, dtypes, shapes, total: pb.TensorLayout(
        tensors=[pb.TensorMeta(name=n, dtype=d, shape=s) for n, d, s in zip(names, dtypes, shapes, strict=False)],
        total_bytes=total,
    ),
    st.lists(st.text(max_size=6), max_size=3),
    st.lists(st.sampled_from(["float32", "float64", "<f4", "object", "int64", "", "V8", "float16"]), max_size=3),
    st.lists(st.lists(st.integers(0, 2**40), max_size=3), max_size=3),
    st.integers(0, 2**40),
)


@FUZZ
@given(blobs=mutated_frames(TASK_FRAMES) | st.lists(st.binary(max_size=60), max_size=3))
def test_mutated_task_frames(blobs: list[bytes]) -> None:
    frames = frames_of(blobs)
    if frames is not None:
        with contextlib.suppress(MedfedError):
            codec.read_task(frames)


@FUZZ
@given(blobs=mutated_frames(RESULT_FRAMES))
def test_mutated_result_frames(blobs: list[bytes]) -> None:
    frames = frames_of(blobs)
    if frames is not None:
        with contextlib.suppress(MedfedError):
            codec.read_result(frames, site="alpha")


@FUZZ
@given(layout=layouts, chunks=st.lists(st.binary(max_size=64), max_size=3), kind=st.text(max_size=8))
def test_random_headers_and_chunks(layout: pb.TensorLayout, chunks: list[bytes], kind: str) -> None:
    header = pb.Frame(task=pb.TaskHeader(task_id="t", job_id="j", kind=kind or "fit", layout=layout))
    result = pb.Frame(result=pb.ResultHeader(task_id="t", job_id="j", status="ok", has_parameters=True, layout=layout))
    for first, read in ((header, codec.read_task), (result, lambda fs: codec.read_result(fs, site="a"))):
        with contextlib.suppress(MedfedError):
            read([first, *(pb.Frame(chunk=c) for c in chunks)])


# --- secure-aggregation stage payloads ----------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


ids = st.integers(-2, 6) | st.booleans() | st.text(max_size=3)
share_docs = st.fixed_dictionaries(
    {}, optional={"sender": ids, "recipient": ids, "ciphertext": st.binary(max_size=16).map(b64) | json_values}
)
shamir_docs = st.fixed_dictionaries(
    {},
    optional={
        "x": ids,
        "ys": st.lists(st.text("0123456789²٣", max_size=6) | json_values, max_size=3),
        "length": ids,
    },
)
stage_docs = st.fixed_dictionaries(
    {},
    optional={
        "stage": st.sampled_from(["keys", "shares", "mask", "unmask", "nope"]) | json_values,
        "session": st.binary(max_size=16).map(b64) | json_values,
        "node": ids,
        "sender": ids,
        "threshold": ids,
        "vector_size": ids,
        "graph": st.dictionaries(st.text("12²٣x", max_size=3), st.lists(ids, max_size=3) | json_values, max_size=4)
        | json_values,
        "peers": st.lists(
            st.fixed_dictionaries(
                {}, optional={"node": ids, "cipher_public": st.binary(max_size=8).map(b64), "mask_public": json_values}
            ),
            max_size=3,
        )
        | json_values,
        "shares": st.lists(share_docs, max_size=3) | json_values,
        "inbox": st.lists(share_docs, max_size=3) | json_values,
        "quantization": st.fixed_dictionaries({}, optional={"clip": scalars, "max_summands": ids, "bits": ids})
        | json_values,
        "contribution": st.fixed_dictionaries(
            {}, optional={"form": st.sampled_from(["weighted", "dp", "x"]), "max_weight": ids}
        )
        | json_values,
        "survivors": st.lists(ids, max_size=4) | json_values,
        "dropped": st.lists(ids, max_size=4) | json_values,
        "self_mask": st.dictionaries(st.text("12²٣x", max_size=3), shamir_docs, max_size=3) | json_values,
        "mask_key": st.dictionaries(st.text("12²٣x", max_size=3), shamir_docs, max_size=3) | json_values,
    },
)
DECODERS = (
    wire.decode_stage, wire.decode_params, wire.decode_advert, wire.decode_peers, wire.decode_bundle,
    wire.decode_mask_stage, wire.decode_unmask, wire.decode_revealed,
)  # fmt: skip


@FUZZ
@given(payload=stage_docs.map(lambda d: json.dumps(d).encode()) | st.binary(max_size=80))
@pytest.mark.parametrize("decode", DECODERS, ids=lambda f: f.__name__)
def test_secagg_stage_payloads(decode: Any, payload: bytes) -> None:
    with contextlib.suppress(MedfedError):
        decode(payload)
