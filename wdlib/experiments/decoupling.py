"""Experiments of chapter 1, "L2 regularization versus decoupled weight decay" (DEC-1, 2, 3, 7, 9).

Each function runs one measurement on a real model and data (MNIST-1D and an MLP) or on a quadratic
and returns plain arrays and numbers; the notebook draws them and computes the verdicts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data import Dataset, batches, mnist1d
from ..diagnostics import ShrinkageProbe
from ..models import MLP
from ..optim import SGD, Adam, convert_weight_decay
from ..schedules import Cosine, HyperparameterScheduler, Warmup
from ..stats import spearman
from ..train import evaluate, fit, train_step

__all__ = ["SCALE_SETTINGS", "Setup", "setup", "trajectory_gap", "shrinkage_vs_second_moment",
           "quadratic_fixed_points", "convention_runs", "warmup_delay_runs"]


@dataclass(frozen=True)
class Setup:
    """Data and model size of one scale."""

    num_samples: int
    width: int
    depth: int
    batch_size: int
    steps: int


SCALE_SETTINGS: dict[str, Setup] = {
    # 2 CPU cores, a few seconds per run
    "smoke": Setup(num_samples=4000, width=128, depth=2, batch_size=100, steps=1000),
    # one GPU (or a patient CPU): 10x the data, 4x the width, 10x the steps
    "full": Setup(num_samples=40000, width=512, depth=3, batch_size=128, steps=10000),
}


def setup(scale: str, device: torch.device | str = "cpu") -> tuple[Setup, Dataset]:
    """The settings and the MNIST-1D data of ``scale`` ("smoke" or "full")."""
    if scale not in SCALE_SETTINGS:
        raise ValueError(f"scale must be one of {', '.join(repr(s) for s in SCALE_SETTINGS)}, got {scale!r}")
    s = SCALE_SETTINGS[scale]
    return s, mnist1d(num_samples=s.num_samples).to(device)


def _model(s: Setup, data: Dataset, seed: int, dtype: torch.dtype) -> MLP:
    torch.manual_seed(seed)
    return MLP(data.input_dim, s.width, s.depth, data.num_classes).to(device=data.x_train.device, dtype=dtype)


def trajectory_gap(s: Setup, data: Dataset, *, lr: float, weight_decay: float, momentum: float,
                   dtype: torch.dtype = torch.float64, seed: int = 0, steps: int | None = None) -> np.ndarray:
    """Train SGD+L2 and SGDW side by side from one init on the same batches (DEC-1).

    Returns ``max_i |theta_L2[i] - theta_SGDW[i]|`` after each step. Both use the lr-multiplied
    lambda, so without momentum the two updates are the same algebra:
    ``theta - lr*(g + lambda*theta) = theta*(1 - lr*lambda) - lr*g``.
    """
    steps = steps or s.steps
    data = data.to(data.x_train.device, dtype)
    a = _model(s, data, seed, dtype)
    b = copy.deepcopy(a)
    opt_a = SGD(a.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, decay="l2")
    opt_b = SGD(b.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, decay="decoupled")
    gen = torch.Generator().manual_seed(seed)
    gap = np.empty(steps)
    for t, (x, y) in enumerate(batches(data.x_train, data.y_train, s.batch_size, steps, gen)):
        train_step(a, opt_a, x, y)
        train_step(b, opt_b, x, y)
        with torch.no_grad():
            gap[t] = max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters()))
    return gap


def shrinkage_vs_second_moment(s: Setup, data: Dataset, *, decay: str, lr: float, weight_decay: float,
                               seed: int = 0, steps: int | None = None, window: int | None = None,
                               dtype: torch.dtype = torch.float64) -> dict[str, Any]:
    """Per-weight effective shrinkage against Adam's second moment, for one decay rule (DEC-2).

    Trains an MLP with ``Adam(decay=...)`` and measures, over the last ``window`` steps (default: the
    last third), each weight's decay rate per step with :class:`~wdlib.diagnostics.ShrinkageProbe`
    (weight matrices only: the decayed tensors). Returns the rates divided by ``lr*weight_decay``
    (1 means "decayed like AdamW"), the mean ``v_hat``, their Spearman rank correlation and the
    relative spread of the rates.
    """
    steps = steps or s.steps
    window = window or max(steps // 3, 1)
    data = data.to(data.x_train.device, dtype)
    model = _model(s, data, seed, dtype)
    opt = Adam(model.parameters(), lr=lr, weight_decay=weight_decay, decay=decay)
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    probe = ShrinkageProbe(opt, matrices, start=steps - window)
    hist = fit(model, opt, data, steps=steps, batch_size=s.batch_size, seed=seed, hooks=[probe])
    res = probe.result()
    rel = res["shrinkage"] / (lr * weight_decay)
    return {"relative_shrinkage": rel, "v_hat": res["v_hat"], "spearman": spearman(rel, res["v_hat"]),
            "relative_spread": float(np.std(rel) / abs(np.mean(rel))), "test_acc": hist.test_acc[-1],
            "final_loss": float(np.mean(hist.loss[-50:]))}


def quadratic_fixed_points(*, dim: int = 20, lrs: tuple[float, ...] = (0.01, 0.03, 0.1),
                           weight_decay: dict[str, float] | None = None, momentum: float = 0.0,
                           steps: int = 8000, seed: int = 0) -> list[dict[str, Any]]:
    """Fixed points of SGD with decoupled decay on ``L(w) = 1/2 sum_i a_i (w_i - w*_i)^2`` (DEC-3).

    For each learning rate and each convention ("decoupled": shrink ``lr*lambda`` per step;
    "independent": shrink ``lambda``), runs ``wdlib.optim.SGD`` in float64 to its fixed point and
    compares it with the closed-form minimizer of ``L + (alpha/2)||w||^2``,
    ``w_i = a_i w*_i / (a_i + alpha)``, for the predicted ``alpha`` (``lambda*(1-momentum)`` and
    ``lambda*(1-momentum)/lr``) and for the other convention's ``alpha``. Also returns the ``alpha``
    read off the fixed point, ``alpha_i = a_i (w*_i - w_i)/w_i``.
    """
    weight_decay = weight_decay or {"decoupled": 0.5, "independent": 0.02}
    gen = torch.Generator().manual_seed(seed)
    a = torch.logspace(-1, 1, dim, dtype=torch.float64)
    target = torch.randn(dim, generator=gen, dtype=torch.float64)
    out = []
    for decay, lam in weight_decay.items():
        for lr in lrs:
            w = torch.zeros(dim, dtype=torch.float64)
            opt = SGD([w], lr=lr, momentum=momentum, weight_decay=lam, decay=decay)
            for _ in range(steps):
                w.grad = a * (w - target)  # gradient of L, set directly (no autograd needed)
                opt.step()
            w_inf = w.detach()
            alpha_dec, alpha_ind = lam * (1 - momentum), lam * (1 - momentum) / lr
            predicted, other = (alpha_dec, alpha_ind) if decay == "decoupled" else (alpha_ind, alpha_dec)

            def err(alpha: float) -> float:
                closed = a * target / (a + alpha)
                return float((w_inf - closed).norm() / closed.norm())
            alpha_read = (a * (target - w_inf) / w_inf).numpy()
            out.append({"decay": decay, "lr": lr, "weight_decay": lam, "momentum": momentum,
                        "alpha_predicted": predicted, "alpha_other": other,
                        "alpha_measured": float(np.median(alpha_read)),
                        "alpha_measured_spread": float(np.ptp(alpha_read)),
                        "error_predicted": err(predicted), "error_other": err(other)})
    return out


def _lr_schedule(s: Setup, peak_lr: float, steps: int) -> Warmup:
    warm = max(steps // 20, 1)
    return Warmup(Cosine(peak=peak_lr, steps=steps - warm, final=peak_lr / 10), steps=warm)


def convention_runs(s: Setup, data: Dataset, *, peak_lr: float, weight_decay: float, seed: int = 0,
                    steps: int | None = None, dtype: torch.dtype = torch.float64) -> dict[str, Any]:
    """One AdamW run in the torch convention and the same run in the paper's convention (DEC-9).

    Under warmup + cosine (:class:`~wdlib.schedules.HyperparameterScheduler`), trains from one init
    on the same batches: ``torch.optim.AdamW(weight_decay=lambda)``, ``wdlib Adam(decay="decoupled")``
    with the same lambda, ``Adam(decay="independent")`` with ``lambda*peak_lr`` (the conversion), and,
    as a control, ``Adam(decay="independent")`` with the unconverted lambda. Returns the final
    parameter vectors' max differences from the torch run, and the final weight norms.
    """
    steps = steps or s.steps
    data = data.to(data.x_train.device, dtype)
    init = _model(s, data, seed, dtype)
    lam_paper = convert_weight_decay(weight_decay, peak_lr, "decoupled", "independent")
    makers = {
        "torch AdamW": lambda p: torch.optim.AdamW(p, lr=peak_lr, weight_decay=weight_decay),
        "wdlib decoupled": lambda p: Adam(p, lr=peak_lr, weight_decay=weight_decay, decay="decoupled"),
        "wdlib independent, converted": lambda p: Adam(p, lr=peak_lr, weight_decay=lam_paper, decay="independent"),
        "wdlib independent, unconverted": lambda p: Adam(p, lr=peak_lr, weight_decay=weight_decay,
                                                         decay="independent"),
    }
    finals, accs = {}, {}
    for name, make in makers.items():
        model = copy.deepcopy(init)
        opt = make(model.parameters())
        sched = HyperparameterScheduler(opt, lr=_lr_schedule(s, peak_lr, steps))
        hist = fit(model, opt, data, steps=steps, batch_size=s.batch_size, seed=seed, scheduler=sched)
        finals[name] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        accs[name] = hist.test_acc[-1]
    ref = finals["torch AdamW"]
    return {"weight_decay_torch": weight_decay, "weight_decay_paper": lam_paper,
            "max_abs_diff": {k: float((v - ref).abs().max()) for k, v in finals.items()},
            "weight_norm": {k: float(v.norm()) for k, v in finals.items()}, "test_acc": accs}


def warmup_delay_runs(s: Setup, data: Dataset, *, peak_lr: float, weight_decay: float, warmup_steps: int,
                      seed: int = 0, steps: int | None = None) -> dict[str, Any]:
    """AdamW with warmup + cosine, decay on from step 0 against decay switched on after warmup (DEC-7).

    Returns final weight RMS of the weight matrices and test accuracy for both runs.
    """
    from ..schedules import Constant, Delayed

    steps = steps or s.steps
    init = _model(s, data, seed, torch.float32)
    lr = Warmup(Cosine(peak=peak_lr, steps=steps - warmup_steps, final=peak_lr / 10), steps=warmup_steps)
    out = {}
    for name, wd in (("decay from step 0", Constant(weight_decay)),
                     ("decay after warmup", Delayed(Constant(weight_decay), warmup_steps))):
        model = copy.deepcopy(init)
        opt = Adam(model.parameters(), lr=peak_lr, weight_decay=weight_decay, decay="decoupled")
        hist = fit(model, opt, data, steps=steps, batch_size=s.batch_size, seed=seed,
                   scheduler=HyperparameterScheduler(opt, lr=lr, weight_decay=wd))
        mats = torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.ndim >= 2])
        out[name] = {"weight_rms": float(mats.pow(2).mean().sqrt()), "test_acc": hist.test_acc[-1],
                     "test_loss": hist.test_loss[-1]}
    return out


def accuracy(model: torch.nn.Module, data: Dataset) -> float:
    """Test accuracy of ``model`` on ``data``."""
    return evaluate(model, data.x_test, data.y_test)[1]
