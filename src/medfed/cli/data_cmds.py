"""``medfed data check|profile`` and ``medfed catalog search``, on a site's declared datasets.

Everything runs locally on the site's own files; only the catalog's coarse metadata would ever
be shared. The lead wires :func:`register` into :mod:`medfed.cli.main` and :func:`run` into the
dispatch table for the ``data`` and ``catalog`` commands.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medfed.cli.client import add_client_args, coordinator_client
from medfed.cli.config import is_declared_dataset, read_toml
from medfed.core.errors import ConfigError, DataError, ValidationError
from medfed.data.catalog import CatalogEntry, entry_for, search
from medfed.data.profile import profile_dataset
from medfed.data.sources import DatasetDecl, fingerprint, parse_dataset


def register(subparsers: Any) -> None:
    """Add ``data`` (check, profile) and ``catalog`` (search) to ``medfed``'s sub-parsers."""
    data = subparsers.add_parser("data", help="check and profile this site's declared datasets (locally)")
    dsub = data.add_subparsers(dest="action", required=True)
    for name, what in (("check", "validate every declared dataset"), ("profile", "per-column profile")):
        p = dsub.add_parser(name, help=what)
        _common(p)
    deid = dsub.add_parser("deid-dicom", help="de-identify DICOM files (PS3.15 Basic Profile) into --out")
    deid.add_argument("sources", nargs="+", type=Path, help="DICOM files or directories (searched for *.dcm)")
    deid.add_argument("--out", type=Path, required=True, help="an empty (or new) directory for the output files")
    deid.add_argument("--key-file", type=Path, help="the site's secret key (>= 16 bytes); else site.toml [deid]")
    deid.add_argument("--config", type=Path, help="site.toml whose [deid] names key_file, max_shift_days, burned_in")
    deid.add_argument("--allow-burned-in", action="store_true", help="do not refuse images that may show text")
    catalog = subparsers.add_parser("catalog", help="search dataset metadata (coarse counts, no rows)")
    csub = catalog.add_subparsers(dest="action", required=True)
    s = csub.add_parser("search", help='e.g. "heart failure age>60"')
    s.add_argument("query")
    _common(s)
    s.add_argument("--json", action="store_true", help="print the hits and entries as JSON")
    s.add_argument(
        "--federation",
        action="store_true",
        help="search every site's published catalog at the coordinator (--config is then your client.toml)",
    )
    add_client_args(s, config=False)  # --token-file; --config is _common's (client.toml with --federation)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="the site's site.toml")
    p.add_argument("--dataset", action="append", default=[], help="only this dataset (repeatable)")
    p.add_argument("--as-of", default="", help="reference date for FHIR/OMOP features (YYYY-MM-DD)")


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteDatasets:
    site: str
    datasets: dict[str, DatasetDecl]


def load_declarations(path: Path, only: list[str] | None = None) -> SiteDatasets:
    """The ``[datasets.<name>]`` tables of a ``site.toml`` that declare ``columns``, parsed.

    Tables without ``columns`` are the legacy train/test directories checked by ``medfed node check``.
    """
    doc = read_toml(path)
    site = str((doc.get("site") or {}).get("name", path.stem))
    tables = doc.get("datasets") or {}
    unknown = sorted(set(only or []) - set(tables))
    if unknown:
        raise ConfigError(f"{path}: no datasets {unknown} (declared: {sorted(tables)})")
    problems, decls = [], {}
    for name, table in tables.items():
        if (only and name not in only) or not isinstance(table, dict):
            continue
        if not is_declared_dataset(table):
            continue
        try:
            decls[name] = parse_dataset(name, table, base=path.parent, where=str(path))
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    return SiteDatasets(site=site, datasets=decls)


def _as_of(text: str) -> pd.Timestamp | None:
    if not text:
        return None
    try:
        return pd.Timestamp(text, tz="UTC")
    except ValueError:
        raise ConfigError(f"--as-of {text!r} is not a date (YYYY-MM-DD)") from None


def _check(site: SiteDatasets, as_of: pd.Timestamp | None) -> int:
    failed = 0
    for name, decl in site.datasets.items():
        try:
            profile = profile_dataset(decl, as_of=as_of)
        except (DataError, ValidationError) as exc:
            failed += 1
            print(f"FAIL {name} ({decl.format.value}, {decl.path}): {exc}")
            continue
        excluded = f"{profile.excluded} excluded by missing-value policy"
        print(f"ok   {name} ({decl.format.value}): {profile.rows} rows, {excluded}")
    if not site.datasets:
        print("no datasets with declared columns in this site.toml")
    return 1 if failed else 0


