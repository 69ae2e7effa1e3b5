"""The catalog in the coordinator's store: replaced at each registration, kept across restarts
(offline sites shown with the age of their entry), a migration for stores made before it, and
the per-site record of which datasets a job's selector matched."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from medfed.coordinator.nodes import NodeInfo, matching_datasets
from medfed.coordinator.service import Coordinator, CoordinatorSettings
from medfed.coordinator.store import SCHEMA, SCHEMA_VERSION, Store
from medfed.core.errors import StoreError, ValidationError
from medfed.core.records import Role
from medfed.core.selectors import DatasetSelector
from medfed.data.catalog import CatalogColumn, CatalogEntry
from medfed.transport.api import Hello, Peer


def _entry(site: str, dataset: str, *tags: str) -> CatalogEntry:
    return CatalogEntry(
        site=site, dataset=dataset, rows="300", columns=(CatalogColumn(name="age", type="float", unit="a"),), tags=tags
    )


def test_a_store_made_before_versions_is_migrated_and_keeps_its_jobs(tmp_path: Path) -> None:
    # Arrange: a store as an earlier release left it (version-1 tables, user_version 0, one job)
    path = tmp_path / "coordinator.sqlite"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA)
    old.execute("INSERT INTO jobs VALUES ('j1','n','alice','x','h','completed',1,1,'',0,0)")
    old.commit()
    old.close()

    # Act
    store = Store(path)

    # Assert
    assert store.schema_version == SCHEMA_VERSION >= 4  # 4: site_metrics gained refusal, refusal_spec
    assert store.job("j1") is not None and store.catalog() == [] and store.dataset_matches("j1") == {}
    assert store.site_refusals() == []
    store.replace_catalog("cleveland", [_entry("cleveland", "heart", "cardiology")])
    store.close()
    again = Store(path)  # opening a current store changes nothing
    assert again.schema_version == SCHEMA_VERSION and [s.entry.dataset for s in again.catalog()] == ["heart"]
    again.close()


def test_a_store_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.sqlite"
    newer = sqlite3.connect(path)
    newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    newer.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        Store(path)


def test_each_registration_replaces_the_sites_entries_and_survives_reopening(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    store.replace_catalog("a", [_entry("a", "heart", "cardiology"), _entry("a", "lung")], at=100.0)
    store.replace_catalog("b", [_entry("b", "hearts", "cardiology")], at=200.0)
    store.replace_catalog("a", [_entry("a", "heart", "cardiology", "adult")], at=300.0)  # lung withdrawn
    store.replace_catalog("c", [], at=400.0)  # reported, offers nothing declared
    with pytest.raises(ValidationError, match="name another site"):
        store.replace_catalog("b", [_entry("a", "heart")])
    store.close()

    again = Store(tmp_path / "s.sqlite")
    got = [(s.entry.site, s.entry.dataset, s.entry.tags, s.reported_at) for s in again.catalog()]
    assert got == [("a", "heart", ("cardiology", "adult"), 300.0), ("b", "hearts", ("cardiology",), 200.0)]
    assert again.catalog_reports() == {"a": 300.0, "b": 200.0, "c": 400.0}
    again.close()


def test_dataset_matches_are_kept_per_job_and_site(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    store.set_dataset_matches("j1", {"a": ["heart"], "b": [], "c": ["y", "x"]})
    store.set_dataset_matches("j1", {"b": ["hearts"]})
    assert store.dataset_matches("j1") == {"a": ["heart"], "b": ["hearts"], "c": ["x", "y"]}
    assert store.dataset_matches("j2") == {}
    store.close()


def test_the_coordinator_picks_sites_by_catalog_tags_or_by_offered_name() -> None:
    def node(site: str, *entries: CatalogEntry, offered: tuple[str, ...] | None = None) -> NodeInfo:
        names = tuple(e.dataset for e in entries) if offered is None else offered
        return NodeInfo(site=site, version="v", datasets=names, tasks=(), last_seen=0.0, catalog=entries)

    tags = DatasetSelector.by_tags(["cardiology", "adult"])
    assert matching_datasets(node("a", _entry("a", "heart", "Cardiology", "adult", "uci")), tags) == ("heart",)
    assert matching_datasets(node("b", _entry("b", "kids", "cardiology")), tags) == ()
    two = node("c", _entry("c", "h1", "adult", "cardiology"), _entry("c", "h2", "cardiology", "adult"))
    assert matching_datasets(two, tags) == ("h1", "h2")  # the node itself refuses, naming both
    not_offered = node("d", _entry("d", "heart", "adult", "cardiology"), offered=())
    assert matching_datasets(not_offered, tags) == ()
    by_name = DatasetSelector.by_name("heart")
    assert matching_datasets(node("e", offered=("heart", "lung")), by_name) == ("heart",)
    assert matching_datasets(node("f", offered=("lung",)), by_name) == ()
    assert matching_datasets(node("g", offered=()), by_name) == ("heart",)  # lists nothing: asked, as before


def _hello(site: str, dataset: str) -> Hello:
    entries = json.dumps([_entry(site, dataset, "cardiology").to_dict()])
    return Hello(version="v", datasets=(dataset,), catalog_json=entries)


def test_search_answers_after_a_restart_with_offline_sites_and_their_age(tmp_path: Path) -> None:
    # Arrange: two sites register with a coordinator, which then stops
    settings = CoordinatorSettings(state_dir=tmp_path / "state", heartbeat_interval_s=60.0)
    first = Coordinator(settings)
    for site, name in (("alpha", "heart"), ("beta", "hearts")):
        hello = Hello(
            version="v", datasets=(name,), catalog_json=json.dumps([_entry(site, name, "cardiology").to_dict()])
        )
        first.register(Peer(name=site, role=Role.NODE), hello)
    first.stop()
    first.store.close()
    before_restart = time.time()

    # Act: a new coordinator on the same state; only beta has come back
    second = Coordinator(settings)
    try:
        second.register(Peer(name="beta", role=Role.NODE), _hello("beta", "hearts"))
        found = second.search_catalog(Peer(name="rita", role=Role.RESEARCHER), "cardiology age")
        listing = second.catalog_entries()
    finally:
        second.stop()
        second.store.close()

    # Assert
    assert [(h["site"], h["dataset"], h["online"]) for h in found["hits"]] == [
        ("alpha", "heart", False),
        ("beta", "hearts", True),
    ]
    alpha = found["hits"][0]
    assert alpha["reported_at"] < before_restart and alpha["age_s"] >= 0.0
    assert {s["site"]: (s["online"], s["datasets"]) for s in found["sites"]} == {
        "alpha": (False, 1),
        "beta": (True, 1),
    }
    assert [(x.site, x.entry.dataset, x.online) for x in listing] == [
        ("alpha", "heart", False),
        ("beta", "hearts", True),
    ]
    assert listing[1].reported_at >= before_restart
