"""A site's refusal travels as fields over real mTLS, not only as text: a job the site has not
cleared comes back with reason ``not-cleared`` and the spec's hash, one whose dataset changed since
approval with ``dataset-changed``; the coordinator stores both and the Approvals page reads them."""

from __future__ import annotations

import hashlib

import pytest

from integration.support import Cluster
from integration.test_governance_approval import SITE, Cli, _node, _run, _spec, admin_cli, signed  # noqa: F401
from medfed.cli.config import load_node_config
from medfed.core.errors import Refusal
from medfed.dashboard.pages.approvals import RefusalKind, not_cleared

pytestmark = pytest.mark.timeout(200)


def test_not_cleared_and_dataset_changed_refusals_arrive_as_reason_and_spec_hash(
    signed: Cluster,  # noqa: F811 - the fixture imported above
    admin_cli: Cli,  # noqa: F811
) -> None:
    # Arrange: alpha from its site.toml (approval required), and a job it has not seen
    toml = signed.fed.site_toml(SITE)
    _node(signed)
    spec = _spec("reasoned")
    digest = hashlib.sha256(spec.encode()).hexdigest()

    # Act 1: submitted before any approval
    first = _run(signed, spec)

    # Assert 1: the site's result carried reason and spec hash, and the page uses them
    assert first["state"] == "failed"
    store = signed.coordinator.store
    fields = [(site, reason, spec_hash) for _, _, site, reason, spec_hash, _ in store.site_refusals()]
    assert fields == [(SITE, Refusal.NOT_CLEARED, digest)]
    items = not_cleared(signed.coordinator)
    assert [(i.site, i.spec_hash, i.kind) for i in items] == [(SITE, digest, RefusalKind.PENDING)]

    # Act 2: approved, ran once, then the data is edited and the same spec comes again
    admin_cli("approve", digest[:12], "--reason", "reviewed", site_toml=toml)
    assert _run(signed, spec)["state"] == "completed"
    train = load_node_config(toml).settings.datasets["heart"].path / "train.csv"
    lines = train.read_text().splitlines(keepends=True)
    train.write_text("".join([*lines, lines[-1]]))
    assert _run(signed, spec)["state"] == "failed"

    # Assert 2: the second refusal is dataset-changed, for the same spec
    fields = [(site, reason, spec_hash) for _, _, site, reason, spec_hash, _ in store.site_refusals()]
    assert fields[-1] == (SITE, Refusal.DATASET_CHANGED, digest)
    kinds = {i.spec_hash: i.kind for i in not_cleared(signed.coordinator)}
    assert kinds == {digest: RefusalKind.DATASET_CHANGED}
