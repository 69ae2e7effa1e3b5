"""The ``cnn`` task on image datasets read from real DICOM files: the same Parameters and round
protocol as the tabular tasks, parameters independent of the image size, DP-SGD included."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from media_support import SITE_IMAGES, write_images

from medfed.core.errors import ValidationError
from medfed.data.consent import ConsentRegistry
from medfed.data.sources import parse_dataset
from medfed.learn.base import TabularData
from medfed.learn.registry import load_task
from medfed.node.datasets import load_for_job

OPTIONS = {"local_steps": 6, "batch_size": 2, "lr": 0.05, "hidden": 4}


def _images(root: Path, size: list[int]) -> TabularData:
    write_images(root / "images", SITE_IMAGES["beta"])
    decl = parse_dataset(
        "scans",
        {"format": "dicom", "path": "images", "label_attribute": "Modality", "positive": ["CT"], "image_size": size},
        base=root,
        where="site.toml",
    )
    return load_for_job(decl, ConsentRegistry(), purpose="research", on=dt.date(2026, 6, 1), job_id="j").data


def _delta(a, b) -> float:  # type: ignore[no-untyped-def]
    return max(float(np.abs(x - y).max()) for (_, x), (_, y) in zip(a, b, strict=True))


def test_the_installed_cnn_task_trains_on_images_deterministically(tmp_path: Path) -> None:
    data = _images(tmp_path, [24, 24])
    task = load_task("cnn")  # the entry point, as a node loads it
    start = task.init_parameters(OPTIONS, seed=3)

    out = task.fit(start, data, OPTIONS, seed=7)
    again = task.fit(start, data, OPTIONS, seed=7)
    n, metrics = task.evaluate(out.parameters, data, OPTIONS)

    assert start.names == ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "out.weight", "out.bias")
    assert _delta(start, out.parameters) > 0 and _delta(out.parameters, again.parameters) == 0.0
    assert out.num_examples == len(data.y_train) and n == len(data.y_test)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and np.isfinite(metrics["loss"])
    assert task.init_parameters(OPTIONS, seed=3).names == start.names
    assert _delta(task.init_parameters(OPTIONS, seed=3), start) == 0.0


def test_one_model_fits_images_of_any_size(tmp_path: Path) -> None:
    task = load_task("cnn")
    start = task.init_parameters(OPTIONS, seed=0)
    for size in ([16, 16], [40, 24]):
        data = _images(tmp_path / f"s{size[0]}", size)
        assert data.image_shape == (1, *size)
        assert task.fit(start, data, OPTIONS, seed=1).parameters.names == start.names


def test_dp_sgd_runs_on_the_cnn(tmp_path: Path) -> None:
    data = _images(tmp_path, [16, 16])
    task = load_task("cnn")
    start = task.init_parameters(OPTIONS, seed=0)
    for clipping in ("hooks", "ghost"):
        config = {**OPTIONS, "dp_noise_multiplier": 1.0, "dp_clip_norm": 1.0, "dp_clipping": clipping}
        out = task.fit(start, data, config, seed=2)
        assert _delta(start, out.parameters) > 0
        assert all(np.isfinite(a).all() for _, a in out.parameters)


def test_the_cnn_refuses_a_table_that_is_not_images() -> None:
    table = TabularData(
        x_train=np.zeros((4, 3), np.float32),
        y_train=np.array([0, 1, 0, 1], np.float32),
        x_test=np.zeros((2, 3), np.float32),
        y_test=np.array([0, 1], np.float32),
        feature_names=("a", "b", "c"),
    )
    task = load_task("cnn")
    with pytest.raises(ValidationError, match="the cnn task needs an image dataset"):
        task.fit(task.init_parameters(OPTIONS, seed=0), table, OPTIONS, seed=0)
    with pytest.raises(ValidationError, match=r"image shape \(1, 2, 2\) does not hold 3 features"):
        TabularData(
            x_train=table.x_train, y_train=table.y_train, x_test=table.x_test, y_test=table.y_test,
            feature_names=table.feature_names, image_shape=(1, 2, 2),
        )  # fmt: skip
