"""The evaluation every synthetic release carries: fidelity, utility, privacy risk and bias.

All scores compare a synthetic table with the real *training* rows it was fitted on and a real
*holdout* that the synthesizer never saw. They read real rows, so the evaluation is the site's own
document: it is not differentially private and stays inside the site unless the site decides
otherwise.

* Fidelity: 1 - KS statistic (numeric) or 1 - total variation (categorical) per column; the mean
  absolute difference of the correlation matrices; the **2-way workload error**, the mean total
  variation distance over all pairs of columns after binning numeric columns at the training
  quantiles (``EVAL_BINS``; missing is its own bin) — half the normalised L1 error of the MST/AIM
  papers; the cross-validated AUC of a classifier told to separate real from synthetic (0.5 = it
  cannot).
* Utility: TSTR (train on synthetic, test on the real holdout) vs TRTR for logistic regression and
  a random forest, AUC and accuracy.
* Privacy: distance to the closest record (DCR) from synthetic rows to train and to holdout rows,
  the exact-copy rate, the share of synthetic rows closer to train than to holdout (0.5 when train
  and holdout are equally far), and the AUC of a distance-based membership-inference attack that
  scores each real row by closeness to the synthetic data (0.5 = no better than guessing).
* Bias: per subgroup (e.g. sex, age band, site) the real and synthetic shares and TSTR accuracy; a
  subgroup holding at least ``MIN_SHARE`` of the real rows is *erased* when its synthetic share is
  below ``ERASED_RATIO`` of its real share.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import NearestNeighbors

from medfed.core.errors import ValidationError

EVAL_BINS = 8
MIN_SHARE = 0.02
ERASED_RATIO = 0.25
_TREES = 50  # random-forest size for utility and detection: enough for tables of this size, and fast


@dataclass(frozen=True, slots=True, kw_only=True)
class Subgroup:
    """A subgroup column; numeric columns are cut at ``edges`` (e.g. age bands)."""

    name: str
    column: str
    edges: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SubgroupRow:
    subgroup: str
    value: str
    real_share: float
    synthetic_share: float
    tstr_accuracy: float
    trtr_accuracy: float
    erased: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluation:
    column_scores: dict[str, float]
    correlation_difference: float
    workload_error: float
    detection_auc: float
    utility: dict[str, dict[str, float]]  # model -> {tstr_auc, trtr_auc, tstr_accuracy, trtr_accuracy}
    dcr_train_median: float
    dcr_holdout_median: float
    exact_copies: int
    exact_copy_rate: float
    closer_to_train_share: float
    mia_auc: float
    subgroups: tuple[SubgroupRow, ...] = field(default=())

    @property
    def erased_subgroups(self) -> tuple[str, ...]:
        return tuple(f"{r.subgroup}={r.value}" for r in self.subgroups if r.erased)


def evaluate(
    *,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    synthetic: pd.DataFrame,
    target: str,
    subgroups: tuple[Subgroup, ...] = (),
    seed: int = 0,
) -> Evaluation:
    """Every score of the module notes for ``synthetic`` against ``train`` and ``holdout``.

    Raises
    ------
    ValidationError
        The three tables do not share the same columns, ``target`` is not one, or a table is empty.
    """
    _check(train, holdout, synthetic, target)
    train = _dates_as_days(train)
    holdout, synthetic = _align(train, holdout), _align(train, synthetic)
    enc = _Encoder(train)
    x_train, x_hold, x_syn = enc(train), enc(holdout), enc(synthetic)
    dcr = _privacy(x_train, x_hold, x_syn, seed)
    util, fitted = _utility(train, holdout, synthetic, target, seed)
    copies = exact_copies(train, synthetic)
    return Evaluation(
        column_scores={c: _column_score(train[c], synthetic[c]) for c in train.columns},
        correlation_difference=_corr_diff(x_train, x_syn),
        workload_error=workload_error(train, synthetic),
        detection_auc=_detection(x_train, x_syn, seed),
        utility=util,
        dcr_train_median=dcr[0],
        dcr_holdout_median=dcr[1],
        closer_to_train_share=dcr[2],
        mia_auc=dcr[3],
        exact_copies=int(copies.sum()),
        exact_copy_rate=float(copies.mean()) if len(copies) else 0.0,
        subgroups=tuple(_bias(train, holdout, synthetic, subgroups, fitted)),
    )


class Binning(enum.StrEnum):
    """How :func:`workload_error` bins numeric columns: at ``real``'s quantiles, or equal-width over its range."""

    QUANTILE = "quantile"
    UNIFORM = "uniform"


