"""The coordinator tells a node which of its open reservations belong to jobs that are over."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from medfed.coordinator.service import Coordinator, CoordinatorSettings
from medfed.core.errors import ValidationError
from medfed.core.records import JobState, Role
from medfed.transport.api import MAX_OPEN_JOBS, Peer

NODE = Peer(name="alpha", role=Role.NODE)


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    c = Coordinator(CoordinatorSettings(state_dir=tmp_path / "state", heartbeat_interval_s=60.0))
    for job_id, state in (("aa1", JobState.FAILED), ("bb2", JobState.CANCELLED), ("cc3", JobState.COMPLETED),
                          ("dd4", JobState.RUNNING), ("ee5", JobState.PENDING)):  # fmt: skip
        c.store.add_job(job_id=job_id, name="n", owner="rita", spec_toml="x", spec_hash="h", rounds=2)
        c.store.set_job_state(job_id, state)
    yield c
    c.stop()
    c.store.close()


def test_only_finished_jobs_are_named_with_their_state(coordinator: Coordinator) -> None:
    ended = coordinator.jobs_ended(NODE, ("aa1", "bb2", "cc3", "dd4", "ee5", "unknown9", "aa1"))

    assert ended == {"aa1": "failed", "bb2": "cancelled", "cc3": "completed"}


def test_bad_questions_are_refused_with_every_problem(coordinator: Coordinator) -> None:
    with pytest.raises(ValidationError) as info:
        coordinator.jobs_ended(NODE, ("ok1", "../x", "", *(f"j{i}" for i in range(MAX_OPEN_JOBS))))

    problems = info.value.problems
    assert any(f"at most {MAX_OPEN_JOBS}" in p for p in problems)
    assert "job id #1 is not an id" in problems and "job id #2 is not an id" in problems
