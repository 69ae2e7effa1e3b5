"""What a DP job's site releases of its metrics: noised accuracy and counts, nothing else."""

import numpy as np
import pytest

from medfed.core.records import ResultMessage, ResultStatus
from medfed.node.privacy import release_metrics


def _result(accuracy: float = 0.75, n: int = 200) -> ResultMessage:
    metrics = {"eval_accuracy": accuracy, "eval_examples": float(n), "eval_loss": 0.5, "eval_auc": 0.8,
               "train_loss": 0.4, "privacy_epsilon_spent": 1.2}  # fmt: skip
    return ResultMessage(task_id="t", job_id="j", round=1, site="s", status=ResultStatus.OK, metrics=metrics)


def test_only_noised_accuracy_counts_and_ledger_figures_leave() -> None:
    out = release_metrics(_result(), eval_epsilon=0.5, site_level=False, rng=np.random.default_rng(0)).metrics
    assert set(out) == {"eval_accuracy", "eval_accuracy_noise_scale", "eval_examples", "privacy_epsilon_spent",
                        "metrics_withheld"}  # fmt: skip
    assert out["metrics_withheld"] == 3.0  # loss, auc, training loss
    assert out["eval_accuracy_noise_scale"] == pytest.approx(1 / 0.5 / 200)
    assert 0.0 <= out["eval_accuracy"] <= 1.0


@pytest.mark.parametrize(("site_level", "scale"), [(False, 1 / 0.5 / 200), (True, 1 / 0.5)])
def test_the_noise_is_laplace_with_the_sensitivity_of_the_protected_unit(site_level: bool, scale: float) -> None:
    rng = np.random.default_rng(1)
    draws = np.array(
        [release_metrics(_result(0.5), eval_epsilon=0.5, site_level=site_level, rng=rng).metrics["eval_accuracy"]
         for _ in range(4000)]
    )  # fmt: skip
    inside = draws[(draws > 0) & (draws < 1)] - 0.5  # clipping to [0, 1] only touches the tails
    # Laplace(0, b): mean |x| = b (on the unclipped part for the patient level, where nothing is clipped)
    if not site_level:
        assert np.mean(np.abs(inside)) == pytest.approx(scale, rel=0.06)
    else:
        assert np.mean((draws == 0) | (draws == 1)) > 0.5  # a site-level release at ε = 0.5 is mostly noise


def test_eval_epsilon_zero_releases_no_accuracy() -> None:
    out = release_metrics(_result(), eval_epsilon=0.0, site_level=False).metrics
    assert "eval_accuracy" not in out and out["metrics_withheld"] == 4.0
