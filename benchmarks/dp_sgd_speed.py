"""DP-SGD step time ÷ non-private step time, for Opacus's per-example hooks and for ghost clipping.

    .venv/bin/python benchmarks/dp_sgd_speed.py [--steps 200] [--batch 64] [--repeats 3]

Models and data (all shipped in packages):

* ``mlp``: medfed's MLP task module (13 → 16 → 1) on Fed-Heart-Disease's Cleveland rows;
* ``mlp-wide``: the same shape with 256 hidden units (the per-example cost grows with width);
* ``cnn``: a small CNN (conv 8 → conv 16 → linear) on scikit-learn's 8×8 digits (binary: digit ≥ 5).

Each step: a batch of ``--batch`` rows, forward, backward, optimiser step (SGD). Non-private: plain
torch. ``hooks``: Opacus ``GradSampleModule`` + ``DPOptimizer`` (every per-example gradient stored,
clipped, summed, noised). ``ghost``: Opacus ``GradSampleModuleFastGradientClipping`` (per-example norms
without per-example gradients, second backward on the reweighted loss) + its optimiser. Reported:
the best of ``--repeats`` timings of ``--steps`` steps, per step, and the ratio to non-private in the
same run. Results: stdout and ``benchmarks/results/dp_sgd_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent


def _heart() -> tuple[torch.Tensor, torch.Tensor]:
    from medfed.data.heart import load_fed_heart_disease

    d = next(iter(load_fed_heart_disease().values()))
    return torch.from_numpy(d.x_train), torch.from_numpy(d.y_train)


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
    return x, torch.from_numpy((digits.target >= 5).astype(np.float32))


def _mlp(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(13, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 1),
    )  # fmt: skip


Step = Callable[[torch.Tensor, torch.Tensor], None]


def _plain(model: nn.Module) -> Step:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y, reduction="sum").backward()
        opt.step()

    return step


def _hooks(model: nn.Module, batch: int) -> Step:
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    gsm = GradSampleModule(model, loss_reduction="sum")
    opt = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.01), noise_multiplier=1.0, max_grad_norm=1.0,
                      expected_batch_size=batch, loss_reduction="sum")  # fmt: skip

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.binary_cross_entropy_with_logits(
            gsm(x.requires_grad_(True)).squeeze(-1), y, reduction="sum"
        )
        loss.backward()
        opt.step()

    return step


def _ghost(model: nn.Module, batch: int) -> Step:
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    gsm = GradSampleModuleFastGradientClipping(model, max_grad_norm=1.0, use_ghost_clipping=True, loss_reduction="sum")
    opt = DPOptimizerFastGradientClipping(
        torch.optim.SGD(gsm.parameters(), lr=0.01),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=batch,
        loss_reduction="sum",
    )
    criterion = DPLossFastGradientClipping(gsm, opt, nn.BCEWithLogitsLoss(reduction="sum"), loss_reduction="sum")

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        criterion(gsm(x.requires_grad_(True)).squeeze(-1), y).backward()
        opt.step()

    return step


def _time(step: Step, x: torch.Tensor, y: torch.Tensor, *, steps: int, batch: int, repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, len(y), (batch,), generator=gen) for _ in range(steps)]
    for idx in batches[:5]:  # warm-up
        step(x[idx], y[idx])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for idx in batches:
            step(x[idx], y[idx])
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # one core per site process, as nodes run
    warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")  # Opacus: torch's RNG, not a CSPRNG
    heart, digits = _heart(), _digits()
    cases = {"mlp": (lambda: _mlp(16), heart), "mlp-wide": (lambda: _mlp(256), heart), "cnn": (_cnn, digits)}
    rows = []
    print(f"torch {torch.__version__}, 1 thread, batch {args.batch}, best of {args.repeats} × {args.steps} steps")
    for name, (make, (x, y)) in cases.items():
        kw = {"steps": args.steps, "batch": args.batch, "repeats": args.repeats}
        plain = _time(_plain(make()), x, y, **kw)
        hooks = _time(_hooks(make(), args.batch), x, y, **kw)
        ghost = _time(_ghost(make(), args.batch), x, y, **kw)
        row = {"model": name, "plain_ms": plain * 1e3, "hooks_ms": hooks * 1e3, "ghost_ms": ghost * 1e3,
               "hooks_ratio": hooks / plain, "ghost_ratio": ghost / plain}  # fmt: skip
        rows.append(row)
        print(
            f"{name:9s} plain {row['plain_ms']:.3f} ms/step  hooks {row['hooks_ms']:.3f} ms "
            f"({row['hooks_ratio']:.2f}x)  ghost {row['ghost_ms']:.3f} ms ({row['ghost_ratio']:.2f}x)",
            flush=True,
        )
    out = HERE / "results" / "dp_sgd_speed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
