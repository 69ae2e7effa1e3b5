"""In-memory twin of the gRPC transport: same protocol, same codec, no sockets.

Every message is encoded to frames and decoded again, exactly as on the wire, so tests of the
node and coordinator over this twin exercise the real protocol logic.
"""

from __future__ import annotations

from medfed.core.errors import MedfedError, error_from_kind, error_kind
from medfed.core.records import ResultMessage, Role, TaskMessage
from medfed.transport import codec
from medfed.transport.api import BudgetFigures, CoordinatorAPI, Hello, Peer, Welcome


class MemoryLink:
    """A node's link to a coordinator living in the same process."""

    def __init__(self, api: CoordinatorAPI, site: str) -> None:
        self._api = api
        self._peer = Peer(name=site, role=Role.NODE)
        self.closed = False

    def register(self, hello: Hello) -> Welcome:
        return self._api.register(self._peer, hello)

    def heartbeat(self) -> bool:
        return self._api.heartbeat(self._peer)

    def poll(self, wait_s: float) -> TaskMessage | float:
        outcome = self._api.poll(self._peer, wait_s)
        if outcome.task is None:
            return outcome.retry_after_s
        return codec.read_task(codec.task_frames(outcome.task))

    def submit(self, result: ResultMessage) -> None:
        decoded = codec.read_result(codec.result_frames(result), site=self._peer.name)
        try:
            self._api.submit(self._peer, decoded)
        except MedfedError as exc:  # travels as a value on the wire; rebuild it the same way
            raise error_from_kind(error_kind(exc), str(exc)) from None

    def jobs_ended(self, job_ids: tuple[str, ...], budgets: tuple[BudgetFigures, ...] = ()) -> dict[str, str]:
        return dict(self._api.jobs_ended(self._peer, tuple(job_ids), tuple(budgets)))

    def close(self) -> None:
        self.closed = True
