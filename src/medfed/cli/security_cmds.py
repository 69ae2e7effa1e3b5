"""``medfed audit|backup|restore|keys``: integrity, audit and encryption-at-rest commands.

Wire into ``medfed.cli.main`` with :func:`register` (adds the sub-commands to the top-level
sub-parsers) and route ``args.command`` in ``audit``/``backup``/``restore``/``keys`` to
:func:`dispatch`. The data key comes from ``--key-file`` or ``$MEDFED_DATA_KEY``; this module is
CLI, so it is allowed to read the environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from medfed.core.errors import ConfigError

if TYPE_CHECKING:
    from medfed.crypto.aead import Keyring

__all__ = ["COMMANDS", "dispatch", "register"]

#: The top-level commands this module adds.
COMMANDS = ("audit", "backup", "restore", "keys")

Handler = Callable[[argparse.Namespace], int]


def _key_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key-file", type=Path, help="keyring file outside the data directory (default: $MEDFED_DATA_KEY)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``audit``, ``backup``, ``restore`` and ``keys`` to the top-level sub-parsers."""
    audit = sub.add_parser("audit", help="verify or export a tamper-evident audit log")
    asub = audit.add_subparsers(dest="action", required=True)
    verify = asub.add_parser("verify", help="check the hash chain and signed checkpoints; name the first bad entry")
    source = verify.add_mutually_exclusive_group(required=True)
    source.add_argument("--log", type=Path, help="the audit log (SQLite)")
    source.add_argument("--jsonl", type=Path, help="an export (JSON lines)")
    verify.add_argument("--public-key", type=Path, help="the signer's Ed25519 public key (PEM): checks checkpoints")
    verify.set_defaults(security_handler=_audit_verify)
    export = asub.add_parser("export", help="write entries and checkpoints as JSON lines (for a SIEM)")
    export.add_argument("--log", type=Path, required=True)
    export.add_argument("--out", type=Path, help="output file (default: stdout)")
    export.add_argument("--since", type=int, default=0, help="only entries after this sequence number")
    export.set_defaults(security_handler=_audit_export)
    part = asub.add_parser("participation", help="check the coordinator's record of this site against its own log")
    part.add_argument("--coordinator-export", type=Path, required=True, help="the coordinator's JSON lines export")
    part.add_argument("--coordinator-key", type=Path, required=True, help="the coordinator's public key (PEM)")
    part.add_argument("--log", type=Path, required=True, help="this site's audit log (SQLite)")
    part.add_argument("--site", required=True)
    part.set_defaults(security_handler=_audit_participation)

    bk = sub.add_parser("backup", help="write an encrypted, hash-manifested archive of a state directory")
    bk.add_argument("--state", type=Path, required=True, help="the state directory to back up")
    bk.add_argument("--out", type=Path, required=True, help="the archive to write")
    _key_arg(bk)
    bk.set_defaults(security_handler=_backup)

    rs = sub.add_parser(
        "restore", help="verify an archive, then replace a state directory with it (stop the coordinator/node first)"
    )
    rs.add_argument("archive", type=Path)
    rs.add_argument("--state", type=Path, required=True, help="the state directory to replace")
    rs.add_argument("--verify-only", action="store_true", help="check the archive, change nothing")
    _key_arg(rs)
    rs.set_defaults(security_handler=_restore)

    keys = sub.add_parser("keys", help="data keys (AES-256) and signing keys (Ed25519)")
    ksub = keys.add_subparsers(dest="action", required=True)
    gen = ksub.add_parser("generate", help="create a keyring file with one data key")
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--id", required=True, dest="key_id")
    gen.add_argument("--data-dir", type=Path, action="append", default=[], help="refuse a key inside this directory")
    gen.set_defaults(security_handler=_keys_generate)
    rot = ksub.add_parser("rotate", help="add a new primary key; optionally re-encrypt directories under it")
    rot.add_argument("--key-file", type=Path, required=True)
    rot.add_argument("--id", required=True, dest="key_id")
    rot.add_argument("--reencrypt", type=Path, action="append", default=[], help="re-seal envelopes under this dir")
    rot.set_defaults(security_handler=_keys_rotate)
    ret = ksub.add_parser("retire", help="remove an old (non-primary) key from a keyring file")
    ret.add_argument("--key-file", type=Path, required=True)
    ret.add_argument("--id", required=True, dest="key_id")
    ret.set_defaults(security_handler=_keys_retire)
    sig = ksub.add_parser("signing", help="create an Ed25519 signing key pair (models, audit checkpoints)")
    sig.add_argument("--out", type=Path, required=True, help="private key (PEM, 0600); the public key goes to .pub")
    sig.set_defaults(security_handler=_keys_signing)


def dispatch(args: argparse.Namespace) -> int:
    """Run the handler :func:`register` attached to the parsed command."""
    handler: Handler = args.security_handler
    return handler(args)


def _keyring(key_file: Path | None, data_dirs: tuple[Path, ...]) -> Keyring:
    from medfed.security.keys import load_keyring

    return load_keyring(key_file, os.environ, data_dirs=data_dirs)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None


# --- audit ---------------------------------------------------------------------------------


