"""Helpers of the integration tests (fixtures built on them live in ``tests/conftest.py``): a
provisioned federation with a small heart dataset per site, an in-process coordinator over real
mutual TLS on loopback, in-process nodes (NodeRuntime + GrpcCoordinatorLink in threads) and
real ``python -m medfed`` processes.

Every wait here is bounded: :func:`wait_until` polls with a deadline and fails the test with a
description of what it waited for. Servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest

from medfed.cli.config import load_client_config, load_node_config
from medfed.coordinator.app import CoordinatorProcess, start_coordinator
from medfed.coordinator.service import CoordinatorSettings
from medfed.learn.base import TabularData
from medfed.node.runtime import DatasetConfig, NodeRuntime, NodeSettings
from medfed.security.plan import parse_plan
from medfed.security.provision import provision
from medfed.transport.grpc_client import ClientTls, GrpcCoordinatorLink, ResearcherClient
from medfed.transport.grpc_server import ServerTls

T = TypeVar("T")

#: The sites of the test federation and the Fed-Heart-Disease hospital whose rows each holds.
SITE_DATA = {"alpha": "cleveland", "beta": "hungary", "gamma": "va_long_beach"}
RESEARCHER = "researcher"
ADMIN = "admin"
#: Rows kept per split: enough to train on, small enough to keep CSV I/O and training quick.
TRAIN_ROWS, TEST_ROWS = 80, 40
FINISHED = ("completed", "failed", "cancelled")


# --- waiting -------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], T], *, timeout_s: float, what: str, interval_s: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- jobs ----------------------------------------------------------------------------------


def job_toml(
    *,
    name: str = "it-job",
    task: str = "logistic_regression",
    dataset: str = "heart",
    rounds: int = 3,
    strategy: str = "fedavg",
    min_nodes: int = 3,
    deadline_s: float = 30.0,
    retries: int = 1,
    seed: int = 7,
    sites: tuple[str, ...] = (),
    task_options: dict[str, Any] | None = None,
) -> str:
    """A job spec for the heart datasets (13 features); ``task_options`` replace the defaults."""
    options = {"input_dim": 13, "local_steps": 5, "batch_size": 8, "lr": 0.05} if task_options is None else task_options
    opts = "\n".join(f"{k} = {_toml(v)}" for k, v in options.items())
    site_line = f"sites = [{', '.join(_toml(s) for s in sites)}]\n" if sites else ""
    return (
        f'[job]\nname = "{name}"\ntask = "{task}"\ndataset = "{dataset}"\n'
        f"rounds = {rounds}\nseed = {seed}\n{site_line}\n"
        f'[strategy]\nname = "{strategy}"\n\n[task_options]\n{opts}\n\n'
        f"[rounds]\nmin_nodes = {min_nodes}\ndeadline_s = {deadline_s}\nmax_round_retries = {retries}\n"
    )


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return repr(v)


def wait_job(client: ResearcherClient, job_id: str, *, timeout_s: float) -> dict[str, Any]:
    """Poll a job over the API until it finished; return its detailed view."""
    return wait_until(
        lambda: (v := client.get_job(job_id))["state"] in FINISHED and v,
        timeout_s=timeout_s,
        what=f"job {job_id} to finish",
        interval_s=0.1,
    )


# --- the federation ------------------------------------------------------------------------


def plan_text(
    sites: tuple[str, ...], *, name: str = "itfed", host: str = "127.0.0.1", port: int = 50443, validity_days: int = 30
) -> str:
    lines = [
        "[federation]", f'name = "{name}"', f'coordinator_host = "{host}"', f"coordinator_port = {port}",
        f"validity_days = {validity_days}", "",
        *(f'[[sites]]\nname = "{s}"\n' for s in sites),
        f'[[users]]\nname = "{RESEARCHER}"\nrole = "researcher"\n', f'[[users]]\nname = "{ADMIN}"\nrole = "admin"\n',
    ]  # fmt: skip
    return "\n".join(lines)


@dataclass
class Federation:
    """A provisioned federation directory with a heart dataset in every site's kit."""

    root: Path
    port: int  # the port the kits' site.toml/client.toml name (processes listen there)
    sites: tuple[str, ...]

    def kit(self, name: str) -> Path:
        if name == "coordinator":
            return self.root / "coordinator"
        if name in (RESEARCHER, ADMIN):
            return self.root / "users" / name
        return self.root / "sites" / name

    def site_toml(self, site: str) -> Path:
        return self.kit(site) / "site.toml"

    def client_toml(self, user: str = RESEARCHER) -> Path:
        return self.kit(user) / "client.toml"

    def tls(self, name: str, *, ca_from: Path | None = None, server_name: str = "") -> ClientTls:
        """A kit's client identity; ``ca_from`` swaps in another kit's trusted CA."""
        kit = self.kit(name)
        return ClientTls(
            ca_pem=((ca_from or kit) / "ca.pem").read_bytes(),
            cert_pem=(kit / "cert.pem").read_bytes(),
            key_pem=(kit / "key.pem").read_bytes(),
            server_name=server_name,
        )

    def server_tls(self) -> ServerTls:
        kit = self.kit("coordinator")
        return ServerTls(
            ca_pem=(kit / "ca.pem").read_bytes(),
            cert_pem=(kit / "cert.pem").read_bytes(),
            key_pem=(kit / "key.pem").read_bytes(),
        )

    def dataset(self, site: str) -> DatasetConfig:
        return DatasetConfig(name="heart", path=self.kit(site) / "data" / site)


