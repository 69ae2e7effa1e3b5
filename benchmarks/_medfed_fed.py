"""A throw-away medfed federation on loopback for benchmarks: provision once, then per cell a
fresh coordinator and N node processes (real CLI, gRPC over mutual TLS), one identity job.

Every wait is bounded; every child is terminated (then killed) on the way out.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TERMINAL = {"completed", "failed", "cancelled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def site_name(i: int) -> str:
    return f"site{i:03d}"


def provision_federation(root: Path, n_sites: int, port: int) -> None:
    """PKI for a coordinator, ``n_sites`` sites and a researcher; a tiny CSV dataset per site."""
    from medfed.security.plan import parse_plan
    from medfed.security.provision import provision

    sites = "\n".join(f'[[sites]]\nname = "{site_name(i)}"\n' for i in range(n_sites))
    plan = (
        f'[federation]\nname = "bench"\ncoordinator_host = "127.0.0.1"\ncoordinator_port = {port}\n'
        f'validity_days = 7\n\n{sites}\n[[users]]\nname = "researcher"\nrole = "researcher"\n'
    )
    provision(parse_plan(plan, source_name="benchmark plan"), root / "federation")
    for i in range(n_sites):
        kit = root / "federation" / "sites" / site_name(i)
        data = kit / "data" / "bench"
        data.mkdir(parents=True)
        rows = "x,label\n0.5,0\n1.5,1\n-0.5,0\n2.0,1\n"  # the identity task never reads them
        (data / "train.csv").write_text(rows)
        (data / "test.csv").write_text(rows)
        text = (kit / "site.toml").read_text()
        text += '\n[datasets.bench]\nkind = "csv"\npath = "data/bench"\nlabel = "label"\n'
        text += "\n[node]\npoll_wait_s = 5.0\nbackoff_max_s = 1.0\n"
        (kit / "site.toml").write_text(text)


def job_toml(*, n_nodes: int, n_params: int, n_tensors: int, rounds: int, deadline_s: float) -> str:
    return (
        f'[job]\nname = "transport-{n_nodes}x{n_params}"\ntask = "identity"\ndataset = "bench"\n'
        f'rounds = {rounds}\nseed = 0\n\n[strategy]\nname = "fedavg"\n\n'
        f"[task_options]\nn_params = {n_params}\nn_tensors = {n_tensors}\n\n"
        f"[rounds]\nmin_nodes = {n_nodes}\ndeadline_s = {deadline_s}\nmax_round_retries = 0\n"
    )


def read_hwm_kib(pid: int) -> int | None:
    """VmHWM (peak resident set, KiB) of a live process, from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def read_pss_kib(pid: int) -> int | None:
    """Proportional set size (shared pages split between sharers), KiB."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """Samples the RSS of the given pids every ``interval_s``: per-pid peak and peak total."""

    def __init__(self, pids: list[int], interval_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pids, self.interval_s = pids, interval_s
        self.peak: dict[int, int] = {}
        self.peak_total = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        procs = {}
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                procs[pid] = psutil.Process(pid)
        while not self._stop_event.wait(self.interval_s):
            total = 0
            for pid, proc in procs.items():
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                self.peak[pid] = max(self.peak.get(pid, 0), rss)
            self.peak_total = max(self.peak_total, total)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


@dataclass(slots=True)
class CellResult:
    """What one (N, P) job measured."""

    state: str
    error: str
    durations_s: list[float]
    cycles_s: list[float]
    node_hwm_mib: list[float] = field(default_factory=list)
    coordinator_hwm_mib: float = 0.0
    pss_total_mib: float = 0.0
    sampled_peak_total_mib: float = 0.0
    startup_s: float = 0.0
    job_s: float = 0.0
    coordinator_cpu_s: float = 0.0
    nodes_cpu_s: float = 0.0


def _cpu_seconds(pids: list[int]) -> list[float]:
    """user + system CPU seconds of each pid so far (0 for one that is gone)."""
    import psutil

    out = []
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out.append(t.user + t.system)
        except psutil.Error:
            out.append(0.0)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class CellSpec:
    n_nodes: int
    n_params: int
    rounds: int
    n_tensors: int = 4
    heartbeat_s: float = 1.0
    timeout_s: float = 600.0


@contextlib.contextmanager
def _children(
    root: Path, state: Path, spec: CellSpec, port: int, launcher: list[str]
) -> Iterator[list[subprocess.Popen[bytes]]]:
    fed, logs = root / "federation", state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        cmd = [*launcher, "coordinator", "start", "--kit", str(fed / "coordinator"), "--state", str(state),
               "--listen", f"127.0.0.1:{port}", "--heartbeat", str(spec.heartbeat_s)]  # fmt: skip
        with open(logs / "coordinator.log", "wb") as log:
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env))
        for i in range(spec.n_nodes):
            cmd = [*launcher, "node", "start", "--config", str(fed / "sites" / site_name(i) / "site.toml")]
            with open(logs / f"{site_name(i)}.log", "wb") as log:
                procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env))
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def _client(root: Path) -> Any:
    from medfed.cli.config import load_client_config
    from medfed.transport.grpc_client import ResearcherClient

    cfg = load_client_config(root / "federation" / "users" / "researcher" / "client.toml")
    return ResearcherClient(cfg.coordinator, cfg.tls, timeout_s=30.0)


def _wait_online(client: Any, procs: list[subprocess.Popen[bytes]], n_nodes: int, timeout_s: float) -> None:
    from medfed.core.errors import TransportError

    deadline = time.monotonic() + timeout_s
    online = 0
    while time.monotonic() < deadline:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a federation process exited early (code {dead[0].returncode}); see the logs")
        try:
            online = sum(s["online"] for s in client.list_jobs()["sites"])
            if online >= n_nodes:
                return
        except TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"only {online} of {n_nodes} nodes online after {timeout_s:.0f}s")


def _wait_job(client: Any, job_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = client.get_job(job_id)
        if view["state"] in TERMINAL:
            return dict(view)
        time.sleep(0.3)
    with contextlib.suppress(Exception):
        client.cancel_job(job_id)
    raise TimeoutError(f"job {job_id} did not finish within {timeout_s:.0f}s")


def _round_completions(state_dir: Path, job_id: str) -> list[tuple[int, float]]:
    """(round, completion time) of the fit rounds, read-only from the coordinator's SQLite."""
    db = sqlite3.connect(f"file:{state_dir / 'coordinator.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT round, finished FROM rounds WHERE job_id=? AND kind='fit' ORDER BY round", (job_id,))
        return [(int(r), float(f)) for r, f in rows.fetchall()]
    finally:
        db.close()