def workload_error(
    real: pd.DataFrame, other: pd.DataFrame, *, binning: Binning = Binning.QUANTILE, bins: int = EVAL_BINS
) -> float:
    """Mean total-variation distance between the 2-way marginals of ``real`` and ``other`` (all pairs).

    Numeric columns (more than two values) are cut into ``bins`` bins by ``binning``; missing values
    and unseen categories get bins of their own.
    """
    real = _dates_as_days(real)
    other = _align(real, other)
    a, b = _eval_codes(real, real, binning, bins), _eval_codes(real, other, binning, bins)
    sizes = np.maximum(a.max(axis=0), b.max(axis=0)) + 1
    errors = []
    for i, j in combinations(range(a.shape[1]), 2):
        cells = int(sizes[i] * sizes[j])
        pa = np.bincount(a[:, i] * sizes[j] + a[:, j], minlength=cells) / len(a)
        pb = np.bincount(b[:, i] * sizes[j] + b[:, j], minlength=cells) / len(b)
        errors.append(0.5 * float(np.abs(pa - pb).sum()))
    return float(np.mean(errors)) if errors else 0.0


def exact_copies(train: pd.DataFrame, synthetic: pd.DataFrame) -> np.ndarray:
    """Boolean mask over ``synthetic`` rows: True where the row equals some training row exactly.

    Values are compared, not their spelling: a column numeric in ``train`` compares as floats on both
    sides (a decoded category ``1`` equals a training value ``1.0``); other columns as text.
    """
    numeric = [
        c for c in train.columns if pd.api.types.is_numeric_dtype(train[c]) and not pd.api.types.is_bool_dtype(train[c])
    ]

    def canonical(df: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            {
                c: pd.to_numeric(df[c], errors="coerce").astype(float).astype(str)
                if c in numeric
                else df[c].astype(str)
                for c in train.columns
            },
            index=df.index,
        )

    seen = set(pd.util.hash_pandas_object(canonical(train), index=False).tolist())
    hashes = pd.util.hash_pandas_object(canonical(synthetic), index=False)
    return np.array([h in seen for h in hashes.tolist()], dtype=bool)


class _Encoder:
    """Numeric columns standardised with the training statistics, categorical columns one-hot."""

    def __init__(self, train: pd.DataFrame) -> None:
        self.numeric = [c for c in train.columns if pd.api.types.is_numeric_dtype(train[c]) and train[c].nunique() > 2]
        self.cats = {c: sorted(train[c].astype(str).unique()) for c in train.columns if c not in self.numeric}
        values = train[self.numeric].astype(float)
        self.fill, self.mean = values.median(), values.fillna(values.median()).mean()
        self.std = values.fillna(self.fill).std().replace(0, 1).fillna(1)

    def __call__(self, df: pd.DataFrame) -> np.ndarray:
        num = (
            (
                (
                    pd.DataFrame({c: pd.to_numeric(df[c], errors="coerce") for c in self.numeric}).fillna(self.fill)
                    - self.mean
                )
                / self.std
            )
            .to_numpy(dtype=np.float64)
            .reshape(len(df), len(self.numeric))
        )
        onehot = [
            (df[c].astype(str).to_numpy()[:, None] == np.array(v)[None, :]).astype(np.float64)
            for c, v in self.cats.items()
        ]
        return np.hstack([num, *onehot]) if onehot else num


