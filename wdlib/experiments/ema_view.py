"""Experiments of chapter 2, "Weight decay as a moving average" (EMA-1 to EMA-5).

Training runs go through :func:`wdlib.runs.run` (MNIST-1D, MLPs); the simulation is
:func:`wdlib.ema.simulate_rms`. Each function returns plain numbers and arrays; the notebook draws
them and computes the verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import RunConfig
from ..ema import predicted_rms, reconstruct
from ..schedules import contribution_weights
from ..runs import Store, run
from ..train import build_data, build_model

__all__ = ["Setup", "SCALE_SETTINGS", "setup", "base_config", "reconstruction", "memory", "rms_network",
           "schedule_comparison"]


@dataclass(frozen=True)
class Setup:
    """Sizes of one scale."""

    scale: str
    num_samples: int
    width: int
    batch_size: int
    steps: int              # EMA-1, EMA-4 runs
    memory_steps: int       # EMA-2 runs
    rms_steps: int          # EMA-3 network runs
    sim_steps: int          # EMA-3 sweep of the simulation (Su's own point always runs 100,000 steps)
    sim_coords: int


SCALE_SETTINGS: dict[str, Setup] = {
    "smoke": Setup("smoke", num_samples=4000, width=128, batch_size=100, steps=1000, memory_steps=1500,
                   rms_steps=8000, sim_steps=50_000, sim_coords=10_000),
    "full": Setup("full", num_samples=40_000, width=512, batch_size=128, steps=10_000, memory_steps=15_000,
                  rms_steps=80_000, sim_steps=200_000, sim_coords=100_000),
}


def setup(scale: str) -> Setup:
    """The settings of ``scale`` ("smoke" or "full")."""
    if scale not in SCALE_SETTINGS:
        raise ValueError(f"scale must be one of {', '.join(repr(s) for s in SCALE_SETTINGS)}, got {scale!r}")
    return SCALE_SETTINGS[scale]


def base_config(s: Setup, seed: int = 0, **changes: Any) -> RunConfig:
    """AdamW (decoupled) on MNIST-1D with an MLP of depth 2; only weight matrices decayed."""
    cfg = RunConfig(data="mnist1d", data_args={"num_samples": s.num_samples}, model="mlp",
                    model_args={"width": s.width, "depth": 2}, optimizer="adam", decay="decoupled",
                    steps=s.steps, batch_size=s.batch_size, seed=seed, scale=s.scale)
    return cfg.replace(**changes) if changes else cfg


def _check(r: Any) -> Any:
    if r.diverged:
        raise RuntimeError(f"run {r.info.get('key')} diverged at step {r.diverged_at}")
    return r


def reconstruction(s: Setup, *, lr: float, weight_decay: float, lr_schedule: dict[str, Any] | None,
                   seed: int = 0, device: str = "cpu", store: Store | None = None) -> dict[str, Any]:
    """EMA-1: rebuild 1,024 coordinates of a hidden weight matrix from theta_0 and the recorded updates.

    Float64 run with the ``"updates"`` probe. Returns the largest relative error of the exact unrolled
    form and of Su's ``exp(-kappa)`` form, the a-priori bound of the latter, and ``D``.
    """
    cfg = base_config(s, seed, lr=lr, weight_decay=weight_decay, lr_schedule=lr_schedule, dtype="float64",
                      probes=[{"name": "updates", "tensor": 1, "coords": 1024}])
    r = _check(run(cfg, store, device=device))
    p = {k.split("/", 1)[1]: v for k, v in r.probes.items() if k.startswith("updates/")}
    rec = reconstruct(p["theta0"], p["updates"], p["lr"], p["shrink"])
    scale = np.abs(p["final"]).max()
    err_exact = np.abs(rec["exact"] - p["final"])
    err_approx = np.abs(rec["approx"] - p["final"])
    return {"max_rel_error_exact": float(err_exact.max() / scale),
            "max_rel_error_approx": float(err_approx.max() / scale),
            "max_error_approx": float(err_approx.max()), "within_bound": bool(np.all(err_approx <= rec["bound"] + 1e-12)),
            "bound_max": float(rec["bound"].max()), "D": rec["D"], "lr": p["lr"], "shrink": p["shrink"],
            "final": p["final"], "approx": rec["approx"], "theta0_weight": float(np.prod(1 - p["shrink"]))}


def memory(s: Setup, *, lr: float, kappas: tuple[float, ...], perturb_step: int, seed: int = 0,
           snapshots: int = 60, device: str = "cpu", store: Store | None = None) -> dict[str, Any]:
    """EMA-2: how fast the effect of one replaced batch fades, against ``exp(-(kappa_t - kappa_j))``.

    For each target ``kappa_T`` (lambda = kappa_T/(lr*memory_steps)), two runs from one init on the same batches, except that the second replaces the
    batch of step ``perturb_step`` by one from another seed. The parameter distance ``||theta^A_t -
    theta^B_t||`` (every coordinate of a width-64 MLP) is read at ``snapshots`` points; the returned
    ``ratio`` is that distance over its value at the first snapshot after the perturbation, and
    ``predicted`` is ``exp(-lr*lambda*(t - t_first))``. ``rate`` is the fitted decay rate per step
    (log-linear least squares after the first snapshot), to compare with ``lr*lambda``. Also the
    share of ``theta_0`` left in the final weight matrices, ``<theta_T, theta_0>/||theta_0||^2`` of the
    unperturbed run, against ``exp(-kappa_T)``, with its noise floor ``||theta_T||/(||theta_0|| sqrt(n))``
    (the projection of a random vector of the same norm). Keys of the result are the lambdas.
    """
    every = max(s.memory_steps // snapshots, 1)
    out: dict[str, Any] = {}
    for kappa in kappas:
        wd = kappa / (lr * s.memory_steps)
        common = dict(lr=lr, weight_decay=wd, steps=s.memory_steps, eval_every=every, diagnostics=["params"],
                      model_args={"width": 64, "depth": 2}, dtype="float64")
        a_cfg = base_config(s, seed, **common)
        a = _check(run(a_cfg, store, device=device))
        b = _check(run(base_config(s, seed, perturb_step=perturb_step, **common), store, device=device))
        steps = a.history["step"]
        dist = np.linalg.norm(a.history["diag/params"] - b.history["diag/params"], axis=1)
        first = int(np.flatnonzero(steps > perturb_step)[0])
        t, d = steps[first:], dist[first:]
        ratio = d / d[0]
        slope = float(np.polyfit(t - t[0], np.log(ratio), 1)[0])
        # theta_0's share of the final decayed weights: projection on the initial matrices
        init_model = build_model(a_cfg, build_data(a_cfg))
        init = torch.cat([p.detach().reshape(-1).double() for p in init_model.parameters()]).numpy()
        mask = np.concatenate([np.full(p.numel(), p.ndim >= 2) for p in init_model.parameters()])
        final = a.history["diag/params"][-1]
        projection = float(final[mask] @ init[mask] / (init[mask] @ init[mask]))
        noise = float(np.linalg.norm(final[mask]) / (np.linalg.norm(init[mask]) * np.sqrt(mask.sum())))
        out[wd] = {"step": t, "ratio": ratio, "predicted": np.exp(-lr * wd * (t - t[0])), "rate": -slope,
                   "eta_lambda": lr * wd, "distance_first": float(d[0]),
                   "ratio_at_tau": float(np.interp(t[0] + 1 / (lr * wd), t, ratio)) if t[-1] - t[0] >= 1 / (lr * wd)
                   else float("nan"),
                   "theta0_projection": projection, "theta0_predicted": float(np.exp(-lr * wd * steps[-1])),
                   "theta0_noise": noise, "kappa_T": lr * wd * float(steps[-1])}
    return out


def rms_network(s: Setup, *, pairs: tuple[tuple[float, float], ...], beta2: float, seed: int = 0,
                device: str = "cpu", store: Store | None = None) -> dict[str, Any]:
    """EMA-3 on a network: final RMS of scale-invariant hidden matrices against ``sqrt(lr/(2*lambda))``.

    MLP with bias-free hidden Linear layers each followed by LayerNorm without affine; AdamW with
    ``betas=(0.9, beta2)``. The RMS of each hidden matrix is averaged over the last fifth of the run;
    ``drift`` compares that mean with the mean over the fifth before it (a settled run drifts little). ``slope`` is the
    log-log slope of the measured RMS against the prediction ``sqrt(lr/(2*lambda))`` (1 if the law
    holds; half of it is the slope against ``lr/(2*lambda)``).
    """
    rows = []
    for lr, wd in pairs:
        # loss spikes after a second-moment spike recover here: only a non-finite loss counts as divergence
        cfg = base_config(s, seed, lr=lr, weight_decay=wd, betas=(0.9, beta2), steps=s.rms_steps, divergence_factor=1e6,
                          eval_every=max(s.rms_steps // 50, 1), diagnostics=["matrix_rms"],
                          model_args={"width": s.width, "depth": 2, "scale_invariant": True})
        r = _check(run(cfg, store, device=device))
        hist = r.history["diag/matrix_rms"][:, :2]          # the two hidden (scale-invariant) matrices
        tail = hist[int(0.8 * len(hist)):]
        fourth = hist[int(0.6 * len(hist)):int(0.8 * len(hist))]
        drift = float(abs(tail.mean() / fourth.mean() - 1))  # last fifth against the fifth before it: settled?
        rows.append({"lr": lr, "weight_decay": wd, "predicted": predicted_rms(lr, wd),
                     "measured_per_layer": tail.mean(axis=0), "measured": float(tail.mean()),
                     "curve": hist, "step": r.history["step"], "val_acc": r.final["val_acc"], "drift": drift,
                     "timescales": lr * wd * s.rms_steps})
    pred = np.array([row["predicted"] for row in rows])
    meas = np.array([row["measured"] for row in rows])
    slope, intercept = np.polyfit(np.log(pred), np.log(meas), 1)
    return {"rows": rows, "slope": float(slope), "prefactor": float(np.exp(np.mean(np.log(meas / pred)))),
            "ratio_min": float((meas / pred).min()), "ratio_max": float((meas / pred).max()), "beta2": beta2}


def schedule_comparison(s: Setup, *, lr: float, weight_decay: float, seed: int = 0, device: str = "cpu",
                        store: Store | None = None) -> dict[str, Any]:
    """EMA-4: constant, cosine, linear, warmup-stable-decay and the equal-contribution LR schedule at equal steps.

    Each run records its updates on 1,024 coordinates of a hidden matrix, so each step's actual term in
    the final weights, ``w_i*||u_i||``, is measured (``share``); ``first_over_last`` compares the
    first tenth of the run with the last; ``coefficient_max_over_min`` is the spread of the coefficients
    ``w_i`` computed from the LR and decay the optimizer actually applied.
    """
    schedules = {"constant": {"name": "constant"}, "cosine": {"name": "cosine"}, "linear": {"name": "linear"},
                 "warmup-stable-decay": {"name": "wsd", "warmup": s.steps // 20, "decay_fraction": 0.2},
                 "equal contribution": {"name": "equal_contribution"}}
    out = {}
    for name, spec in schedules.items():
        r = _check(run(base_config(s, seed, lr=lr, weight_decay=weight_decay, lr_schedule=spec,
                                   eval_every=max(s.steps // 20, 1),
                                   probes=[{"name": "updates", "tensor": 1, "coords": 1024}]), store, device=device))
        p = {k.split("/", 1)[1]: v for k, v in r.probes.items() if k.startswith("updates/")}
        lam = np.divide(p["shrink"], p["lr"], out=np.zeros_like(p["shrink"]), where=p["lr"] > 0)
        w, _ = contribution_weights(p["lr"], lam)
        share = w * np.linalg.norm(p["updates"], axis=1)   # size of each step's term in the final weights
        tenth = max(len(share) // 10, 1)
        out[name] = {"val_loss": r.final["val_loss"], "val_acc": r.final["val_acc"],
                     "train_loss": r.final["train_loss"], "weight_rms": r.final["weight_rms/decay"],
                     "curve_step": r.history["step"], "curve_val_loss": r.history["val_loss"],
                     "curve_rms": r.history["weight_rms/decay"], "schedule": spec, "share": share,
                     "first_over_last": float(share[:tenth].mean() / share[-tenth:].mean()),
                     "coefficient_max_over_min": float(w.max() / w.min()),
                     "update_norm_first_over_last": float(np.linalg.norm(p["updates"][:tenth], axis=1).mean()
                                                          / np.linalg.norm(p["updates"][-tenth:], axis=1).mean())}
    return out