def add_dataset(kit: Path, site: str, data: TabularData, *, node_options: str = "") -> None:
    """Write ``data`` as the site's CSVs and declare it (and ``[node]`` options) in site.toml."""
    from medfed.data.heart import write_site_csv

    write_site_csv(site, data, kit / "data")
    text = (kit / "site.toml").read_text()
    text += f'\n[datasets.heart]\nkind = "csv"\npath = "data/{site}"\nlabel = "label"\n'
    text += "\n[node]\npoll_wait_s = 1.0\nbackoff_max_s = 1.0\n" + node_options
    (kit / "site.toml").write_text(text)


def make_federation(
    root: Path, heart: dict[str, TabularData], *, sites: tuple[str, ...] = tuple(SITE_DATA), **plan: Any
) -> Federation:
    port = plan.pop("port", None) or free_port()
    provision(parse_plan(plan_text(sites, port=port, **plan), source_name="test plan"), root)
    for site in sites:
        add_dataset(root / "sites" / site, site, heart.get(site, heart["alpha"]))
    return Federation(root=root, port=port, sites=sites)


# --- in-process coordinator and nodes -----------------------------------------------------


@dataclass
class Cluster:
    """An in-process coordinator on 127.0.0.1 (port 0) and node threads dialling it over mTLS."""

    fed: Federation
    proc: CoordinatorProcess
    state_dir: Path
    nodes: list[NodeThread] = field(default_factory=list)
    clients: list[ResearcherClient | GrpcCoordinatorLink] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.proc.port}"

    @property
    def coordinator(self) -> Any:
        return self.proc.coordinator

    def client(self, user: str = RESEARCHER, **tls: Any) -> ResearcherClient:
        c = ResearcherClient(self.target, self.fed.tls(user, **tls), timeout_s=15.0)
        self.clients.append(c)
        return c

    def link(self, name: str, **tls: Any) -> GrpcCoordinatorLink:
        link = GrpcCoordinatorLink(self.target, self.fed.tls(name, **tls), timeout_s=10.0)
        self.clients.append(link)  # closed in close() (closing twice is harmless)
        return link

    def node(
        self,
        site: str,
        *,
        link: Any = None,
        start: bool = True,
        datasets: dict[str, DatasetConfig] | None = None,
        state_dir: Path | None = None,
        **runtime: Any,
    ) -> NodeThread:
        """A NodeRuntime for ``site`` in a thread (started unless ``start=False``)."""
        settings = NodeSettings(
            site=site,
            datasets={"heart": self.fed.dataset(site)} if datasets is None else datasets,
            poll_wait_s=1.0,
            backoff_initial_s=0.05,
            backoff_max_s=0.5,
            state_dir=state_dir,
        )
        node = NodeThread(NodeRuntime(settings, link or self.link(site), **runtime))
        self.nodes.append(node)
        if start:
            node.start()
        return node

    def wait_online(self, sites: tuple[str, ...] | list[str], timeout_s: float = 20.0) -> None:
        wait_until(
            lambda: set(sites) <= {n.site for n in self.coordinator.nodes.online()},
            timeout_s=timeout_s,
            what=f"sites {sorted(sites)} to register",
        )

    def close(self) -> None:
        for node in self.nodes:
            node.runtime.stop()
        for node in self.nodes:
            node.join(15.0)
        for c in self.clients:
            c.close()
        self.proc.stop(grace_s=1.0)
        self.coordinator.store.close()


class NodeThread:
    """Runs ``runtime.run()`` in a thread and keeps what it raised."""

    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"node-{runtime.settings.site}", daemon=True)

    def _run(self) -> None:
        try:
            self.runtime.run()
        except BaseException as exc:  # noqa: BLE001 - kept for the test to assert on
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        if self._thread.ident is not None:
            self._thread.join(timeout_s)
            assert not self._thread.is_alive(), f"node {self.runtime.settings.site} did not stop"

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def wait_finished(self, timeout_s: float) -> BaseException | None:
        """Wait for run() to return or raise; return what it raised."""
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"node {self.runtime.settings.site} still running after {timeout_s}s"
        return self.error


