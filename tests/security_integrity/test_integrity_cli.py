"""The ``medfed audit|backup|restore|keys`` command functions, through a real argparse parser."""

from __future__ import annotations

import argparse
import base64
import sqlite3
from pathlib import Path

import pytest

from medfed.cli.security_cmds import COMMANDS, dispatch, register
from medfed.core.errors import ConfigError, StoreError
from medfed.crypto.aead import generate_key
from medfed.crypto.signing import SigningKey
from medfed.security.audit import AuditAction, AuditEvent, AuditLog
from medfed.security.keys import KEY_ENV


def run(*argv: str | Path) -> int:
    parser = argparse.ArgumentParser(prog="medfed")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args([str(a) for a in argv])
    assert args.command in COMMANDS
    return dispatch(args)


def _state(root: Path) -> Path:
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "round-00001.npz").write_bytes(b"weights" * 1000)
    sqlite3.connect(root / "ledger.sqlite").execute("CREATE TABLE t (x)").connection.close()
    return root


def test_keys_backup_restore_cycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys, state, archive = tmp_path / "keys" / "data.keys", _state(tmp_path / "state"), tmp_path / "b.mfbk"
    keys.parent.mkdir()

    assert run("keys", "generate", "--out", keys, "--id", "k1", "--data-dir", state) == 0
    assert run("backup", "--state", state, "--out", archive, "--key-file", keys) == 0
    assert run("restore", archive, "--state", state, "--key-file", keys, "--verify-only") == 0
    (state / "checkpoints" / "round-00001.npz").write_bytes(b"lost")
    assert run("restore", archive, "--state", state, "--key-file", keys) == 0

    assert (state / "checkpoints" / "round-00001.npz").read_bytes() == b"weights" * 1000
    out = capsys.readouterr().out
    assert "2 files verified" in out and "nothing changed" in out


def test_restore_refuses_a_tampered_archive(tmp_path: Path) -> None:
    keys, state, archive = tmp_path / "data.keys", _state(tmp_path / "state"), tmp_path / "b.mfbk"
    run("keys", "generate", "--out", keys, "--id", "k1")
    run("backup", "--state", state, "--out", archive, "--key-file", keys)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))

    with pytest.raises(StoreError, match="decryption failed"):
        run("restore", archive, "--state", state, "--key-file", keys)
    assert (state / "checkpoints" / "round-00001.npz").read_bytes() == b"weights" * 1000


def test_key_from_environment_and_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _state(tmp_path / "state")
    key = generate_key("envkey")
    monkeypatch.setenv(KEY_ENV, f"envkey:{base64.b64encode(key.secret).decode()}")
    assert run("backup", "--state", state, "--out", tmp_path / "b.mfbk") == 0
    with pytest.raises(ConfigError, match="outside the data directory"):
        run("keys", "generate", "--out", state / "k.keys", "--id", "k1", "--data-dir", state)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ConfigError, match="no data key"):
        run("backup", "--state", state, "--out", tmp_path / "c.mfbk")


def test_keys_rotate_and_retire(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medfed.crypto.aead import encrypt, envelope_info
    from medfed.security.keys import read_keyring_file

    keys, data = tmp_path / "data.keys", tmp_path / "state"
    data.mkdir()
    run("keys", "generate", "--out", keys, "--id", "k1")
    (data / "m.npz").write_bytes(encrypt(read_keyring_file(keys), b"m", context="model:m.npz"))

    assert run("keys", "rotate", "--key-file", keys, "--id", "k2", "--reencrypt", data) == 0
    assert run("keys", "retire", "--key-file", keys, "--id", "k1") == 0

    assert envelope_info((data / "m.npz").read_bytes())[0] == "k2"
    assert "1 file(s) re-encrypted" in capsys.readouterr().out


def _signing(tmp_path: Path) -> SigningKey:
    out = tmp_path / "audit.key"
    assert run("keys", "signing", "--out", out) == 0
    assert oct(out.stat().st_mode & 0o777) == oct(0o600)
    with pytest.raises(ConfigError, match="exists already"):
        run("keys", "signing", "--out", out)
    return SigningKey(private_pem=out.read_bytes(), public_pem=(tmp_path / "audit.key.pub").read_bytes())


def _fill(path: Path, key: SigningKey, action: AuditAction, rounds: range, site: str = "alpha") -> None:
    log = AuditLog(path, signer=key, checkpoint_every=2)
    for r in rounds:
        log.append(
            AuditEvent(
                action=action,
                actor="coordinator" if action is AuditAction.RESULT_RECEIVED else site,
                fields={"site": site, "job_id": "j1", "round": r, "update_sha256": "c" * 64},
            )
        )
    log.checkpoint()
    log.close()


def test_audit_verify_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = _signing(tmp_path)
    log, pub, export = tmp_path / "audit.sqlite", tmp_path / "audit.key.pub", tmp_path / "audit.jsonl"
    _fill(log, key, AuditAction.RESULT_RECEIVED, range(1, 6))

    assert run("audit", "verify", "--log", log, "--public-key", pub) == 0
    assert run("audit", "export", "--log", log, "--out", export) == 0
    assert run("audit", "verify", "--jsonl", export, "--public-key", pub) == 0
    assert "audit log ok: 5 entries" in capsys.readouterr().out

    db = sqlite3.connect(log)
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET actor='mallory' WHERE seq=3")
    db.commit()
    db.close()
    assert run("audit", "verify", "--log", log, "--public-key", pub) == 1
    assert "first bad entry 3" in capsys.readouterr().err


def test_audit_participation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = _signing(tmp_path)
    coordinator, site, export = tmp_path / "c.sqlite", tmp_path / "s.sqlite", tmp_path / "c.jsonl"
    _fill(coordinator, key, AuditAction.RESULT_RECEIVED, range(1, 4))
    _fill(site, key, AuditAction.RESULT_SENT, range(1, 4))
    run("audit", "export", "--log", coordinator, "--out", export)
    argv = (
        "audit",
        "participation",
        "--coordinator-export",
        export,
        "--coordinator-key",
        tmp_path / "audit.key.pub",
        "--log",
        site,
        "--site",
        "alpha",
    )

    assert run(*argv) == 0
    _fill(coordinator, key, AuditAction.RESULT_RECEIVED, range(4, 5))  # a round the site never sent
    run("audit", "export", "--log", coordinator, "--out", export)
    assert run(*argv) == 1
    assert "round 4: the coordinator records a result this site never sent" in capsys.readouterr().out


def test_missing_or_foreign_log_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such file"):
        run("audit", "verify", "--log", tmp_path / "none.sqlite")
    (tmp_path / "other.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="not an audit log"):
        run("audit", "verify", "--log", tmp_path / "other.sqlite")


def test_verify_does_not_alter_the_evidence(tmp_path: Path) -> None:
    key = _signing(tmp_path)
    log = tmp_path / "audit.sqlite"
    _fill(log, key, AuditAction.RESULT_RECEIVED, range(1, 4))
    db = sqlite3.connect(log)
    db.execute("DROP TRIGGER audit_no_update")  # what an intruder left behind
    db.commit()
    db.close()
    before = log.read_bytes()

    run("audit", "verify", "--log", log, "--public-key", tmp_path / "audit.key.pub")

    assert log.read_bytes() == before