def _eval_codes(real: pd.DataFrame, df: pd.DataFrame, binning: Binning, bins: int) -> np.ndarray:
    out = np.zeros((len(df), len(real.columns)), dtype=np.int64)
    for j, c in enumerate(real.columns):
        if pd.api.types.is_numeric_dtype(real[c]) and real[c].nunique() > 2:
            values = real[c].to_numpy(dtype=float)
            if binning is Binning.QUANTILE:
                edges = np.unique(np.nanquantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
            else:
                edges = np.linspace(np.nanmin(values), np.nanmax(values), bins + 1)[1:-1]
            x = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
            out[:, j] = np.where(np.isnan(x), len(edges) + 1, np.searchsorted(edges, np.nan_to_num(x), side="right"))
        else:
            cats = {v: i for i, v in enumerate(sorted(real[c].astype(str).unique()))}
            out[:, j] = [cats.get(v, len(cats)) for v in df[c].astype(str)]
    return out


def _column_score(real: pd.Series, syn: pd.Series) -> float:
    if pd.api.types.is_numeric_dtype(real) and real.nunique() > 2:
        a = np.sort(real.dropna().to_numpy(dtype=float))
        b = np.sort(pd.to_numeric(syn, errors="coerce").dropna().to_numpy(dtype=float))
        if not len(a) or not len(b):
            return 0.0
        grid = np.concatenate([a, b])
        ks = np.abs(np.searchsorted(a, grid, side="right") / len(a) - np.searchsorted(b, grid, side="right") / len(b))
        return 1.0 - float(ks.max())
    p, q = real.astype(str).value_counts(normalize=True), syn.astype(str).value_counts(normalize=True)
    cats = sorted(set(p.index) | set(q.index))
    pv, qv = (s.reindex(cats, fill_value=0.0).to_numpy(dtype=float) for s in (p, q))
    return 1.0 - 0.5 * float(np.abs(pv - qv).sum())


def _corr_diff(a: np.ndarray, b: np.ndarray) -> float:
    with np.errstate(invalid="ignore", divide="ignore"):
        ca, cb = np.nan_to_num(np.corrcoef(a, rowvar=False)), np.nan_to_num(np.corrcoef(b, rowvar=False))
    upper = np.triu_indices_from(ca, k=1)
    return float(np.abs(ca[upper] - cb[upper]).mean()) if upper[0].size else 0.0


def _detection(x_real: np.ndarray, x_syn: np.ndarray, seed: int) -> float:
    n = min(len(x_real), len(x_syn))
    rng = np.random.default_rng(seed)
    x = np.vstack([x_real[rng.permutation(len(x_real))[:n]], x_syn[rng.permutation(len(x_syn))[:n]]])
    y = np.r_[np.ones(n), np.zeros(n)]
    clf = RandomForestClassifier(n_estimators=_TREES, random_state=seed, n_jobs=1)
    return float(np.mean(cross_val_score(clf, x, y, cv=3, scoring="roc_auc")))


def _models(seed: int) -> dict[str, Any]:
    return {
        "logistic_regression": LogisticRegression(max_iter=2000),
        "random_forest": RandomForestClassifier(n_estimators=_TREES, random_state=seed, n_jobs=1),
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class _Fitted:
    """Utility models: per model name (trained on synthetic or None, trained on real), and their features."""

    encoder: _Encoder
    features: list[str]
    target: str
    positive: str
    models: dict[str, tuple[Any, Any]]  # sklearn estimators (untyped)

    def accuracy(self, model: Any, rows: pd.DataFrame) -> float:
        if model is None or not len(rows):
            return float("nan")
        truth = (rows[self.target].astype(str) == self.positive).to_numpy()
        return float(accuracy_score(truth, model.predict_proba(self.encoder(rows[self.features]))[:, 1] >= 0.5))


def _utility(
    train: pd.DataFrame, holdout: pd.DataFrame, synthetic: pd.DataFrame, target: str, seed: int
) -> tuple[dict[str, dict[str, float]], _Fitted]:
    features = [c for c in train.columns if c != target]
    fx = _Encoder(train[features])
    y_train, y_hold, y_syn = (df[target].astype(str) for df in (train, holdout, synthetic))
    positive = str(sorted(y_train.unique())[-1])
    truth = (y_hold == positive).to_numpy()
    out: dict[str, dict[str, float]] = {}
    models: dict[str, tuple[Any, Any]] = {}
    for name, model in _models(seed).items():
        real_model = model.fit(fx(train[features]), y_train == positive)
        syn_y = (y_syn == positive).to_numpy()
        both = 0 < syn_y.sum() < len(syn_y)  # a one-class synthetic table cannot train a classifier
        syn_model = _models(seed)[name].fit(fx(synthetic[features]), syn_y) if both else None
        scores = {}
        for label, m in (("tstr", syn_model), ("trtr", real_model)):
            if m is None:
                scores[f"{label}_auc"], scores[f"{label}_accuracy"] = 0.5, float(max(truth.mean(), 1 - truth.mean()))
                continue
            prob = m.predict_proba(fx(holdout[features]))[:, 1]
            scores[f"{label}_auc"] = float(roc_auc_score(truth, prob)) if 0 < truth.sum() < len(truth) else float("nan")
            scores[f"{label}_accuracy"] = float(accuracy_score(truth, prob >= 0.5))
        out[name], models[name] = scores, (syn_model, real_model)
    return out, _Fitted(encoder=fx, features=features, target=target, positive=positive, models=models)


def _privacy(
    x_train: np.ndarray, x_hold: np.ndarray, x_syn: np.ndarray, seed: int
) -> tuple[float, float, float, float]:
    rng = np.random.default_rng(seed)
    n = min(len(x_train), len(x_hold))
    members = x_train[rng.permutation(len(x_train))[:n]]
    to_train = NearestNeighbors(n_neighbors=1).fit(members).kneighbors(x_syn)[0][:, 0]
    to_hold = NearestNeighbors(n_neighbors=1).fit(x_hold[:n]).kneighbors(x_syn)[0][:, 0]
    closer = float(np.mean(to_train < to_hold) + 0.5 * np.mean(to_train == to_hold))
    # Membership inference: a real row close to some synthetic row is guessed to be a member.
    syn_nn = NearestNeighbors(n_neighbors=1).fit(x_syn)
    score = -np.r_[syn_nn.kneighbors(members)[0][:, 0], syn_nn.kneighbors(x_hold[:n])[0][:, 0]]
    mia = float(roc_auc_score(np.r_[np.ones(n), np.zeros(n)], score))
    return float(np.median(to_train)), float(np.median(to_hold)), closer, mia


def _group_values(df: pd.DataFrame, g: Subgroup) -> pd.Series:
    if g.edges:
        x = pd.to_numeric(df[g.column], errors="coerce").to_numpy(dtype=float)
        labels = [
            f"<{g.edges[0]:g}",
            *(f"{a:g}-{b:g}" for a, b in zip(g.edges, g.edges[1:], strict=False)),
            f">={g.edges[-1]:g}",
        ]
        return pd.Series(np.array(labels)[np.searchsorted(np.array(g.edges), x, side="right")], index=df.index)
    return df[g.column].astype(str)


def _bias(
    train: pd.DataFrame, holdout: pd.DataFrame, synthetic: pd.DataFrame, groups: tuple[Subgroup, ...], fitted: _Fitted
) -> list[SubgroupRow]:
    rows: list[SubgroupRow] = []
    syn_model, real_model = fitted.models["logistic_regression"]
    for g in groups:
        real_v, syn_v, hold_v = (_group_values(df, g) for df in (train, synthetic, holdout))
        for value in sorted(real_v.unique()):
            real_share, syn_share = float((real_v == value).mean()), float((syn_v == value).mean())
            part = holdout[(hold_v == value).to_numpy()]
            rows.append(
                SubgroupRow(
                    subgroup=g.name,
                    value=str(value),
                    real_share=real_share,
                    synthetic_share=syn_share,
                    tstr_accuracy=fitted.accuracy(syn_model, part),
                    trtr_accuracy=fitted.accuracy(real_model, part),
                    erased=real_share >= MIN_SHARE and syn_share < ERASED_RATIO * real_share,
                )
            )
    return rows


def _dates_as_days(df: pd.DataFrame) -> pd.DataFrame:
    """Date columns as float days since 1970 (so distances, bins and KS treat them as numbers)."""
    dates = [c for c in df.columns if pd.api.types.is_datetime64_any_dtype(df[c])]
    if not dates:
        return df
    out = df.copy()
    for c in dates:
        out[c] = (out[c] - pd.Timestamp(0)).dt.total_seconds() / 86400.0
    return out


def _align(train: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """``df``'s columns in ``train``'s order and dtypes where they convert (a CSV's 1.0 is train's 1).

    ``train`` must already have its dates as days (:func:`_dates_as_days`); ``df``'s date columns,
    and date strings where ``train`` is numeric, are converted to days as well.
    """
    out = df[list(train.columns)].copy()
    for c in train.columns:
        text = pd.api.types.is_numeric_dtype(train[c]) and pd.api.types.is_object_dtype(out[c])
        if text and pd.to_numeric(out[c], errors="coerce").isna().sum() > out[c].isna().sum():
            out[c] = pd.to_datetime(out[c], errors="coerce")  # dates read back from a CSV
    out = _dates_as_days(out)
    for c in train.columns:
        if pd.api.types.is_numeric_dtype(train[c]) and not pd.api.types.is_numeric_dtype(out[c]):
            out[c] = pd.to_numeric(out[c], errors="coerce")
        if pd.api.types.is_integer_dtype(train[c]) and pd.api.types.is_float_dtype(out[c]):
            present = out[c].dropna()
            if bool((present.round() == present).all()):
                out[c] = out[c].astype("Int64") if out[c].isna().any() else out[c].astype(train[c].dtype)
    return out


def _check(train: pd.DataFrame, holdout: pd.DataFrame, synthetic: pd.DataFrame, target: str) -> None:
    problems = []
    for name, df in (("holdout", holdout), ("synthetic", synthetic)):
        missing = [c for c in train.columns if c not in df.columns]
        if missing:
            problems.append(f"{name} lacks columns {missing}")
    for name, df in (("train", train), ("holdout", holdout), ("synthetic", synthetic)):
        if len(df) < 2:
            problems.append(f"{name} has {len(df)} rows (need >= 2)")
    if target not in train.columns:
        problems.append(f"target column {target!r} is not in the training table")
    if problems:
        raise ValidationError(problems, where="synth evaluation")
