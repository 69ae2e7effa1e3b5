"""Flower 1.42's peer of medfed's identity benchmark, in deployment mode (not simulation).

One ``flower-superlink`` and N ``flower-supernode`` processes on loopback (``--insecure``: plain
HTTP, no TLS; see the note in docs/benchmarks.md), the Flower App of ``flower_app/identity_app.py``
(FedAvg over every SuperNode, a ClientApp that returns the arrays it received) started with
``flwr run``. The ServerApp times each training round from ``configure_train`` to the end of
``aggregate_train`` and writes the timings as JSON.

Flower lives in its own virtual environment (default ``/tmp/flwr-venv``): it pins protobuf < 7
and a newer certifi than the index offers, which medfed's environment must not get. This module
uses only the standard library (and psutil when present), so medfed's benchmark imports it and
runs Flower's executables as subprocesses.

Stand-alone::

    python benchmarks/flower_peer.py --nodes 10 --params 1000000 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_VENV = Path("/tmp/flwr-venv")

_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "flower-identity"
version = "1.0.0"
description = "Identity workload: the peer of medfed's transport benchmark"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "medfed-bench"

[tool.flwr.app.components]
serverapp = "flower_identity.identity_app:serverapp"
clientapp = "flower_identity.identity_app:clientapp"

[tool.flwr.app.config]
num-nodes = {nodes}
num-rounds = {rounds}
n-params = {params}
n-tensors = {tensors}
timeout-s = {timeout}
out-path = "{out}"
"""


@dataclass(slots=True)
class FlowerResult:
    """Per-round seconds (configure_train → aggregate_train done) and peak memory."""

    ok: bool
    error: str = ""
    durations_s: list[float] = field(default_factory=list)
    replies_ok: list[int] = field(default_factory=list)
    superlink_hwm_mib: float = 0.0
    supernode_hwm_mib: list[float] = field(default_factory=list)
    sampled_peak_total_mib: float = 0.0
    startup_s: float = 0.0
    job_s: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def median_s(self) -> float:
        """Median of rounds 2.. (round 1 includes ClientApp start-up and node sampling)."""
        rest = self.durations_s[1:]
        return statistics.median(rest) if rest else float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hwm_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _tree_rss_sampler(pids: list[int], stop: threading.Event, out: list[float]) -> None:
    """Peak total RSS of ``pids`` and all their descendants (SuperExec, Server/ClientApp)."""
    try:
        import psutil
    except ImportError:
        return
    while not stop.wait(0.25):
        total = 0
        for pid in pids:
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
        out[0] = max(out[0], total / 2**20)


def _write_app(
    root: Path,
    *,
    nodes: int,
    rounds: int,
    params: int,
    tensors: int,
    timeout_s: float,
    module: str = "identity_app",
    extra_config: str = "",
) -> Path:
    app = root / "app"
    (app / "flower_identity").mkdir(parents=True)
    shutil.copy(HERE / "flower_app" / f"{module}.py", app / "flower_identity" / f"{module}.py")
    (app / "flower_identity" / "__init__.py").write_text("")
    out = root / "result.json"
    text = _PYPROJECT.format(
        nodes=nodes, rounds=rounds, params=params, tensors=tensors, timeout=float(timeout_s), out=out
    )
    (app / "pyproject.toml").write_text(text.replace("identity_app", module) + extra_config)
    return app


