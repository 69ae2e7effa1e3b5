"""The tamper-evident audit log: every kind of tampering is caught and the first bad entry named;
events carrying PHI are refused; a site checks the coordinator's record of its participation."""

from __future__ import annotations

import dataclasses
import io
import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from medfed.core.errors import StoreError, ValidationError
from medfed.crypto.signing import SigningKey, generate_signing_key
from medfed.security.audit import (
    AuditAction,
    AuditEntry,
    AuditEvent,
    AuditLog,
    compare_participation,
    read_jsonl,
    validate_event,
    verify_chain,
)

KEY = generate_signing_key()


def _clock() -> Iterator[float]:
    return itertools.count(1_700_000_000.0, 1.0)


def _log(path: Path, n: int = 10, *, every: int = 4, key: SigningKey | None = KEY) -> AuditLog:
    ticks = _clock()
    log = AuditLog(path, signer=key, clock=lambda: next(ticks), checkpoint_every=every)
    for i in range(1, n + 1):
        log.append(
            AuditEvent(
                action=AuditAction.RESULT_RECEIVED,
                actor="coordinator",
                fields={"site": "alpha", "job_id": "3f2a9c01", "round": i, "update_sha256": "0" * 64},
            )
        )
    return log


def _sql(path: Path, *statements: str) -> None:
    """Tamper as an attacker with file access would: drop the guards, then edit rows directly."""
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("DROP TRIGGER audit_no_delete")
    for s in statements:
        db.execute(s)
    db.commit()
    db.close()


def _first_bad(path: Path) -> tuple[int, str] | None:
    log = AuditLog(path)
    try:
        return log.verify(KEY.public_pem).first_bad
    finally:
        log.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "audit.sqlite"
    _log(p).close()  # entries 1..10, checkpoints at 4 and 8
    return p


def test_intact_log_verifies(path: Path) -> None:
    log = AuditLog(path)
    report = log.verify(KEY.public_pem)
    log.close()

    assert report.ok and report.entries == 10 and report.checkpoints == 2 and report.unanchored == 2


def test_sqlite_guards_refuse_update_and_delete(path: Path) -> None:
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit SET actor='mallory' WHERE seq=3")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM audit WHERE seq=3")
    db.close()


def test_edited_entry_is_named(path: Path) -> None:
    _sql(path, "UPDATE audit SET fields=replace(fields, '\"round\":6', '\"round\":60') WHERE seq=6")
    bad = _first_bad(path)
    assert bad is not None and bad[0] == 6 and "edited" in bad[1]


def test_deleted_entry_is_named(path: Path) -> None:
    _sql(path, "DELETE FROM audit WHERE seq=5")
    bad = _first_bad(path)
    assert bad is not None and bad[0] == 5 and "deleted" in bad[1]


def test_deleted_and_renumbered_entry_is_named(path: Path) -> None:
    _sql(path, "DELETE FROM audit WHERE seq=5", "UPDATE audit SET seq=seq-1 WHERE seq>5")
    bad = _first_bad(path)
    assert bad is not None and bad[0] == 5


def _insert_forged(path: Path, at_seq: int) -> None:
    """Forge an entry at ``at_seq`` that links correctly to its predecessor and has a consistent
    hash of its own, shifting the real entries up by one."""
    log = AuditLog(path)
    before = log.entries()[at_seq - 2]
    log.close()
    forged = AuditEntry(
        seq=at_seq, at=before.at + 0.5, action="login.succeeded", actor="mallory", fields={}, prev=before.hash, hash=""
    )
    _sql(
        path,
        f"UPDATE audit SET seq=seq+100 WHERE seq>={at_seq}",
        "UPDATE audit SET seq=seq-99 WHERE seq>=100",
        f"INSERT INTO audit VALUES ({at_seq}, {forged.at}, 'login.succeeded', 'mallory', '{{}}', '{before.hash}', "
        f"'{forged.computed_hash()}')",
    )


def test_inserted_entry_after_the_last_checkpoint_is_named(path: Path) -> None:
    _insert_forged(path, 10)
    bad = _first_bad(path)
    # the forgery itself is consistent; the real entry it displaced (now 11) no longer links to it
    assert bad is not None and bad[0] == 11 and "inserted" in bad[1]


