"""A refusal's reason and spec hash ride the result header: they round-trip, an old node's empty
fields decode to "no reason", and a header naming an unknown reason or a malformed hash is refused."""

from __future__ import annotations

import hashlib

import pytest

from medfed.core.errors import Refusal, TransportError
from medfed.core.records import ResultMessage, ResultStatus
from medfed.transport import codec
from medfed.transport import medfed_pb2 as pb

SPEC = hashlib.sha256(b"[job]\nname = 'x'\n").hexdigest()


def _refused(reason: Refusal | None, spec: str = "") -> ResultMessage:
    return ResultMessage(
        task_id="t1",
        job_id="j1",
        round=1,
        site="alpha",
        status=ResultStatus.ERROR,
        error_kind="permission",
        error_message="refused",
        refusal=reason,
        refusal_spec=spec,
    )


@pytest.mark.parametrize("reason", list(Refusal))
def test_every_refusal_reason_and_the_spec_hash_round_trip(reason: Refusal) -> None:
    back = codec.read_result(codec.result_frames(_refused(reason, SPEC)), site="alpha")
    assert back.refusal is reason and back.refusal_spec == SPEC
    assert back.error_kind == "permission" and back.error_message == "refused"


def test_a_result_without_a_reason_decodes_as_no_refusal() -> None:
    back = codec.read_result(codec.result_frames(_refused(None)), site="alpha")
    assert back.refusal is None and back.refusal_spec == ""


def _header(refusal: str, spec: str) -> list[pb.Frame]:
    return [pb.Frame(result=pb.ResultHeader(task_id="t1", job_id="j1", round=1, status="error",
                                            error_kind="permission", refusal=refusal, refusal_spec=spec))]  # fmt: skip


@pytest.mark.parametrize(
    ("refusal", "spec", "says"),
    [
        ("maybe-later", SPEC, "unknown refusal 'maybe-later'"),
        ("not-cleared", "0123abcd", "is not a SHA-256 in hex"),
        ("not-cleared", SPEC.upper(), "is not a SHA-256 in hex"),
        ("", SPEC, "refusal_spec without a refusal"),
    ],
)
def test_a_bad_refusal_field_is_refused_naming_the_site_and_field(refusal: str, spec: str, says: str) -> None:
    with pytest.raises(TransportError, match="from site 'alpha'") as err:
        codec.read_result(iter(_header(refusal, spec)), site="alpha")
    assert says in str(err.value)


def test_an_unknown_reason_and_a_bad_hash_are_both_listed() -> None:
    with pytest.raises(TransportError) as err:
        codec.read_result(iter(_header("nope", "zz")), site="alpha")
    assert "unknown refusal 'nope'" in str(err.value) and "is not a SHA-256" in str(err.value)