@contextlib.contextmanager
def _flower_processes(root: Path, venv: Path, nodes: int, port: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    bin_dir = venv / "bin"
    # SuperLink/SuperNode start `flower-superexec` by name: the venv's bin must be on PATH.
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(root / "home"),
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cmd = [str(bin_dir / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
               "--port", str(port)]  # fmt: skip
        with open(logs / "superlink.log", "wb") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        for i in range(nodes):
            cmd = [str(bin_dir / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                   "--port", str(_free_port()), "--node-config", f"partition-id={i}"]  # fmt: skip
            with open(logs / f"supernode{i:03d}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
                )
        yield procs
    finally:
        _stop_all(procs)


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group (Flower's SuperExec and App processes included), then SIGKILL."""
    import signal

    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)


def _wait_port(port: int, procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if procs[0].poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {procs[0].returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"flower-superlink did not listen on {port} within {timeout_s:.0f}s")


def run_secagg(venv: Path, *, n_nodes: int, n_params: int, rounds: int, num_shares: int, tensors: int = 4,
               timeout_s: float = 900.0) -> dict[str, object]:  # fmt: skip
    """Flower's SecAgg+ vs its plain fit round on the identity workload (``flower_app/secagg_app.py``):
    medians of rounds 2.. of each mode, and their ratio; ``{"error": ...}`` when it could not run."""
    result = run_flower(
        n_nodes, n_params, rounds=rounds, tensors=tensors, venv=venv, timeout_s=timeout_s,
        module="secagg_app", extra_config=f"num-shares = {num_shares}\n", raw=True,
    )  # fmt: skip
    if not result.ok or not result.raw:
        return {"error": result.error or "no timings"}
    plain = statistics.median(result.raw["plain"][1:])
    secure = statistics.median(result.raw["secagg"][1:])
    return {"plain_round_s": plain, "secure_round_s": secure, "ratio": secure / plain, "raw": result.raw}


def run_flower(nodes: int, params: int, *, rounds: int = 5, tensors: int = 4, venv: Path = DEFAULT_VENV,
               timeout_s: float = 600.0, keep: Path | None = None, module: str = "identity_app",
               extra_config: str = "", raw: bool = False) -> FlowerResult:  # fmt: skip
    """Run the identity workload on a local Flower deployment; every wait is bounded."""
    if not (venv / "bin" / "flower-superlink").exists():
        return FlowerResult(ok=False, error=f"no Flower installation in {venv} (flower-superlink missing)")
    with contextlib.ExitStack() as stack:
        root = keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flower-peer-")))
        (root / "home").mkdir(parents=True, exist_ok=True)
        port = _free_port()
        (root / "home" / "config.toml").write_text(
            f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        app = _write_app(root, nodes=nodes, rounds=rounds, params=params, tensors=tensors, timeout_s=timeout_s,
                         module=module, extra_config=extra_config)  # fmt: skip
        t0 = time.monotonic()
        procs = stack.enter_context(_flower_processes(root, venv, nodes, port))
        _wait_port(port, procs, timeout_s=60)
        stop, peak = threading.Event(), [0.0]
        sampler = threading.Thread(target=_tree_rss_sampler, args=([p.pid for p in procs], stop, peak), daemon=True)
        sampler.start()
        env = {
            **os.environ,
            "FLWR_HOME": str(root / "home"),
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
        }
        startup = time.monotonic() - t0
        t1 = time.monotonic()
        started = subprocess.run([str(venv / "bin" / "flwr"), "run", str(app), "bench"], env=env,
                                 capture_output=True, timeout=120, check=False)  # fmt: skip
        if started.returncode != 0:
            stop.set()
            return FlowerResult(
                ok=False, error=f"flwr run failed: {started.stdout.decode()[-500:]}{started.stderr.decode()[-500:]}"
            )
        out = root / "result.json"
        deadline = time.monotonic() + timeout_s
        while not out.exists() and time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.2)
        job_s = time.monotonic() - t1
        stop.set()
        sampler.join(5)
        hwm = [_hwm_mib(p.pid) for p in procs]
        if not out.exists():
            return FlowerResult(
                ok=False, error=f"no result within {timeout_s:.0f}s (logs in {root / 'logs'})", job_s=job_s
            )
        time.sleep(0.2)  # the ServerApp writes the file in one call; let it close
        data = json.loads(out.read_text())
    if raw:
        return FlowerResult(ok=True, raw=data, startup_s=startup, job_s=job_s)
    return FlowerResult(
        ok=all(n == nodes for n in data["replies_ok"]),
        durations_s=list(data["round_durations_s"]),
        replies_ok=list(data["replies_ok"]),
        superlink_hwm_mib=hwm[0],
        supernode_hwm_mib=hwm[1:],
        sampled_peak_total_mib=peak[0],
        startup_s=startup,
        job_s=job_s,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--params", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--keep", type=Path, help="keep the work directory (logs) here")
    args = p.parse_args(argv)
    result = run_flower(
        args.nodes, args.params, rounds=args.rounds, venv=args.venv, timeout_s=args.timeout, keep=args.keep
    )
    print(json.dumps(asdict(result) | {"median_s_rounds_2_on": result.median_s}, indent=2))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