def test_inserted_entry_before_a_checkpoint_is_caught_by_it(path: Path) -> None:
    _insert_forged(path, 4)
    bad = _first_bad(path)
    assert bad is not None and bad[0] == 1 and "entry in 1..4" in bad[1]


def test_reordered_entries_are_named(path: Path) -> None:
    _sql(
        path,
        "UPDATE audit SET seq=100 WHERE seq=3",
        "UPDATE audit SET seq=3 WHERE seq=2",
        "UPDATE audit SET seq=2 WHERE seq=100",
    )
    bad = _first_bad(path)
    assert bad is not None and bad[0] == 2


def test_rewritten_chain_is_caught_by_the_signed_checkpoint(path: Path) -> None:
    log = AuditLog(path)
    entries, checkpoints = log.entries(), log.checkpoints()
    log.close()
    # rewrite entry 6 and recompute every hash after it: the chain alone now looks perfect
    rewritten, prev = [], entries[4].hash
    for e in entries[5:]:
        fields = {**e.fields, "round": 60} if e.seq == 6 else dict(e.fields)
        draft = AuditEntry(seq=e.seq, at=e.at, action=e.action, actor=e.actor, fields=fields, prev=prev, hash="")
        new = dataclasses.replace(draft, hash=draft.computed_hash())
        rewritten.append(new)
        prev = new.hash
    chain = entries[:5] + rewritten
    assert verify_chain(chain, [], None).ok  # without checkpoints the forgery passes

    report = verify_chain(chain, checkpoints, KEY.public_pem)

    assert report.first_bad is not None and report.first_bad[0] == 5 and "signed checkpoint" in report.first_bad[1]


def test_truncation_after_a_checkpoint_is_caught(path: Path) -> None:
    _sql(path, "DELETE FROM audit WHERE seq>=7")
    bad = _first_bad(path)
    assert bad is not None and bad[0] == 7 and "truncated" in bad[1]


def test_forged_checkpoint_is_caught(path: Path) -> None:
    _sql(path, "UPDATE audit_checkpoints SET signature=replace(signature, substr(signature,1,2), 'ff') WHERE seq=4")
    impostor = generate_signing_key()
    bad = _first_bad(path)
    log = AuditLog(path)
    other = log.verify(impostor.public_pem)
    log.close()

    assert bad is not None and bad[0] == 4 and "signature" in bad[1]
    assert other.first_bad is not None and other.first_bad[0] == 4


def test_jsonl_export_round_trips_and_verifies(path: Path) -> None:
    log = AuditLog(path)
    out = io.StringIO()
    n = log.export_jsonl(out)
    log.close()
    entries, checkpoints = read_jsonl(out.getvalue().splitlines())

    assert n == 12 and len(entries) == 10 and len(checkpoints) == 2
    assert verify_chain(entries, checkpoints, KEY.public_pem).ok
    lines = out.getvalue().splitlines()
    lines[2], lines[3] = lines[3], lines[2]  # reorder two lines of the export
    swapped, cps = read_jsonl(lines)
    assert verify_chain(swapped, cps, KEY.public_pem).first_bad is not None
    with pytest.raises(ValidationError, match="line 2"):
        read_jsonl([lines[0], "{not json"])


