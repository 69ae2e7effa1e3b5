"""The Approvals page's data reads a site's refusal fields (reason, spec hash) from the coordinator's
real store: a reworded message still lists the refusal under the right spec and kind; a result from
an older node (no fields) is still found by its text; other refusal reasons are not listed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from medfed.coordinator.service import Coordinator, CoordinatorSettings
from medfed.core.errors import Refusal
from medfed.core.records import RoundRecord, SiteMetrics, TaskKind
from medfed.dashboard.pages.approvals import RefusalKind, not_cleared
from medfed.security.approvals import spec_digest

SPEC = '[job]\nname = "gov"\ntask = "logistic_regression"\ndataset = "heart"\nrounds = 2\n'
DIGEST = spec_digest(SPEC)


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    c = Coordinator(CoordinatorSettings(state_dir=tmp_path / "state", heartbeat_interval_s=60.0))
    for job_id in ("j1", "j2", "j3"):
        c.store.add_job(job_id=job_id, name="gov", owner="rita", spec_toml=SPEC, spec_hash=DIGEST, rounds=2)
    yield c
    c.stop()
    c.store.close()


def _refused(site: str, error: str, reason: Refusal | None, spec: str = DIGEST) -> SiteMetrics:
    return SiteMetrics(site=site, num_examples=0, metrics={}, error=error, refusal=reason,
                       refusal_spec=spec if reason else "")  # fmt: skip


def test_a_reworded_refusal_is_listed_by_its_fields(coordinator: Coordinator) -> None:
    # Arrange: messages no parser knows, but the fields say what happened
    store = coordinator.store
    store.record_refusals("j1", 1, TaskKind.FIT, [_refused("alpha", "permission: Spezifikation nicht freigegeben",
                                                           Refusal.NOT_CLEARED)])  # fmt: skip
    store.record_refusals("j2", 1, TaskKind.FIT, [_refused("beta", "permission: Daten geändert",
                                                           Refusal.DATASET_CHANGED)])  # fmt: skip
    store.record_refusals("j3", 1, TaskKind.FIT, [_refused("gamma", "permission: forbidden here", Refusal.POLICY)])

    # Act
    items = {i.site: i for i in not_cleared(coordinator)}

    # Assert: alpha and beta by their fields; gamma's policy refusal is not an approval matter
    assert set(items) == {"alpha", "beta"}
    assert (items["alpha"].job_id, items["alpha"].spec_hash) == ("j1", DIGEST)
    assert items["beta"].kind is RefusalKind.DATASET_CHANGED and items["beta"].job_id == "j2"
    assert "Spezifikation nicht freigegeben" in items["alpha"].why
    assert [i.site for i in not_cleared(coordinator, sites=["beta"])] == ["beta"]


def test_an_older_nodes_refusal_without_fields_is_still_found_by_its_text(coordinator: Coordinator) -> None:
    text = (f"permission: site 'delta', round 1: site 'delta' has not cleared job 'j1' (spec {DIGEST[:12]}…): "
            "its spec awaits the site admin's approval (medfed approvals list)")  # fmt: skip

    record = RoundRecord(job_id="j1", round=1, kind=TaskKind.FIT, sites=(_refused("delta", text, None),),
                         aggregated={}, duration_s=1.0)  # fmt: skip
    coordinator.store.complete_round(record, checkpoint=None)

    (item,) = not_cleared(coordinator)

    assert (item.site, item.job_id, item.spec_hash, item.kind) == ("delta", "j1", DIGEST, RefusalKind.PENDING)
    assert coordinator.store.site_refusals() == []