def run_cell(root: Path, port: int, spec: CellSpec, launcher: list[str]) -> CellResult:
    """Start a coordinator and ``spec.n_nodes`` nodes, run one identity job, measure, stop."""
    t0 = time.monotonic()
    state_dir = root / f"state-{spec.n_nodes}x{spec.n_params}-{time.time_ns()}"
    with _children(root, state_dir, spec, port, launcher) as procs:
        client = _client(root)
        try:
            _wait_online(client, procs, spec.n_nodes, timeout_s=min(120.0, spec.timeout_s))
            startup = time.monotonic() - t0
            sampler = RssSampler([p.pid for p in procs])
            sampler.start()
            toml = job_toml(n_nodes=spec.n_nodes, n_params=spec.n_params, n_tensors=spec.n_tensors,
                            rounds=spec.rounds, deadline_s=spec.timeout_s)  # fmt: skip
            cpu0 = _cpu_seconds([p.pid for p in procs])
            t1 = time.monotonic()
            job_id = client.submit_job(toml, "transport_speed.toml")["job_id"]
            view = _wait_job(client, job_id, spec.timeout_s)
            job_s = time.monotonic() - t1
            cpu = [b - a for a, b in zip(cpu0, _cpu_seconds([p.pid for p in procs]), strict=True)]
            sampler.stop()
            hwm = [read_hwm_kib(p.pid) or 0 for p in procs]
            pss = [read_pss_kib(p.pid) or 0 for p in procs]
        finally:
            client.close()
        completions = _round_completions(state_dir, job_id)
    fit = sorted((r["round"], r["duration_s"]) for r in view["round_metrics"] if r["kind"] == "fit")
    cycles = [b[1] - a[1] for a, b in itertools.pairwise(completions)]
    return CellResult(
        state=view["state"],
        error=view["error"],
        durations_s=[d for _, d in fit],
        cycles_s=cycles,
        node_hwm_mib=[h / 1024 for h in hwm[1:]],
        coordinator_hwm_mib=hwm[0] / 1024,
        pss_total_mib=sum(pss) / 1024,
        sampled_peak_total_mib=sampler.peak_total / 2**20,
        startup_s=startup,
        job_s=job_s,
        coordinator_cpu_s=cpu[0],
        nodes_cpu_s=sum(cpu[1:]),
    )


