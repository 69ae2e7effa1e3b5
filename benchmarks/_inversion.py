"""Gradient inversion (Zhu et al. 2019, "Deep Leakage from Gradients"; Geiping et al. 2020, "Inverting
Gradients") against one site's update of medfed's logistic regression or MLP.

The attacker is the coordinator. It knows the global model it sent and the training configuration
(optimizer SGD, learning rate, local steps, batch size, DP clip norm), and it receives whatever the
protocol hands it: a flat float vector it takes for the site's update ``model - global``. It then
searches for dummy rows ``x`` (and soft labels ``sigmoid(t)``, rounded for the last quarter) whose
*simulated* update matches the observed one: cosine distance (Geiping et al., eq. 4) plus relative
squared L2 distance (Zhu et al.), every local SGD step unrolled and, where the configuration says
DP, every dummy example's gradient (DP-SGD) or the whole update (DP-FedAvg) clipped as the site
would. For the MLP each row is searched in the affine subspace the first-layer update spans
(:func:`row_subspace`). Restarts are ranked by the matching loss only: the attacker never sees the
true rows. For one row, :func:`analytic_logreg` and :func:`analytic_first_layer` need no search.

The tasks train with BCE-with-logits and torch's ``mean`` reduction (``medfed.learn.tasks``); the
functional model here reproduces their ``state_dict`` layout: ``weight``/``bias`` for logistic
regression, ``hidden.*``/``out.*`` for the MLP.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from medfed.core.params import Parameters

__all__ = [
    "AttackConfig",
    "Reconstruction",
    "Score",
    "analytic_first_layer",
    "analytic_logreg",
    "invert",
    "row_subspace",
    "score",
]

#: A record counts as recovered when the RMSE over its 13 standardised features is at most this.
RECORD_TOLERANCE = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class AttackConfig:
    """What the attacker assumes about the update, and how hard it searches.

    Attributes
    ----------
    batch : int
        Rows it reconstructs (the batch it believes produced the update).
    steps, lr : int, float
        Local SGD steps and learning rate (the coordinator sent them).
    per_example_clip : float or None
        DP-SGD's per-example clip norm, simulated on the dummy rows; ``None`` without DP-SGD.
    update_clip : float or None
        DP-FedAvg's clip norm of the whole update, simulated likewise; ``None`` without it.
    subspace : bool
        For an MLP, search each row in the affine subspace :func:`row_subspace` reads off the
        update (as the attacker can), rather than in all of R^d.
    iterations, restarts : int
        Adam iterations per restart; restarts from fresh N(0, 1) rows.
    """

    batch: int
    steps: int = 1
    lr: float = 0.01
    per_example_clip: float | None = None
    update_clip: float | None = None
    subspace: bool = True
    iterations: int = 500
    restarts: int = 8


@dataclass(frozen=True, slots=True)
class Reconstruction:
    """Rows ``x`` (standardised units), label probabilities ``y`` and the final matching loss."""

    x: np.ndarray
    y: np.ndarray
    loss: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Score:
    """Reconstruction error after matching reconstructed to true rows (Hungarian, on squared error).

    ``mse`` is per feature in standardised units; ``baseline_mse`` is that of guessing the feature
    mean (0 after standardisation) for every row; ``relative = mse / baseline_mse`` (≥ 1: no better
    than knowing nothing). ``recovered`` is the fraction of rows within :data:`RECORD_TOLERANCE`
    RMSE; ``label_accuracy`` the fraction of matched rows whose rounded label is right.
    """

    mse: float
    baseline_mse: float
    relative: float
    recovered: float
    label_accuracy: float


def _copies(params: Parameters, restarts: int) -> dict[str, torch.Tensor]:
    """The global weights, one float64 copy per restart: shapes ``(restarts, *shape)``."""
    # requires_grad: the per-row copies made from these must be differentiable in every step
    return {
        name: torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True).expand(restarts, *a.shape)
        for name, a in params
    }


def _logits(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits ``(R, B)`` of rows ``x`` ``(R, B, d)`` under per-row weights ``(R, B, *shape)``."""
    if "weight" in w:  # LogisticRegressionTask: Linear(d, 1)
        return (w["weight"][..., 0, :] * x).sum(-1) + w["bias"][..., 0]
    # MLPTask: hidden = Linear(d, h), act = ReLU, out = Linear(h, 1)
    hidden = torch.relu(torch.einsum("rbhd,rbd->rbh", w["hidden.weight"], x) + w["hidden.bias"])
    return (w["out.weight"][..., 0, :] * hidden).sum(-1) + w["out.bias"][..., 0]


