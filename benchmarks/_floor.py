"""The floor of a round, measured on this machine in the same run as the benchmark.

floor(N, P) = bytes moved per round / loopback TCP bandwidth + one numpy weighted sum of N
float32 arrays of P elements. A round moves the model down to every node and back up:
2 × N × P × 4 bytes. Nothing can be faster than pushing those bytes through the kernel's
loopback once and adding the arrays once; serialisation, TLS, copies and Python are the rest.
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np

CHUNK = 4 * 1024 * 1024


def loopback_bandwidth(total_bytes: int = 1 << 30, *, timeout_s: float = 60.0) -> float:
    """Bytes per second pushed through one TCP connection over 127.0.0.1 (sendall / recv_into).

    Plain TCP, no TLS: the floor is what the kernel's loopback allows, not what a protocol adds.
    """
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(timeout_s)
        port = server.getsockname()[1]
        received = [0]

        def sink() -> None:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(timeout_s)
                buf = bytearray(CHUNK)
                view = memoryview(buf)
                while received[0] < total_bytes:
                    n = conn.recv_into(view)
                    if n == 0:
                        break
                    received[0] += n

        thread = threading.Thread(target=sink, daemon=True)
        thread.start()
        payload = memoryview(np.random.default_rng(0).bytes(CHUNK))
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as client:
            start = time.perf_counter()
            sent = 0
            while sent < total_bytes:
                part = payload[: min(CHUNK, total_bytes - sent)]
                client.sendall(part)
                sent += len(part)
            thread.join(timeout_s)
            elapsed = time.perf_counter() - start
    if received[0] != total_bytes:
        raise RuntimeError(f"loopback test received {received[0]} of {total_bytes} bytes")
    return total_bytes / elapsed


def weighted_sum_seconds(n_arrays: int, n_params: int, *, repeats: int = 3) -> float:
    """Best of ``repeats`` timings of ``sum_i w_i * x_i`` over ``n_arrays`` float32 arrays of
    ``n_params`` elements, in place through one scratch buffer (no per-node temporaries)."""
    arrays = [np.full(n_params, 1.0 + i, dtype=np.float32) for i in range(n_arrays)]  # distinct memory
    weights = np.full(n_arrays, 1.0 / n_arrays, dtype=np.float32)
    acc = np.empty(n_params, dtype=np.float32)
    tmp = np.empty(n_params, dtype=np.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.multiply(arrays[0], weights[0], out=acc)
        for arr, w in zip(arrays[1:], weights[1:], strict=True):
            np.multiply(arr, w, out=tmp)
            acc += tmp
        best = min(best, time.perf_counter() - start)
    return best


def floor_seconds(n_nodes: int, n_params: int, bandwidth: float, sum_s: float) -> float:
    """Seconds a round cannot beat: 2 × N × P × 4 bytes over loopback plus one weighted sum."""
    return 2 * n_nodes * n_params * 4 / bandwidth + sum_s
