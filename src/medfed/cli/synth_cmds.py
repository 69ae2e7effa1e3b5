"""``medfed synth fit|sample|evaluate|release|combine``: DP synthetic data, at a site or from CSV files.

Two modes. With ``--site-config site.toml --dataset NAME`` the commands work on a dataset the site
declared (its ``train.csv`` and ``test.csv``) and follow the site's rules; with ``--data``/``--train``
they work on local CSV files (development, benchmarks), with no ledger and no audit.

* ``fit``: fit MST or AIM under (ε, δ) and save the model (JSON + ``.npz``, no pickle). At a site
  the fit is charged to the dataset's privacy ledger: ``planned_cost`` is reserved under a job id
  ``synth-<hex>`` *before* any row is read (refused, nothing charged, when the budget cannot pay),
  ``fitted.cost`` is committed after, and the spend is written to the site's audit log.
* ``sample``: draw rows from a saved model into a CSV (post-processing: costs no privacy).
* ``evaluate``: score a synthetic CSV against training and holdout CSVs, write the HTML report,
  and apply the release gate (exact copies of training rows dropped and counted); ``--release``
  writes the rows and their release manifest only if the gate passes.
* ``release`` (at a site): the same evaluation against the dataset's own train/test split, gated
  by the site's ``[synthetic]`` policy; the released CSV and its manifest (``<stem>.release.json``:
  SHA-256 of the CSV, site, dataset, (ε, δ), the decision) are written only when the gate passes.
  Every decision goes to the logger ``medfed.synth.release`` and to the site's audit log.
* ``combine``: join released CSVs of several sites into one table with a site column, refusing any
  file without a valid manifest (not released by the gate, or changed since).
* ``submit`` / ``result`` (:mod:`medfed.cli.synth_job_cmds`): the same steps as one federated job
  with a ``[synthesis]`` table, at the coordinator, as the person logged in (session or API token).

A blocked release or a refused fit exits with status 1 and its reasons.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medfed.core.errors import BudgetExhausted, ConfigError, DataError, PermissionDenied, ValidationError

if TYPE_CHECKING:
    from medfed.node.governance import NodeGovernance
    from medfed.node.runtime import DatasetConfig, NodeSettings
    from medfed.synth.domain import Schema
    from medfed.synth.evaluate import Evaluation, Subgroup
    from medfed.synth.release import ReleaseDecision, ReleasePolicy
    from medfed.synth.synthesizer import FittedSynthesizer, SynthConfig

__all__ = ["COMBINED_FORMAT", "COMMANDS", "MANIFEST_FORMAT", "dispatch", "manifest_path", "read_released", "register"]

#: The top-level commands this module adds.
COMMANDS = ("synth",)
#: The ``format`` of a release manifest.
MANIFEST_FORMAT = "medfed-synth-release/1"
#: The ``format`` of a combined table's provenance (not a release: ``combine`` does not take it again).
COMBINED_FORMAT = "medfed-synth-combined/1"

#: Where every release decision is logged (attach a handler to feed other systems).
log = logging.getLogger("medfed.synth.release")

Handler = Callable[[argparse.Namespace], int]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``synth fit|sample|evaluate|release|combine`` to the top-level sub-parsers."""
    synth = sub.add_parser("synth", help="differentially private synthetic data (MST, AIM) and its evaluation")
    ssub = synth.add_subparsers(dest="action", required=True)
    f = ssub.add_parser("fit", help="fit a DP synthesizer to a CSV or a site's dataset under (ε, δ)")
    f.add_argument("--data", type=Path, help="training rows (CSV); or --site-config and --dataset")
    _site_args(f, required=False)
    f.add_argument("--out", type=Path, required=True, help="model file (JSON; arrays go beside it as .npz)")
    f.add_argument("--method", default="aim", help="aim or mst")
    f.add_argument("--epsilon", type=float, required=True)
    f.add_argument("--delta", type=float, default=1e-6)
    f.add_argument("--bins", type=int, default=8, help="bins per numeric or date column")
    f.add_argument("--target", default="", help="mst only: fix the tree as the star around this column")
    f.add_argument("--schema", type=Path, help="public schema (JSON list of columns); default: inferred")
    f.add_argument(
        "--public-bounds",
        action="store_true",
        help="at a site without --schema: declare the bounds and categories inferred from the data public",
    )
    f.add_argument("--dates", default="", help="comma-separated date columns to parse")
    f.add_argument("--seed", type=int, help="seed the noise (tests and simulations only: known noise is no privacy)")
    f.set_defaults(synth_handler=_fit)
    s = ssub.add_parser("sample", help="draw synthetic rows from a fitted model")
    s.add_argument("--model", type=Path, required=True)
    s.add_argument("--rows", type=int, required=True)
    s.add_argument("--out", type=Path, required=True, help="synthetic rows (CSV)")
    s.add_argument("--seed", type=int)
    s.set_defaults(synth_handler=_sample)
    e = ssub.add_parser("evaluate", help="fidelity, utility, privacy and bias; HTML report; release gate")
    e.add_argument("--train", type=Path, required=True)
    e.add_argument("--holdout", type=Path, required=True, help="real rows never used to fit")
    e.add_argument("--synthetic", type=Path, required=True)
    _evaluation_args(e)
    e.add_argument("--release", type=Path, help="write the de-duplicated rows (and their manifest) if the gate passes")
    e.add_argument("--site", default="", help="the site name written into the release manifest")
    e.add_argument("--max-mia-auc", type=float, default=0.6, help="the site's membership-inference limit")
    e.add_argument("--model", type=Path, help="the fitted model (its ε, δ go into the report); none = not DP")
    e.add_argument("--allow-non-dp", action="store_true", help="the site's policy waives the DP requirement")
    e.set_defaults(synth_handler=_evaluate)
    r = ssub.add_parser("release", help="at a site: evaluate against the dataset, gate by [synthetic], release")
    _site_args(r, required=True)
    r.add_argument("--model", type=Path, required=True, help="the model fitted at this site (its ε, δ)")
    r.add_argument("--synthetic", type=Path, required=True, help="rows sampled from the model (CSV)")
    _evaluation_args(r)
    r.add_argument("--out", type=Path, required=True, help="the released CSV; its manifest goes beside it")
    r.set_defaults(synth_handler=_release)
    c = ssub.add_parser("combine", help="join released CSVs of several sites into one table with a site column")
    c.add_argument("released", type=Path, nargs="+", help="released CSVs, each with its .release.json manifest")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--site-column", default="site")
    c.set_defaults(synth_handler=_combine)
    from medfed.cli import synth_job_cmds  # submit, result: synthesis jobs at the coordinator

    synth_job_cmds.register(ssub)


