"""What both ends of the gRPC service agree on to sign calls (recipe: :mod:`medfed.crypto.request_signing`).

The signed body digest of a call is:

* a unary request (``Register``, ``SubmitJob``, ``Login`` ...; also the request of the server-streaming
  ``PollTask`` and ``FetchModel``): SHA-256 of the request message's deterministic protobuf
  serialization (:func:`message_digest`); the server re-serializes what it parsed and compares;
* the client-streaming upload ``SubmitResult``: a running SHA-256 over every frame as it is sent
  (:class:`StreamDigest`: a tag byte, the length, then a chunk's raw bytes or a header frame's
  deterministic serialization). The client computes it before it sends (one extra pass over the
  model); the server checks the signature, time and nonce before it reads the stream, folds each
  frame into its own running digest as it reads, and refuses the upload when the stream ends with
  a different digest, before the result reaches the coordinator.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from medfed.crypto.request_signing import Refusal, body_digest
from medfed.transport import medfed_pb2 as pb

__all__ = [
    "SERVICE",
    "TOKEN_KEY",
    "RefusedCall",
    "StreamDigest",
    "audit_method",
    "message_digest",
    "method_path",
]

SERVICE = "medfed.v1.Federation"
TOKEN_KEY = "medfed-token"  # noqa: S105 - a metadata key; the person's API token travels under it


def method_path(name: str) -> str:
    """``SubmitJob`` -> ``/medfed.v1.Federation/SubmitJob`` (what is signed)."""
    return f"/{SERVICE}/{name}"


def audit_method(name: str) -> str:
    """``SubmitJob`` -> ``submit_job`` (an audit log ``method`` value: a lower-case token)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def message_digest(message: Any) -> str:
    """SHA-256 (hex) of a protobuf message's deterministic serialization (maps in key order)."""
    return body_digest(message.SerializeToString(deterministic=True))


class StreamDigest:
    """The running digest of a stream of :class:`pb.Frame` (see the module docstring)."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def add(self, frame: pb.Frame) -> None:
        if frame.WhichOneof("body") == "chunk":
            data, tag = frame.chunk, b"c"
        else:
            data, tag = frame.SerializeToString(deterministic=True), b"m"
        self._h.update(tag + len(data).to_bytes(8, "big"))
        self._h.update(data)

    def over(self, frames: Iterable[pb.Frame]) -> Iterator[pb.Frame]:
        """Pass ``frames`` through, folding each into the digest."""
        for frame in frames:
            self.add(frame)
            yield frame

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    @classmethod
    def of(cls, frames: Iterable[pb.Frame]) -> str:
        digest = cls()
        for frame in frames:
            digest.add(frame)
        return digest.hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class RefusedCall:
    """A call refused for its signature, time or nonce: what the coordinator's audit log records."""

    name: str  # the certificate's common name
    role: str  # the certificate's role
    method: str  # audit form, e.g. submit_job
    refusal: Refusal
    source: str = ""  # the caller's IP address
