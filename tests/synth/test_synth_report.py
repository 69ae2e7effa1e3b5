"""The HTML report is self-contained and shows every section and the release verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medfed.synth import Method, ReportInput, Subgroup, SynthConfig, fit, infer_schema, render
from medfed.synth.evaluate import evaluate


def test_report_has_plots_tables_and_the_verdict(table: pd.DataFrame, holdout: pd.DataFrame) -> None:
    rng = np.random.default_rng(0)
    fitted = fit(table, infer_schema(table), SynthConfig(method=Method.AIM, epsilon=1.0), rng)
    synthetic = fitted.sample(300, rng)
    e = evaluate(
        train=table,
        holdout=holdout,
        synthetic=synthetic,
        target="label",
        subgroups=(Subgroup(name="sex", column="sex"),),
    )
    page = render(
        ReportInput(
            title="Site A <synthetic>",
            method="aim",
            epsilon=fitted.cost.epsilon,
            delta=fitted.cost.delta,
            train=table,
            synthetic=synthetic,
            evaluation=e,
            release_reasons=("membership-inference AUC 0.9 exceeds the site's limit 0.6",),
            dropped_copies=2,
        )
    )
    assert page.count("<svg") == 3  # marginals, correlation heat-maps, utility bars
    for text in ("Fidelity", "Utility", "Privacy risk", "Subgroups", "Release blocked", "2 exact copies"):
        assert text in page
    assert "Site A &lt;synthetic&gt;" in page  # escaped
    assert 'src="http' not in page and 'href="http' not in page  # nothing fetched when opened
    assert "(ε = 1, δ = 1.0e-06)-DP" in page