def _entries(site: SiteDatasets, as_of: pd.Timestamp | None) -> list[CatalogEntry]:
    entries = []
    for decl in site.datasets.values():
        digest = "" if decl.dsn else fingerprint(decl.path)
        entries.append(entry_for(site.site, decl, profile_dataset(decl, as_of=as_of), fingerprint=digest))
    return entries


def run(args: argparse.Namespace) -> int:
    """Carry out ``medfed data check|profile`` or ``medfed catalog search``; the exit code."""
    if args.command == "catalog" and args.federation:
        return _search_federation(args)
    if args.command == "data" and args.action == "deid-dicom":
        return _deid_dicom(args)
    site = load_declarations(args.config, args.dataset)
    as_of = _as_of(args.as_of)
    if args.command == "data" and args.action == "check":
        return _check(site, as_of)
    if args.command == "data":
        for decl in site.datasets.values():
            print(profile_dataset(decl, as_of=as_of).to_text(), end="\n\n")
        return 0
    entries = _entries(site, as_of)
    hits = search(entries, args.query)
    if args.json:
        print(json.dumps({"hits": [asdict(h) for h in hits], "entries": [e.to_dict() for e in entries]}))
        return 0
    _print_hits([asdict(h) for h in hits])
    return 0


def _age(seconds: float) -> str:
    """``"40 s"``, ``"12 min"``, ``"5 h"``, ``"3 d"``: how old a catalog entry is."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def _print_hits(hits: list[dict[str, Any]]) -> None:
    for h in hits:
        extra = "  ".join(f"{what}: {n}" for what, n in h["estimates"])
        age = f", entry from {_age(float(h['age_s']))} ago" if "age_s" in h else ""
        offline = "" if h.get("online", True) else f"  (site offline{age})"
        print(f"{h['site']}/{h['dataset']}: rows {h['rows']}  {extra}".rstrip() + offline)
    if not hits:
        print("no dataset matches")


def _deid_config(args: argparse.Namespace) -> Any:
    """The site's DeidConfig: ``--key-file``, or ``[deid] key_file`` (relative to site.toml)."""
    from medfed.data.deid_dicom import BurnedInPolicy, DeidConfig

    deid: dict[str, Any] = {}
    if args.config is not None:
        raw = read_toml(args.config).get("deid") or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{args.config}: [deid] must be a table")
        unknown = sorted(set(raw) - {"key_file", "max_shift_days", "burned_in"})
        if unknown:
            raise ConfigError(
                f"{args.config}: unknown keys {unknown} in [deid] (allowed: key_file, max_shift_days, burned_in)"
            )
        deid = raw
    key_file = args.key_file or (args.config.parent / str(deid["key_file"]) if "key_file" in deid else None)
    if key_file is None:
        raise ConfigError("deid-dicom needs the site's key: --key-file FILE, or [deid] key_file in --config site.toml")
    try:
        key = key_file.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"de-identification key {key_file}: {exc.strerror or exc}") from None
    policy = "allow" if args.allow_burned_in else str(deid.get("burned_in", "exclude"))
    try:
        burned_in = BurnedInPolicy(policy)
    except ValueError:
        raise ConfigError(f"[deid] burned_in {policy!r} is not one of {[p.value for p in BurnedInPolicy]}") from None
    shift = deid.get("max_shift_days", 365)
    if not isinstance(shift, int) or isinstance(shift, bool):
        raise ConfigError(f"[deid] max_shift_days must be an integer, got {shift!r}")
    return DeidConfig(key=key, max_shift_days=shift, burned_in=burned_in)


def _deid_dicom(args: argparse.Namespace) -> int:
    """De-identify the sources into ``--out``; list what the burned-in policy refused (never dropped silently)."""
    from medfed.data.deid_dicom import deidentify_files

    config = _deid_config(args)
    missing = [str(s) for s in args.sources if not s.exists()]
    if missing:
        raise ConfigError(f"deid-dicom: no such file or directory: {missing}")
    files = sorted({f for s in args.sources for f in ([s] if s.is_file() else s.rglob("*.dcm"))})
    if not files:
        raise ConfigError(f"deid-dicom: no DICOM files under {[str(s) for s in args.sources]}")
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"deid-dicom: --out {out} must be a new or empty directory")
    report = deidentify_files(files, out, config)
    for source, reason in report.excluded:
        print(f"excluded {source}: {reason}")
    print(f"wrote {len(report.written)} de-identified file(s) to {out}; excluded {len(report.excluded)}")
    return 0


def _search_federation(args: argparse.Namespace) -> int:
    """The query against every site's catalog at the coordinator (as a researcher or admin)."""
    with coordinator_client(args) as client:  # the person's token or login session
        found = client.search_catalog(args.query)
    if args.json:
        print(json.dumps(found))
        return 0
    _print_hits(list(found.get("hits", [])))
    return 0
