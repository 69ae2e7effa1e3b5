"""medfed.synth: differentially private synthetic health data (MST, AIM), evaluated before release.

At a node: reserve :func:`planned_cost` on the dataset's ledger, :func:`fit` (the result's
``cost`` is what to commit), ``sample``, ``medfed.synth.evaluate.evaluate`` (not re-exported: the
name is the module's), then :func:`prepare_release` under the site's :class:`ReleasePolicy`.
At the coordinator, :func:`combine_sites` joins released frames.
See ``docs/synthetic-data.md``.
"""

from medfed.synth.copula import GaussianCopula, fit_copula
from medfed.synth.domain import ColumnKind, ColumnSpec, Schema, infer_schema
from medfed.synth.dp import PrivacyCost, epsilon_from_rho, rho_for_epsilon
from medfed.synth.evaluate import Binning, Evaluation, Subgroup, SubgroupRow, exact_copies, workload_error
from medfed.synth.release import (
    ReleaseDecision,
    ReleasePolicy,
    combine_sites,
    drop_exact_copies,
    gate,
    prepare_release,
)
from medfed.synth.report import ReportInput, render
from medfed.synth.synthesizer import FittedSynthesizer, Method, SynthConfig, fit, planned_cost

__all__ = [
    "Binning",
    "ColumnKind",
    "ColumnSpec",
    "Evaluation",
    "FittedSynthesizer",
    "GaussianCopula",
    "Method",
    "PrivacyCost",
    "ReleaseDecision",
    "ReleasePolicy",
    "ReportInput",
    "Schema",
    "Subgroup",
    "SubgroupRow",
    "SynthConfig",
    "combine_sites",
    "drop_exact_copies",
    "epsilon_from_rho",
    "exact_copies",
    "fit",
    "fit_copula",
    "gate",
    "infer_schema",
    "planned_cost",
    "prepare_release",
    "render",
    "rho_for_epsilon",
    "workload_error",
]
