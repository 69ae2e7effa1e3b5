"""The node: dials out to the coordinator, polls for tasks, runs them on local data through a
middleware chain, and sends back parameters and metrics — never rows.

The node reconnects with exponential backoff and jitter when the coordinator is unreachable,
re-registers when a restarted coordinator no longer knows it, and heartbeats while it trains.
While its privacy ledger holds open reservations it asks the coordinator, at each registration and
every ``release_check_s``, which of their jobs ended, and gives back what those did not spend
(:func:`medfed.node.privacy.release_ended_jobs`).
A refused identity (wrong CA, expired, revoked) stops the node with a clear message: retrying
cannot fix a certificate.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from medfed import __version__
from medfed.analytics.policy import DisclosurePolicy
from medfed.core.errors import (
    AuthenticationError,
    ConfigError,
    MedfedError,
    PermissionDenied,
    TransportError,
    ValidationError,
)
from medfed.core.records import ResultMessage, TaskMessage
from medfed.learn.base import TabularData, Task
from medfed.learn.registry import load_task
from medfed.node.governance import open_governance
from medfed.node.ledger import PrivacyLedger
from medfed.node.middleware import Handler, Middleware, NodeContext, build_chain, default_middleware, run_task
from medfed.node.privacy import budget_figures, release_ended_jobs
from medfed.security.node_policy import NodePolicy
from medfed.transport.api import MAX_OPEN_JOBS, CoordinatorLink, Hello

if TYPE_CHECKING:
    from medfed.data.sources import DatasetDecl
    from medfed.node.datasets import Publisher
    from medfed.synth.release import ReleasePolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetConfig:
    """A dataset declared by the site admin: a directory with ``train.csv`` and ``test.csv``."""

    name: str
    path: Path
    label: str = "label"
    epsilon_budget: float | None = None  # the site's total ε for this dataset; None: no DP budget set
    delta_budget: float = 1e-5
    #: a dataset declared with ``columns`` (csv, parquet, fhir, omop), loaded per job through the
    #: consent filter (medfed.node.datasets); None: a legacy directory with train.csv and test.csv
    decl: DatasetDecl | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSettings:
    site: str
    datasets: dict[str, DatasetConfig] = field(default_factory=dict)
    poll_wait_s: float = 10.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    tasks: tuple[str, ...] = ()
    state_dir: Path | None = None  # where the node keeps its ledger; None: no ledger (no DP jobs)
    disclosure: DisclosurePolicy = field(default_factory=DisclosurePolicy)  # [disclosure]: what queries may release
    synthetic: ReleasePolicy | None = None  # [synthetic]: what synthesis jobs may release; None: the defaults
    policy: NodePolicy | None = None  # [policy]: which jobs may touch data here (+ approvals); None: no checks
    coordinator_key: bytes | None = None  # the kit's coordinator-signing.pub: models must verify; None: unchecked
    release_check_s: float = 5.0  # while DP reservations are open: how often to ask which of their jobs ended


def open_ledger(settings: NodeSettings) -> PrivacyLedger | None:
    """The node's privacy ledger with the budgets of ``site.toml`` applied, or ``None``."""
    if settings.state_dir is None:
        budgets = [d.name for d in settings.datasets.values() if d.epsilon_budget is not None]
        if budgets:
            raise ConfigError(
                f"datasets {budgets} set a privacy budget: the node needs [node] state_dir for its ledger"
            )
        return None
    ledger = PrivacyLedger(settings.state_dir / "ledger.sqlite")
    for ds in settings.datasets.values():
        if ds.epsilon_budget is not None:
            ledger.set_budget(ds.name, epsilon=ds.epsilon_budget, delta=ds.delta_budget)
    return ledger


