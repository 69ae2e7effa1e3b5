"""The only place that reads configuration files and environment variables.

``site.toml`` (a node), ``client.toml`` (a person) and the coordinator's startup kit become frozen
settings here; everything below receives values, never paths to configuration.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medfed.analytics.policy import DisclosurePolicy
from medfed.core.config import typed_table
from medfed.core.errors import ConfigError
from medfed.node.runtime import DatasetConfig, NodeSettings
from medfed.security.node_policy import NodePolicy, parse_node_policy
from medfed.security.provision import COORDINATOR_PUB
from medfed.transport.grpc_client import ClientTls
from medfed.transport.grpc_server import ServerTls

if TYPE_CHECKING:
    from medfed.synth.release import ReleasePolicy


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def read_pem(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise ConfigError(f"{what} {path} is not a PEM file")
    return data


def _table(doc: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    table = doc.get(key)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: missing [{key}] table")
    return table


def _tls_paths(doc: dict[str, Any], path: Path) -> tuple[Path, Path, Path]:
    tls = _table(doc, "tls", path)
    missing = [k for k in ("ca", "cert", "key") if not isinstance(tls.get(k), str)]
    if missing:
        raise ConfigError(f"{path}: [tls] needs {missing} (paths, relative to the file)")
    base = path.parent
    return base / tls["ca"], base / tls["cert"], base / tls["key"]


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    settings: NodeSettings
    coordinator: str
    tls: ClientTls
    log_file: Path | None


def is_declared_dataset(table: Mapping[str, Any]) -> bool:
    """Whether a ``[datasets.<name>]`` table declares a dataset (read by
    :func:`medfed.data.sources.parse_dataset`): one with ``columns`` (csv, parquet, fhir, omop), or a
    dicom or notes one, which has a fixed table (``format``, or its older spelling ``kind``).
    Anything else is a legacy directory of train.csv and test.csv."""
    return "columns" in table or table.get("format", table.get("kind")) in ("dicom", "notes")


def load_node_config(path: Path) -> NodeConfig:
    """Parse a ``site.toml``: ``[site]``, ``[tls]``, ``[datasets.<name>]``, optional ``[node]``."""
    doc = read_toml(path)
    site = _table(doc, "site", path)
    name, target = site.get("name"), site.get("coordinator")
    if not isinstance(name, str) or not isinstance(target, str):
        raise ConfigError(f'{path}: [site] needs name and coordinator = "host:port"')
    ca, cert, key = _tls_paths(doc, path)
    datasets: dict[str, DatasetConfig] = {}
    node = _node_table(doc, path)
    for ds_name, ds in (doc.get("datasets") or {}).items():
        # a declared dataset (csv, parquet, fhir, omop with columns; dicom and notes have a fixed table)
        if isinstance(ds, dict) and is_declared_dataset(ds):
            datasets[ds_name] = _declared(ds_name, ds, path)
            continue
        if not isinstance(ds, dict) or not isinstance(ds.get("path"), str):
            raise ConfigError(f'{path}: [datasets.{ds_name}] needs path = "<directory with train.csv, test.csv>"')
        fmt = ds.get("kind", ds.get("format", "csv"))
        if fmt != "csv":
            raise ConfigError(
                f"{path}: datasets.{ds_name}.kind {fmt!r} is not supported here (allowed: ['csv']); "
                "declare its columns to read parquet, fhir or omop (see docs/data.md)"
            )
        datasets[ds_name] = _dataset(ds_name, ds, path)
    settings = NodeSettings(
        site=name,
        datasets=datasets,
        poll_wait_s=float(node.get("poll_wait_s", 10.0)),
        backoff_max_s=float(node.get("backoff_max_s", 10.0)),
        state_dir=path.parent / str(node.get("state_dir", "state")),
        disclosure=_disclosure(doc.get("disclosure"), path),
        synthetic=load_synthetic_policy(path) if "synthetic" in doc else None,
        policy=_node_policy(doc.get("policy"), name, path),
        coordinator_key=_coordinator_key(path.parent / COORDINATOR_PUB),
    )
    tls = ClientTls(
        ca_pem=read_pem(ca, "CA certificate"),
        cert_pem=read_pem(cert, "certificate"),
        key_pem=read_pem(key, "private key"),
        server_name=str(site.get("server_name", "")),
    )
    log_file = node.get("log_file")
    return NodeConfig(
        settings=settings, coordinator=target, tls=tls, log_file=path.parent / log_file if log_file else None
    )


def _node_table(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    """``[node]`` (optional), checked with ``[datasets]``'s shape: every problem named at once."""
    node, problems = doc.get("node") or {}, []
    if not isinstance(doc.get("datasets") or {}, dict):
        problems.append("[datasets] must be a table of [datasets.<name>] tables")
    if not isinstance(node, dict):
        problems.append("[node] must be a table")
        node = {}
    problems += [
        f"node.{k} must be a number" for k in ("poll_wait_s", "backoff_max_s") if k in node and not _number(node[k])
    ]
    problems += [
        f"node.{k} must be a path (a string)"
        for k in ("state_dir", "log_file")
        if k in node and not isinstance(node[k], str)
    ]
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return node


def _coordinator_key(pub: Path) -> bytes | None:
    """The coordinator's public signing key from the site's kit: with it the node refuses every
    model the coordinator did not sign. Absent (kits provisioned before signing): unchecked."""
    return read_pem(pub, "coordinator signing key") if pub.is_file() else None