def _clip(g: torch.Tensor, clip: float, dims: tuple[int, ...]) -> torch.Tensor:
    norm = torch.sqrt((g**2).sum(dim=dims, keepdim=True) + 1e-30)
    return g * torch.clamp(clip / norm, max=1.0)


def _step_gradient(w: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, clip: float | None) -> torch.Tensor:
    """Per restart, the flat mean-loss gradient ``(R, P)``; with ``clip``, the mean of per-example
    gradients each clipped to L2 norm ``clip`` (DP-SGD without its noise: the attacker cannot know it).

    Every row gets its own copy of the weights, so one backward pass yields per-example gradients.
    """
    batch = x.shape[1]
    rows = {n: t.unsqueeze(1).expand(t.shape[0], batch, *t.shape[1:]) for n, t in w.items()}
    loss = torch.nn.functional.binary_cross_entropy_with_logits(_logits(rows, x), y, reduction="sum")
    grads = torch.autograd.grad(loss, tuple(rows.values()), create_graph=True)
    per_example = torch.cat([g.reshape(*g.shape[:2], -1) for g in grads], dim=2)  # (R, B, P)
    if clip is not None:
        per_example = _clip(per_example, clip, dims=(2,))
    return per_example.mean(dim=1)


def _simulated_update(
    start: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, config: AttackConfig
) -> torch.Tensor:
    """``steps`` full-batch SGD steps from ``start`` on (x, y), unrolled so that x gets a gradient."""
    w = dict(start)
    sizes = [t[0].numel() for t in start.values()]
    for _ in range(config.steps):
        flat = _step_gradient(w, x, y, config.per_example_clip)
        parts = torch.split(flat, sizes, dim=1)
        w = {n: t - config.lr * g.reshape(t.shape) for (n, t), g in zip(w.items(), parts, strict=True)}
    update = torch.cat([(w[n] - start[n]).reshape(x.shape[0], -1) for n in start], dim=1)
    return update if config.update_clip is None else _clip(update, config.update_clip, dims=(1,))


