"""The upload memory budget: holds add up to at most the capacity; an oversized one passes alone."""

import threading
import time

import pytest

from medfed.core.errors import TransportError
from medfed.transport.grpc_server import ByteBudget


def test_holds_never_exceed_the_capacity() -> None:
    budget, peak, held, lock = ByteBudget(100), [0], [0], threading.Lock()

    def upload(n: int) -> None:
        with budget.hold(n):
            with lock:
                held[0] += min(n, 100)  # an oversized upload counts as the whole capacity
                peak[0] = max(peak[0], held[0])
            time.sleep(0.02)
            with lock:
                held[0] -= min(n, 100)

    threads = [threading.Thread(target=upload, args=(n,)) for n in (60, 60, 30, 30, 250)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert peak[0] <= 100  # never more than the capacity at once; the oversized one ran alone
    assert held[0] == 0


def test_an_abandoned_wait_gives_up() -> None:
    budget = ByteBudget(10)
    with budget.hold(10), pytest.raises(TransportError, match="abandoned"), budget.hold(5, alive=lambda: False):
        pass
