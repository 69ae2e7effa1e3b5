"""Data keys at rest: key files outside the data directory, owner-only, env fallback, rotation."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from medfed.core.errors import ConfigError, StoreError
from medfed.crypto.aead import decrypt, encrypt, envelope_info, generate_key
from medfed.security.keys import (
    KEY_ENV,
    generate_keyring_file,
    keyring_from_env,
    load_keyring,
    read_keyring_file,
    reencrypt_tree,
    retire_key,
    rotate_keyring_file,
)


def test_generated_file_is_owner_only_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "data.keys"
    path.parent.mkdir()
    ring = generate_keyring_file(path, "k1")

    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    loaded = read_keyring_file(path)
    assert loaded.primary == "k1" and loaded.primary_key.secret == ring.primary_key.secret
    with pytest.raises(ConfigError, match="exists already"):
        generate_keyring_file(path, "k2")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_permissive_key_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "data.keys"
    generate_keyring_file(path, "k1")
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match="accessible by group or others"):
        read_keyring_file(path)


def test_key_inside_the_data_directory_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with pytest.raises(ConfigError, match="outside the data directory"):
        generate_keyring_file(state / "sub" / "data.keys", "k1", data_dirs=(state,))
    outside = tmp_path / "data.keys"
    generate_keyring_file(outside, "k1")
    (state / "link.keys").symlink_to(outside)
    with pytest.raises(ConfigError, match="outside the data directory"):
        read_keyring_file(outside, data_dirs=(tmp_path,))
    assert read_keyring_file(state / "link.keys", data_dirs=(state,)).primary == "k1"  # resolves to outside


def test_malformed_files_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.keys"
    for text, why in [
        ("{", "malformed"),
        ('{"format": "x"}', "not a medfed keyring"),
        ('{"format": "medfed-keyring-v1", "primary": "k", "keys": [{"id": "k", "key": "AAAA"}]}', "AES-256 needs 32"),
    ]:
        path.write_text(text)
        os.chmod(path, 0o600)
        with pytest.raises(ConfigError, match=why) as err:
            read_keyring_file(path)
        assert str(path) in str(err.value)
    with pytest.raises(ConfigError, match="cannot read"):
        read_keyring_file(tmp_path / "missing.keys")


def test_env_keyring_and_precedence(tmp_path: Path) -> None:
    k1, k2 = generate_key("k1"), generate_key("k2")
    env = {KEY_ENV: f"k2:{base64.b64encode(k2.secret).decode()}, k1:{base64.b64encode(k1.secret).decode()}"}
    ring = keyring_from_env(env)

    assert ring is not None and ring.primary == "k2" and [k.key_id for k in ring.keys] == ["k2", "k1"]
    assert keyring_from_env({}) is None
    with pytest.raises(ConfigError, match="id:base64"):
        keyring_from_env({KEY_ENV: "nocolon"})
    with pytest.raises(ConfigError, match="not valid base64"):
        keyring_from_env({KEY_ENV: "k1:@@@"})
    with pytest.raises(ConfigError, match="no data key"):
        load_keyring(None, {})
    path = tmp_path / "file.keys"
    generate_keyring_file(path, "fromfile")
    assert load_keyring(path, env).primary == "fromfile"


def test_rotation_reencrypts_then_retires(tmp_path: Path) -> None:
    path, data = tmp_path / "data.keys", tmp_path / "state"
    (data / "checkpoints").mkdir(parents=True)
    old = generate_keyring_file(path, "k1")
    blobs = {data / "checkpoints" / f"round-{i}.npz": f"checkpoint:round-{i}" for i in range(3)}
    for p, ctx in blobs.items():
        p.write_bytes(encrypt(old, ctx.encode(), context=ctx))
    (data / "plain.txt").write_text("not an envelope")

    ring = rotate_keyring_file(path, "k2")
    changed = reencrypt_tree(data, ring)
    assert sorted(changed) == sorted(blobs) and reencrypt_tree(data, ring) == []
    ring = retire_key(path, "k1")

    assert [k.key_id for k in read_keyring_file(path).keys] == ["k2"]
    for p, ctx in blobs.items():
        assert envelope_info(p.read_bytes())[0] == "k2"
        assert decrypt(ring, p.read_bytes(), context=ctx) == ctx.encode()
    with pytest.raises(ConfigError, match="primary"):
        retire_key(path, "k2")


def test_reencrypt_stops_at_a_tampered_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "data.keys"
    old = generate_keyring_file(path, "k1")
    bad = tmp_path / "state" / "m.npz"
    bad.parent.mkdir()
    blob = bytearray(encrypt(old, b"model", context="model:m.npz"))
    blob[-1] ^= 1
    bad.write_bytes(bytes(blob))

    with pytest.raises(StoreError, match=r"m\.npz"):
        reencrypt_tree(bad.parent, rotate_keyring_file(path, "k2"))
    assert bad.read_bytes() == bytes(blob)  # left as it was


def test_sealed_files_bind_role_and_relative_path(tmp_path: Path) -> None:
    from medfed.security.keys import FileRole, read_sealed, sealed_context, write_sealed

    ring = generate_keyring_file(tmp_path / "data.keys", "k1")
    root = tmp_path / "state"
    a, b = root / "checkpoints" / "j1" / "round-00001.npz", root / "checkpoints" / "j1" / "round-00002.npz"
    write_sealed(a, b"round one", ring, context=sealed_context(FileRole.CHECKPOINT, root, a))
    write_sealed(b, b"round two", ring, context=sealed_context(FileRole.CHECKPOINT, root, b))

    assert sealed_context(FileRole.CHECKPOINT, root, a) == "checkpoint:checkpoints/j1/round-00001.npz"
    assert oct(a.stat().st_mode & 0o777) == oct(0o600)
    assert read_sealed(a, ring, context=sealed_context(FileRole.CHECKPOINT, root, a)) == b"round one"
    b.write_bytes(a.read_bytes())  # an old round copied over a newer one
    with pytest.raises(StoreError, match=r"round-00002\.npz: envelope is bound to"):
        read_sealed(b, ring, context=sealed_context(FileRole.CHECKPOINT, root, b))
    moved = tmp_path / "elsewhere"
    root.rename(moved)  # a restored copy in another place still opens: the context is relative
    a2 = moved / "checkpoints" / "j1" / "round-00001.npz"
    assert read_sealed(a2, ring, context=sealed_context(FileRole.CHECKPOINT, moved, a2)) == b"round one"
