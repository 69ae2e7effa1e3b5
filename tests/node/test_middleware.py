"""The node's middleware chain: each link alone, and errors travelling as values."""

import numpy as np
import pytest

from medfed.core.errors import DataError, ValidationError
from medfed.core.params import Parameters
from medfed.core.records import ResultMessage, ResultStatus, Scalar, TaskKind, TaskMessage
from medfed.learn.base import FitOutput, TabularData
from medfed.node.middleware import NodeContext, build_chain, check_output, errors_as_values, run_task
from medfed.node.runtime import DatasetConfig

PARAMS = Parameters.from_numpy({"w": np.zeros(2, np.float32)})


def _task(kind: TaskKind = TaskKind.FIT, dataset: str = "d") -> TaskMessage:
    return TaskMessage(
        task_id="t", job_id="j", round=2, kind=kind, task="fake", dataset=dataset, seed=1, config={}, parameters=PARAMS
    )


class FakeTask:
    """A task whose output the test controls (installed tasks are tested in tests/learn)."""

    def __init__(self, out: Parameters) -> None:
        self.out = out

    def init_parameters(self, options: dict[str, Scalar], seed: int) -> Parameters:
        return PARAMS

    def fit(self, params: Parameters, data: TabularData, config: dict[str, Scalar], seed: int) -> FitOutput:
        return FitOutput(parameters=self.out, num_examples=len(data.y_train), metrics={"loss": 0.5})

    def evaluate(
        self, params: Parameters, data: TabularData, config: dict[str, Scalar]
    ) -> tuple[int, dict[str, float]]:
        return len(data.y_test), {"accuracy": 1.0}


def _data() -> TabularData:
    x = np.zeros((4, 2), np.float32)
    y = np.array([0, 1, 0, 1], np.float32)
    return TabularData(x_train=x, y_train=y, x_test=x[:2], y_test=y[:2], feature_names=("a", "b"))


def _ctx(out: Parameters = PARAMS) -> NodeContext:
    return NodeContext(
        site="s1",
        datasets={"d": DatasetConfig(name="d", path=__file__)},  # type: ignore[arg-type]  # never read: loader given
        task_loader=lambda name: FakeTask(out),
        data_loader=lambda cfg: _data(),
    )


def test_fit_evaluates_then_trains() -> None:
    result = run_task(_task(), _ctx())
    assert result.ok and result.num_examples == 4 and result.parameters is not None
    assert result.metrics == {"eval_accuracy": 1.0, "eval_examples": 2.0, "train_loss": 0.5}


def test_evaluate_sends_no_parameters() -> None:
    result = run_task(_task(TaskKind.EVALUATE), _ctx())
    assert result.ok and result.parameters is None and result.num_examples == 2


def test_missing_dataset_names_site_and_dataset() -> None:
    with pytest.raises(DataError, match=r"dataset 'other' is not configured at site 's1'"):
        run_task(_task(dataset="other"), _ctx())


def test_errors_become_values_naming_site_and_round() -> None:
    handler = build_chain(run_task, [errors_as_values])
    result = handler(_task(dataset="other"), _ctx())
    assert result.status is ResultStatus.ERROR and result.error_kind == "data"
    assert "site 's1', round 2" in result.error_message


def test_check_output_refuses_nan_and_wrong_shape() -> None:
    nan = Parameters.from_numpy({"w": np.array([np.nan, 0], np.float32)})
    with pytest.raises(ValidationError, match="non-finite"):
        build_chain(run_task, [check_output])(_task(), _ctx(nan))
    wide = Parameters.from_numpy({"w": np.zeros(3, np.float32)})
    result = build_chain(run_task, [errors_as_values, check_output])(_task(), _ctx(wide))
    assert result.error_kind == "validation" and "shape (3,)" in result.error_message


def test_chain_order_is_outermost_first() -> None:
    seen: list[str] = []

    def tag(name: str):  # type: ignore[no-untyped-def]
        def mw(task: TaskMessage, ctx: NodeContext, nxt):  # type: ignore[no-untyped-def]
            seen.append(name)
            return nxt(task, ctx)

        return mw

    def inner(task: TaskMessage, ctx: NodeContext) -> ResultMessage:
        seen.append("handler")
        return ResultMessage(task_id="t", job_id="j", round=1, site="s1", status=ResultStatus.OK)

    build_chain(inner, [tag("a"), tag("b")])(_task(), _ctx())
    assert seen == ["a", "b", "handler"]
