"""Consent ids at rest: the node's consent store keeps keyed pseudonyms (HMAC-SHA256 under a key
outside the data directory), never raw patient ids; lookups hash the id asked about; a registry
written in plaintext is converted when opened; a wrong or missing key is refused."""

from __future__ import annotations

import datetime as dt
import sqlite3
import stat
from pathlib import Path

import pandas as pd
import pytest

from medfed.core.errors import DataError
from medfed.crypto.pseudonym import Pseudonymizer
from medfed.data.consent import CONSENT_KEY_FILE, ConsentRecord, ConsentStatus, ConsentStore, apply_consent

DAY = dt.date(2026, 6, 1)
AT = dt.datetime(2026, 6, 1, 9, 0, tzinfo=dt.UTC)
IDS = ("MRN-0048213", "MRN-0048214", "MRN-0048215")


def records() -> list[ConsentRecord]:
    return [
        ConsentRecord(patient_id=IDS[0], purpose="*", status=ConsentStatus.DENY, date=dt.date(2025, 1, 1)),
        ConsentRecord(patient_id=IDS[1], purpose="research", status=ConsentStatus.DENY, date=dt.date(2025, 1, 1)),
        ConsentRecord(patient_id=IDS[1], purpose="research", status=ConsentStatus.PERMIT, date=dt.date(2026, 1, 1)),
    ]


def file_bytes(state: Path) -> bytes:
    return b"".join(p.read_bytes() for p in state.iterdir() if p.is_file())


def test_the_store_holds_pseudonyms_and_lookups_hash_the_id(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    store = ConsentStore(state / "consent.sqlite")
    store.add(records(), source="consent.csv", at=AT)
    registry = store.registry()
    store.close()

    # Act: the node's filter, with raw ids in the table
    frame = pd.DataFrame({"patient_id": [*IDS, IDS[0]], "x": [1, 2, 3, 4]})
    kept, report = apply_consent(frame, registry, purpose="research", id_column="patient_id", on=DAY)

    # Assert: decisions as before; the file at rest holds no id; the key lies outside the state dir, 0600
    assert kept["patient_id"].tolist() == [IDS[1], IDS[2]] and report.patients_excluded == 1
    assert registry.purposes_of(IDS[1]) == ["research"] and registry.purposes_of("nobody") == []
    assert all(Pseudonymizer.is_pseudonym(r.patient_id) for r in registry.records)
    assert not any(i.encode() in file_bytes(state) for i in IDS)
    key = tmp_path / CONSENT_KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not any(p.name == CONSENT_KEY_FILE for p in state.iterdir())


def test_a_plaintext_registry_is_converted_on_open(tmp_path: Path) -> None:
    # Arrange: a registry as medfed wrote it before (raw ids), with a deleted row's remnants
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "consent.sqlite")
    db.execute("CREATE TABLE consent (patient_id TEXT NOT NULL, purpose TEXT NOT NULL, status TEXT NOT NULL, "
               "date TEXT NOT NULL, source TEXT NOT NULL, recorded_at TEXT NOT NULL)")  # fmt: skip
    rows = [(r.patient_id, r.purpose, r.status.value, r.date.isoformat(), "old.csv", AT.isoformat()) for r in records()]
    db.executemany("INSERT INTO consent VALUES (?,?,?,?,?,?)", rows)
    db.commit()
    db.close()
    assert IDS[0].encode() in file_bytes(state)

    # Act
    store = ConsentStore(state / "consent.sqlite")
    registry = store.registry()
    summary = store.summary()
    store.close()

    # Assert: same decisions, no raw id left anywhere in the file; reopening changes nothing
    assert registry.decision(IDS[0], "research", DAY) is ConsentStatus.DENY
    assert registry.decision(IDS[1], "research", DAY) is ConsentStatus.PERMIT
    assert registry.decision(IDS[1], "research", dt.date(2025, 6, 1)) is ConsentStatus.DENY
    assert summary == {"deny": 2, "permit": 1}
    assert not any(i.encode() in file_bytes(state) for i in IDS)
    again = ConsentStore(state / "consent.sqlite")
    assert again.registry().records == registry.records
    again.close()


def test_a_wrong_or_missing_key_is_refused_not_silently_ignored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    store = ConsentStore(state / "consent.sqlite")
    store.add(records(), source="consent.csv", at=AT)
    store.close()
    key = tmp_path / CONSENT_KEY_FILE
    original = key.read_text()

    key.unlink()
    with pytest.raises(DataError, match=r"key .* is missing"):
        ConsentStore(state / "consent.sqlite")
    assert not key.exists()  # no new key was made over existing pseudonyms
    key.write_text("00" * 32 + "\n")
    key.chmod(0o600)
    with pytest.raises(DataError, match="under another key"):
        ConsentStore(state / "consent.sqlite")
    key.write_text(original)
    key.chmod(0o644)
    with pytest.raises(DataError, match="chmod 600"):
        ConsentStore(state / "consent.sqlite")
    with pytest.raises(DataError, match="outside its directory"):
        ConsentStore(state / "consent.sqlite", key_path=state / "k.key")


def test_an_open_with_nothing_to_convert_writes_nothing_and_a_late_plaintext_row_is_converted(tmp_path: Path) -> None:
    # Arrange: a converted store (every task opens it afresh: that open must be a read)
    state = tmp_path / "state"
    state.mkdir()
    path = state / "consent.sqlite"
    store = ConsentStore(path)
    store.add(records(), source="consent.csv", at=AT)
    store.close()
    before = file_bytes(state)

    # Act 1: open again with nothing to convert
    ConsentStore(path).close()
    unchanged = file_bytes(state) == before
    # Act 2: a plaintext row written behind the store's back (an older writer), then an open
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO consent VALUES (?, 'research', 'deny', '2026-01-01', 'old.csv', '')", (IDS[2],))
    db.close()
    reopened = ConsentStore(path)
    registry = reopened.registry()
    reopened.close()

    # Assert
    assert unchanged
    assert all(Pseudonymizer.is_pseudonym(r.patient_id) for r in registry.records) and len(registry.records) == 4
    assert IDS[2].encode() not in file_bytes(state)