def _audit_verify(args: argparse.Namespace) -> int:
    from medfed.security.audit import read_jsonl, read_log, verify_chain

    public = _read(args.public_key, "public key") if args.public_key else None
    if args.jsonl is not None:
        entries, checkpoints = read_jsonl(
            _read(args.jsonl, "audit export").decode().splitlines(), source=str(args.jsonl)
        )
    else:
        entries, checkpoints = read_log(args.log)  # read-only: verification never alters the evidence
    report = verify_chain(entries, checkpoints, public)
    if report.first_bad is not None:
        seq, why = report.first_bad
        print(f"audit log FAILED verification: first bad entry {seq}: {why}", file=sys.stderr)
        return 1
    anchor = (
        "no signing key given: checkpoints not checked"
        if public is None
        else f"{report.checkpoints} signed checkpoint(s) valid; {report.unanchored} entr(y/ies) after the last one"
    )
    print(f"audit log ok: {report.entries} entries, hash chain intact; {anchor}")
    return 0


def _audit_export(args: argparse.Namespace) -> int:
    from medfed.security.audit import read_log, write_jsonl

    entries, checkpoints = read_log(args.log, since=args.since)
    later = [c for c in checkpoints if c.seq > args.since]
    if args.out is None:
        write_jsonl(entries, later, sys.stdout)
    else:
        with args.out.open("w", encoding="utf-8") as fh:
            n = write_jsonl(entries, later, fh)
        print(f"{n} line(s) written to {args.out}", file=sys.stderr)
    return 0


def _audit_participation(args: argparse.Namespace) -> int:
    from medfed.security.audit import compare_participation, read_jsonl, read_log, verify_chain

    lines = _read(args.coordinator_export, "coordinator export").decode().splitlines()
    entries, checkpoints = read_jsonl(lines, source=str(args.coordinator_export))
    report = verify_chain(entries, checkpoints, _read(args.coordinator_key, "coordinator key"))
    if report.first_bad is not None:
        print(f"coordinator export FAILED verification at entry {report.first_bad[0]}: {report.first_bad[1]}")
        return 1
    local, _ = read_log(args.log)
    result = compare_participation(entries, local, site=args.site)
    for problem in result.problems:
        print(problem)
    print(f"site {args.site}: {result.matched} result(s) agree; {len(result.problems)} discrepanc(y/ies)")
    return 0 if result.ok else 1


# --- backup and restore --------------------------------------------------------------------


def _backup(args: argparse.Namespace) -> int:
    from medfed.security.backup import backup

    keyring = _keyring(args.key_file, (args.state,))
    manifest = backup(args.state, args.out, keyring)
    size = sum(f.size for f in manifest.files)
    print(f"backup of {args.state} written to {args.out}: {len(manifest.files)} files, {size} bytes")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from medfed.security.backup import restore, verify_backup

    keyring = _keyring(args.key_file, (args.state,))
    if args.verify_only:
        manifest = verify_backup(args.archive, keyring)
        print(f"{args.archive}: ok, {len(manifest.files)} files verified; nothing changed")
    else:
        manifest = restore(args.archive, args.state, keyring)
        print(f"{args.state} restored from {args.archive}: {len(manifest.files)} files verified")
    return 0


# --- keys ----------------------------------------------------------------------------------


def _keys_generate(args: argparse.Namespace) -> int:
    from medfed.security.keys import generate_keyring_file

    generate_keyring_file(args.out, args.key_id, data_dirs=tuple(args.data_dir))
    print(f"keyring {args.out} created (0600) with data key {args.key_id!r}; keep it outside the data directory")
    return 0


def _keys_rotate(args: argparse.Namespace) -> int:
    from medfed.security.keys import reencrypt_tree, rotate_keyring_file

    ring = rotate_keyring_file(args.key_file, args.key_id)
    print(f"{args.key_file}: new primary key {ring.primary!r}; old keys kept: {[k.key_id for k in ring.keys[:-1]]}")
    for root in args.reencrypt:
        changed = reencrypt_tree(root, ring)
        print(f"{root}: {len(changed)} file(s) re-encrypted under {ring.primary!r}")
    return 0


def _keys_retire(args: argparse.Namespace) -> int:
    from medfed.security.keys import retire_key

    ring = retire_key(args.key_file, args.key_id)
    print(f"{args.key_file}: key {args.key_id!r} retired; keys now {[k.key_id for k in ring.keys]}")
    return 0


def _keys_signing(args: argparse.Namespace) -> int:
    from medfed.crypto.signing import generate_signing_key, key_fingerprint
    from medfed.security.fsio import PRIVATE, PUBLIC, atomic_write

    out: Path = args.out
    pub = out.with_name(out.name + ".pub")
    if out.exists() or pub.exists():
        raise ConfigError(f"{out}: exists already; refusing to overwrite a signing key")
    key = generate_signing_key()
    atomic_write(out, key.private_pem, mode=PRIVATE)
    atomic_write(pub, key.public_pem, mode=PUBLIC)
    print(f"signing key {out} (0600), public key {pub}; fingerprint {key_fingerprint(key.public_pem)}")
    return 0
