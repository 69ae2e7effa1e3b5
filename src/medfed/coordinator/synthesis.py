"""Federated synthesis jobs: the job's ``[synthesis]`` table run over the live federation.

:class:`SynthesisRunner` sends one :attr:`~medfed.core.records.TaskKind.SYNTHESIZE` task per site
(the table as JSON in the task's payload). Each site fits a DP synthesizer to its own rows, charges
its ledger, and sends back only the rows its release policy let go (CSV in the result's payload,
see :mod:`medfed.node.synthesis`); a site whose gate blocked, or whose budget could not pay, is left
out with its reason. The released rows are joined with :func:`medfed.synth.combine_sites` (a site
column; post-processing of DP outputs, so free), written to ``<state>/reports/synthesis-<job>.csv``
and kept in the store with each site's cost and scores (:func:`result_to_json`,
:func:`result_from_json`). ``medfed job result <id> --out combined.csv`` writes the table.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from medfed.coordinator.engine import JobContext, JobRunner
from medfed.coordinator.rounds import RoundKey
from medfed.core.errors import ConfigError, JobError, ValidationError
from medfed.core.params import Parameters
from medfed.core.records import JobSpec, TaskKind
from medfed.security.fsio import atomic_write
from medfed.synth.job import SynthesisSpec
from medfed.synth.release import combine_sites

log = logging.getLogger(__name__)

RESULT_VERSION = 1
SITE_COLUMN = "site"
_NO_PARAMETERS = Parameters.from_arrays((), ())


def synthesis_spec(spec: JobSpec, *, source_name: str = "<job>") -> SynthesisSpec:
    """The job's ``[synthesis]`` table, checked.

    Raises
    ------
    ConfigError
        The job has no ``[synthesis]`` table, or it is not valid (every problem named).
    """
    if spec.synthesis is None:
        raise ConfigError(f"{source_name}: job {spec.name!r} has no [synthesis] table")
    try:
        return SynthesisSpec.from_json(spec.synthesis)
    except ValidationError as exc:
        raise ConfigError(f"{source_name}: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class SynthesisOutcome:
    """A finished synthesis job: the combined table, each releasing site's cost and scores, and
    why the other sites were left out."""

    spec: SynthesisSpec
    combined: pd.DataFrame
    sites: Mapping[str, Mapping[str, float]]
    refusals: Mapping[str, str] = field(default_factory=dict)


class SynthesisRunner(JobRunner):
    """Runs one synthesis job in its own thread (reusing the training runner's round machinery)."""

    def __init__(self, spec: JobSpec, ctx: JobContext) -> None:
        # A synthesis job trains nothing: no strategy, task or robust rule (JobRunner.__init__ would build them).
        threading.Thread.__init__(self, name=f"synthesis-{ctx.job_id}", daemon=True)
        self.spec, self.ctx = spec, ctx
        self.synthesis = synthesis_spec(spec, source_name=f"job {ctx.job_id}")
        self.robust = None
        self.dp = None
        self.cancelled = threading.Event()

    def _run_rounds(self) -> None:  # the body of JobRunner.run: states, errors and hooks stay there
        outcome = self.collect()
        text = result_to_json(outcome)
        self.ctx.store.set_synthesis_result(self.ctx.job_id, text)
        path = self.ctx.state_dir / "reports" / f"synthesis-{self.ctx.job_id}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, outcome.combined.to_csv(index=False).encode("utf-8"))
        log.info(
            "synthesis job %s: %d rows from %s; left out: %s; table %s",
            self.ctx.job_id, len(outcome.combined), sorted(outcome.sites), dict(outcome.refusals) or "none", path,
        )  # fmt: skip

    def collect(self) -> SynthesisOutcome:
        """One round: every eligible site synthesizes and releases (or refuses, and is left out)."""
        policy = self.spec.policy
        sites = self.wait_for_sites(time.monotonic() + policy.deadline_s)
        if len(sites) < policy.min_nodes:
            raise JobError(
                f"synthesis: {len(sites)} of min_nodes={policy.min_nodes} sites online ({self._why_no_site()})"
            )
        key = RoundKey(job_id=self.ctx.job_id, round=1, kind=TaskKind.SYNTHESIZE, attempt=0)
        text = self.synthesis.to_json().encode()
        round_ = self.run_round(key, _NO_PARAMETERS, sites=sites, payloads=dict.fromkeys(sites, text), keep_raw=True)
        self._record(round_, 1, checkpoint=None)
        refusals: dict[str, str] = {}
        frames: dict[str, pd.DataFrame] = {}
        scores: dict[str, dict[str, float]] = {}
        for site, result in sorted(round_.raw.items()):
            try:
                frames[site] = _read_rows(result.payload, site)
                scores[site] = {k: float(v) for k, v in result.metrics.items()}
            except ValidationError as exc:
                refusals[site] = f"validation: {exc}"
        for site, metrics in round_.results.items():
            if metrics.error:
                refusals.setdefault(site, metrics.error)
        for site in round_.pending:
            refusals.setdefault(site, "no answer before the round's deadline")
        if len(frames) < policy.min_nodes:
            why = "; ".join(f"{s}: {r}" for s, r in sorted(refusals.items())) or "none"
            raise JobError(
                f"synthesis: {len(frames)} of min_nodes={policy.min_nodes} sites released rows (left out: {why})"
            )
        try:
            combined = combine_sites(frames, site_column=SITE_COLUMN)
        except ValidationError as exc:
            raise JobError(f"synthesis: the sites' rows do not share one schema: {exc}") from None
        return SynthesisOutcome(spec=self.synthesis, combined=combined, sites=scores, refusals=refusals)


def _read_rows(payload: bytes, site: str) -> pd.DataFrame:
    if not payload:
        raise ValidationError("no synthetic rows in the result", where=f"site {site!r}")
    try:
        frame = pd.read_csv(io.BytesIO(payload))
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValidationError(f"unreadable synthetic rows: {exc}", where=f"site {site!r}") from None
    if SITE_COLUMN in frame.columns:
        raise ValidationError(f"the rows already have a {SITE_COLUMN!r} column", where=f"site {site!r}")
    return frame


# --- results as JSON ---------------------------------------------------------------------------


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def result_to_json(outcome: SynthesisOutcome) -> str:
    """The outcome as JSON: the combined CSV, its SHA-256, per-site cost and scores, refusals."""
    csv = outcome.combined.to_csv(index=False)
    return json.dumps(
        {
            "version": RESULT_VERSION,
            "synthesis": json.loads(outcome.spec.to_json()),
            "site_column": SITE_COLUMN,
            "rows": len(outcome.combined),
            "sha256": hashlib.sha256(csv.encode("utf-8")).hexdigest(),
            "csv": csv,
            "sites": {s: {k: _finite(v) for k, v in m.items()} for s, m in outcome.sites.items()},
            "refusals": dict(outcome.refusals),
        },
        sort_keys=True,
        allow_nan=False,
    )


def result_from_json(text: str) -> SynthesisOutcome:
    """Read what :func:`result_to_json` wrote (a job view's ``synthesis_result``).

    Raises
    ------
    ValidationError
        The text is not a stored synthesis result of this version, or its table does not match its digest.
    """
    try:
        raw = json.loads(text)
        if raw.get("version") != RESULT_VERSION:
            raise ValidationError(
                f"unknown version {raw.get('version')!r} (expected {RESULT_VERSION})", where="synthesis result"
            )
        csv = str(raw["csv"])
        if hashlib.sha256(csv.encode("utf-8")).hexdigest() != raw["sha256"]:
            raise ValidationError("the table does not match its SHA-256", where="synthesis result")
        return SynthesisOutcome(
            spec=SynthesisSpec.from_json(json.dumps(raw["synthesis"])),
            combined=pd.read_csv(io.StringIO(csv)),
            sites={
                str(s): {str(k): math.nan if v is None else float(v) for k, v in m.items()}
                for s, m in raw["sites"].items()
            },
            refusals={str(k): str(v) for k, v in raw["refusals"].items()},
        )
    except ValidationError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValidationError(f"malformed: {exc!r}", where="synthesis result") from None


def describe(outcome: SynthesisOutcome) -> list[str]:
    """Lines a person reads: rows and ε per releasing site, and each left-out site's reason."""
    lines = [f"{len(outcome.combined)} synthetic rows from {len(outcome.sites)} site(s), column {SITE_COLUMN!r}"]
    for site, m in sorted(outcome.sites.items()):
        lines.append(
            f"  {site}: {int(m.get('synth_rows', 0))} rows, ε = {m.get('privacy_epsilon_spent', math.nan):.4g}, "
            f"MIA AUC {m.get('synth_mia_auc', math.nan):.3f}"
        )
    lines += [f"  {site}: left out ({reason})" for site, reason in sorted(outcome.refusals.items())]
    return lines


__all__ = ["SynthesisOutcome", "SynthesisRunner", "describe", "result_from_json", "result_to_json", "synthesis_spec"]
