"""Experiments of chapter 1, "L2 regularization versus decoupled weight decay" (DEC-1, 2, 3, 7, 9).

Each function runs one measurement on a real model and data (MNIST-1D and an MLP, trained through
:func:`wdlib.runs.run_many`, so a finished run is found again in the store and an interrupted one resumes)
or on a quadratic, and returns plain arrays and numbers; the notebook draws them and passes the
measurements to the claims ledger. The ``*_many`` functions run one measurement for several training
seeds (the notebook derives them from its ``seed`` parameter), training the runs the store lacks in
``workers`` single-thread processes first. :func:`planned_runs` lists every run the notebook trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..components import build_data
from ..config import RunConfig
from ..data import Dataset
from ..optim import SGD, convert_weight_decay
from ..runs import RunResult, Store, run_many
from ..stats import spearman
from ._scaffold import Setting, pick_settings

__all__ = [
    "SETTINGS",
    "Setup",
    "setup",
    "dataset",
    "base_config",
    "trajectory_gap",
    "trajectory_gaps_many",
    "log_gap",
    "one_step_gap",
    "shrinkage_vs_second_moment",
    "shrinkage_many",
    "quadratic_fixed_points",
    "convention_runs",
    "warmup_delay_runs",
    "warmup_delay_many",
    "planned_runs",
    "GAP_FLOOR",
]

#: gaps below this are read as this (float64 resolution of an O(1) parameter is about 1e-16), so that
#: two trajectories that never part (gap exactly 0) still have a finite log10 gap
GAP_FLOOR = 1e-17


@dataclass(frozen=True)
class Setup(Setting):
    """Data and model size of one scale."""

    num_samples: int
    width: int
    depth: int
    batch_size: int
    steps: int


SETTINGS: dict[str, Setup] = {
    # 2 CPU cores, a few seconds per run
    "smoke": Setup(scale="smoke", num_samples=4000, width=128, depth=2, batch_size=100, steps=1000),
    # one GPU (or a patient CPU): 10x the data, 4x the width, 10x the steps
    "full": Setup(scale="full", num_samples=40000, width=512, depth=3, batch_size=128, steps=10000),
    # the unit tests: seconds on one core
    "test": Setup(scale="test", num_samples=300, width=8, depth=1, batch_size=20, steps=30),
}


def setup(scale: str, device: torch.device | str = "cpu", seed: int = 0) -> Setup:
    """The settings of ``scale`` ("smoke", "full" or "test"; :func:`wdlib.experiments.pick_settings`)."""
    return pick_settings(SETTINGS, scale, device=device, seed=seed)


def dataset(s: Setup) -> Dataset:
    """The chapter's MNIST-1D data at scale ``s`` (for describing it)."""
    return build_data(base_config(s))


def base_config(s: Setup, seed: int = 0, **changes: Any) -> RunConfig:
    """The chapter's run: an MLP on MNIST-1D, every parameter decayed (as ``opt(model.parameters())`` does)."""
    cfg = RunConfig(
        data="mnist1d",
        data_args={"num_samples": s.num_samples},
        model="mlp",
        model_args={"width": s.width, "depth": s.depth},
        steps=s.steps,
        batch_size=s.batch_size,
        decay_vectors=True,
        seed=seed,
        scale=s.scale,
    )
    return cfg.replace(**changes) if changes else cfg


def _flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1).double() for v in state.values()])