def median_or_nan(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


#: ``--identity`` choices: the installed entry point, or one implementation forced by the shim.
IDENTITY_TARGETS = {
    "entry-point": "",
    "torch": "medfed.learn.tasks:IdentityTask",
    "torch-free": "medfed.learn.identity:IdentityTask",
}


def launcher_for(identity: str) -> list[str]:
    """The command that starts medfed processes: the real CLI, or the shim that forces the
    ``identity`` task to one implementation (see ``_medfed_cli.py``)."""
    target = IDENTITY_TARGETS[identity]
    if not target:
        return [sys.executable, "-m", "medfed"]
    return [sys.executable, str(HERE / "_medfed_cli.py"), target]


def installed_identity() -> str:
    """What the ``identity`` entry point resolves to in this environment."""
    from importlib.metadata import entry_points

    found = [ep.value for ep in entry_points(group="medfed.tasks") if ep.name == "identity"]
    return found[0] if found else "(not installed)"


def provisioned_port(root: Path) -> int:
    """The coordinator port written into the kits by :func:`provision_federation`."""
    import tomllib

    site = tomllib.loads((root / "federation" / "sites" / site_name(0) / "site.toml").read_text())["site"]
    return int(str(site["coordinator"]).rsplit(":", 1)[1])


def run_variants(
    root: Path, port: int, spec: CellSpec, launcher: list[str], extras: dict[str, str]
) -> dict[str, tuple[str, str, list[float], list[dict[str, float]]]]:
    """On one coordinator and ``spec.n_nodes`` node processes, run one identity job per variant
    (``extras``: name → TOML appended to the job), alternately; return per variant
    (state, error, fit-round durations and aggregated metrics of rounds 2..R)."""
    state_dir = root / f"state-{spec.n_nodes}x{spec.n_params}-{time.time_ns()}"
    out: dict[str, tuple[str, str, list[float], list[dict[str, float]]]] = {}
    with _children(root, state_dir, spec, port, launcher) as procs:
        client = _client(root)
        try:
            _wait_online(client, procs, spec.n_nodes, timeout_s=min(180.0, spec.timeout_s))
            for name, extra in extras.items():
                toml = job_toml(n_nodes=spec.n_nodes, n_params=spec.n_params, n_tensors=spec.n_tensors,
                                rounds=spec.rounds, deadline_s=spec.timeout_s) + extra  # fmt: skip
                job_id = client.submit_job(toml, f"{name}.toml")["job_id"]
                view = _wait_job(client, job_id, spec.timeout_s)
                fit = sorted(
                    (r["round"], r["duration_s"], r["aggregated"]) for r in view["round_metrics"] if r["kind"] == "fit"
                )
                later = [(d, a) for r, d, a in fit if r >= 2]
                out[name] = (
                    str(view["state"]),
                    str(view.get("error") or ""),
                    [d for d, _ in later],
                    [a for _, a in later],
                )
        finally:
            client.close()
    return out
