"""A node's per-round secure-aggregation secrets, in memory only (never written to disk)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TypeVar

from medfed.core.errors import ValidationError
from medfed.secagg.node import NodeKeys, NodeMasked, NodeShared

__all__ = ["SecAggSessions", "SessionState"]

SessionState = NodeKeys | NodeShared | NodeMasked
S = TypeVar("S", NodeKeys, NodeShared, NodeMasked)


@dataclass(slots=True)
class SecAggSessions:
    """Secrets per round session, at most ``limit`` rounds (older ones are forgotten)."""

    limit: int = 8
    _states: OrderedDict[bytes, SessionState] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, session: bytes, state: SessionState) -> None:
        with self._lock:
            self._states[session] = state
            self._states.move_to_end(session)
            while len(self._states) > self.limit:
                self._states.popitem(last=False)

    def get(self, session: bytes, kind: type[S], stage: str) -> S:
        """The state the previous stage left; :class:`ValidationError` if there is none."""
        with self._lock:
            state = self._states.get(session)
        if not isinstance(state, kind):
            raise ValidationError(
                f"secure aggregation: stage {stage!r} arrived without the previous stage of this round "
                "(the node restarted, or the coordinator skipped a stage)"
            )
        return state

    def drop(self, session: bytes) -> None:
        with self._lock:
            self._states.pop(session, None)

    def __len__(self) -> int:
        return len(self._states)