def _pair_configs(
    s: Setup, *, lr: float, weight_decay: float, momentum: float, dtype: str, seed: int, snapshots: int
) -> tuple[RunConfig, RunConfig]:
    every = max(s.steps // snapshots, 1)
    common = dict(lr=lr, weight_decay=weight_decay, dtype=dtype, eval_every=every, diagnostics=["params"])
    return (
        base_config(s, seed, optimizer={"name": "sgd", "decay": "l2", "momentum": momentum}, **common),
        base_config(
            s,
            seed,
            optimizer={"name": "sgd", "decay": "decoupled", "momentum": momentum, "impl": IMPL["decoupled"]},
            **common,
        ),
    )


#: DEC-1's kernels: SGD+L2 on the fused kernel (``theta - lr*(g + lambda*theta)``), SGDW shrinking then stepping
#: (``theta*(1 - lr*lambda) - lr*g``), the two sides of the identity as written.
IMPL = {"l2": "auto", "decoupled": "foreach"}


def log_gap(gap: Any) -> float:
    """``log10`` of the largest gap along a trajectory, gaps under :data:`GAP_FLOOR` read as the floor."""
    return float(np.log10(max(float(np.max(gap)), GAP_FLOOR)))


def _gaps_configs(
    s: Setup,
    *,
    lr: float,
    weight_decay: float,
    seeds: tuple[int, ...],
    cases: tuple[tuple[float, str], ...],
    snapshots: int,
) -> list[RunConfig]:
    """The runs of :func:`trajectory_gaps_many`: the L2 and SGDW pair of every (momentum, dtype) case and seed."""
    return [
        c
        for m, dt in cases
        for sd in seeds
        for c in _pair_configs(
            s, lr=lr, weight_decay=weight_decay, momentum=m, dtype=dt, seed=int(sd), snapshots=snapshots
        )
    ]


def trajectory_gaps_many(
    s: Setup,
    *,
    lr: float,
    weight_decay: float,
    seeds: tuple[int, ...],
    cases: tuple[tuple[float, str], ...] = ((0.0, "float64"), (0.9, "float64")),
    snapshots: int = 50,
    workers: int = 1,
    device: str | torch.device = "cpu",
    store: Store | None = None,
) -> dict[tuple[float, str], dict[int, Any]]:
    """:func:`trajectory_gap` for every (momentum, dtype) case and seed: ``case -> seed -> (steps, gap, state)``.

    The runs the store lacks are trained first, in ``workers`` processes."""
    store = store if isinstance(store, Store) else Store(store)
    configs = _gaps_configs(s, lr=lr, weight_decay=weight_decay, seeds=seeds, cases=cases, snapshots=snapshots)
    run_many(configs, store, workers=workers, device=str(device), desc="trajectory gaps", progress=None)
    return {
        (m, dt): {
            int(sd): trajectory_gap(
                s,
                lr=lr,
                weight_decay=weight_decay,
                momentum=m,
                dtype=dt,
                seed=int(sd),
                snapshots=snapshots,
                device=device,
                store=store,
            )
            for sd in seeds
        }
        for m, dt in cases
    }


def trajectory_gap(
    s: Setup,
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    dtype: str = "float64",
    seed: int = 0,
    snapshots: int = 50,
    device: str | torch.device = "cpu",
    store: Store | None = None,
) -> tuple[np.ndarray, np.ndarray, RunResult]:
    """SGD+L2 and SGDW from one init on the same batches: ``max_i |theta_L2[i] - theta_SGDW[i]|`` along the way (DEC-1).

    Two runs through :func:`wdlib.runs.run` that record the parameters ``snapshots`` times
    (diagnostic ``"params"``, at most 32,768 evenly strided coordinates). Both use the lr-multiplied
    lambda, so without momentum the updates are the same algebra:
    ``theta - lr*(g + lambda*theta) = theta*(1 - lr*lambda) - lr*g``. SGDW runs through its two-pass path
    (``impl="foreach"``: shrink, then step), the right-hand side as written; on the fused kernel wdlib folds
    the shrink into the coupled arithmetic, which is SGD+L2's left-hand side bit for bit without momentum.
    Returns (steps, gap, the L2 run's result, whose final model :func:`one_step_gap` starts from). (The
    functions that train one measurement's runs themselves do so through :func:`wdlib.runs.run_many` with
    ``pack="never"``: each run alone, as :func:`wdlib.runs.run` trains it.)
    """
    ca, cb = _pair_configs(
        s, lr=lr, weight_decay=weight_decay, momentum=momentum, dtype=dtype, seed=seed, snapshots=snapshots
    )
    a, b = run_many([ca, cb], store, device=str(device), desc="trajectory gap", progress=None, pack="never")
    for r in (a, b):
        if r.diverged:
            raise RuntimeError(
                f"run {r.info['key']} ({RunConfig.from_dict(r.config).optimizer['decay']}) diverged at "
                f"step {r.diverged_at}: "
                "no trajectory to compare; lower the learning rate"
            )
    gap = np.abs(a.history["diag/params"] - b.history["diag/params"]).max(axis=1)
    return a.history["step"], gap, a


def one_step_gap(
    s: Setup, result: RunResult, *, lr: float, weight_decay: float, seed: int = 0, batches: int = 10
) -> float:
    """Largest parameter difference after one SGD+L2 step and one SGDW step from the same state (DEC-1).

    The algebra alone, without a trajectory that could amplify rounding: for ``batches`` batches,
    the final model of ``result`` (a run of :func:`trajectory_gap`; in float64) takes one step of each
    rule (no momentum) on the same gradient.
    """
    cfg = base_config(s, seed, dtype="float64")
    data = build_data(cfg)
    worst = 0.0
    for step in range(batches):
        model = result.model(data=data).double()
        x, y = data.batch(step, seed, batch_size=s.batch_size)
        torch.nn.functional.cross_entropy(model(x.double()), y).backward()
        params = [p.detach() for p in model.parameters()]
        grads = [p.grad.detach() for p in model.parameters()]
        after = []
        for decay in ("l2", "decoupled"):
            copies = [torch.nn.Parameter(p.clone()) for p in params]
            for c, g in zip(copies, grads):
                c.grad = g.clone()
            SGD(copies, lr=lr, weight_decay=weight_decay, decay=decay, impl=IMPL[decay]).step()
            after.append(torch.cat([c.detach().reshape(-1) for c in copies]))
        worst = max(worst, float((after[0] - after[1]).abs().max()))
    return worst


def _shrinkage_config(s: Setup, *, decay: str, lr: float, weight_decay: float, seed: int, window: int) -> RunConfig:
    return base_config(
        s,
        seed,
        optimizer={"name": "adam", "decay": decay},
        lr=lr,
        weight_decay=weight_decay,
        dtype="float64",
        probes=[{"name": "shrinkage", "start": s.steps - window, "tensors": "matrices"}],
    )


def shrinkage_many(
    s: Setup,
    *,
    decay: str,
    lr: float,
    weight_decay: float,
    seeds: tuple[int, ...],
    window: int | None = None,
    workers: int = 1,
    device: str | torch.device = "cpu",
    store: Store | None = None,
) -> dict[int, dict[str, Any]]:
    """:func:`shrinkage_vs_second_moment` for each seed (``seed -> result``), runs trained in ``workers`` processes."""
    store = store if isinstance(store, Store) else Store(store)
    window = window or max(s.steps // 3, 1)
    run_many(
        [
            _shrinkage_config(s, decay=decay, lr=lr, weight_decay=weight_decay, seed=int(sd), window=window)
            for sd in seeds
        ],
        store,
        workers=workers,
        device=str(device),
        desc=f"shrinkage ({decay})",
        progress=None,
    )
    return {
        int(sd): shrinkage_vs_second_moment(
            s, decay=decay, lr=lr, weight_decay=weight_decay, seed=int(sd), window=window, device=device, store=store
        )
        for sd in seeds
    }


def shrinkage_vs_second_moment(
    s: Setup,
    *,
    decay: str,
    lr: float,
    weight_decay: float,
    seed: int = 0,
    window: int | None = None,
    device: str | torch.device = "cpu",
    store: Store | None = None,
) -> dict[str, Any]:
    """Per-weight effective shrinkage against Adam's second moment, for one decay rule (DEC-2).

    Trains the MLP with ``Adam(decay=...)`` in float64 and measures, over the last ``window`` steps
    (default: the last third), each weight's decay rate per step with the ``"shrinkage"`` probe
    (:class:`~wdlib.diagnostics.ShrinkageProbe`, weight matrices only). Returns the rates divided by
    ``lr*weight_decay`` (1 means "decayed like AdamW"), the mean ``v_hat``, their Spearman rank
    correlation and the relative spread of the rates.
    """
    window = window or max(s.steps // 3, 1)
    cfg = _shrinkage_config(s, decay=decay, lr=lr, weight_decay=weight_decay, seed=seed, window=window)
    (r,) = run_many([cfg], store, device=str(device), desc=f"shrinkage ({decay})", progress=None, pack="never")
    rel = r.probes["shrinkage/shrinkage"] / (lr * weight_decay)
    v = r.probes["shrinkage/v_hat"]
    return {
        "relative_shrinkage": rel,
        "v_hat": v,
        "spearman": spearman(rel, v),
        "relative_spread": float(np.std(rel) / abs(np.mean(rel))),
        "test_acc": r.final["val_acc"],
        "final_loss": r.final["train_loss"],
    }


def quadratic_fixed_points(
    *,
    dim: int = 20,
    lrs: tuple[float, ...] = (0.01, 0.03, 0.1),
    weight_decay: dict[str, float] | None = None,
    momentum: float = 0.0,
    steps: int = 8000,
    seed: int = 0,
) -> list[dict[str, Any]]:
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

            def err(alpha: float, w_inf: torch.Tensor = w_inf) -> float:
                closed = a * target / (a + alpha)
                return float((w_inf - closed).norm() / closed.norm())

            alpha_read = (a * (target - w_inf) / w_inf).numpy()
            out.append(
                {
                    "decay": decay,
                    "lr": lr,
                    "weight_decay": lam,
                    "momentum": momentum,
                    "alpha_predicted": predicted,
                    "alpha_other": other,
                    "alpha_measured": float(np.median(alpha_read)),
                    "alpha_measured_spread": float(np.ptp(alpha_read)),
                    "error_predicted": err(predicted),
                    "error_other": err(other),
                }
            )
    return out


def _warmup_cosine(steps: int, warmup: int) -> dict[str, Any]:
    return {"name": "cosine", "final": 0.1, "warmup": warmup}


def _convention_configs(
    s: Setup, *, peak_lr: float, weight_decay: float, seed: int, dtype: str
) -> dict[str, RunConfig]:
    """The four runs of :func:`convention_runs`, by name."""
    lam_paper = convert_weight_decay(weight_decay, peak_lr, "decoupled", "independent")
    common = dict(lr=peak_lr, dtype=dtype, lr_schedule=_warmup_cosine(s.steps, max(s.steps // 20, 1)))
    return {
        "torch AdamW": base_config(s, seed, optimizer={"name": "torch.adamw"}, weight_decay=weight_decay, **common),
        "wdlib decoupled": base_config(
            s, seed, optimizer={"name": "adam", "decay": "decoupled"}, weight_decay=weight_decay, **common
        ),
        "wdlib independent, converted": base_config(
            s, seed, optimizer={"name": "adam", "decay": "independent"}, weight_decay=lam_paper, **common
        ),
        "wdlib independent, unconverted": base_config(
            s, seed, optimizer={"name": "adam", "decay": "independent"}, weight_decay=weight_decay, **common
        ),
    }


def convention_runs(
    s: Setup,
    *,
    peak_lr: float,
    weight_decay: float,
    seed: int = 0,
    dtype: str = "float64",
    device: str | torch.device = "cpu",
    store: Store | None = None,
) -> dict[str, Any]:
    """One AdamW run in the torch convention and the same run in the paper's convention (DEC-9).

    Under warmup (5%) + cosine to a tenth, from one init on the same batches:
    ``torch.optim.AdamW(weight_decay=lambda)``, ``wdlib Adam(decay="decoupled")`` with the same
    lambda, ``Adam(decay="independent")`` with ``lambda*peak_lr`` (the conversion), and, as a
    control, ``Adam(decay="independent")`` with the unconverted lambda. Returns the final parameter
    vectors' max differences from the torch run, and the final weight norms.
    """
    lam_paper = convert_weight_decay(weight_decay, peak_lr, "decoupled", "independent")
    configs = _convention_configs(s, peak_lr=peak_lr, weight_decay=weight_decay, seed=seed, dtype=dtype)
    trained = run_many(
        list(configs.values()), store, device=str(device), desc="conventions", progress=None, pack="never"
    )
    results = dict(zip(configs, trained))
    finals = {name: _flat(r.model_state) for name, r in results.items()}
    ref = finals["torch AdamW"]
    return {
        "weight_decay_torch": weight_decay,
        "weight_decay_paper": lam_paper,
        "max_abs_diff": {k: float((v - ref).abs().max()) for k, v in finals.items()},
        "weight_norm": {k: float(v.norm()) for k, v in finals.items()},
        "test_acc": {k: r.final["val_acc"] for k, r in results.items()},
    }


_DELAY_ARMS = (("decay from step 0", None), ("decay after warmup", "delay"))


def _warmup_delay_configs(
    s: Setup, *, peak_lr: float, weight_decay: float, warmup_steps: int, seed: int
) -> dict[str, RunConfig]:
    out = {}
    for name, kind in _DELAY_ARMS:
        wd_schedule = None if kind is None else {"name": "constant", "delay": warmup_steps}
        out[name] = base_config(
            s,
            seed,
            optimizer={"name": "adam", "decay": "decoupled"},
            lr=peak_lr,
            weight_decay=weight_decay,
            lr_schedule=_warmup_cosine(s.steps, warmup_steps),
            wd_schedule=wd_schedule,
        )
    return out


def warmup_delay_many(
    s: Setup,
    *,
    peak_lr: float,
    weight_decay: float,
    warmup_steps: int,
    seeds: tuple[int, ...],
    workers: int = 1,
    device: str | torch.device = "cpu",
    store: Store | None = None,
) -> dict[int, dict[str, Any]]:
    """:func:`warmup_delay_runs` for each seed (``seed -> result``), runs trained in ``workers`` processes."""
    store = store if isinstance(store, Store) else Store(store)
    run_many(
        [
            c
            for sd in seeds
            for c in _warmup_delay_configs(
                s, peak_lr=peak_lr, weight_decay=weight_decay, warmup_steps=warmup_steps, seed=int(sd)
            ).values()
        ],
        store,
        workers=workers,
        device=str(device),
        desc="warmup delay",
        progress=None,
    )
    return {
        int(sd): warmup_delay_runs(
            s,
            peak_lr=peak_lr,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            seed=int(sd),
            device=device,
            store=store,
        )
        for sd in seeds
    }


def warmup_delay_runs(
    s: Setup,
    *,
    peak_lr: float,
    weight_decay: float,
    warmup_steps: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    store: Store | None = None,
) -> dict[str, Any]:
    """AdamW with warmup + cosine, decay on from step 0 against decay switched on after warmup (DEC-7).

    Returns the final RMS of the weight matrices, test loss and accuracy of both runs.
    """
    out = {}
    configs = _warmup_delay_configs(s, peak_lr=peak_lr, weight_decay=weight_decay, warmup_steps=warmup_steps, seed=seed)
    results = run_many(
        list(configs.values()), store, device=str(device), desc="warmup delay", progress=None, pack="never"
    )
    for name, r in zip(configs, results):
        mats = torch.cat([v.reshape(-1).double() for v in r.model_state.values() if v.ndim >= 2])
        out[name] = {
            "weight_rms": float(mats.pow(2).mean().sqrt()),
            "test_acc": r.final["val_acc"],
            "test_loss": r.final["val_loss"],
        }
    return out


# --- what the notebook trains ------------------------------------------------------------------------------

#: training seeds of the notebook's counted measurements (``setting.seeds(5)``: DEC-1, DEC-2, DEC-7)
NOTEBOOK_SEEDS = 5


def planned_runs(s: Setup, *, store: Store | None = None) -> list[RunConfig]:
    """Every run ``notebooks/01_l2_vs_decoupled.ipynb`` trains at the settings ``s`` (its seeds from ``s.seed``),
    in the order it asks for them, built by the helpers its functions train: DEC-1's trajectory pairs
    (float64 with and without momentum for every seed, float32 for the first), DEC-2's shrinkage runs,
    DEC-7's warmup-delay pairs and DEC-9's four conventions. ``store`` is not needed (no run here depends
    on another's result); it is accepted so every chapter's ``planned_runs`` is called alike."""
    seeds = s.seeds(NOTEBOOK_SEEDS)
    first = seeds[0]
    gaps = dict(lr=0.1, weight_decay=5e-4, snapshots=50)
    configs = _gaps_configs(s, seeds=seeds, cases=((0.0, "float64"), (0.9, "float64")), **gaps)
    configs += _pair_configs(s, momentum=0.0, dtype="float32", seed=first, **gaps)
    window = max(s.steps // 3, 1)
    shrink = dict(lr=1e-3, weight_decay=0.05, window=window)
    configs += [_shrinkage_config(s, decay="l2", seed=sd, **shrink) for sd in seeds]
    configs.append(_shrinkage_config(s, decay="decoupled", seed=first, **shrink))
    delay = dict(peak_lr=3e-3, weight_decay=0.1, warmup_steps=s.steps // 10)
    configs += [c for sd in seeds for c in _warmup_delay_configs(s, seed=sd, **delay).values()]
    configs += _convention_configs(s, peak_lr=3e-3, weight_decay=0.1, seed=first, dtype="float64").values()
    return configs
