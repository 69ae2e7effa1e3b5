"""What the transport needs from the coordinator, and what a node gets from the transport.

Two tiny seams. The gRPC server adapts :class:`CoordinatorAPI` onto the wire; the gRPC client
and the in-memory twin both implement :class:`CoordinatorLink`, so the node runtime cannot tell
them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from medfed.core.params import Parameters
from medfed.core.records import ResultMessage, Role, TaskMessage


@dataclass(frozen=True, slots=True, kw_only=True)
class Peer:
    """An authenticated caller, as its certificate says (never as a message says)."""

    name: str
    role: Role
    serial: int = 0
    session: str = field(default="", repr=False)  # a person's login session ("medfed-session" metadata), if sent
    token: str = field(default="", repr=False)  # a person's API token ("medfed-token" metadata), if sent
    source: str = ""  # the caller's IP address, for login rate limits and the audit log
    cert_expires: float = 0.0  # the certificate's notAfter (seconds since the epoch); 0: unknown


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """A node introduces itself: version, the datasets and tasks it offers."""

    version: str
    datasets: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    catalog_json: str = ""  # catalog entries of its declared datasets (JSON list; metadata, coarse counts)


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    site: str
    heartbeat_interval_s: float
    coordinator_version: str


JobViewDict = dict[str, Any]

#: Job ids a node may ask about in one ``jobs_ended`` call (its open privacy-budget reservations).
MAX_OPEN_JOBS = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetFigures:
    """One dataset's privacy budget in a node's ledger, sent with ``jobs_ended`` (numbers only).

    ``epsilon_used``/``delta_used``: what closed and open jobs committed; ``epsilon_held``/
    ``delta_held``: what open reservations hold beyond their committed spend. Left = total - used - held.
    """

    dataset: str
    epsilon_total: float
    delta_total: float
    epsilon_used: float
    delta_used: float
    epsilon_held: float
    delta_held: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PollOutcome:
    """A task, or how long to wait before polling again."""

    task: TaskMessage | None = None
    retry_after_s: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginGrant:
    """A person's session after password + TOTP over their mTLS certificate."""

    session: str = field(repr=False)
    expires_at: float
    role: str
    emergency: bool = False  # a break-glass session (short, every call loudly audited)


class Login(Protocol):
    """Implemented by a coordinator with a user store (medfed.coordinator.people).

    A non-empty ``break_glass_reason`` asks for emergency access instead of a normal session.
    """

    def __call__(
        self, peer: Peer, *, user_id: str, password: str, code: str, break_glass_reason: str = ""
    ) -> LoginGrant: ...


class CoordinatorAPI(Protocol):
    """Implemented by the coordinator; called by the gRPC server and the in-memory twin."""

    def register(self, peer: Peer, hello: Hello) -> Welcome: ...
    def heartbeat(self, peer: Peer) -> bool: ...
    def poll(self, peer: Peer, wait_s: float) -> PollOutcome: ...
    def submit(self, peer: Peer, result: ResultMessage) -> None: ...
    def jobs_ended(
        self, peer: Peer, job_ids: tuple[str, ...], budgets: tuple[BudgetFigures, ...] = ()
    ) -> dict[str, str]: ...
    def submit_job(self, peer: Peer, spec_toml: str, source_name: str) -> JobViewDict: ...
    def get_job(self, peer: Peer, job_id: str) -> JobViewDict: ...
    def list_jobs(self, peer: Peer) -> JobViewDict: ...
    def cancel_job(self, peer: Peer, job_id: str) -> JobViewDict: ...
    def fetch_model(self, peer: Peer, job_id: str) -> Parameters: ...
    def model_signature(self, peer: Peer, job_id: str) -> bytes: ...
    def search_catalog(self, peer: Peer, query: str) -> JobViewDict: ...


class CoordinatorLink(Protocol):
    """How a node talks to the coordinator, over gRPC or in memory."""

    def register(self, hello: Hello) -> Welcome: ...
    def heartbeat(self) -> bool: ...
    def poll(self, wait_s: float) -> TaskMessage | float: ...
    def submit(self, result: ResultMessage) -> None: ...
    def jobs_ended(self, job_ids: tuple[str, ...], budgets: tuple[BudgetFigures, ...] = ()) -> dict[str, str]: ...
    def close(self) -> None: ...
