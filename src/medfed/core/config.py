"""Parse job specs from TOML text into frozen records, collecting every problem.

Reading files is the CLI's business; these functions take text and a name to cite in errors.
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

from medfed.core.errors import ConfigError
from medfed.core.records import (
    DEFAULT_PURPOSE,
    ClientDPSpec,
    JobSpec,
    PrivacySpec,
    RobustSpec,
    RoundPolicy,
    Scalar,
    SecureAggregationSpec,
    StrategySpec,
)
from medfed.core.selectors import TAG_PREFIX, DatasetSelector

_JOB_KEYS = {"name", "task", "dataset", "rounds", "seed", "sites", "purpose"}
#: What a site's policy and approvals compare (an audit NAME: lower-case token).
_PURPOSE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_TOP_KEYS = {
    "job", "strategy", "task_options", "rounds", "privacy", "robust", "secure_aggregation", "client_dp", "query",
    "synthesis",
}  # fmt: skip
#: What a query job (one with a ``[query]`` table) may not combine with: it trains nothing.
_TRAINING_TABLES = ("strategy", "task_options", "privacy", "robust", "secure_aggregation", "client_dp")


def _scalars(table: Any, where: str, problems: list[str]) -> dict[str, Scalar]:
    if not isinstance(table, dict):
        problems.append(f"[{where}] must be a table")
        return {}
    out: dict[str, Scalar] = {}
    for key, value in table.items():
        if isinstance(value, bool | int | float | str):
            out[key] = value
        else:
            problems.append(f"{where}.{key} must be a number, string or boolean, got {type(value).__name__}")
    return out


def _typed(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, problems: list[str]) -> Any:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and kind is not bool:
        problems.append(f"{where}.{key} must be {getattr(kind, '__name__', kind)}, got a boolean")
        return None
    if not isinstance(value, kind):
        name = getattr(kind, "__name__", " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind)
        problems.append(f"{where}.{key} must be {name}, got {type(value).__name__} {value!r}")
        return None
    return value


def parse_job_spec(text: str, *, source_name: str = "<job>") -> JobSpec:
    """Parse a job TOML document.

    Raises
    ------
    ConfigError
        Naming ``source_name`` and every problem found (bad TOML reports line and column).
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source_name}: not valid TOML: {exc}") from None
    problems: list[str] = []
    for key in sorted(set(doc) - _TOP_KEYS):
        problems.append(f"unknown table or key {key!r} (allowed: {sorted(_TOP_KEYS)})")
    job = doc.get("job")
    if not isinstance(job, dict):
        raise ConfigError(f"{source_name}: missing [job] table with name, task, dataset, rounds")
    for key in sorted(set(job) - _JOB_KEYS):
        hint = ' (one key, dataset = "name" or dataset = { tags = [...] })' if key == "datasets" else ""
        problems.append(f"unknown key job.{key} (allowed: {sorted(_JOB_KEYS)}){hint}")
    query = _query(doc.get("query"), problems)
    synthesis = _query(doc.get("synthesis"), problems, table_name="synthesis")
    if "query" in doc and "synthesis" in doc:
        problems.append("a job has a [query] or a [synthesis] table, not both")
    trains_nothing = "query" in doc or "synthesis" in doc
    for table_name in ("query", "synthesis"):
        if table_name in doc:
            extra = [t for t in _TRAINING_TABLES if t in doc]
            problems += [f"[{t}] does not apply to a {table_name} job (it has a [{table_name}] table)" for t in extra]
    for key in ("name", "dataset") if trains_nothing else ("name", "task", "dataset", "rounds"):
        if key not in job:
            problems.append(f"missing job.{key}")
    name = _typed(job, "name", str, "job", problems)
    task = _typed(job, "task", str, "job", problems)
    dataset = _dataset_selector(job.get("dataset"), problems)
    rounds = _typed(job, "rounds", int, "job", problems)
    seed = _typed(job, "seed", int, "job", problems)
    purpose = _typed(job, "purpose", str, "job", problems)
    if purpose is not None and not _PURPOSE.fullmatch(purpose):
        problems.append(f"job.purpose must be a short lower-case token (a-z, 0-9, '.', '_', '-'), got {purpose!r}")
    sites = job.get("sites", [])
    if not isinstance(sites, list) or not all(isinstance(s, str) for s in sites):
        problems.append("job.sites must be a list of site names")
        sites = []

    strategy_table = doc.get("strategy", {})
    strategy = StrategySpec()
    if isinstance(strategy_table, dict):
        options = _scalars({k: v for k, v in strategy_table.items() if k != "name"}, "strategy", problems)
        sname = _typed(strategy_table, "name", str, "strategy", problems) or "fedavg"
        strategy = StrategySpec(name=sname.lower(), options=options)
    else:
        problems.append("[strategy] must be a table")
    task_options = _scalars(doc.get("task_options", {}), "task_options", problems)

    policy = RoundPolicy()
    rounds_table = doc.get("rounds", {})
    if isinstance(rounds_table, dict):
        allowed = {"min_nodes", "deadline_s", "max_round_retries"}
        for key in sorted(set(rounds_table) - allowed):
            problems.append(f"unknown key rounds.{key} (allowed: {sorted(allowed)})")
        min_nodes = _typed(rounds_table, "min_nodes", int, "rounds", problems)
        deadline = _typed(rounds_table, "deadline_s", (int, float), "rounds", problems)
        retries = _typed(rounds_table, "max_round_retries", int, "rounds", problems)
        try:
            policy = RoundPolicy(
                min_nodes=min_nodes if min_nodes is not None else 1,
                deadline_s=float(deadline) if deadline is not None else 120.0,
                max_round_retries=retries if retries is not None else 3,
            )
        except ConfigError as exc:
            problems.append(str(exc))
    else:
        problems.append("[rounds] must be a table")

    privacy = _privacy(doc.get("privacy"), problems)
    robust = _robust(doc.get("robust"), problems)
    secure = _secure_aggregation(doc.get("secure_aggregation"), problems)
    client_dp = _client_dp(doc.get("client_dp"), problems)

    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{source_name}: {len(problems)} problem(s) in job spec:\n{lines}")
    try:
        return JobSpec(
            name=name,
            task=task if task is not None or not trains_nothing else "query" if query else "synthesis",
            dataset=dataset.label if dataset is not None else "",
            rounds=rounds if rounds is not None or not trains_nothing else 1,  # query/synthesis: no task
            seed=seed or 0,
            purpose=purpose or DEFAULT_PURPOSE,
            task_options=task_options,
            strategy=strategy,
            policy=policy,
            sites=tuple(sites),
            privacy=privacy,
            robust=robust,
            secure_aggregation=secure,
            client_dp=client_dp,
            query=query,
            synthesis=synthesis,
            source=text,
        )
    except ConfigError as exc:
        raise ConfigError(f"{source_name}: {exc}") from None