def _matching_loss(sim: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per restart ``1 − cos`` (Geiping et al.) plus the relative squared L2 distance (Zhu et al.),
    which pins the scale, and with it the labels, that the cosine alone leaves free."""
    cos = torch.nn.functional.cosine_similarity(sim, target.expand_as(sim), dim=1)
    return 1.0 - cos + ((sim - target) ** 2).sum(1) / (target**2).sum()


def invert(observed: np.ndarray, global_params: Parameters, config: AttackConfig, *, seed: int) -> Reconstruction:
    """Rows and labels whose simulated update best matches ``observed`` (flat, parameter order).

    All restarts run at once, each with its own dummy rows (coordinates ~ N(0, 1) in R^d, or in
    :func:`row_subspace` for an MLP) and label logits 0; Adam, learning rate 0.1 decayed ×0.1 at 3/4
    of the iterations; the best restart by matching loss wins. DP-SGD is simulated for a mean over
    the batch, as Opacus steps for one row (the only DP-SGD case here).
    """
    start = _copies(global_params, config.restarts)
    target = torch.tensor(np.asarray(observed, dtype=np.float64))
    gen = torch.Generator().manual_seed(seed)
    features = global_params.arrays[0].shape[-1]
    point, directions = torch.zeros(features, dtype=torch.float64), torch.eye(features, dtype=torch.float64)
    if config.subspace and "hidden.weight" in global_params.names:
        point, directions = (torch.tensor(a) for a in row_subspace(observed, global_params, config.batch))
    shape = (config.restarts, config.batch)
    z = torch.randn(*shape, len(directions), generator=gen, dtype=torch.float64).requires_grad_(True)
    t = torch.zeros(*shape, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([z, t], lr=0.1)
    switch = 3 * config.iterations // 4
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[switch], gamma=0.1)
    for i in range(config.iterations):
        # Labels are binary: soft until the switch, then rounded and fixed (a sigmoid never reaches
        # 0 or 1, and the rows would bend to absorb the gap)
        y = torch.sigmoid(t) if i < switch else (t.detach() > 0).to(torch.float64)
        optimizer.zero_grad()
        loss = _matching_loss(_simulated_update(start, point + z @ directions, y, config), target)
        loss.sum().backward(inputs=[z, t])  # restarts are independent: the sum separates
        optimizer.step()
        schedule.step()
    x, y = (point + z @ directions).detach(), (t.detach() > 0).to(torch.float64)
    # no torch.no_grad() here: each simulated step needs autograd for the weights' gradient
    final = _matching_loss(_simulated_update(start, x, y, config), target).detach()
    best = int(torch.argmin(final))
    return Reconstruction(x[best].numpy().copy(), y[best].numpy().copy(), float(final[best]))


def row_subspace(observed: np.ndarray, global_params: Parameters, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The affine subspace ``point + span(directions)`` (dimension ``batch − 1``) that holds every
    row of the batch, read off an MLP update.

    Each local step adds ``Σ_b δ_b ⊗ (x_b, 1)`` to ``[W₁ | b₁]``, so the rows of ``[ΔW₁ | Δb₁]`` lie
    in the span of the ``(x_b, 1)`` (its top ``batch`` right singular vectors, exact while
    ``batch`` < the hidden width); intersected with "last coordinate = 1" that is an affine space
    holding each ``x_b`` (the rank argument of R-GAP, Zhu & Blaschko 2021). For one row it is the
    row itself: the analytic attack. Searching there leaves ``batch − 1`` unknowns per row, not 13.
    """
    hidden, features = global_params["hidden.weight"].shape
    flat = np.asarray(observed, dtype=np.float64)
    stacked = np.concatenate(
        [flat[: hidden * features].reshape(hidden, features), flat[hidden * features : hidden * (features + 1), None]],
        axis=1,
    )
    basis = np.linalg.svd(stacked, full_matrices=False)[2][:batch]  # (batch, features + 1), orthonormal rows
    last = basis[:, -1]
    coefficients = last / max(float(last @ last), 1e-300)  # least-norm c with (c @ basis)[-1] = 1
    point = coefficients @ basis
    null = np.linalg.svd(last[None, :])[2][1:]  # (batch − 1, batch): c ⊥ last keeps the last coordinate 0
    return point[:features], (null @ basis)[:, :features]


def analytic_logreg(observed: np.ndarray) -> Reconstruction:
    """One row from a logistic-regression update of a single row: ``Δw / Δb = x`` exactly.

    Every step's gradient is ``(σ(w·x + b) − y) · (x, 1)``, so the ratio holds after any number of
    steps; the sign of ``Δb = −lr Σ (σ − y)`` gives the label (``Δb > 0`` ⇔ y = 1).
    """
    flat = np.asarray(observed, dtype=np.float64)
    dw, db = flat[:-1], flat[-1]
    return Reconstruction(x=(dw / db)[None, :], y=np.array([1.0 if db > 0 else 0.0]), loss=0.0)


def analytic_first_layer(observed: np.ndarray, global_params: Parameters) -> Reconstruction:
    """One row from an MLP update of a single row: ``ΔW₁[k] / Δb₁[k] = x`` for any hidden unit the
    row activated (Geiping et al. 2020, Prop. D.1), taken at the unit whose bias moved most; the
    label from the sign of the output bias change, as for logistic regression.

    Exact after one step; after several it is a ratio of sums over the steps, still close while
    the hidden layer's gating does not change. With a batch it gives mixtures of rows instead.
    """
    hidden, features = global_params["hidden.weight"].shape
    flat = np.asarray(observed, dtype=np.float64)
    w1, b1 = flat[: hidden * features].reshape(hidden, features), flat[hidden * features : hidden * (features + 1)]
    k = int(np.argmax(np.abs(b1)))
    with np.errstate(all="ignore"):  # a zero bias change (all units dead) gives inf/NaN: scored as such
        x = w1[k] / b1[k]
    return Reconstruction(x=x[None, :], y=np.array([1.0 if flat[-1] > 0 else 0.0]), loss=0.0)


def score(x_true: np.ndarray, y_true: np.ndarray, rec: Reconstruction) -> Score:
    """:class:`Score` of ``rec`` against the true rows; reconstructed rows beyond the true ones are ignored."""
    x_hat = np.nan_to_num(np.asarray(rec.x, dtype=np.float64), nan=0.0, posinf=1e6, neginf=-1e6)
    cost = ((x_true[:, None, :] - x_hat[None, :, :]) ** 2).mean(axis=2)
    rows, cols = linear_sum_assignment(cost)
    per_row = cost[rows, cols]
    mse = float(per_row.mean())
    baseline = float((x_true[rows] ** 2).mean())
    labels = (np.asarray(rec.y)[cols] > 0.5).astype(float) == y_true[rows]
    return Score(
        mse=mse,
        baseline_mse=baseline,
        relative=mse / baseline,
        recovered=float((np.sqrt(per_row) <= RECORD_TOLERANCE).mean()),
        label_accuracy=float(labels.mean()),
    )