class NodeRuntime:
    """One site's node process logic, independent of the transport underneath."""

    def __init__(
        self,
        settings: NodeSettings,
        link: CoordinatorLink,
        *,
        task_loader: Callable[[str], Task] = load_task,
        data_loader: Callable[[DatasetConfig], TabularData] | None = None,
        middleware: Sequence[Middleware] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.link = link
        self.stop_event = threading.Event()
        self._rng = rng or random.Random()
        self.context = NodeContext(
            site=settings.site,
            datasets=settings.datasets,
            task_loader=task_loader,
            data_loader=data_loader,
            ledger=open_ledger(settings),
            disclosure=settings.disclosure,
            synthetic=settings.synthetic,
            state_dir=settings.state_dir,
            governance=open_governance(
                settings.site,
                state_dir=settings.state_dir,
                policy=settings.policy,
                coordinator_key=settings.coordinator_key,
            ),
        )
        self._handler: Handler = build_chain(run_task, default_middleware() if middleware is None else middleware)
        self._registered = threading.Event()
        self._heartbeat_s = 1.0  # until the coordinator's Welcome says otherwise
        self.tasks_done = 0
        self._release_checked = 0.0  # time.monotonic() of the last question about ended jobs
        self.publisher: Publisher | None = None  # the catalog of declared datasets, sent when registering

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        """Serve until :meth:`stop`; raise :class:`AuthenticationError` if our identity is refused."""
        delay = self.settings.backoff_initial_s
        heart = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        heart.start()
        try:
            while not self.stop_event.is_set():
                try:
                    self._register()
                    delay = self.settings.backoff_initial_s
                    self._serve()
                except (AuthenticationError, PermissionDenied):
                    raise
                except TransportError as exc:
                    self._registered.clear()
                    wait = delay * (0.5 + self._rng.random())
                    log.warning("site %s: %s; reconnecting in %.1fs", self.settings.site, exc, wait)
                    self.stop_event.wait(wait)
                    delay = min(delay * 2, self.settings.backoff_max_s)
        finally:
            self.stop_event.set()
            self.link.close()
            if self.context.governance is not None:
                self.context.governance.checkpoint()

    def _register(self) -> None:
        hello = Hello(version=__version__, datasets=tuple(sorted(self.settings.datasets)), tasks=self.settings.tasks)
        if any(d.decl is not None for d in self.settings.datasets.values()):
            if self.publisher is None:
                from medfed.node.datasets import Publisher

                self.publisher = Publisher(self.settings.site, self.settings.datasets, self.settings.state_dir)
            offer = self.publisher.current(on=self.context.today())
            hello = Hello(
                version=hello.version, datasets=offer.offered, tasks=hello.tasks, catalog_json=offer.catalog_json()
            )
        welcome = self.link.register(hello)
        self._heartbeat_s = welcome.heartbeat_interval_s
        self._registered.set()
        log.info("site %s registered with coordinator %s", welcome.site, welcome.coordinator_version)
        self._release_ended(report=True)  # a job may have ended while we were away (or before a restart)

    def _release_ended(self, *, report: bool = False) -> None:
        """Ask which jobs holding open reservations in the ledger are over; give their unspent
        rest back (:func:`medfed.node.privacy.release_ended_jobs`). Each question carries the
        ledger's figures per dataset (the coordinator's Privacy page shows them); after a release
        the node asks once more, so the coordinator sees the figures without the released holds.
        With ``report`` (registration) the figures go even when no reservation is open."""
        self._release_checked = time.monotonic()
        ledger = self.context.ledger
        asked = ledger.open_jobs(limit=MAX_OPEN_JOBS) if ledger is not None else []
        if not asked and not (report and budget_figures(ledger)):
            return
        try:
            ended = self.link.jobs_ended(tuple(asked), budget_figures(ledger))
            if release_ended_jobs(self.context, ended, asked=set(asked)) and ledger is not None:
                self.link.jobs_ended(tuple(ledger.open_jobs(limit=MAX_OPEN_JOBS)), budget_figures(ledger))
        except (TransportError, ValidationError) as exc:  # asked again later; polling reports a lost link
            log.warning("site %s: could not ask which jobs ended: %s", self.settings.site, exc)

    def _serve(self) -> None:
        while not self.stop_event.is_set() and self._registered.is_set():
            try:
                got = self.link.poll(self.settings.poll_wait_s)
            except ValidationError:  # a restarted coordinator does not know us yet
                self._registered.clear()
                return
            if isinstance(got, float):
                self.stop_event.wait(min(got, 1.0))
            else:
                self._handle(got)
            if time.monotonic() - self._release_checked >= self.settings.release_check_s:
                self._release_ended()

    def _handle(self, task: TaskMessage) -> None:
        self.context.begin(task)
        result: ResultMessage = self._handler(task, self.context)
        try:
            self.link.submit(result)
        except ValidationError as exc:  # e.g. the round closed before we finished: not fatal
            log.warning("site %s: result for round %d not accepted: %s", self.settings.site, task.round, exc)
        except MedfedError:
            raise
        self.tasks_done += 1

    def _heartbeat_loop(self) -> None:
        while not self.stop_event.wait(self._heartbeat_s):
            if not self._registered.is_set():
                continue
            try:
                if not self.link.heartbeat():
                    self._registered.clear()
            except MedfedError as exc:
                log.debug("heartbeat failed: %s", exc)