def _node_policy(table: object, site: str, path: Path) -> NodePolicy:
    """``[policy]``: which jobs may touch this site's data, each after the site admin's approval.
    Absent: approval is still required (:meth:`NodePolicy.approval_only`); only an explicit
    ``approval = "off"`` turns it off."""
    if table is None:
        return NodePolicy.approval_only(site)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [policy] must be a table")
    return parse_node_policy(table, site=site, where=f"{path} [policy]")


def _dataset(name: str, ds: dict[str, Any], path: Path) -> DatasetConfig:
    """``[datasets.<name>]``: path, label, and optionally the site's privacy budget."""
    eps, delta = ds.get("epsilon_budget"), ds.get("delta_budget", 1e-5)
    bad = [k for k, v in (("epsilon_budget", eps), ("delta_budget", delta)) if v is not None and not _number(v)]
    if bad:
        raise ConfigError(f"{path}: datasets.{name}: {bad} must be numbers")
    return DatasetConfig(
        name=name,
        path=path.parent / ds["path"],
        label=str(ds.get("label", "label")),
        epsilon_budget=None if eps is None else float(eps),
        delta_budget=float(delta),
    )


def _declared(name: str, ds: dict[str, Any], path: Path) -> DatasetConfig:
    """``[datasets.<name>]`` with ``columns``: a declaration every task reads through the consent filter."""
    from medfed.data.sources import parse_dataset  # pandas and pyarrow: only for sites that declare datasets

    decl = parse_dataset(name, ds, base=path.parent, where=str(path))
    legacy = _dataset(name, {"path": str(decl.path), **{k: v for k, v in ds.items() if k.endswith("_budget")}}, path)
    return dataclasses.replace(legacy, path=decl.path, label=decl.label, decl=decl)


def _disclosure(table: Any, path: Path) -> DisclosurePolicy:
    """``[disclosure]``: what federated queries may release here (defaults when absent)."""
    if table is None:
        return DisclosurePolicy()
    kinds: dict[str, type | tuple[type, ...]] = {
        "min_cell": int, "min_cohort": int, "differencing_threshold": int, "allow_dp": bool, "require_dp": bool,
        "max_query_epsilon": (int, float), "km_time_grain": (int, float),
    }  # fmt: skip
    try:
        return DisclosurePolicy(**typed_table(table, "disclosure", kinds))
    except ConfigError as exc:
        raise ConfigError(f"{path}: [disclosure]: {exc}") from None


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def load_synthetic_policy(path: Path) -> ReleasePolicy:
    """``[synthetic]`` of a ``site.toml``: the site's release policy for synthetic data
    (``max_mia_auc``, ``require_dp``, ``block_erased_subgroups``); the defaults when absent."""
    from medfed.synth.job import release_policy  # pandas: only for the synth commands

    return release_policy(read_toml(path).get("synthetic"), str(path))


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    name: str
    coordinator: str
    tls: ClientTls


def session_path(client_config: Path) -> Path:
    """Where ``medfed login --config client.toml`` keeps the session: ``client.session``, mode 0600."""
    return client_config.with_name(client_config.stem + ".session")


def read_session(client_config: Path) -> str:
    """The session saved next to ``client_config`` by ``medfed login``, or '' when there is none."""
    try:
        return session_path(client_config).read_text().strip()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ConfigError(f"{session_path(client_config)}: {exc.strerror or exc}") from None


#: An API token for scripts (``medfed users token issue``): the variable, or ``--token-file``.
TOKEN_ENV = "MEDFED_TOKEN"  # noqa: S105 - the variable's name, not a token


def read_api_token(token_file: Path | None, environ: Mapping[str, str] | None = None) -> str:
    """The API token to send instead of a login session: ``token_file`` (first line) when given,
    else ``$MEDFED_TOKEN``, else '' (the session of ``medfed login --config`` is used)."""
    if token_file is not None:
        try:
            if token_file.stat().st_mode & 0o077:  # a bearer secret: as ssh does for keys, refuse what others can read
                raise ConfigError(f"--token-file {token_file}: group or others may read it; chmod 600 {token_file}")
            token = token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--token-file {token_file}: {exc.strerror or exc}") from None
        if not token:
            raise ConfigError(f"--token-file {token_file}: the file is empty")
        return token
    return (os.environ if environ is None else environ).get(TOKEN_ENV, "").strip()


def load_client_config(path: Path) -> ClientConfig:
    """Parse a person's ``client.toml``: ``[client] name, coordinator`` and ``[tls]``."""
    doc = read_toml(path)
    client = doc.get("client") or doc.get("user") or {}
    target = client.get("coordinator")
    if not isinstance(target, str):
        raise ConfigError(f'{path}: [client] needs coordinator = "host:port"')
    ca, cert, key = _tls_paths(doc, path)
    tls = ClientTls(
        ca_pem=read_pem(ca, "CA certificate"),
        cert_pem=read_pem(cert, "certificate"),
        key_pem=read_pem(key, "private key"),
        server_name=str(client.get("server_name", "")),
    )
    return ClientConfig(name=str(client.get("name", "")), coordinator=target, tls=tls)


def load_server_tls(kit: Path) -> tuple[ServerTls, Path | None]:
    """The coordinator's identity from its startup kit directory, and its CRL path if present."""
    tls = ServerTls(
        ca_pem=read_pem(kit / "ca.pem", "CA certificate"),
        cert_pem=read_pem(kit / "cert.pem", "coordinator certificate"),
        key_pem=read_pem(kit / "key.pem", "coordinator private key"),
    )
    crl = kit / "crl.pem"
    return tls, crl if crl.exists() else None
