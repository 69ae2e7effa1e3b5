"""``medfed synth fit|sample|evaluate``: DP synthetic data from local CSV files.

Wire into ``medfed.cli.main`` with :func:`register` (adds ``synth`` to the top-level sub-parsers)
and route ``args.command == "synth"`` to :func:`dispatch`. This is the local, file-based path; at
a node the lead's integration reserves ``FittedSynthesizer.cost`` on the dataset's ledger first.

* ``fit``: read a CSV (and optionally a schema JSON; otherwise the schema is inferred from the
  file and thereby declared public), fit MST or AIM under (ε, δ), save the model (JSON + ``.npz``,
  no pickle) and print what it cost.
* ``sample``: draw rows from a saved model into a CSV.
* ``evaluate``: score a synthetic CSV against the training and holdout CSVs, write the HTML
  report, and apply the release gate: exact copies of training rows are dropped (and counted),
  and the de-duplicated rows are written to ``--release`` only if the gate passes; a blocked
  release exits with status 1 and its reasons.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from medfed.core.errors import ConfigError, DataError, PermissionDenied

if TYPE_CHECKING:
    from medfed.synth.evaluate import Subgroup

__all__ = ["COMMANDS", "dispatch", "register"]

#: The top-level commands this module adds.
COMMANDS = ("synth",)

Handler = Callable[[argparse.Namespace], int]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``synth fit|sample|evaluate`` to the top-level sub-parsers."""
    synth = sub.add_parser("synth", help="differentially private synthetic data (MST, AIM) and its evaluation")
    ssub = synth.add_subparsers(dest="action", required=True)
    f = ssub.add_parser("fit", help="fit a DP synthesizer to a CSV under (ε, δ)")
    f.add_argument("--data", type=Path, required=True, help="training rows (CSV)")
    f.add_argument("--out", type=Path, required=True, help="model file (JSON; arrays go beside it as .npz)")
    f.add_argument("--method", default="aim", help="aim or mst")
    f.add_argument("--epsilon", type=float, required=True)
    f.add_argument("--delta", type=float, default=1e-6)
    f.add_argument("--bins", type=int, default=8, help="bins per numeric or date column")
    f.add_argument("--target", default="", help="mst only: fix the tree as the star around this column")
    f.add_argument("--schema", type=Path, help="public schema (JSON list of columns); default: inferred")
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
    e.add_argument("--target", required=True, help="the outcome column for TSTR/TRTR")
    e.add_argument(
        "--subgroup",
        action="append",
        default=[],
        metavar="COLUMN[:EDGE,EDGE...]",
        help="a subgroup column, numeric ones cut at edges (e.g. age:40,60); repeatable",
    )
    e.add_argument("--report", type=Path, help="write the HTML report here")
    e.add_argument("--release", type=Path, help="write the de-duplicated rows here if the gate passes")
    e.add_argument("--max-mia-auc", type=float, default=0.6, help="the site's membership-inference limit")
    e.add_argument("--model", type=Path, help="the fitted model (its ε, δ go into the report); none = not DP")
    e.add_argument("--allow-non-dp", action="store_true", help="the site's policy waives the DP requirement")
    e.set_defaults(synth_handler=_evaluate)


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


def _fit(args: argparse.Namespace) -> int:
    from medfed.synth.domain import Schema, infer_schema
    from medfed.synth.synthesizer import Method, SynthConfig, fit, spec_from_dict

    try:
        method = Method(args.method.lower())
    except ValueError:
        raise ConfigError(f"--method {args.method!r}: allowed {[m.value for m in Method]}") from None
    df = _read_csv(args.data, args.dates)
    if args.schema:
        try:
            schema = Schema(columns=tuple(spec_from_dict(c) for c in json.loads(args.schema.read_text("utf-8"))))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{args.schema}: bad schema file ({exc})") from exc
    else:
        schema = infer_schema(df)
        print("schema inferred from the data: its bounds and categories are hereby declared public", file=sys.stderr)
    config = SynthConfig(method=method, epsilon=args.epsilon, delta=args.delta, bins=args.bins, target=args.target)
    fitted = fit(df, schema, config, _rng(args.seed))
    fitted.save(args.out)
    print(
        f"{method.value}: {len(df)} rows, ε = {fitted.cost.epsilon:.4g}, δ = {fitted.cost.delta:.1e} "
        f"(ρ = {fitted.cost.rho:.4g}); {len(fitted.edges)} 2-way marginals; saved {args.out}"
    )
    return 0


def _sample(args: argparse.Namespace) -> int:
    from medfed.synth.synthesizer import FittedSynthesizer

    fitted = FittedSynthesizer.load(args.model)
    rows = fitted.sample(args.rows, _rng(args.seed))
    rows.to_csv(args.out, index=False)
    print(f"{len(rows)} synthetic rows written to {args.out}")
    return 0


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


def _evaluate(args: argparse.Namespace) -> int:
    from medfed.synth.evaluate import evaluate
    from medfed.synth.release import ReleasePolicy, prepare_release
    from medfed.synth.report import ReportInput, render
    from medfed.synth.synthesizer import FittedSynthesizer

    train, holdout, synthetic = (_read_csv(p) for p in (args.train, args.holdout, args.synthetic))
    groups = _subgroups(args.subgroup)
    evaluation = evaluate(train=train, holdout=holdout, synthetic=synthetic, target=args.target, subgroups=groups)
    cost = FittedSynthesizer.load(args.model).cost if args.model else None
    policy = ReleasePolicy(max_mia_auc=args.max_mia_auc, require_dp=not args.allow_non_dp)
    decision = prepare_release(
        train=train, synthetic=synthetic, evaluation=evaluation, policy=policy, differentially_private=cost is not None
    )
    if args.report:
        page = render(
            ReportInput(
                title=f"Synthetic data report: {args.synthetic.name}",
                method=args.model.name if args.model else "unknown",
                epsilon=cost.epsilon if cost else None,
                delta=cost.delta if cost else None,
                train=train,
                synthetic=synthetic,
                evaluation=evaluation,
                release_reasons=decision.reasons,
                dropped_copies=decision.dropped_copies,
            )
        )
        args.report.write_text(page, encoding="utf-8")
    lr = evaluation.utility["logistic_regression"]
    print(
        f"workload error {evaluation.workload_error:.3f}, detection AUC {evaluation.detection_auc:.3f}, "
        f"TSTR/TRTR AUC (LR) {lr['tstr_auc']:.3f}/{lr['trtr_auc']:.3f}, MIA AUC {evaluation.mia_auc:.3f}, "
        f"exact copies dropped {decision.dropped_copies}"
    )
    if evaluation.erased_subgroups:
        print(f"erased subgroups: {', '.join(evaluation.erased_subgroups)}")
    if not decision.released:
        raise PermissionDenied("release blocked: " + "; ".join(decision.reasons))
    if args.release:
        decision.rows.to_csv(args.release, index=False)
        print(f"{len(decision.rows)} rows released to {args.release}")
    return 0
