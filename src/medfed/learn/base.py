"""The task seam: what a node runs on its local data. Tasks are installed entry points
(group ``medfed.tasks``); a job names one, it never ships code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from medfed.core.errors import ValidationError
from medfed.core.params import Parameters
from medfed.core.records import Scalar


@dataclass(frozen=True, slots=True, kw_only=True)
class TabularData:
    """A site's harmonised table, already split: float32 features, {0,1} float32 labels (images: flattened rows)."""

    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.float32]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.float32]
    feature_names: tuple[str, ...]
    #: (channels, rows, columns) when every row is an image flattened in C order (a DICOM dataset)
    image_shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.image_shape is not None and int(np.prod(self.image_shape)) != len(self.feature_names):
            problems.append(f"image shape {self.image_shape} does not hold {len(self.feature_names)} features")
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.ndim != 2 or x.shape[1] != len(self.feature_names):
                problems.append(f"{split} features have shape {x.shape}, expected (n, {len(self.feature_names)})")
            if y.shape != (x.shape[0],):
                problems.append(f"{split} labels have shape {y.shape}, expected ({x.shape[0]},)")
        if problems:
            raise ValidationError(problems, where="dataset")

    @property
    def n_features(self) -> int:
        return len(self.feature_names)


@dataclass(frozen=True, slots=True, kw_only=True)
class FitOutput:
    parameters: Parameters
    num_examples: int
    metrics: dict[str, float]


class Task(Protocol):
    """A learning task: initialise, train locally, evaluate locally."""

    def init_parameters(self, options: dict[str, Scalar], seed: int) -> Parameters:
        """Initial global model, deterministic in ``seed``."""
        ...

    def fit(self, params: Parameters, data: TabularData, config: dict[str, Scalar], seed: int) -> FitOutput:
        """Train from ``params`` on the train split; ``config`` = task options + strategy extras."""
        ...

    def evaluate(
        self, params: Parameters, data: TabularData, config: dict[str, Scalar]
    ) -> tuple[int, dict[str, float]]:
        """(number of test examples, metrics such as accuracy, auc, loss) on the test split."""
        ...