def _dataset_selector(value: Any, problems: list[str]) -> DatasetSelector | None:
    """``job.dataset``: a dataset's name (``"heart"``), or a table selecting by tags
    (``{ tags = ["cardiology", "adult"] }``: at each site, the one dataset carrying every tag)."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip() or value != value.strip() or value.startswith(TAG_PREFIX):
            problems.append(
                f"job.dataset must be a dataset's name (not empty, no surrounding spaces, not starting with "
                f"{TAG_PREFIX!r}; select by tags with dataset = {{ tags = [...] }}), got {value!r}"
            )
            return None
        return DatasetSelector.by_name(value)
    if not isinstance(value, dict):
        problems.append(
            f'job.dataset must be a name ("heart") or a table ({{ tags = ["cardiology"] }}), got {type(value).__name__}'
        )
        return None
    before = len(problems)
    for key in sorted(set(value) - {"tags"}):
        hint = ' (a name goes in dataset = "..." itself)' if key == "name" else ""
        problems.append(f"unknown key job.dataset.{key} (allowed: ['tags']){hint}")
    tags = value.get("tags")
    if not isinstance(tags, list) or not tags or not all(isinstance(t, str) and t.strip() for t in tags):
        problems.append(f"job.dataset.tags must be a non-empty list of non-empty strings, got {tags!r}")
    elif len({t.strip().lower() for t in tags}) != len(tags):
        problems.append(f"job.dataset.tags lists a tag twice (tags compare in lower case): {tags!r}")
    if len(problems) > before or not isinstance(tags, list):
        return None
    try:
        return DatasetSelector.by_tags(tags)
    except ConfigError as exc:
        problems.append(f"job.dataset.tags: {exc}")
        return None


def _query(table: Any, problems: list[str], *, table_name: str = "query") -> str | None:
    """``[query]`` (or ``[synthesis]``): its fields as a table, kept as JSON text. Its fields and values
    are the analytics (synth) layer's business: the coordinator checks them at submission."""
    if table is None:
        return None
    if not isinstance(table, dict):
        problems.append(f"[{table_name}] must be a table")
        return None
    try:
        return json.dumps(table, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        problems.append(f"[{table_name}] holds a value JSON cannot carry (dates, NaN): {exc}")
        return None


def _privacy(table: Any, problems: list[str]) -> PrivacySpec | None:
    """``[privacy]``: ``noise_multiplier`` (required), ``clip_norm``, ``delta``, ``eval_epsilon``."""
    if table is None:
        return None
    if not isinstance(table, dict):
        problems.append("[privacy] must be a table")
        return None
    allowed = {"noise_multiplier", "clip_norm", "delta", "eval_epsilon"}
    for key in sorted(set(table) - allowed):
        problems.append(f"unknown key privacy.{key} (allowed: {sorted(allowed)})")
    if "noise_multiplier" not in table:
        problems.append("missing privacy.noise_multiplier")
    values = {k: _typed(table, k, (int, float), "privacy", problems) for k in sorted(allowed & set(table))}
    if any(v is None for v in values.values()) or "noise_multiplier" not in values:
        return None
    try:
        return PrivacySpec(**{k: float(v) for k, v in values.items()})
    except ConfigError as exc:
        problems.append(str(exc))
        return None


def _robust(table: Any, problems: list[str]) -> RobustSpec | None:
    """``[robust]``: ``rule``, ``detect_anomalies`` (default true) and the rule's options.

    Option names and values are the aggregation layer's business: they are checked against the
    rule at submission (``medfed.coordinator.robustness``), here only that each is a scalar.
    """
    if table is None:
        return None
    if not isinstance(table, dict):
        problems.append("[robust] must be a table")
        return None
    before = len(problems)
    rule = _typed(table, "rule", str, "robust", problems)
    detect = _typed(table, "detect_anomalies", bool, "robust", problems)
    options = _scalars({k: v for k, v in table.items() if k not in ("rule", "detect_anomalies")}, "robust", problems)
    if rule is None and "rule" not in table and options:
        problems.append(f"robust options {sorted(options)} need robust.rule")
    if len(problems) > before:
        return None
    return RobustSpec(rule=rule, options=options, detect_anomalies=True if detect is None else detect)


def _table_values(
    table: Any, where: str, kinds: dict[str, type | tuple[type, ...]], problems: list[str]
) -> dict[str, Any] | None:
    """The typed values of a flat table with known keys, or ``None`` after recording problems."""
    if not isinstance(table, dict):
        problems.append(f"[{where}] must be a table")
        return None
    before = len(problems)
    for key in sorted(set(table) - set(kinds)):
        problems.append(f"unknown key {where}.{key} (allowed: {sorted(kinds)})")
    values = {k: _typed(table, k, kinds[k], where, problems) for k in sorted(set(kinds) & set(table))}
    return None if len(problems) > before else values


def typed_table(table: Any, where: str, kinds: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """The values of a flat table with known keys and types (numbers as ``float`` where ``kinds``
    allows several numeric types), or :class:`ConfigError` listing every problem under ``[where]``."""
    problems: list[str] = []
    values = _table_values(table, where, kinds, problems)
    if values is None:
        raise ConfigError("; ".join(problems))
    return {k: float(v) if isinstance(kinds[k], tuple) else v for k, v in values.items()}


def _secure_aggregation(table: Any, problems: list[str]) -> SecureAggregationSpec | None:
    """``[secure_aggregation]``: present (even empty) turns it on; ``enabled = false`` turns it off."""
    if table is None:
        return None
    kinds: dict[str, type | tuple[type, ...]] = {
        "enabled": bool,
        "threshold": int,
        "clip_range": (int, float),
        "bits": int,
        "max_weight": int,
        "neighbours": int,
    }
    values = _table_values(table, "secure_aggregation", kinds, problems)
    if values is None or not values.pop("enabled", True):
        return None
    if "clip_range" in values:
        values["clip_range"] = float(values["clip_range"])
    try:
        return SecureAggregationSpec(**values)
    except ConfigError as exc:
        problems.append(str(exc))
        return None


def _client_dp(table: Any, problems: list[str]) -> ClientDPSpec | None:
    """``[client_dp]``: ``noise_multiplier`` (required), ``clip_norm``, ``expected_nodes``, ``noise``,
    ``adaptive``, ``target_quantile``, ``clip_learning_rate``, ``delta``."""
    if table is None:
        return None
    kinds: dict[str, type | tuple[type, ...]] = {
        "noise_multiplier": (int, float),
        "clip_norm": (int, float),
        "expected_nodes": int,
        "noise": str,
        "adaptive": bool,
        "target_quantile": (int, float),
        "clip_learning_rate": (int, float),
        "delta": (int, float),
        "eval_epsilon": (int, float),
    }
    values = _table_values(table, "client_dp", kinds, problems)
    if values is None:
        return None
    if "noise_multiplier" not in values:
        problems.append("missing client_dp.noise_multiplier")
        return None
    for key in ("noise_multiplier", "clip_norm", "target_quantile", "clip_learning_rate", "delta", "eval_epsilon"):
        if key in values:
            values[key] = float(values[key])
    try:
        return ClientDPSpec(**values)
    except ConfigError as exc:
        problems.append(str(exc))
        return None
