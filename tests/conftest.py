"""Fixtures of the integration tests: a provisioned federation in ``tmp_path`` (three sites with
small Fed-Heart-Disease tables), an in-process coordinator on 127.0.0.1 over mutual TLS, and
real ``python -m medfed`` processes. The helpers they use live in ``tests/integration/support.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.support import (
    SITE_DATA,
    TEST_ROWS,
    TRAIN_ROWS,
    Cluster,
    Federation,
    Processes,
    make_federation,
    start_cluster,
)
from medfed.learn.base import TabularData


@pytest.fixture(scope="session")
def heart() -> dict[str, TabularData]:
    """Small per-site tables cut from Fed-Heart-Disease (real rows, FLamby's preparation)."""
    from medfed.data.heart import load_fed_heart_disease

    full = load_fed_heart_disease()
    out = {}
    for site, source in SITE_DATA.items():
        d = full[source]
        out[site] = TabularData(
            x_train=d.x_train[:TRAIN_ROWS], y_train=d.y_train[:TRAIN_ROWS],
            x_test=d.x_test[:TEST_ROWS], y_test=d.y_test[:TEST_ROWS], feature_names=d.feature_names,
        )  # fmt: skip
    return out


@pytest.fixture
def fed(tmp_path: Path, heart: dict[str, TabularData]) -> Federation:
    """A federation of three sites (alpha, beta, gamma), a researcher and an admin."""
    return make_federation(tmp_path / "fed", heart)


@pytest.fixture
def cluster(fed: Federation, tmp_path: Path) -> Iterator[Cluster]:
    """An in-process coordinator for ``fed`` (no nodes yet: call ``cluster.node(site)``)."""
    c = start_cluster(fed, tmp_path / "state")
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def processes(fed: Federation, tmp_path: Path) -> Iterator[Processes]:
    """Starts ``python -m medfed`` processes for ``fed``; every one is stopped at teardown."""
    procs = Processes(fed, tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()