def start_cluster(fed: Federation, state_dir: Path, *, heartbeat_s: float = 0.3) -> Cluster:
    settings = CoordinatorSettings(state_dir=state_dir, heartbeat_interval_s=heartbeat_s)
    proc = start_coordinator(
        settings, address="127.0.0.1:0", tls=fed.server_tls(), crl_path=fed.kit("coordinator") / "crl.pem"
    )
    return Cluster(fed=fed, proc=proc, state_dir=state_dir)


# --- real processes ------------------------------------------------------------------------


class Process:
    """A ``python -m medfed ...`` child process; stdout and stderr go to a log file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args, self.log = args, log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[bytes] = open(log, "ab")  # noqa: SIM115 - closed in wait()/stop()
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "medfed", *args], stdout=self._fh, stderr=subprocess.STDOUT, env=env
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no clean-up runs in the child."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)
        self._fh.close()

    def stop(self, timeout_s: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout_s)
        self._fh.close()
        return int(self.popen.returncode)

    def wait(self, timeout_s: float) -> int:
        rc = self.popen.wait(timeout_s)
        self._fh.close()
        return rc


class Processes:
    """Starts coordinator/node processes for a federation; stops every one at teardown."""

    def __init__(self, fed: Federation, workdir: Path) -> None:
        self.fed, self.workdir = fed, workdir
        self.started: list[Process] = []

    def run(self, args: list[str], log_name: str) -> Process:
        p = Process(args, self.workdir / "logs" / f"{log_name}.log")
        self.started.append(p)
        return p

    def coordinator(self, state: Path, *, heartbeat_s: float = 1.0, timeout_s: float = 60.0) -> Process:
        """Start the coordinator on the federation's port and wait until it listens."""
        args = ["coordinator", "start", "--kit", str(self.fed.kit("coordinator")), "--state", str(state),
                "--listen", f"127.0.0.1:{self.fed.port}", "--heartbeat", str(heartbeat_s)]  # fmt: skip
        p = self.run(args, "coordinator")
        wait_until(
            lambda: "coordinator ready on port" in p.text() or p.popen.poll() is not None,
            timeout_s=timeout_s, what="the coordinator process to listen",
        )  # fmt: skip
        assert p.popen.poll() is None, f"coordinator exited early:\n{p.text()}"
        return p

    def node(self, site: str, *, approve: bool = True) -> Process:
        """``medfed node start --config site.toml``. Approval is on by default at a site started
        from its site.toml: with ``approve`` its admin first covers the tests' jobs
        (:func:`job_toml`) with a standing rule (:func:`standing_rule`)."""
        if approve:
            standing_rule(self.fed, site)
        return self.run(["node", "start", "--config", str(self.fed.site_toml(site))], site)

    def client(self) -> ResearcherClient:
        cfg = load_client_config(self.fed.client_toml())
        return ResearcherClient(cfg.coordinator, cfg.tls, timeout_s=10.0)

    def stop_all(self) -> None:
        for p in self.started:
            if p.popen.poll() is None:
                p.popen.terminate()
        for p in self.started:
            p.stop()


def standing_rule(
    fed: Federation, site: str, *, task: str = "logistic_regression", dataset: str = "heart", purpose: str = "research"
) -> str:
    """The site admin's standing rule for ``task`` on ``dataset`` for ``purpose`` by the tests'
    researcher, in the state directory of the site's site.toml (added once); returns its id."""
    from medfed.security.approvals import StandingRule, open_site_approvals
    from medfed.security.authz import Principal, UserRole

    settings = load_node_config(fed.site_toml(site)).settings
    assert settings.state_dir is not None
    store = open_site_approvals(settings.state_dir, site=site, note=lambda event, fields: None)
    try:
        for rule in store.rules():
            if not rule.revoked and (rule.task, rule.dataset, rule.purpose) == (task, dataset, purpose):
                return rule.rule_id
        draft = StandingRule(
            rule_id="", task=task, dataset=dataset, purpose=purpose, researcher=RESEARCHER, created_by="",
            created_at=0.0, expires_at=None, reason="the integration tests' jobs",
        )  # fmt: skip
        admin = Principal(user_id=f"{site}-admin", role=UserRole.SITE_ADMIN, site=site)
        return store.add_rule(draft, by=admin).rule_id
    finally:
        store.close()


def sites_online(client: ResearcherClient, sites: set[str]) -> bool:
    from medfed.core.errors import TransportError

    try:
        listing = client.list_jobs()
    except TransportError:
        return False
    return sites <= {s["site"] for s in listing["sites"] if s["online"]}


__all__ = [
    "ADMIN", "FINISHED", "RESEARCHER", "SITE_DATA", "Cluster", "Federation", "NodeThread", "Process", "Processes",
    "add_dataset", "free_port", "job_toml", "load_node_config", "make_federation", "plan_text", "sites_online",
    "standing_rule", "start_cluster", "wait_job", "wait_until",
]  # fmt: skip