def _site_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--site-config", type=Path, required=required, help="the site's site.toml")
    p.add_argument("--dataset", required=required, help="a dataset declared in site.toml")
    p.add_argument("--purpose", default="research", help="declared datasets: the purpose their consent filter applies")


def _evaluation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="the outcome column for TSTR/TRTR")
    p.add_argument(
        "--subgroup",
        action="append",
        default=[],
        metavar="COLUMN[:EDGE,EDGE...]",
        help="a subgroup column, numeric ones cut at edges (e.g. age:40,60); repeatable",
    )
    p.add_argument("--report", type=Path, help="write the HTML report here (it shows real data: keep it at the site)")


def dispatch(args: argparse.Namespace) -> int:
    """Run the handler :func:`register` attached to the parsed command."""
    handler: Handler = args.synth_handler
    return handler(args)


def _rng(seed: int | None) -> np.random.Generator:
    from medfed.privacy.mechanisms import secure_rng

    return secure_rng() if seed is None else np.random.default_rng(seed)


def _read_csv(path: Path, dates: str = "") -> pd.DataFrame:
    parse = [c for c in dates.split(",") if c]
    try:
        return pd.read_csv(path, parse_dates=parse or False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from exc


# --- the site ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Site:
    """A site's settings and the one dataset a command works on."""

    settings: NodeSettings
    dataset: DatasetConfig
    config_path: Path

    def frames(self, *, purpose: str, split_key: str, dates: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
        """The dataset's training rows and its holdout (never used to fit).

        A directory dataset: its ``train.csv`` and ``test.csv``. A declared dataset: the table a
        job for ``purpose`` may see today (purpose limits checked, opted-out patients' rows
        removed, as :func:`medfed.node.datasets.load_for_job` does), without its patient id
        column, split by ``split_key`` (the fit's ledger job) so that fit and release agree.
        """
        decl = self.dataset.decl
        if decl is None:
            return _read_csv(self.dataset.path / "train.csv", dates), _read_csv(self.dataset.path / "test.csv", dates)
        from medfed.data.consent import table_for_task
        from medfed.node.datasets import TEST_FRACTION, read_registry, split_seed

        today = dt.datetime.now(dt.UTC).date()
        as_of = None if decl.as_of else pd.Timestamp(today, tz="UTC")
        table = table_for_task(decl, read_registry(self.settings.state_dir), purpose=purpose, on=today, as_of=as_of)
        frame = table.frame.drop(columns=[decl.patient_id or "patient_id"], errors="ignore").reset_index(drop=True)
        held = np.random.default_rng(split_seed(split_key, decl.name)).random(len(frame)) < TEST_FRACTION
        return frame[~held].reset_index(drop=True), frame[held].reset_index(drop=True)


def _open_site(config: Path, dataset: str) -> _Site:
    from medfed.cli.config import load_node_config

    settings = load_node_config(config).settings
    ds = settings.datasets.get(dataset)
    if ds is None:
        raise ConfigError(f"{config}: no [datasets.{dataset}] (declared: {sorted(settings.datasets)})")
    return _Site(settings=settings, dataset=ds, config_path=config)


def _governance(site: _Site) -> NodeGovernance | None:
    from medfed.node.governance import open_governance

    return open_governance(site.settings.site, state_dir=site.settings.state_dir, policy=None)


def _audit(site: _Site, action: str, fields: dict[str, str | int | float | bool]) -> None:
    """Append to the site's audit log (``state_dir/audit.sqlite``); no-op without a state directory."""
    from medfed.security.audit_events import AuditAction

    gov = _governance(site)
    if gov is None or gov.audit is None:
        return
    try:
        gov.record(AuditAction(action), fields)
    finally:
        gov.audit.close()


# --- fit -----------------------------------------------------------------------------------


def _fit(args: argparse.Namespace) -> int:
    from medfed.synth.synthesizer import Method, SynthConfig

    try:
        method = Method(args.method.lower())
    except ValueError:
        raise ConfigError(f"--method {args.method!r}: allowed {[m.value for m in Method]}") from None
    config = SynthConfig(method=method, epsilon=args.epsilon, delta=args.delta, bins=args.bins, target=args.target)
    at_site = args.site_config is not None or args.dataset is not None
    if at_site == (args.data is not None) or (at_site and not (args.site_config and args.dataset)):
        raise ConfigError("synth fit: give either --data FILE, or --site-config site.toml and --dataset NAME")
    schema = _read_schema(args.schema) if args.schema else None
    if at_site:
        return _fit_at_site(args, config, schema)
    from medfed.synth.synthesizer import fit

    df = _read_csv(args.data, args.dates)
    fitted = fit(df, schema or _inferred(df), config, _rng(args.seed))
    fitted.save(args.out)
    _print_fit(fitted, len(df), args.out)
    return 0


def _read_schema(path: Path) -> Schema:
    from medfed.synth.domain import Schema
    from medfed.synth.synthesizer import spec_from_dict

    try:
        return Schema(columns=tuple(spec_from_dict(c) for c in json.loads(path.read_text("utf-8"))))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: bad schema file ({exc})") from exc


def _inferred(df: pd.DataFrame) -> Schema:
    from medfed.synth.domain import infer_schema

    schema = infer_schema(df)
    print("schema inferred from the data: its bounds and categories are hereby declared public", file=sys.stderr)
    return schema


def _print_fit(fitted: FittedSynthesizer, rows: int, out: Path) -> None:
    print(
        f"{fitted.method.value}: {rows} rows, ε = {fitted.cost.epsilon:.4g}, δ = {fitted.cost.delta:.1e} "
        f"(ρ = {fitted.cost.rho:.4g}); {len(fitted.edges)} 2-way marginals; saved {out}"
    )


def _fit_at_site(args: argparse.Namespace, config: SynthConfig, schema: Schema | None) -> int:
    """Reserve ``planned_cost`` on the dataset's ledger before reading a row, fit, commit ``fitted.cost``."""
    from medfed.node.runtime import open_ledger
    from medfed.synth.synthesizer import fit, planned_cost

    site = _open_site(args.site_config, args.dataset)
    if not args.schema and not args.public_bounds:
        raise ConfigError(
            "synth fit at a site: the schema's bounds and categories are released with the model; pass a public "
            "--schema, or --public-bounds to declare the ones inferred from the data public"
        )
    if args.seed is not None:
        print("warning: --seed makes the noise known: a seeded fit is for tests and simulations only", file=sys.stderr)
    name = site.dataset.name
    ledger = open_ledger(site.settings)
    if ledger is None or ledger.status(name) is None:
        raise BudgetExhausted(
            f"dataset {name!r} at site {site.settings.site!r} has no privacy budget: set epsilon_budget and "
            f"delta_budget in [datasets.{name}] of {site.config_path} before fitting a synthesizer to it"
        )
    try:
        job_id = f"synth-{uuid.uuid4().hex[:12]}"
        cost = planned_cost(config)
        ledger.reserve(name, job_id, epsilon=cost.epsilon, delta=cost.delta)  # BudgetExhausted: nothing held
        try:
            df, _ = site.frames(purpose=args.purpose, split_key=job_id, dates=args.dates)
            schema = schema or _inferred(df)
            if config.target and config.target not in schema.names:
                raise ConfigError(f"synth config: target {config.target!r} is not a column of the schema")
        except BaseException:
            ledger.close_job(name, job_id)  # nothing was measured, nothing leaves: nothing spent
            raise
        try:
            fitted = fit(df, schema, config, _rng(args.seed))
        except BaseException:
            # the fit may have measured the data before it failed: charge what was reserved
            ledger.commit(name, job_id, epsilon=cost.epsilon, delta=cost.delta, steps=1)
            ledger.close_job(name, job_id)
            raise
        ledger.commit(name, job_id, epsilon=fitted.cost.epsilon, delta=fitted.cost.delta, steps=1)
        ledger.close_job(name, job_id)
        left = ledger.status(name)
    finally:
        ledger.close()
    fitted = dataclasses.replace(fitted, ledger_job=job_id)  # ``release`` checks the ledger paid for it
    fitted.save(args.out)
    _audit(
        site,
        "budget.spent",
        {
            "dataset": name,
            "job_id": job_id,
            "kind": "synthetic",
            "method": fitted.method.value,
            "epsilon": fitted.cost.epsilon,
            "delta": fitted.cost.delta,
            "rows": len(df),
        }
        | ({"purpose": args.purpose} if site.dataset.decl is not None else {}),
    )
    log.info(
        "site %s dataset %s: %s charged ε=%.4g δ=%.3g",
        site.settings.site,
        name,
        job_id,
        fitted.cost.epsilon,
        fitted.cost.delta,
    )
    _print_fit(fitted, len(df), args.out)
    if left is not None:
        print(f"charged to {name!r} as {job_id}: ε left {left.epsilon_left:.4g} of {left.epsilon_total:.4g}")
    return 0


# --- sample --------------------------------------------------------------------------------


def _sample(args: argparse.Namespace) -> int:
    from medfed.synth.synthesizer import FittedSynthesizer

    fitted = FittedSynthesizer.load(args.model)
    rows = fitted.sample(args.rows, _rng(args.seed))
    rows.to_csv(args.out, index=False)
    print(f"{len(rows)} synthetic rows written to {args.out}")
    return 0


# --- evaluate and release ------------------------------------------------------------------


def _subgroups(specs: list[str]) -> tuple[Subgroup, ...]:
    from medfed.synth.evaluate import Subgroup

    out = []
    for spec in specs:
        column, _, edges = spec.partition(":")
        try:
            cuts = tuple(float(x) for x in edges.split(",") if x)
        except ValueError:
            raise ConfigError(f"--subgroup {spec!r}: edges must be numbers") from None
        out.append(Subgroup(name=column, column=column, edges=cuts))
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Outcome:
    evaluation: Evaluation
    decision: ReleaseDecision
    fitted: FittedSynthesizer | None


def _evaluate_and_gate(
    args: argparse.Namespace, *, train: pd.DataFrame, holdout: pd.DataFrame, policy: ReleasePolicy
) -> _Outcome:
    """Evaluate, gate, write the report (atomically) and print the scores."""
    from medfed.security.fsio import atomic_write
    from medfed.synth.evaluate import evaluate
    from medfed.synth.release import prepare_release
    from medfed.synth.report import ReportInput, render
    from medfed.synth.synthesizer import FittedSynthesizer

    synthetic = _read_csv(args.synthetic)
    groups = _subgroups(args.subgroup)
    evaluation = evaluate(train=train, holdout=holdout, synthetic=synthetic, target=args.target, subgroups=groups)
    fitted = FittedSynthesizer.load(args.model) if args.model else None
    cost = fitted.cost if fitted else None
    decision = prepare_release(
        train=train, synthetic=synthetic, evaluation=evaluation, policy=policy, differentially_private=cost is not None
    )
    if args.report:
        page = render(
            ReportInput(
                title=f"Synthetic data report: {args.synthetic.name}",
                method=fitted.method.value if fitted else "unknown",
                epsilon=cost.epsilon if cost else None,
                delta=cost.delta if cost else None,
                train=train,
                synthetic=synthetic,
                evaluation=evaluation,
                release_reasons=decision.reasons,
                dropped_copies=decision.dropped_copies,
            )
        )
        atomic_write(args.report, page.encode("utf-8"))
    lr = evaluation.utility["logistic_regression"]
    print(
        f"workload error {evaluation.workload_error:.3f}, detection AUC {evaluation.detection_auc:.3f}, "
        f"TSTR/TRTR AUC (LR) {lr['tstr_auc']:.3f}/{lr['trtr_auc']:.3f}, MIA AUC {evaluation.mia_auc:.3f}, "
        f"exact copies dropped {decision.dropped_copies}"
    )
    if evaluation.erased_subgroups:
        print(f"erased subgroups: {', '.join(evaluation.erased_subgroups)}")
    return _Outcome(evaluation=evaluation, decision=decision, fitted=fitted)


def _evaluate(args: argparse.Namespace) -> int:
    from medfed.synth.release import ReleasePolicy

    train, holdout = _read_csv(args.train), _read_csv(args.holdout)
    policy = ReleasePolicy(max_mia_auc=args.max_mia_auc, require_dp=not args.allow_non_dp)
    outcome = _evaluate_and_gate(args, train=train, holdout=holdout, policy=policy)
    _log_decision(args.site or "-", "-", outcome)
    if not outcome.decision.released:
        raise PermissionDenied("release blocked: " + "; ".join(outcome.decision.reasons))
    if args.release:
        _write_release(args.release, outcome, policy=policy, site=args.site, dataset="")
    return 0


def _release(args: argparse.Namespace) -> int:
    from medfed.cli.config import load_synthetic_policy

    site = _open_site(args.site_config, args.dataset)
    policy = load_synthetic_policy(args.site_config)
    fitted = _check_charged(site, args.model)
    train, holdout = site.frames(purpose=args.purpose, split_key=fitted.ledger_job)
    outcome = _evaluate_and_gate(args, train=train, holdout=holdout, policy=policy)
    name, decision = site.dataset.name, outcome.decision
    _log_decision(site.settings.site, name, outcome)
    fields: dict[str, str | int | float | bool] = {
        "dataset": name,
        "kind": "synthetic",
        "ok": decision.released,
        "outcome": "released" if decision.released else "blocked",
    }
    if outcome.fitted is not None:
        fields |= {
            "method": outcome.fitted.method.value,
            "epsilon": outcome.fitted.cost.epsilon,
            "delta": outcome.fitted.cost.delta,
        }
    if not decision.released:
        _audit(site, "data.exported", fields | {"reason": _short("; ".join(decision.reasons))})
        raise PermissionDenied("release blocked: " + "; ".join(decision.reasons))
    _write_release(args.out, outcome, policy=policy, site=site.settings.site, dataset=name)
    _audit(site, "data.exported", fields | {"rows": len(decision.rows), "count": decision.dropped_copies})
    return 0


def _check_charged(site: _Site, model: Path) -> FittedSynthesizer:
    """Refuse a model whose privacy cost this site's ledger did not pay (fitted elsewhere, or on another dataset)."""
    from medfed.node.runtime import open_ledger
    from medfed.synth.synthesizer import FittedSynthesizer

    fitted = FittedSynthesizer.load(model)
    name = site.dataset.name
    ledger = open_ledger(site.settings)
    try:
        job = ledger.job(name, fitted.ledger_job) if ledger is not None and fitted.ledger_job else None
    finally:
        if ledger is not None:
            ledger.close()
    slack = 1e-9
    if (
        job is None
        or job.open
        or job.epsilon_spent + slack < fitted.cost.epsilon
        or job.delta_spent + slack < fitted.cost.delta
    ):
        raise PermissionDenied(
            f"{model}: no closed charge of ε={fitted.cost.epsilon:.4g} for this model (job "
            f"{fitted.ledger_job or 'none'}) on dataset {name!r} of site {site.settings.site!r}: a site releases "
            "synthetic rows only from a model fitted with 'medfed synth fit --site-config' on that dataset"
        )
    return fitted


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _log_decision(site: str, dataset: str, outcome: _Outcome) -> None:
    d = outcome.decision
    if d.released:
        log.info(
            "site %s dataset %s: synthetic release allowed (%d rows, %d exact copies dropped)",
            site,
            dataset,
            len(d.rows),
            d.dropped_copies,
        )
    else:
        log.warning("site %s dataset %s: synthetic release blocked: %s", site, dataset, "; ".join(d.reasons))


def manifest_path(csv: Path) -> Path:
    """Where the release manifest of the released CSV ``csv`` lives: ``<stem>.release.json`` beside it."""
    return csv.with_name(csv.stem + ".release.json")


def _write_release(out: Path, outcome: _Outcome, *, policy: ReleasePolicy, site: str, dataset: str) -> None:
    """The released rows, then their manifest (the CSV's SHA-256, site, cost, decision): both atomic."""
    from medfed.security.fsio import atomic_write

    d, fitted = outcome.decision, outcome.fitted
    data = d.rows.to_csv(index=False).encode("utf-8")
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "file": out.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "rows": len(d.rows),
        "site": site,
        "dataset": dataset,
        "released": True,
        "differentially_private": fitted is not None,
        "method": fitted.method.value if fitted else None,
        "epsilon": fitted.cost.epsilon if fitted else None,
        "delta": fitted.cost.delta if fitted else None,
        "ledger_job": fitted.ledger_job if fitted else "",
        "dropped_copies": d.dropped_copies,
        "mia_auc": outcome.evaluation.mia_auc,
        "policy": {
            "max_mia_auc": policy.max_mia_auc,
            "require_dp": policy.require_dp,
            "block_erased_subgroups": policy.block_erased_subgroups,
        },
        "released_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, data)
    atomic_write(manifest_path(out), json.dumps(manifest, indent=1).encode("utf-8"))
    print(f"{len(d.rows)} rows released to {out} (manifest {manifest_path(out).name})")


def read_released(csv: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A released CSV and its manifest, or :class:`PermissionDenied` if the gate did not release
    exactly these bytes (no manifest, a manifest of a blocked or other file, or a changed CSV)."""
    mpath = manifest_path(csv)
    try:
        data = csv.read_bytes()
    except OSError as exc:
        raise DataError(f"{csv}: cannot read ({exc.strerror or exc})") from None
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PermissionDenied(f"{csv}: no release manifest {mpath.name}: it was not released by the gate") from None
    except (OSError, ValueError) as exc:
        raise PermissionDenied(f"{mpath}: unreadable release manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise PermissionDenied(f"{mpath}: not a medfed release manifest")
    if manifest.get("released") is not True:
        raise PermissionDenied(f"{mpath}: the gate did not release {csv.name}")
    if manifest.get("sha256") != hashlib.sha256(data).hexdigest():
        raise PermissionDenied(f"{csv}: its content differs from what the gate released (SHA-256 mismatch)")
    try:
        frame = pd.read_csv(io.BytesIO(data))  # the bytes that were checked, not a second read
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{csv}: cannot read CSV ({exc})") from exc
    return frame, manifest


def _combine(args: argparse.Namespace) -> int:
    from medfed.security.fsio import atomic_write
    from medfed.synth.release import combine_sites

    frames: dict[str, pd.DataFrame] = {}
    sources: dict[str, dict[str, Any]] = {}
    problems = []
    for path in args.released:
        frame, manifest = read_released(path)
        site = str(manifest.get("site") or path.stem)
        if site in frames:
            problems.append(f"{path}: site {site!r} given twice")
        if not manifest.get("differentially_private"):
            print(f"warning: {path} was released without differential privacy (its site's policy allowed it)")
        eps = manifest.get("epsilon")
        print(f"{site}: {len(frame)} rows" + (f", ε = {eps:.4g}" if isinstance(eps, float) else ""))
        frames[site] = frame
        sources[site] = {
            k: manifest.get(k) for k in ("file", "sha256", "rows", "dataset", "method", "epsilon", "delta")
        }
    if problems:
        raise ValidationError(problems, where="synth combine")
    combined = combine_sites(frames, site_column=args.site_column)
    data = combined.to_csv(index=False).encode("utf-8")
    provenance = {
        "format": COMBINED_FORMAT,
        "file": args.out.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "rows": len(combined),
        "site_column": args.site_column,
        "sites": sources,
    }
    atomic_write(args.out, data)
    atomic_write(manifest_path(args.out), json.dumps(provenance, indent=1).encode("utf-8"))
    print(f"{len(combined)} rows from {len(frames)} sites written to {args.out}")
    return 0
