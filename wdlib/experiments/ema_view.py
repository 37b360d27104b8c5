"""Experiments of chapter 2, "Weight decay as a moving average" (EMA-1 to EMA-5).

Training runs go through :func:`wdlib.runs.run_many` (MNIST-1D, MLPs, ``Setup.workers`` single-thread
worker processes); the simulation is :func:`wdlib.ema.simulate_rms`. The multi-seed experiments take a
tuple of run seeds (the notebook passes ``setting.seeds(s.n_seeds)``) and return per-seed numbers and arrays;
the notebook draws them and passes the measurements to the claims ledger. :func:`planned_runs` lists every
run the notebook trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..components import build_data, build_model
from ..config import RunConfig
from ..ema import predicted_rms, reconstruct
from ..runs import Store, run_many
from ..schedules import contribution_weights
from ._scaffold import Setting, check_finished, pick_settings

__all__ = [
    "Setup",
    "SETTINGS",
    "setup",
    "base_config",
    "reconstruction",
    "memory",
    "memory_stats",
    "rms_network",
    "rms_fit",
    "schedule_comparison",
    "term_stats",
    "planned_runs",
]


@dataclass(frozen=True)
class Setup(Setting):
    """Sizes of one scale."""

    num_samples: int
    width: int
    batch_size: int
    steps: int  # EMA-1, EMA-4 runs
    memory_steps: int  # EMA-2 runs
    rms_steps: int  # EMA-3 network runs
    sim_steps: int  # EMA-3 sweep of the simulation (Su's own point always runs 100,000 steps)
    sim_coords: int
    n_seeds: int = 5  # training seeds of EMA-2 and EMA-4
    rms_seeds: int = 3  # training seeds of EMA-3's network runs (the costliest: 12 runs per seed)
    workers: int = 2  # single-thread worker processes for the multi-seed runs


SETTINGS: dict[str, Setup] = {
    "smoke": Setup(
        "smoke",
        num_samples=4000,
        width=128,
        batch_size=100,
        steps=1000,
        memory_steps=1500,
        rms_steps=6000,
        sim_steps=50_000,
        sim_coords=10_000,
        n_seeds=5,
        rms_seeds=3,
        workers=2,
    ),
    "full": Setup(
        "full",
        num_samples=40_000,
        width=512,
        batch_size=128,
        steps=10_000,
        memory_steps=15_000,
        rms_steps=80_000,
        sim_steps=200_000,
        sim_coords=100_000,
        n_seeds=5,
        rms_seeds=5,
        workers=1,
    ),
    # the unit tests: seconds on one core; steps and memory_steps above the notebook's warmup and perturbed
    # step (100), so that every run the notebook asks for can be built at this scale too (planned_runs)
    "test": Setup(
        "test",
        num_samples=300,
        width=8,
        batch_size=20,
        steps=120,
        memory_steps=120,
        rms_steps=60,
        sim_steps=1000,
        sim_coords=100,
        n_seeds=2,
        rms_seeds=2,
        workers=1,
    ),
}


def setup(scale: str, device: str = "cpu", seed: int = 0) -> Setup:
    """The settings of ``scale`` ("smoke", "full" or "test"; :func:`wdlib.experiments.pick_settings`)."""
    return pick_settings(SETTINGS, scale, device=device, seed=seed)


def base_config(s: Setup, seed: int = 0, **changes: Any) -> RunConfig:
    """AdamW (decoupled) on MNIST-1D with an MLP of depth 2; only weight matrices decayed."""
    cfg = RunConfig(
        data="mnist1d",
        data_args={"num_samples": s.num_samples},
        model="mlp",
        model_args={"width": s.width, "depth": 2},
        optimizer={"name": "adam", "decay": "decoupled"},
        steps=s.steps,
        batch_size=s.batch_size,
        seed=seed,
        scale=s.scale,
    )
    return cfg.replace(**changes) if changes else cfg


def _reconstruction_configs(
    s: Setup, *, lr: float, weight_decay: float, schedules: dict[str, dict[str, Any] | None], seed: int
) -> list[RunConfig]:
    """The runs of :func:`reconstruction`: one float64 run with the ``"updates"`` probe per LR schedule."""
    return [
        base_config(
            s,
            seed,
            lr=lr,
            weight_decay=weight_decay,
            lr_schedule=spec,
            dtype="float64",
            probes=[{"name": "updates", "tensor": 1, "coords": 1024}],
        )
        for spec in schedules.values()
    ]


def reconstruction(
    s: Setup,
    *,
    lr: float,
    weight_decay: float,
    schedules: dict[str, dict[str, Any] | None],
    seed: int = 0,
    device: str = "cpu",
    store: Store | None = None,
) -> dict[str, Any]:
    """EMA-1: rebuild 1,024 coordinates of a hidden weight matrix from theta_0 and the recorded updates.

    One float64 run with the ``"updates"`` probe per entry of ``schedules`` (name -> LR schedule, ``None``
    for a constant LR), trained in ``s.workers`` processes. Returns, per name, the largest relative error of
    the exact unrolled form and of Su's ``exp(-kappa)`` form, the a-priori bound of the latter, and ``D``.
    """
    configs = _reconstruction_configs(s, lr=lr, weight_decay=weight_decay, schedules=schedules, seed=seed)
    out = {}
    for name, r in zip(
        schedules, run_many(configs, store, workers=s.workers, device=device, desc="EMA reconstruction", progress=None)
    ):
        p = _probe(check_finished(r))
        rec = reconstruct(p["theta0"], p["updates"], p["lr"], p["shrink"])
        scale = np.abs(p["final"]).max()
        err_exact = np.abs(rec["exact"] - p["final"])
        err_approx = np.abs(rec["approx"] - p["final"])
        out[name] = {
            "max_rel_error_exact": float(err_exact.max() / scale),
            "max_rel_error_approx": float(err_approx.max() / scale),
            "max_error_approx": float(err_approx.max()),
            "within_bound": bool(np.all(err_approx <= rec["bound"] + 1e-12)),
            "bound_max": float(rec["bound"].max()),
            "D": rec["D"],
            "lr": p["lr"],
            "shrink": p["shrink"],
            "final": p["final"],
            "approx": rec["approx"],
            "theta0_weight": float(np.prod(1 - p["shrink"])),
        }
    return out


def _probe(r: Any, name: str = "updates") -> dict[str, np.ndarray]:
    return {k.split("/", 1)[1]: v for k, v in r.probes.items() if k.startswith(name + "/")}


def memory_stats(
    steps: np.ndarray,
    params_a: np.ndarray,
    params_b: np.ndarray,
    init: np.ndarray,
    mask: np.ndarray,
    *,
    lr: float,
    weight_decay: float,
    perturb_step: int,
) -> dict[str, Any]:
    """EMA-2's statistics of one seed from two parameter histories (rows: snapshots) and the initial weights.

    ``ratio``: distance between the runs over its value at the first snapshot after ``perturb_step``;
    ``rate``: the fitted decay rate per step of that distance (log-linear least squares), to compare with
    ``lr*weight_decay``; ``theta0_projection``: ``<theta_T, theta_0>/||theta_0||^2`` over the entries of
    ``mask`` (the weight matrices) of run A, against ``theta0_predicted = exp(-lr*weight_decay*T)``, with the
    noise floor ``||theta_T||/(||theta_0|| sqrt(n))`` (the projection of a random vector of that norm).
    """
    dist = np.linalg.norm(params_a - params_b, axis=1)
    first = int(np.flatnonzero(steps > perturb_step)[0])
    t, d = steps[first:], dist[first:]
    ratio = d / d[0]
    slope = float(np.polyfit(t - t[0], np.log(ratio), 1)[0])
    final = params_a[-1]
    projection = float(final[mask] @ init[mask] / (init[mask] @ init[mask]))
    noise = float(np.linalg.norm(final[mask]) / (np.linalg.norm(init[mask]) * np.sqrt(mask.sum())))
    el = lr * weight_decay
    return {
        "step": t,
        "ratio": ratio,
        "predicted": np.exp(-el * (t - t[0])),
        "rate": -slope,
        "eta_lambda": el,
        "distance_first": float(d[0]),
        "theta0_projection": projection,
        "theta0_predicted": float(np.exp(-el * steps[-1])),
        "theta0_noise": noise,
        "kappa_T": el * float(steps[-1]),
    }


def _memory_plan(
    s: Setup, *, lr: float, kappas: tuple[float, ...], perturb_step: int, seeds: tuple[int, ...], snapshots: int
) -> list[tuple[float, int, RunConfig, RunConfig]]:
    """The runs of :func:`memory`: ``(lambda, seed, plain run, run with the replaced batch)`` per kappa_T and seed."""
    every = max(s.memory_steps // snapshots, 1)
    plan = []
    for kappa in kappas:
        wd = kappa / (lr * s.memory_steps)
        common = dict(
            lr=lr,
            weight_decay=wd,
            steps=s.memory_steps,
            eval_every=every,
            diagnostics=["params"],
            model_args={"width": 64, "depth": 2},
            dtype="float64",
        )
        for seed in seeds:
            plan.append(
                (wd, seed, base_config(s, seed, **common), base_config(s, seed, perturb_step=perturb_step, **common))
            )
    return plan


def memory(
    s: Setup,
    *,
    lr: float,
    kappas: tuple[float, ...],
    perturb_step: int,
    seeds: tuple[int, ...],
    snapshots: int = 60,
    device: str = "cpu",
    store: Store | None = None,
) -> dict[str, Any]:
    """EMA-2: how fast the effect of one replaced batch, and of theta_0, fades, against ``exp(-kappa)``.

    For each target ``kappa_T`` (lambda = kappa_T/(lr*memory_steps)) and each seed, two float64 runs from one
    init on the same batches, except that the second replaces the batch of step ``perturb_step`` by one
    drawn with another seed. The parameter vectors (every coordinate of a width-64 MLP) are read at
    ``snapshots`` points; :func:`memory_stats` turns each seed's pair into the measures. Keys of the result
    are the lambdas; each value holds the kappa_T, ``eta_lambda`` and ``theta0_predicted`` of that lambda
    and ``per_seed``, a list of :func:`memory_stats` dictionaries in the order of ``seeds``.
    """
    plan = _memory_plan(s, lr=lr, kappas=kappas, perturb_step=perturb_step, seeds=seeds, snapshots=snapshots)
    configs = [c for _, _, a, b in plan for c in (a, b)]
    results = run_many(configs, store, workers=s.workers, device=device, desc="memory", progress=None)
    out: dict[str, Any] = {}
    for i, (wd, _seed, a_cfg, _) in enumerate(plan):
        a, b = check_finished(results[2 * i]), check_finished(results[2 * i + 1])
        init_model = build_model(a_cfg, build_data(a_cfg))
        init = torch.cat([p.detach().reshape(-1).double() for p in init_model.parameters()]).numpy()
        mask = np.concatenate([np.full(p.numel(), p.ndim >= 2) for p in init_model.parameters()])
        st = memory_stats(
            a.history["step"],
            a.history["diag/params"],
            b.history["diag/params"],
            init,
            mask,
            lr=lr,
            weight_decay=wd,
            perturb_step=perturb_step,
        )
        entry = out.setdefault(
            wd,
            {
                "kappa_T": st["kappa_T"],
                "eta_lambda": st["eta_lambda"],
                "theta0_predicted": st["theta0_predicted"],
                "per_seed": [],
            },
        )
        entry["per_seed"].append(st)
    return out


def rms_fit(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """Log-log slope of ``measured`` against ``predicted`` RMS and the prefactor (geometric mean of
    measured/predicted). The slope against ``eta/(2*lambda)`` is half the returned ``slope``."""
    predicted, measured = np.asarray(predicted, np.float64), np.asarray(measured, np.float64)
    slope = float(np.polyfit(np.log(predicted), np.log(measured), 1)[0])
    return {"slope": slope, "prefactor": float(np.exp(np.mean(np.log(measured / predicted))))}


def _drift(curve: np.ndarray) -> float:
    """``|mean of the last fifth / mean of the fifth before it - 1|``: has the curve settled?"""
    n = len(curve)
    return float(abs(curve[int(0.8 * n) :].mean() / curve[int(0.6 * n) : int(0.8 * n)].mean() - 1))


def _rms_configs(
    s: Setup, *, pairs: tuple[tuple[float, float], ...], beta2: float, seeds: tuple[int, ...]
) -> list[RunConfig]:
    """The runs of :func:`rms_network`: one per (lr, lambda) pair and seed."""
    return [
        base_config(
            s,
            seed,
            lr=lr,
            weight_decay=wd,
            steps=s.rms_steps,
            optimizer={"name": "adam", "decay": "decoupled", "betas": [0.9, beta2]},
            # loss spikes after a second-moment spike recover: only a non-finite loss counts
            divergence_factor=1e6,
            eval_every=max(s.rms_steps // 50, 1),
            diagnostics=["matrix_rms"],
            model_args={"width": s.width, "depth": 2, "scale_invariant": True},
        )
        for lr, wd in pairs
        for seed in seeds
    ]


def rms_network(
    s: Setup,
    *,
    pairs: tuple[tuple[float, float], ...],
    beta2: float,
    seeds: tuple[int, ...],
    device: str = "cpu",
    store: Store | None = None,
) -> dict[str, Any]:
    """EMA-3 on a network: final RMS of scale-invariant hidden matrices against ``sqrt(lr/(2*lambda))``.

    MLP with bias-free hidden Linear layers each followed by LayerNorm without affine; AdamW with
    ``betas=(0.9, beta2)``; one run per pair and seed. The RMS of each hidden matrix is averaged over the
    last fifth of the run. Per seed, :func:`rms_fit` over the pairs gives ``slope`` (log-log, against the
    prediction: 1 if the law holds) and ``prefactor``. ``drift`` of a pair compares the seed-mean RMS curve's
    last fifth with the fifth before it (a settled run drifts little; averaging over seeds keeps a
    systematic drift and averages out a one-seed fluctuation); ``drift_per_seed`` is the same per run.
    """
    configs = _rms_configs(s, pairs=pairs, beta2=beta2, seeds=seeds)
    results = [
        check_finished(r)
        for r in run_many(configs, store, workers=s.workers, device=device, desc="RMS, network", progress=None)
    ]
    rows = []
    k = len(seeds)
    for j, (lr, wd) in enumerate(pairs):
        runs = results[j * k : (j + 1) * k]
        hists = np.stack([r.history["diag/matrix_rms"][:, :2] for r in runs])  # seeds x snapshots x 2 hidden matrices
        tail = hists[:, int(0.8 * hists.shape[1]) :]
        rows.append(
            {
                "lr": lr,
                "weight_decay": wd,
                "predicted": predicted_rms(lr, wd),
                "measured_per_seed": tail.mean(axis=(1, 2)),
                "measured_per_layer": tail.mean(axis=(0, 1)),
                "measured": float(tail.mean()),
                "curve": hists.mean(axis=0),
                "step": runs[0].history["step"],
                "val_acc": float(np.mean([r.final["val_acc"] for r in runs])),
                "drift": _drift(hists.mean(axis=(0, 2))),
                "drift_per_seed": [_drift(h.mean(axis=1)) for h in hists],
                "timescales": lr * wd * s.rms_steps,
            }
        )
    pred = np.array([row["predicted"] for row in rows])
    per_seed = [rms_fit(pred, [row["measured_per_seed"][i] for row in rows]) for i in range(k)]
    mean_fit = rms_fit(pred, [row["measured"] for row in rows])
    return {
        "rows": rows,
        "seeds": tuple(seeds),
        "slope_per_seed": [f["slope"] for f in per_seed],
        "prefactor_per_seed": [f["prefactor"] for f in per_seed],
        "slope": mean_fit["slope"],
        "prefactor": mean_fit["prefactor"],
        "max_drift": max(row["drift"] for row in rows),
        "beta2": beta2,
    }


def term_stats(lr: np.ndarray, shrink: np.ndarray, updates: np.ndarray) -> dict[str, Any]:
    """Each step's term in the final weights, from a run's recorded ``lr``, decay factor ``shrink`` and updates.

    ``share = w_i*||u_i||`` with ``w_i`` the contribution coefficients of the LR and decay the optimizer
    applied; ``first_over_last`` compares its mean over the first tenth of the run with the last tenth;
    ``coefficient_max_over_min`` is ``max w_i / min w_i``; ``update_norm_first_over_last`` the same ratio
    for ``||u_i||`` alone.
    """
    lam = np.divide(shrink, lr, out=np.zeros_like(shrink), where=lr > 0)
    w, _ = contribution_weights(lr, lam)
    norms = np.linalg.norm(updates, axis=1)
    share = w * norms
    tenth = max(len(share) // 10, 1)
    return {
        "share": share,
        "first_over_last": float(share[:tenth].mean() / share[-tenth:].mean()),
        "coefficient_max_over_min": float(w.max() / w.min()),
        "update_norm_first_over_last": float(norms[:tenth].mean() / norms[-tenth:].mean()),
    }


SCHEDULES: dict[str, dict[str, Any]] = {
    "constant": {"name": "constant"},
    "cosine": {"name": "cosine"},
    "linear": {"name": "linear"},
    "warmup-stable-decay": {"name": "wsd"},
    "equal contribution": {"name": "equal_contribution"},
}


def _comparison_specs(s: Setup) -> dict[str, dict[str, Any]]:
    """The LR schedules of :func:`schedule_comparison` at scale ``s`` (warmup-stable-decay sized to its steps)."""
    return {
        k: (dict(v, warmup=s.steps // 20, decay_fraction=0.2) if v["name"] == "wsd" else v)
        for k, v in SCHEDULES.items()
    }


def _comparison_configs(s: Setup, *, lr: float, weight_decay: float, seeds: tuple[int, ...]) -> list[RunConfig]:
    """The runs of :func:`schedule_comparison`: one per schedule and seed, recording their updates."""
    return [
        base_config(
            s,
            seed,
            lr=lr,
            weight_decay=weight_decay,
            lr_schedule=spec,
            eval_every=max(s.steps // 20, 1),
            probes=[{"name": "updates", "tensor": 1, "coords": 1024}],
        )
        for spec in _comparison_specs(s).values()
        for seed in seeds
    ]


def schedule_comparison(
    s: Setup, *, lr: float, weight_decay: float, seeds: tuple[int, ...], device: str = "cpu", store: Store | None = None
) -> dict[str, Any]:
    """EMA-4: constant, cosine, linear, warmup-stable-decay and the equal-contribution LR schedule at equal steps.

    One run per schedule and seed; each records its updates on 1,024 coordinates of a hidden matrix, so
    each step's actual term in the final weights is measured (:func:`term_stats`). Per schedule: the
    per-seed lists of ``first_over_last``, ``coefficient_max_over_min``, ``update_norm_first_over_last``,
    ``val_loss``, ``val_acc``, ``train_loss`` and ``weight_rms``, and the seed-mean curves.
    """
    specs = _comparison_specs(s)
    configs = _comparison_configs(s, lr=lr, weight_decay=weight_decay, seeds=seeds)
    results = [
        check_finished(r)
        for r in run_many(configs, store, workers=s.workers, device=device, desc="schedule comparison", progress=None)
    ]
    out = {}
    k = len(seeds)
    for j, (name, spec) in enumerate(specs.items()):
        runs = results[j * k : (j + 1) * k]
        stats = [term_stats(p["lr"], p["shrink"], p["updates"]) for p in (_probe(r) for r in runs)]
        out[name] = {
            "schedule": spec,
            "share": np.mean([st["share"] for st in stats], axis=0),
            "curve_step": runs[0].history["step"],
            "curve_val_loss": np.mean([r.history["val_loss"] for r in runs], axis=0),
            "curve_rms": np.mean([r.history["weight_rms/decay"] for r in runs], axis=0),
        }
        for key in ("first_over_last", "coefficient_max_over_min", "update_norm_first_over_last"):
            out[name][key] = [st[key] for st in stats]
        for key, src in (
            ("val_loss", "val_loss"),
            ("val_acc", "val_acc"),
            ("train_loss", "train_loss"),
            ("weight_rms", "weight_rms/decay"),
        ):
            out[name][key] = [float(r.final[src]) for r in runs]
    return out


# --- what the notebook trains ------------------------------------------------------------------------------

#: the arguments ``notebooks/02_ema_view.ipynb`` passes (EMA-1, EMA-2, EMA-3's network pairs, EMA-4)
NOTEBOOK_RECONSTRUCTION = {
    "lr": 3e-3,
    "weight_decay": 1.0,
    "schedules": {"constant lr": None, "warmup + cosine": {"name": "cosine", "warmup": 100, "final": 0.1}},
}
NOTEBOOK_MEMORY = {"lr": 1e-3, "kappas": (0.3, 1.0, 3.0), "perturb_step": 100, "snapshots": 60}
NOTEBOOK_RMS_PAIRS = ((1e-3, 1.0), (3e-3, 1.0), (1e-2, 1.0), (3e-2, 1.0), (1e-2, 0.3), (1e-2, 0.1))
NOTEBOOK_RMS_BETA2 = (0.999, 0.99)
NOTEBOOK_COMPARISON = {"lr": 3e-3, "weight_decay": 0.5}


def planned_runs(s: Setup, *, store: Store | None = None) -> list[RunConfig]:
    """Every run ``notebooks/02_ema_view.ipynb`` trains at the settings ``s`` (its seeds from ``s.seed``), in the
    order it asks for them, built by the helpers its functions train: EMA-1's reconstruction runs, EMA-2's
    memory pairs, EMA-3's network runs for both beta2 and EMA-4's schedule comparison. ``store`` is not needed
    (no run here depends on another's result); it is accepted so every chapter's ``planned_runs`` is called
    alike."""
    seeds, rms_seeds = s.seeds(s.n_seeds), s.seeds(s.rms_seeds)
    configs = _reconstruction_configs(s, seed=seeds[0], **NOTEBOOK_RECONSTRUCTION)
    configs += [c for _, _, a, b in _memory_plan(s, seeds=seeds, **NOTEBOOK_MEMORY) for c in (a, b)]
    for beta2 in NOTEBOOK_RMS_BETA2:
        configs += _rms_configs(s, pairs=NOTEBOOK_RMS_PAIRS, beta2=beta2, seeds=rms_seeds)
    configs += _comparison_configs(s, seeds=seeds, **NOTEBOOK_COMPARISON)
    return configs
