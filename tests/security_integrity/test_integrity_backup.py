"""Encrypted backups: round trip with a live SQLite store, and every bad archive refused with the
current state untouched."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tarfile
from pathlib import Path

import pytest

from medfed.core.errors import StoreError
from medfed.crypto.aead import CHUNK_SIZE, Keyring, StreamSealer, generate_key
from medfed.security.backup import CONTEXT, backup, restore, verify_backup


@pytest.fixture
def ring() -> Keyring:
    return Keyring.single(generate_key("k1"))


def _snapshot(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _state(root: Path) -> sqlite3.Connection:
    """A coordinator-like state directory with a live WAL database (connection left open)."""
    (root / "checkpoints" / "j1").mkdir(parents=True)
    (root / "checkpoints" / "j1" / "round-00001.npz").write_bytes(os.urandom(CHUNK_SIZE + 123))
    (root / "models").mkdir()
    (root / "models" / "j1.npz").write_bytes(b"model")
    db = sqlite3.connect(root / "coordinator.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE jobs (job_id TEXT PRIMARY KEY, state TEXT)")
    db.execute("INSERT INTO jobs VALUES ('j1', 'running')")
    return db


def test_backup_then_restore_after_destruction(tmp_path: Path, ring: Keyring) -> None:
    state, archive = tmp_path / "state", tmp_path / "backup.mfbk"
    db = _state(state)
    assert (state / "coordinator.sqlite-wal").exists()  # committed rows still in the WAL

    manifest = backup(state, archive, ring)
    db.close()
    files = {f.path for f in manifest.files}
    assert files == {"checkpoints/j1/round-00001.npz", "models/j1.npz", "coordinator.sqlite"}
    assert oct(archive.stat().st_mode & 0o777) == oct(0o600)
    assert b"round-00001" not in archive.read_bytes()  # names are encrypted too
    before = {k: v for k, v in _snapshot(state).items() if not k.endswith(("-wal", "-shm"))}
    for p in state.rglob("*.npz"):
        p.write_bytes(b"ransomware")

    restore(archive, state, ring)

    after = _snapshot(state)
    assert {k: v for k, v in after.items() if k != "coordinator.sqlite"} == {
        k: v for k, v in before.items() if k != "coordinator.sqlite"
    }
    rows = sqlite3.connect(state / "coordinator.sqlite").execute("SELECT * FROM jobs").fetchall()
    assert rows == [("j1", "running")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.mfbk", "state"]  # no staging left


def _refused(archive: Path, state: Path, ring: Keyring, match: str | None = None) -> None:
    before = _snapshot(state)
    with pytest.raises(StoreError, match=match):
        restore(archive, state, ring)
    assert _snapshot(state) == before
    assert sorted(p.name for p in state.parent.iterdir() if p.name.startswith(".")) == []  # staging removed


@pytest.fixture
def made(tmp_path: Path, ring: Keyring) -> tuple[Path, Path]:
    src, archive, live = tmp_path / "src", tmp_path / "b.mfbk", tmp_path / "live"
    _state(src).close()
    backup(src, archive, ring)
    live.mkdir()
    (live / "current.txt").write_text("current state")
    return archive, live


@pytest.mark.parametrize("where", [0.0, 0.3, 0.6, 0.999])
def test_corrupted_archive_is_refused_and_state_untouched(made: tuple[Path, Path], ring: Keyring, where: float) -> None:
    archive, live = made
    data = bytearray(archive.read_bytes())
    data[int(where * (len(data) - 1))] ^= 0x01
    archive.write_bytes(bytes(data))
    _refused(archive, live, ring)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_archive_is_refused(made: tuple[Path, Path], ring: Keyring, keep: float) -> None:
    archive, live = made
    archive.write_bytes(archive.read_bytes()[: int(keep * archive.stat().st_size)])
    _refused(archive, live, ring, "decryption failed|not a medfed")


def test_wrong_key_is_refused(made: tuple[Path, Path]) -> None:
    archive, live = made
    _refused(archive, live, Keyring.single(generate_key("k1")), "decryption failed")
    with pytest.raises(StoreError, match="no key with id"):
        verify_backup(archive, Keyring.single(generate_key("k2")))


def _forge(path: Path, ring: Keyring, members: dict[str, bytes], manifest: bytes | None) -> None:
    """An archive sealed with the right key whose content is wrong (a buggy or malicious writer)."""
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in {**members, **({"MANIFEST.json": manifest} if manifest is not None else {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    sealer = StreamSealer(ring, context=CONTEXT)
    path.write_bytes(sealer.header + sealer.update(buf.getvalue()) + sealer.finish())


def _manifest(files: dict[str, bytes]) -> bytes:
    import json

    listed = [{"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for p, d in files.items()]
    return json.dumps({"format": "medfed-backup-manifest-v1", "created": 0.0, "files": listed}).encode()


@pytest.mark.parametrize(
    ("members", "manifest_of", "why"),
    [
        ({"a.txt": b"new"}, {"a.txt": b"old"}, "does not match its manifest hash"),
        ({"a.txt": b"x"}, {"a.txt": b"x", "b.txt": b"y"}, "missing"),
        ({"a.txt": b"x", "evil.txt": b"y"}, {"a.txt": b"x"}, "not in the manifest"),
        ({"../escape.txt": b"x"}, {"../escape.txt": b"x"}, "unsafe path"),
        ({"/etc/x": b"x"}, {"/etc/x": b"x"}, "unsafe path"),
        ({"a.txt": b"x"}, None, "no manifest"),
    ],
)
def test_inconsistent_archive_is_refused(
    tmp_path: Path, ring: Keyring, members: dict[str, bytes], manifest_of: dict[str, bytes] | None, why: str
) -> None:
    archive, live = tmp_path / "forged.mfbk", tmp_path / "live"
    live.mkdir()
    (live / "current.txt").write_text("current")
    _forge(archive, ring, members, None if manifest_of is None else _manifest(manifest_of))
    _refused(archive, live, ring, why)
    assert not (tmp_path / "escape.txt").exists()


def test_backup_refuses_links_and_archive_inside_state(tmp_path: Path, ring: Keyring) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with pytest.raises(StoreError, match="inside the state directory"):
        backup(state, state / "b.mfbk", ring)
    (state / "link").symlink_to(tmp_path)
    with pytest.raises(StoreError, match="not a regular file"):
        backup(state, tmp_path / "b.mfbk", ring)
    assert not (tmp_path / "b.mfbk").exists()
    with pytest.raises(StoreError, match="no such state directory"):
        backup(tmp_path / "missing", tmp_path / "b.mfbk", ring)


def test_restore_into_a_new_directory(made: tuple[Path, Path], ring: Keyring, tmp_path: Path) -> None:
    archive, _ = made
    manifest = restore(archive, tmp_path / "fresh" / "state", ring)
    assert len(manifest.files) == 3 and (tmp_path / "fresh" / "state" / "models" / "j1.npz").read_bytes() == b"model"


def test_archive_from_before_a_key_rotation_still_restores(made: tuple[Path, Path], ring: Keyring) -> None:
    archive, live = made
    rotated = ring.with_new_primary(generate_key("k2"))
    restore(archive, live, rotated)  # sealed under k1, opened by the rotated keyring
    with pytest.raises(StoreError, match="no key with id 'k1'"):
        verify_backup(archive, rotated.without("k1"))


def test_unwritable_destination_is_a_store_error(made: tuple[Path, Path], ring: Keyring, tmp_path: Path) -> None:
    archive, live = made
    with pytest.raises(StoreError, match="cannot write the archive there"):
        backup(live, tmp_path / "missing-dir" / "b.mfbk", ring)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreError, match="cannot stage a restore"):
        restore(archive, tmp_path / "afile" / "state", ring)
