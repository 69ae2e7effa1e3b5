"""The privacy link of the node's chain: charges the ledger, refuses what the budget cannot pay."""

from pathlib import Path

import numpy as np
import pytest

from medfed.core.errors import BudgetExhausted
from medfed.core.params import Parameters
from medfed.core.records import PrivacySpec, Scalar, TaskKind, TaskMessage
from medfed.learn.base import FitOutput, TabularData
from medfed.node.ledger import PrivacyLedger
from medfed.node.middleware import NodeContext, build_chain, errors_as_values, run_task
from medfed.node.privacy import dp_sgd_epsilon, privacy_budget
from medfed.node.runtime import DatasetConfig

PARAMS = Parameters.from_numpy({"w": np.zeros(2, np.float32)})
N_TRAIN = 40


class RecordingTask:
    """Records the configs it was fitted with (the real DP-SGD is tested in tests/learn)."""

    def __init__(self) -> None:
        self.configs: list[dict[str, Scalar]] = []

    def init_parameters(self, options: dict[str, Scalar], seed: int) -> Parameters:
        return PARAMS

    def fit(self, params: Parameters, data: TabularData, config: dict[str, Scalar], seed: int) -> FitOutput:
        self.configs.append(dict(config))
        return FitOutput(parameters=params, num_examples=len(data.y_train), metrics={})

    def evaluate(
        self, params: Parameters, data: TabularData, config: dict[str, Scalar]
    ) -> tuple[int, dict[str, float]]:
        return len(data.y_test), {"accuracy": 0.5}


def _data() -> TabularData:
    x = np.zeros((N_TRAIN, 2), np.float32)
    y = (np.arange(N_TRAIN) % 2).astype(np.float32)
    return TabularData(x_train=x, y_train=y, x_test=x[:4], y_test=y[:4], feature_names=("a", "b"))


SPEC = PrivacySpec(noise_multiplier=1.0, clip_norm=1.0, delta=1e-5)
CONFIG: dict[str, Scalar] = {"local_steps": 10, "batch_size": 4}


def _task(
    *, job: str = "j1", rnd: int = 1, kind: TaskKind = TaskKind.FIT, privacy: PrivacySpec | None = SPEC
) -> TaskMessage:
    return TaskMessage(
        task_id=f"t{rnd}", job_id=job, round=rnd, kind=kind, task="fake", dataset="d", seed=1,
        config=dict(CONFIG), parameters=PARAMS, job_rounds=3, privacy=privacy,
    )  # fmt: skip


@pytest.fixture
def setup(tmp_path: Path) -> tuple[NodeContext, RecordingTask, PrivacyLedger]:
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("d", epsilon=5.0, delta=1e-5)
    fake = RecordingTask()
    ctx = NodeContext(
        site="s1",
        datasets={"d": DatasetConfig(name="d", path=tmp_path, epsilon_budget=5.0)},
        task_loader=lambda name: fake,
        data_loader=lambda cfg: _data(),
        ledger=ledger,
    )
    return ctx, fake, ledger


def test_fit_reserves_the_job_and_commits_each_round(setup: tuple[NodeContext, RecordingTask, PrivacyLedger]) -> None:
    ctx, fake, ledger = setup
    handler = build_chain(run_task, [privacy_budget])
    q = 4 / N_TRAIN
    first = handler(_task(rnd=1), ctx)
    job = ledger.job("d", "j1")
    assert job is not None
    ev = SPEC.eval_epsilon  # one noised accuracy per fit round and one for the final model
    assert job.epsilon_reserved == pytest.approx(dp_sgd_epsilon(SPEC, sampling_rate=q, steps=30) + 4 * ev)
    assert job.epsilon_spent == pytest.approx(dp_sgd_epsilon(SPEC, sampling_rate=q, steps=10) + ev)
    assert fake.configs[0]["dp_noise_multiplier"] == 1.0 and fake.configs[0]["dp_clip_norm"] == 1.0
    assert first.metrics["privacy_epsilon_spent"] == pytest.approx(job.epsilon_spent)
    handler(_task(rnd=2), ctx)
    job = ledger.job("d", "j1")
    assert job is not None and job.steps == 20
    assert job.epsilon_spent == pytest.approx(dp_sgd_epsilon(SPEC, sampling_rate=q, steps=20) + 2 * ev)
    handler(_task(rnd=3, kind=TaskKind.EVALUATE), ctx)
    closed = ledger.job("d", "j1")
    assert closed is not None and not closed.open
    assert closed.epsilon_spent == pytest.approx(dp_sgd_epsilon(SPEC, sampling_rate=q, steps=20) + 3 * ev)
    status = ledger.status("d")
    assert status is not None and status.epsilon_used == pytest.approx(closed.epsilon_spent)


def test_overspending_job_never_touches_the_data(setup: tuple[NodeContext, RecordingTask, PrivacyLedger]) -> None:
    ctx, fake, ledger = setup
    greedy = PrivacySpec(noise_multiplier=0.3, clip_norm=1.0, delta=1e-5)
    result = build_chain(run_task, [errors_as_values, privacy_budget])(_task(privacy=greedy), ctx)
    assert result.error_kind == "budget"
    assert "needs ε=" in result.error_message and "site 's1'" in result.error_message
    assert fake.configs == []
    assert ledger.job("d", "j1") is None


def test_budgeted_dataset_refuses_jobs_without_dp(setup: tuple[NodeContext, RecordingTask, PrivacyLedger]) -> None:
    ctx, fake, _ = setup
    with pytest.raises(BudgetExhausted, match="only under differential privacy"):
        privacy_budget(_task(privacy=None), ctx, run_task)
    assert fake.configs == []


def test_dp_job_on_a_dataset_without_budget_is_refused(tmp_path: Path) -> None:
    ctx = NodeContext(
        site="s1",
        datasets={"d": DatasetConfig(name="d", path=tmp_path)},
        task_loader=lambda name: RecordingTask(),
        data_loader=lambda cfg: _data(),
        ledger=PrivacyLedger(tmp_path / "l.sqlite"),
    )
    with pytest.raises(BudgetExhausted, match="site admin must set"):
        privacy_budget(_task(), ctx, run_task)