def test_concurrent_appends_stay_one_chain(tmp_path: Path) -> None:
    import threading

    log = AuditLog(tmp_path / "a.sqlite", signer=KEY, checkpoint_every=7)
    event = AuditEvent(action=AuditAction.DATA_ACCESSED, actor="alpha", fields={"dataset": "heart", "rows": 80})
    threads = [threading.Thread(target=lambda: [log.append(event) for _ in range(25)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    report = log.verify(KEY.public_pem)
    log.close()
    assert report.ok and report.entries == 100 and report.checkpoints == 14


# --- PHI never enters an event -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"patient_name": "x"}, "not allowed"),
        ({"reason": "record of John Smith exported"}, "person's name"),
        ({"reason": "mrn 00123456 opened"}, "record number"),
        ({"reason": "contact jane@example.org"}, "e-mail"),
        ({"reason": "ssn 123-45-6789"}, "social security"),
        ({"reason": "seen 1984-03-12"}, "date"),
        ({"reason": "call 555-867-5309"}, "phone"),
        ({"dataset": "Smith_John"}, "not a valid name"),
        ({"round": "3"}, "expected int"),
        ({"ok": 1}, "expected bool"),
        ({"source": "hospital-pc-12"}, "not an IP"),
        ({"epsilon": float("inf")}, "finite"),
    ],
)
def test_phi_and_unknown_fields_are_refused(fields: dict[str, object], why: str, tmp_path: Path) -> None:
    event = AuditEvent(action=AuditAction.DATA_EXPORTED, actor="researcher", fields=fields)  # type: ignore[arg-type]
    log = AuditLog(tmp_path / "a.sqlite")

    with pytest.raises(ValidationError, match=why):
        log.append(event)
    assert log.entries() == []  # nothing written
    log.close()


def test_refusal_does_not_echo_the_value() -> None:
    event = AuditEvent(action=AuditAction.DATA_EXPORTED, actor="researcher", fields={"dataset": "Jane Roe 1984"})
    with pytest.raises(ValidationError) as err:
        validate_event(event)
    assert "Jane" not in str(err.value)


def test_every_problem_is_listed_at_once() -> None:
    event = AuditEvent(action=AuditAction.LOGIN_FAILED, actor="Bad Actor", fields={"round": 1.5, "x": 1})
    with pytest.raises(ValidationError) as err:
        validate_event(event)
    assert len(err.value.problems) >= 3


def test_ordinary_events_pass() -> None:
    validate_event(
        AuditEvent(
            action=AuditAction.TASK_REFUSED,
            actor="alpha",
            fields={
                "job_id": "3f2a9c019876",
                "spec_hash": "a" * 64,
                "reason": "spec not approved by the site admin",
                "source": "10.0.0.7",
                "epsilon": 0.5,
                "mfa": True,
            },
        )
    )


# --- a site verifies the coordinator's record of its participation -------------------------


def _results(action: AuditAction, site: str, rounds: dict[int, str]) -> list[AuditEntry]:
    log_entries = []
    for r, digest in rounds.items():
        fields = {"site": site, "job_id": "job1", "round": r, "update_sha256": digest}
        log_entries.append(AuditEntry(seq=r, at=0.0, action=action.value, actor="x", fields=fields, prev="", hash=""))
    return log_entries


def test_participation_matches_and_mismatches() -> None:
    a, b = "a" * 64, "b" * 64
    site_log = _results(AuditAction.RESULT_SENT, "alpha", {1: a, 2: a, 3: a})
    honest = _results(AuditAction.RESULT_RECEIVED, "alpha", {1: a, 2: a, 3: a}) + _results(
        AuditAction.RESULT_RECEIVED, "beta", {1: b}
    )
    dishonest = _results(AuditAction.RESULT_RECEIVED, "alpha", {1: a, 2: b, 4: a})

    assert compare_participation(honest, site_log, site="alpha").ok
    report = compare_participation(dishonest, site_log, site="alpha")
    assert report.matched == 2 and len(report.problems) == 3
    text = "\n".join(report.problems)
    assert "round 4: the coordinator records a result this site never sent" in text
    assert "round 3: this site sent a result the coordinator does not record" in text
    assert "round 2: update digest differs" in text


def test_log_without_signer_cannot_checkpoint(tmp_path: Path) -> None:
    log = _log(tmp_path / "a.sqlite", 3, key=None)
    with pytest.raises(ValidationError, match="no signing key"):
        log.checkpoint()
    log.close()
    with pytest.raises(StoreError):
        AuditLog(tmp_path / "a.sqlite" / "not-a-dir" / "x.sqlite")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit SET fields='not json' WHERE seq=4",
        "UPDATE audit SET fields='[1, 2]' WHERE seq=4",
        "UPDATE audit SET hash='zz' WHERE seq=4",
        "UPDATE audit SET prev=x'00ff' WHERE seq=4",
        "UPDATE audit SET at='yesterday' WHERE seq=4",
    ],
)
def test_garbled_rows_are_reported_not_crashed_on(path: Path, statement: str) -> None:
    _sql(path, statement)
    bad = _first_bad(path)
    assert bad is not None and bad[0] == 4
