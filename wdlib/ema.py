"""Weight decay as a moving average: closed forms, steady-state weight RMS, and Su's simulation.

With decoupled, lr-multiplied decay the update ``theta_t = (1 - eta_t*lambda_t) theta_{t-1} - eta_t*u_t``
is an exponential moving average of the targets ``-u_t/lambda_t`` (Su 2025, seed 000; Wang &
Aitchison, arXiv 2405.13698). Unrolled::

    theta_T = prod_t (1 - eta_t*lambda_t) theta_0 - sum_i eta_i prod_{k>i} (1 - eta_k*lambda_k) u_i   (exact)
            ≈ exp(-kappa_T) (theta_0 - sum_i exp(kappa_i) eta_i u_i),   kappa_t = sum_{i<=t} eta_i*lambda_i

For AdamW with zero-mean gradient noise the weights settle at ``RMS ≈ sqrt(eta/(2*lambda))``; without
decay ``RMS_t^2 ≈ RMS_0^2 + eta^2*t``. Used by chapter 2 (``notebooks/02_ema_view.ipynb``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .optim import Adam, decay_factor
from .schedules import Constant, Cosine, EqualContribution, InverseSqrt, WarmupStableDecay, contribution_weights, values

__all__ = [
    "predicted_rms",
    "no_decay_rms",
    "update_rms",
    "reconstruct",
    "simulate_rms",
    "rms_recursion",
    "contribution_figure_data",
    "SCHEDULE_NAMES",
]


def predicted_rms(lr: Any, weight_decay: Any) -> Any:
    """Steady-state weight RMS of AdamW under pure gradient noise: ``sqrt(lr/(2*weight_decay))`` (Su 2025)."""
    lr, wd = np.asarray(lr, dtype=np.float64), np.asarray(weight_decay, dtype=np.float64)
    if np.any(lr <= 0) or np.any(wd <= 0):
        raise ValueError("lr and weight_decay must be > 0 for a steady state")
    out = np.sqrt(lr / (2.0 * wd))
    return float(out) if out.ndim == 0 else out


def no_decay_rms(rms0: float, lr: float, steps: Any) -> Any:
    """Weight RMS without decay after ``steps`` AdamW steps of unit-RMS updates: ``sqrt(rms0^2 + lr^2*t)``."""
    t = np.asarray(steps, dtype=np.float64)
    out = np.sqrt(rms0**2 + lr**2 * t)
    return float(out) if out.ndim == 0 else out


def rms_recursion(lr: Any, weight_decay: Any, rms0: float) -> np.ndarray:
    """Mean-field weight RMS along a schedule: ``E theta_t^2 = (1 - eta_t*lambda_t)^2 E theta_{t-1}^2 + eta_t^2``.

    The recursion behind ``sqrt(eta/(2*lambda))`` (unit-RMS updates uncorrelated with the weights),
    followed step by step instead of assuming the weights sit at the equilibrium of the current
    ``eta_t, lambda_t``: when the LR falls on the timescale ``1/(eta*lambda)`` they lag behind it.
    Returns the RMS after each step.
    """
    eta = np.asarray(lr, dtype=np.float64)
    keep = (1.0 - eta * np.broadcast_to(np.asarray(weight_decay, dtype=np.float64), eta.shape)) ** 2
    out = np.empty_like(eta)
    m = rms0**2
    for t in range(eta.size):  # a scalar recursion over steps: cheap, and not vectorizable without cumprod overflow
        m = keep[t] * m + eta[t] ** 2
        out[t] = m
    return np.sqrt(out)


def update_rms(beta1: float) -> float:
    """RMS of Adam's update ``m_hat/sqrt(v_hat)`` under white gradient noise: ``sqrt((1-beta1)/(1+beta1))``.

    ``m`` averages ``g`` with weights ``(1-beta1)*beta1^k``, so ``Var(m) = (1-beta1)^2/(1-beta1^2) Var(g)``,
    while ``v`` tracks ``E[g^2] = Var(g)``. For beta1 = 0.9 that is 0.229, not 1.
    """
    if not 0 <= beta1 < 1:
        raise ValueError(f"beta1 must be in [0, 1), got {beta1!r}")
    return math.sqrt((1 - beta1) / (1 + beta1))


def reconstruct(theta0: np.ndarray, updates: np.ndarray, lr: np.ndarray, shrink: np.ndarray) -> dict[str, Any]:
    """Rebuild the final parameters of a decoupled-decay run from its initial value and recorded updates.

    ``updates[t]`` is ``u_t`` (the optimizer's direction, e.g. ``m_hat/(sqrt(v_hat)+eps)`` for Adam),
    ``lr[t]`` the step's ``eta_t`` and ``shrink[t]`` its decay factor ``eta_t*lambda_t``. Returns the
    exact unrolled sum (``"exact"``), Su's exponential form (``"approx"``), and ``"bound"``, an upper
    bound on ``|approx - exact|`` per coordinate: each weight of the exponential form is off by a
    factor ``exp(d_i)``, ``0 <= d_i <= sum_{k>i} x_k^2/(2(1-x_k))`` with ``x = shrink``, so
    ``|approx - exact| <= (exp(D) - 1) (w_0|theta_0| + sum_i w_i |u_i|)``, ``D = sum_k x_k^2/(2(1-x_k))``.
    """
    theta0, updates = np.asarray(theta0, np.float64), np.asarray(updates, np.float64)
    lr, shrink = np.asarray(lr, np.float64), np.asarray(shrink, np.float64)
    if updates.shape[0] != lr.shape[0] or lr.shape != shrink.shape:
        raise ValueError("updates, lr and shrink must have one row per step")
    lam = np.divide(shrink, lr, out=np.zeros_like(shrink), where=lr > 0)
    w, w0 = contribution_weights(lr, lam, exact=True)
    wa, w0a = contribution_weights(lr, lam, exact=False)
    exact = w0 * theta0 - w @ updates
    approx = w0a * theta0 - wa @ updates
    big_d = float(np.sum(shrink**2 / (2 * (1 - shrink))))
    bound = (math.expm1(big_d)) * (w0 * np.abs(theta0) + w @ np.abs(updates))
    return {"exact": exact, "approx": approx, "bound": bound, "D": big_d}


def simulate_rms(
    lrs: Sequence[float],
    weight_decays: Sequence[float],
    *,
    coords: int = 10_000,
    steps: int = 100_000,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    init_std: float = 0.1,
    seed: int = 0,
    records: int = 100,
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Su's check of the steady-state RMS: AdamW on pure Gaussian gradients, vectorized.

    Each (lr, weight_decay) pair is a tensor of ``coords`` coordinates in its own param group of
    :class:`wdlib.optim.Adam` (decoupled decay, torch's fused kernel); every step draws fresh
    ``N(0, 1)`` gradients for all of them. Returns ``step`` (``records`` evaluation points), ``rms``
    (records x pairs), ``predicted`` (pairs), and ``update_rms`` (pairs): the RMS of the last step's
    ``(theta_{t-1}(1 - lr*lambda) - theta_t)/lr``, Adam's update without the decay.
    Su's setting (seed 000): 10,000 coordinates, 100,000 steps, betas (0.9, 0.95), lr 1e-3, wd 0.1,
    init std 0.1: predicted 0.0707. A weight decay of 0 gives the no-decay growth instead.
    """
    if len(lrs) != len(weight_decays) or not lrs:
        raise ValueError("lrs and weight_decays must be non-empty sequences of the same length")
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(seed)
    params = [torch.nn.Parameter(init_std * torch.randn(coords, generator=gen, device=dev)) for _ in lrs]
    opt = Adam(
        [{"params": [p], "lr": lr, "weight_decay": wd} for p, lr, wd in zip(params, lrs, weight_decays)],
        betas=betas,
        eps=eps,
        decay="decoupled",
    )
    every = max(steps // records, 1)
    rec_steps, rms = [], []
    grads = torch.empty(len(lrs), coords, device=dev)
    prev = None
    for t in range(1, steps + 1):
        grads.normal_(generator=gen)
        for i, p in enumerate(params):
            p.grad = grads[i]
        if t == steps:
            prev = [p.detach().clone() for p in params]
        opt.step()
        if t % every == 0 or t == steps:
            rec_steps.append(t)
            rms.append([float(p.detach().pow(2).mean().sqrt()) for p in params])
    upd = [
        float(((q * (1 - decay_factor(g)) - p.detach()) / lr).pow(2).mean().sqrt())  # the step less the decay
        for q, p, lr, g in zip(prev, params, lrs, opt.param_groups)
    ]
    pred = np.array([math.sqrt(lr / (2 * wd)) if wd > 0 else float("nan") for lr, wd in zip(lrs, weight_decays)])
    return {"step": np.array(rec_steps), "rms": np.array(rms), "predicted": pred, "update_rms": np.array(upd)}


def contribution_figure_data(lr: float, weight_decay: float, steps: int, schedule: str = "constant") -> dict[str, Any]:
    """Contribution weights and predicted RMS along a run for a named schedule (the chapter's explorer).

    ``schedule`` is one of "constant", "cosine", "wsd", "equal contribution" (constant lambda,
    ``eta_s = eta/(lambda*eta*s + 1)``) and "inverse sqrt" (eta and lambda both ``/sqrt(2*lambda*eta*s + 1)``).
    Returns ``step``, ``lr``, ``wd``, ``weights`` (each step's weight in the final parameters, exact),
    ``rms`` (the mean-field recursion :func:`rms_recursion`, started at the equilibrium of step 0) and
    ``rms_instant`` (``sqrt(eta_s/(2*lambda_s))``, the equilibrium of each step's own values).
    The cosine and WSD shapes here go to lr/100 without warmup.
    """
    makers = {
        "constant": (Constant(lr), Constant(weight_decay)),
        "cosine": (Cosine(peak=lr, steps=steps, final=lr / 100), Constant(weight_decay)),
        "wsd": (
            WarmupStableDecay(peak=lr, steps=steps, decay_steps=max(steps // 5, 1), final=lr / 100),
            Constant(weight_decay),
        ),
        "equal contribution": (EqualContribution(peak=lr, weight_decay=weight_decay), Constant(weight_decay)),
        "inverse sqrt": (
            InverseSqrt(peak=lr, rate=2 * weight_decay * lr),
            InverseSqrt(peak=weight_decay, rate=2 * weight_decay * lr),
        ),
    }
    if schedule not in makers:
        raise ValueError(f"schedule must be one of {', '.join(repr(k) for k in makers)}, got {schedule!r}")
    lr_s, wd_s = (values(m, steps) for m in makers[schedule])
    w, w0 = contribution_weights(lr_s, wd_s)
    return {
        "step": np.arange(steps),
        "lr": lr_s,
        "wd": wd_s,
        "weights": w,
        "theta0_weight": w0,
        "rms": rms_recursion(lr_s, wd_s, math.sqrt(lr_s[0] / (2 * wd_s[0]))),
        "rms_instant": np.sqrt(lr_s / (2 * wd_s)),
    }


SCHEDULE_NAMES: tuple[str, ...] = ("constant", "cosine", "wsd", "equal contribution", "inverse sqrt")
