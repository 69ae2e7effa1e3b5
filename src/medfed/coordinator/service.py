"""The coordinator: implements the transport's CoordinatorAPI over a store, a node registry and
one runner thread per job. It never dials a node: nodes poll it."""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from medfed import __version__
from medfed.aggregation.strategies import make_strategy
from medfed.coordinator.alerting import AlertScanner, ScanConfig
from medfed.coordinator.audit_hooks import CoordinatorAudit
from medfed.coordinator.checkpoints import AtRest, load_checkpoint
from medfed.coordinator.engine import JobContext, JobRunner
from medfed.coordinator.nodes import CatalogListing, NodeRegistry, catalog_listing, parse_catalog
from medfed.coordinator.queries import QueryRunner, query_spec
from medfed.coordinator.robustness import robust_plan
from medfed.coordinator.rounds import RoundInProgress
from medfed.coordinator.store import JobRow, Store
from medfed.coordinator.synthesis import SynthesisRunner, synthesis_spec
from medfed.coordinator.views import job_view
from medfed.core.config import parse_job_spec
from medfed.core.errors import ConfigError, JobError, PermissionDenied, RegistryError, StoreError, ValidationError
from medfed.core.params import Parameters
from medfed.core.records import JobState, ResultMessage, Role
from medfed.crypto.aead import Keyring
from medfed.learn.base import Task
from medfed.learn.registry import load_task
from medfed.transport.api import MAX_OPEN_JOBS, BudgetFigures, Hello, JobViewDict, Peer, PollOutcome, Welcome

log = logging.getLogger(__name__)
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # a job id as nodes' ledgers hold it


@dataclass(frozen=True, slots=True, kw_only=True)
class CoordinatorSettings:
    state_dir: Path
    heartbeat_interval_s: float = 5.0
    stale_after_heartbeats: float = 3.0
    poll_retry_s: float = 0.5
    keyring: Keyring | None = None  # encrypt checkpoints and models at rest (--key-file); None: plaintext
    signing_key: Path | None = None  # the kit's Ed25519 key (public half in every kit); None: state_dir's own
    alert_scan: ScanConfig | None = None  # access/update alerts (state_dir/alerts.sqlite); interval_s: periodic

    def __post_init__(self) -> None:
        if self.heartbeat_interval_s <= 0:
            raise ValidationError(f"heartbeat_interval_s must be > 0, got {self.heartbeat_interval_s}")


class Coordinator:
    """Jobs, rounds and aggregation; the object behind the gRPC service (or the in-memory twin)."""

    def __init__(
        self,
        settings: CoordinatorSettings,
        *,
        task_loader: Callable[[str], Task] = load_task,
        on_job_finished: Callable[[str, JobViewDict], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = Store(settings.state_dir / "coordinator.sqlite")
        self.nodes = NodeRegistry(stale_after_s=settings.heartbeat_interval_s * settings.stale_after_heartbeats)
        self._task_loader = task_loader
        self._on_job_finished = on_job_finished
        self._rounds_by_task: dict[str, RoundInProgress] = {}
        self._lock = threading.Lock()
        self._runners: dict[str, JobRunner] = {}
        # tamper-evident record of submissions, accepted results and signed models (state_dir/audit.sqlite)
        self.audit = CoordinatorAudit(settings.state_dir, key_path=settings.signing_key)
        self.at_rest = None if settings.keyring is None else AtRest(keyring=settings.keyring, root=settings.state_dir)
        # unusual access in the audit log and anomalous node updates -> state_dir/alerts.sqlite + alert.raised
        self.alerting = AlertScanner(
            audit=self.audit,
            store=self.store,
            alerts_path=settings.state_dir / "alerts.sqlite",
            config=settings.alert_scan,
        )

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Resume jobs that were running (or pending) when the coordinator last stopped."""
        self.alerting.start()
        for row in self.store.jobs(state=JobState.RUNNING) + self.store.jobs(state=JobState.PENDING):
            log.info("resuming job %s (%s) after round %d", row.job_id, row.name, row.completed_round)
            try:
                self._launch(row)
            except (ConfigError, RegistryError, ValidationError, StoreError) as exc:
                self.store.set_job_state(row.job_id, JobState.FAILED, error=f"cannot resume: {exc}")

    def stop(self, timeout_s: float = 5.0) -> None:
        for runner in list(self._runners.values()):
            runner.cancelled.set()
        self.nodes.notify()
        for runner in list(self._runners.values()):
            runner.join(timeout_s)
        self.alerting.stop()
        self.audit.close()

    def wait_job(self, job_id: str, timeout_s: float) -> JobViewDict:
        """Block until the job finishes (or the timeout); return its view."""
        runner = self._runners.get(job_id)
        if runner is not None:
            runner.join(timeout_s)
        return job_view(self.store, self._row(job_id), detail=True)

    def _launch(self, row: JobRow) -> None:
        spec = parse_job_spec(row.spec_toml, source_name=f"job {row.job_id}")
        ctx = JobContext(
            job_id=row.job_id,
            store=self.store,
            nodes=self.nodes,
            state_dir=self.settings.state_dir,
            rounds_by_task=self._rounds_by_task,
            lock=self._lock,
            on_finish=self._finished,
            owner=row.owner,
            audit=self.audit,
            at_rest=self.at_rest,
        )
        if spec.query is not None:  # a federated query: no strategy, no task
            runner: JobRunner = QueryRunner(spec, ctx)
        elif spec.synthesis is not None:  # federated synthesis: each site releases DP synthetic rows
            runner = SynthesisRunner(spec, ctx)
        else:
            runner = JobRunner(spec, make_strategy(spec.strategy), self._task_loader(spec.task), ctx)
        self._runners[row.job_id] = runner
        runner.start()

    def _finished(self, job_id: str) -> None:
        if self._on_job_finished is not None:
            try:
                self._on_job_finished(job_id, job_view(self.store, self._row(job_id), detail=True))
            except Exception:
                log.exception("job %s: finishing hook failed", job_id)

    # --- node-facing -----------------------------------------------------------------------

    def register(self, peer: Peer, hello: Hello) -> Welcome:
        catalog = parse_catalog(hello.catalog_json, site=peer.name, offered=hello.datasets)
        rejoined = self.nodes.register(peer.name, hello, catalog=catalog, cert_expires=peer.cert_expires)
        self.store.touch_node(peer.name, version=hello.version, datasets=hello.datasets)
        self.store.replace_catalog(peer.name, catalog)  # search answers after a restart, offline sites too
        log.info("site %s registered (version %s, datasets %s)", peer.name, hello.version, list(hello.datasets))
        if rejoined:
            self._drop_lost_tasks(peer.name)
        return Welcome(
            site=peer.name, heartbeat_interval_s=self.settings.heartbeat_interval_s, coordinator_version=__version__
        )

    def _drop_lost_tasks(self, site: str) -> None:
        """A node registers again only between tasks (after a restart or a broken connection),
        so a task it had taken and not answered is lost. Record that in its round now: else a
        quickly restarted node looks alive and its round waits for the deadline."""
        queued = self.nodes.queued(site)
        with self._lock:
            taken = {r for tid, r in self._rounds_by_task.items() if r.tasks[tid] == site and tid not in queued}
        reason = "transport: the node reconnected without answering (restarted or lost its connection); task lost"
        lost = [r.key.round for r in taken if r.abandon(site, reason)]
        if lost:
            log.warning("site %s re-registered: its task of round(s) %s was lost", site, sorted(lost))
            self.nodes.notify()

    def heartbeat(self, peer: Peer) -> bool:
        return self.nodes.touch(peer.name)

    def poll(self, peer: Peer, wait_s: float) -> PollOutcome:
        if not self.nodes.touch(peer.name):
            raise ValidationError(f"site {peer.name!r} must register before polling")
        task = self.nodes.take(peer.name, wait_s)
        self.nodes.touch(peer.name)
        if task is None:
            return PollOutcome(retry_after_s=self.settings.poll_retry_s)
        return PollOutcome(task=task)

    def submit(self, peer: Peer, result: ResultMessage) -> None:
        self.nodes.touch(peer.name)
        with self._lock:
            round_ = self._rounds_by_task.get(result.task_id)
        if round_ is None:
            raise ValidationError(
                f"result from site {peer.name!r} for task {result.task_id!r} (job {result.job_id}, round "
                f"{result.round}) arrived after its round closed or for an unknown task"
            )
        try:
            round_.accept(result)
            self.audit.result_received(result)
        finally:
            self.nodes.notify()

    def jobs_ended(
        self, peer: Peer, job_ids: tuple[str, ...], budgets: tuple[BudgetFigures, ...] = ()
    ) -> dict[str, str]:
        """Which of ``job_ids`` (a node's open privacy-budget reservations) belong to jobs that are
        over, with their final state. Unknown ids get no answer: the node keeps those holds. The
        node decides what to give back; its ledger returns at most ``reserved - committed``.
        ``budgets``, the node's ledger figures per dataset, are kept as the site's latest snapshot."""
        self.nodes.touch(peer.name)
        problems = [f"{len(job_ids)} job ids, at most {MAX_OPEN_JOBS}"] if len(job_ids) > MAX_OPEN_JOBS else []
        problems += [f"job id #{i} is not an id" for i, j in enumerate(job_ids) if not _JOB_ID.fullmatch(j)]
        if problems:
            raise ValidationError(problems, where=f"jobs_ended from site {peer.name!r}")
        if budgets:
            self.store.record_budgets(peer.name, budgets)
        rows = (self.store.job(j) for j in dict.fromkeys(job_ids))
        return {r.job_id: r.state.value for r in rows if r is not None and r.state.finished}

    # --- people-facing ---------------------------------------------------------------------

    def submit_job(self, peer: Peer, spec_toml: str, source_name: str) -> JobViewDict:
        source_name = source_name or "<job>"
        spec = parse_job_spec(spec_toml, source_name=source_name)
        if spec.query is not None:
            query_spec(spec, source_name=source_name)  # refuse a malformed query before it is stored
        elif spec.synthesis is not None:
            synthesis_spec(spec, source_name=source_name)  # refuse a malformed [synthesis] before it is stored
        else:
            # refuse unknown strategies, robust rules, tasks and options now, not after the job was stored
            make_strategy(spec.strategy)
            try:
                robust_plan(spec)
            except ConfigError as exc:
                raise ConfigError(f"{source_name}: {exc}") from None
            self._task_loader(spec.task).init_parameters(dict(spec.task_options), spec.seed)
        job_id = uuid.uuid4().hex[:12]
        self.store.add_job(
            job_id=job_id,
            name=spec.name,
            owner=peer.name,
            spec_toml=spec_toml,
            spec_hash=spec.spec_hash,
            rounds=spec.rounds,
        )
        self.audit.job_submitted(job_id=job_id, owner=peer.name, spec=spec)
        log.info("job %s (%s) submitted by %s, spec sha256 %s", job_id, spec.name, peer.name, spec.spec_hash[:12])
        row = self._row(job_id)
        self._launch(row)
        return job_view(self.store, row, detail=False)

    def _row(self, job_id: str) -> JobRow:
        row = self.store.job(job_id)
        if row is None:
            raise JobError(f"no job with id {job_id!r}")
        return row

    def _owned(self, peer: Peer, job_id: str) -> JobRow:
        row = self._row(job_id)
        if peer.role is not Role.ADMIN and row.owner != peer.name:
            raise PermissionDenied(f"job {job_id} belongs to {row.owner!r}, not {peer.name!r}")
        return row

    def get_job(self, peer: Peer, job_id: str) -> JobViewDict:
        return job_view(self.store, self._owned(peer, job_id), detail=True)

    def list_jobs(self, peer: Peer) -> JobViewDict:
        rows = [r for r in self.store.jobs() if peer.role is Role.ADMIN or r.owner == peer.name]
        online = {n.site for n in self.nodes.online()}
        sites = [n | {"online": n["site"] in online} for n in self.store.nodes()]
        return {"job_id": "", "jobs": [job_view(self.store, r, detail=False) for r in rows], "sites": sites}

    def cancel_job(self, peer: Peer, job_id: str) -> JobViewDict:
        row = self._owned(peer, job_id)
        runner = self._runners.get(job_id)
        if runner is not None and runner.is_alive():
            runner.cancelled.set()
            self.nodes.notify()
            runner.join(10.0)
        elif not row.state.finished:
            self.store.set_job_state(job_id, JobState.CANCELLED, error="cancelled by a user")
        return job_view(self.store, self._row(job_id), detail=False)

    def catalog_entries(self) -> list[CatalogListing]:
        """Every catalog entry the store holds (each site's last report, kept across restarts), with
        whether its site is online now and when it reported."""
        online = {n.site for n in self.nodes.online()}
        stored = [(s.entry, s.reported_at) for s in self.store.catalog()]
        return catalog_listing(stored, online=online, now=time.time())

    def search_catalog(self, peer: Peer, query: str) -> JobViewDict:
        """Which sites' datasets match ``query``: the catalog entries nodes published when they
        last registered (schema, tags, codes, coarse counts), online or not; each hit says whether
        its site is online and how old its entry is. The coordinator holds no rows to show."""
        from medfed.data.catalog import search

        listings = {(x.site, x.entry.dataset): x for x in self.catalog_entries()}
        hits = search((x.entry for x in listings.values()), query)
        log.info("catalog search by %s: %d hit(s)", peer.name, len(hits))
        online = {n.site for n in self.nodes.online()}
        reports, now = self.store.catalog_reports(), time.time()
        counts = {site: sum(1 for s, _ in listings if s == site) for site in reports}
        return {
            "job_id": "",
            "query": query,
            "hits": [asdict(h) | listings[(h.site, h.dataset)].as_dict() for h in hits],
            "entries": [listings[(h.site, h.dataset)].entry.to_dict() for h in hits],
            "sites": [
                {"site": site, "online": site in online, "datasets": counts[site], "age_s": max(0.0, now - at)}
                for site, at in sorted(reports.items())
            ],
        }

    def fetch_model(self, peer: Peer, job_id: str) -> Parameters:
        row = self._owned(peer, job_id)
        if row.state is not JobState.COMPLETED:
            raise JobError(f"job {job_id} is {row.state.value}; a model exists once it completed")
        ck = self.store.latest_checkpoint(job_id)
        if ck is None:
            raise StoreError(f"job {job_id} completed but has no checkpoint")
        params, _ = load_checkpoint(Path(ck[1]), ck[2], at_rest=self.at_rest)
        # a model leaving the federation: who, which job, how much (the alert scanner learns each user's usual)
        self.audit.model_exported(job_id=job_id, user=peer.name, source=peer.source, size=params.nbytes)
        return params

    def model_signature(self, peer: Peer, job_id: str) -> bytes:
        """The final model's signature and provenance (JSON), empty for a model never signed."""
        self._owned(peer, job_id)
        return self.audit.model_signature(self.settings.state_dir / "models" / f"{job_id}.npz")
