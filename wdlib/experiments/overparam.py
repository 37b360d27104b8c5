"""Experiments of chapter 4, "Weight decay in the overparameterized regime" (OVER-1 to OVER-5).

The source is Andriushchenko, D'Angelo, Varre and Flammarion, "Why do we need weight decay in modern
deep learning?" (arXiv 2310.04415; seed 003): plain SGD with momentum 0 and a coupled L2 penalty on
every parameter, no BatchNorm, no augmentation, a large LR and one drop to a small LR at half the
epochs. At CPU scale the network is :class:`wdlib.models.ConvNet` on MNIST-1D.

Every run goes through :func:`wdlib.runs.run_many` (cached in the run store, in parallel
single-thread workers). The Hessian-trace protocol (OVER-4): the large-LR phase keeps snapshots of its
weights every few epochs; each snapshot is fine-tuned for a few epochs at a small LR (a run whose
``init_from`` names the snapshot), and the fine-tuned copy's Hessian trace
(:func:`wdlib.hessian.hessian_trace` with XTrace, a fixed budget of Hessian-vector products on a fixed
training subset, eval mode) and test error are measured. The notebook computes the verdicts from the tables
returned here. :func:`planned_runs` lists every run the notebook trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..components import build_data
from ..config import RunConfig
from ..diagnostics import weight_angle
from ..measures import MEASURES
from ..optim import SGD, Adam
from ..runs import Store, run_many
from ..stats import loglog_slope, spearman, two_proportion_p
from ._scaffold import Setting, pick_settings

__all__ = [
    "Setup",
    "SETTINGS",
    "setup",
    "recipes",
    "grid_runs",
    "plateau_runs",
    "flow_copies",
    "spoiled",
    "plateau_level",
    "plateau_statistics",
    "paired_gain",
    "angular_runs",
    "angle_statistics",
    "rescaling_check",
    "trace_correlations",
    "estimator_spread",
    "window_means",
    "test_size",
    "equal_norm_pairs",
    "pair_excess_z",
    "planned_runs",
]


@dataclass(frozen=True)
class Setup(Setting):
    """Sizes of one scale (see the chapter for the source's own values)."""

    data: str
    data_args: dict[str, Any]
    train_size: int
    batch_size: int
    model: str
    model_args: dict[str, Any]
    # OVER-1 (and OVER-2's companion table): (small, large) LR x (0, wd), one drop to lr/10 at half
    grid_noise: float
    grid_lrs: tuple[float, float]
    grid_wd: float
    grid_epochs: int
    grid_seeds: int  # number of training seeds (their values come from the notebook's seed)
    # OVER-3 and OVER-4: constant large LR, clean labels
    plateau_lr: float
    plateau_wd: float
    plateau_epochs: int
    snapshot_every: int  # epochs between snapshots of the large-LR phase
    nowd_copy_every: int  # fine-tune every k-th snapshot of the run without decay (1: all)
    finetune_epochs: int
    finetune_factor: float  # fine-tune LR = factor * large LR
    plateau_seeds: int  # number of seeds of every plateau recipe and of the trajectories
    trace_probes: int  # the Hessian-vector products of each trace (the estimator's budget)
    trace_estimator: str  # "hutchinson", "hutchpp" or "xtrace" (wdlib.hessian.ESTIMATORS)
    trace_samples: int
    trace_probe_chunk: int | None  # probes per vmap call (None: all at once; bounds memory at full scale)
    plateau_pairs: tuple[tuple[float, float], ...]  # further (lr, wd) of the plateau runs (every seed)
    # OVER-5: a scale-invariant MLP, SGD and Adam, with and without decay
    angular_width: int
    angular_steps: int
    angular_sgd: tuple[float, float]  # (lr, wd) of SGD (L2 penalty, as the source)
    angular_adam: tuple[float, float]  # (lr, wd) of AdamW (decoupled, torch convention)
    angular_seeds: int  # number of seeds of each of the four runs
    workers: int
    eval_epochs: int  # epochs between evaluations


SETTINGS: dict[str, Setup] = {
    "smoke": Setup(
        "smoke",
        "mnist1d",
        {"num_samples": 5000},
        train_size=4000,
        batch_size=128,
        model="convnet",
        model_args={},
        grid_noise=0.3,
        grid_lrs=(0.1, 0.3),
        grid_wd=5e-3,
        grid_epochs=200,
        grid_seeds=3,
        plateau_lr=0.2,
        plateau_wd=5e-3,
        plateau_epochs=240,
        snapshot_every=20,
        nowd_copy_every=2,
        finetune_epochs=10,
        finetune_factor=0.1,
        plateau_seeds=3,
        trace_probes=48,
        trace_estimator="xtrace",
        trace_samples=1000,
        trace_probe_chunk=None,
        plateau_pairs=((0.1, 2.5e-3), (0.1, 5e-3), (0.1, 1e-2), (0.2, 1e-2), (0.1, 0.0)),
        angular_width=128,
        angular_steps=6000,
        angular_sgd=(0.2, 5e-3),
        angular_adam=(3e-3, 1.0),
        angular_seeds=3,
        workers=2,
        eval_epochs=5,
    ),
    "full": Setup(
        "full",
        "mnist1d",
        {"num_samples": 25_000},
        train_size=20_000,
        batch_size=128,
        model="convnet",
        model_args={"channels": [64, 64, 64]},
        grid_noise=0.3,
        grid_lrs=(0.1, 0.3),
        grid_wd=5e-3,
        grid_epochs=400,
        grid_seeds=5,
        plateau_lr=0.2,
        plateau_wd=5e-3,
        plateau_epochs=600,
        snapshot_every=50,
        nowd_copy_every=1,
        finetune_epochs=20,
        finetune_factor=0.1,
        plateau_seeds=5,
        trace_probes=80,
        trace_estimator="xtrace",
        trace_samples=5000,
        trace_probe_chunk=10,
        plateau_pairs=((0.1, 2.5e-3), (0.1, 5e-3), (0.1, 1e-2), (0.2, 1e-2), (0.1, 0.0)),
        angular_width=512,
        angular_steps=20_000,
        angular_sgd=(0.2, 5e-3),
        angular_adam=(3e-3, 1.0),
        angular_seeds=5,
        workers=1,
        eval_epochs=10,
    ),
    "test": Setup(
        "test",
        "mnist1d",
        {"num_samples": 1000},
        train_size=512,
        batch_size=64,
        model="convnet",
        model_args={"channels": [8, 8, 8]},
        grid_noise=0.3,
        grid_lrs=(0.05, 0.2),
        grid_wd=5e-3,
        grid_epochs=4,
        grid_seeds=2,
        plateau_lr=0.2,
        plateau_wd=5e-3,
        plateau_epochs=4,
        snapshot_every=2,
        nowd_copy_every=1,
        finetune_epochs=1,
        finetune_factor=0.1,
        plateau_seeds=2,
        trace_probes=4,
        trace_estimator="xtrace",
        trace_samples=128,
        trace_probe_chunk=None,
        plateau_pairs=((0.1, 1e-2), (0.1, 0.0)),
        angular_width=16,
        angular_steps=40,
        angular_sgd=(0.2, 5e-3),
        angular_adam=(3e-3, 1.0),
        angular_seeds=2,
        workers=1,
        eval_epochs=1,
    ),
}


def setup(scale: str, device: str = "cpu", seed: int = 0) -> Setup:
    """The settings of ``scale`` ("smoke", "full" or "test"; :func:`wdlib.experiments.pick_settings`)."""
    return pick_settings(SETTINGS, scale, device=device, seed=seed)


def _spe(s: Setup) -> int:
    """Steps per epoch."""
    return s.train_size // s.batch_size


def _base(s: Setup, **changes: Any) -> RunConfig:
    """Plain SGD, momentum 0, coupled L2 on every parameter (torch SGD's weight_decay, as the source)."""
    fields: dict[str, Any] = dict(
        data=s.data,
        data_args=s.data_args,
        subset=s.train_size,
        data_seed=0,
        model=s.model,
        model_args=s.model_args,
        optimizer={"name": "sgd", "decay": "l2", "momentum": 0.0},
        decay_vectors=True,
        batch_size=s.batch_size,
        eval_every=s.eval_epochs * _spe(s),
        divergence_factor=1e6,
        scale=s.scale,
    )
    fields.update(changes)
    return RunConfig(**fields)


def _table(configs: list[RunConfig], results: list[Any], extra: list[dict[str, Any]]) -> Any:
    import pandas as pd

    rows = []
    for c, r, e in zip(configs, results, extra):
        row = {k: v for k, v in r.final.items() if k not in ("step", "lr", "wd", "wall_time")}
        row.update(
            {
                "key": r.info["key"],
                "diverged_at": r.diverged_at,
                "wall_time": r.wall_time,
                "weight_norm": float(
                    np.sqrt(sum(r.final.get(k, 0.0) ** 2 for k in r.final if k.startswith("weight_norm/")))
                ),
                "lr": c.lr,
                "weight_decay": c.weight_decay,
                "seed": c.seed,
            }
        )
        row.update(e)
        rows.append(row)
    return pd.DataFrame(rows)


def test_size(s: Setup) -> int:
    """The number of test points every run of the chapter is evaluated on."""
    return int(build_data(_base(s, steps=1)).y_test.numel())


def _check_seeds(seeds: Any, n: int, what: str) -> tuple[int, ...]:
    seeds = tuple(int(x) for x in seeds)
    if len(seeds) != n or len(set(seeds)) != n:
        raise ValueError(f"{what} needs {n} distinct seeds (Setup), got {seeds}")
    return seeds


def grid_runs(s: Setup, seeds: Any, *, device: str = "cpu", store: Store | None = None) -> Any:
    """OVER-1: (small, large) LR x (0, wd) x ``seeds`` (``grid_seeds`` of them, e.g. ``setting.seeds(n)``) on
    labels with ``grid_noise`` of them wrong (the wrong labels are fixed by ``data_seed`` 0: they define the task).

    ``grid_epochs`` epochs, the LR dropping to a tenth at half. Returns a DataFrame with lr,
    weight_decay, seed, val_acc, val_loss, train_loss, train_acc, weight_norm, and ``noisy_fit``
    (fraction of the wrong training labels the final model reproduces) and ``clean_fit``.
    """
    configs, extra = _grid_configs(s, seeds)
    results = run_many(configs, store, workers=s.workers, device=device, desc="lr x wd grid", progress=None)
    t = _table(configs, results, extra)
    return t.rename(columns={"noise_fit/noisy_fit": "noisy_fit", "noise_fit/clean_fit": "clean_fit"})


def _grid_configs(s: Setup, seeds: Any) -> tuple[list[RunConfig], list[dict[str, Any]]]:
    """The runs of :func:`grid_runs` and each one's extra table columns (``lr_role``)."""
    configs, extra = [], []
    for lr in s.grid_lrs:
        for wd in (0.0, s.grid_wd):
            for seed in _check_seeds(seeds, s.grid_seeds, "grid_runs"):
                configs.append(
                    _base(
                        s,
                        lr=lr,
                        weight_decay=wd,
                        seed=seed,
                        label_noise=s.grid_noise,
                        steps=s.grid_epochs * _spe(s),
                        measures=[{"name": "noise_fit"}],
                        lr_schedule={"name": "step", "final": 0.1, "decay_fraction": 0.5},
                    )
                )
                extra.append({"lr_role": "large" if lr == max(s.grid_lrs) else "small"})
    return configs, extra


def recipes(s: Setup) -> list[tuple[float, float]]:
    """The (lr, wd) of the plateau runs: the trajectory recipes (plateau_lr, plateau_wd) and (plateau_lr, 0),
    then ``plateau_pairs``."""
    trajectory = [(s.plateau_lr, s.plateau_wd), (s.plateau_lr, 0.0)]
    return trajectory + [p for p in s.plateau_pairs if p not in trajectory]


def _plateau_configs(s: Setup, seeds: Any) -> list[RunConfig]:
    snaps = list(range(s.snapshot_every * _spe(s), s.plateau_epochs * _spe(s) + 1, s.snapshot_every * _spe(s)))
    out = []
    for seed in _check_seeds(seeds, s.plateau_seeds, "plateau_runs"):
        for lr, wd in recipes(s):
            out.append(_base(s, lr=lr, weight_decay=wd, seed=seed, steps=s.plateau_epochs * _spe(s), snapshots=snaps))
    return out


def plateau_runs(
    s: Setup, seeds: Any, *, device: str = "cpu", store: Store | None = None
) -> tuple[Any, dict[str, Any]]:
    """OVER-3 (and the large-LR phases of OVER-4): constant LR, clean labels, ``plateau_epochs`` epochs.

    Runs every recipe of :func:`recipes` for every seed of ``seeds`` (``plateau_seeds`` of them). Each keeps
    snapshots of its weights every ``snapshot_every`` epochs. Returns the table (one row per run) and the
    histories by key.
    """
    configs = _plateau_configs(s, seeds)
    results = run_many(configs, store, workers=s.workers, device=device, desc="plateau runs", progress=None)
    t = _table(configs, results, [{} for _ in configs])
    t["lr_wd"] = t["lr"] * t["weight_decay"]
    return t, {r.info["key"]: r.history for r in results}


def _copy_configs(s: Setup, parents: list[RunConfig]) -> tuple[list[RunConfig], list[dict[str, Any]]]:
    """The fine-tuned copies of :func:`flow_copies` (each starting from a snapshot of one of ``parents``, the
    plateau runs) and each one's extra table columns."""
    configs, extra = [], []
    for p in parents:
        trajectory = p.lr == s.plateau_lr and p.weight_decay in (s.plateau_wd, 0.0)
        if not trajectory:
            steps = p.snapshots[-1:]
        elif p.weight_decay == 0:
            steps = p.snapshots[s.nowd_copy_every - 1 :: s.nowd_copy_every]
        else:
            steps = p.snapshots
        trace = [
            {
                "name": "hessian_trace",
                "probes": s.trace_probes,
                "samples": s.trace_samples,
                "seed": 0,
                "probe_chunk": s.trace_probe_chunk,
                "estimator": s.trace_estimator,
            }
        ]
        for step in steps:
            configs.append(
                p.replace(
                    init_from={"run": p.key(), "step": step},
                    snapshots=[],
                    steps=s.finetune_epochs * _spe(s),
                    lr=p.lr * s.finetune_factor,
                    seed=1000 + p.seed,
                    eval_every=0,
                    measures=trace if trajectory else [],
                )
            )
            extra.append(
                {
                    "epoch": step // _spe(s),
                    "parent_seed": p.seed,
                    "parent_lr": p.lr,
                    "role": "trajectory" if trajectory else "final",
                }
            )
    return configs, extra


def flow_copies(s: Setup, seeds: Any, *, device: str = "cpu", store: Store | None = None) -> Any:
    """OVER-4 (and OVER-2): fine-tuned, measured copies of the plateau runs' snapshots.

    Every snapshot of the (plateau_lr, plateau_wd) run and every ``nowd_copy_every``-th snapshot of the
    (plateau_lr, 0) run, of every seed (``role`` "trajectory"), and the last snapshot of each further plateau
    run of ``plateau_pairs`` (``role`` "final", whose Hessian trace is not measured: they serve OVER-2 only).
    Each copy trains ``finetune_epochs`` epochs at a tenth (``finetune_factor``) of its run's LR with the same
    weight decay and batch-order seed ``1000 + seed`` (a gradient-flow proxy, as the source's
    fine-tuning at a small LR), then its Hessian trace is measured by ``trace_estimator`` with
    ``trace_probes`` Hessian-vector products on the first ``trace_samples`` training points (eval mode).
    Returns one row per copy: role, seed, lr and weight_decay (of the run it was copied from), epoch (of the
    snapshot), trace, trace_se, trace_hvps, scale_aware, val_acc, test_err, train_loss, weight_norm, key.
    """
    parents = _plateau_configs(s, seeds)
    run_many(parents, store, workers=s.workers, device=device, desc="flow parents", progress=None)
    configs, extra = _copy_configs(s, parents)
    results = run_many(configs, store, workers=s.workers, device=device, desc="flow copies", progress=None)
    t = _table(configs, results, extra)
    t["seed"], t["lr"] = t["parent_seed"], t["parent_lr"]
    t = t.drop(columns=["parent_seed", "parent_lr"]).rename(
        columns={
            "hessian_trace/value": "trace",
            "hessian_trace/stderr": "trace_se",
            "hessian_trace/hvps": "trace_hvps",
            "hessian_trace/scale_aware": "scale_aware",
        }
    )
    t["test_err"] = 1.0 - t["val_acc"]
    return t


def spoiled(train_loss: Any, factor: float = 2.0, margin: float = 0.01) -> np.ndarray:
    """The rule that drops copies spoiled by a loss spike of the large-LR phase, judged on the training
    loss alone: a copy (``train_loss`` in snapshot order) whose training loss after fine-tuning exceeds
    ``factor`` times the lowest loss of the earlier copies of its run, and that lowest loss by more than
    ``margin`` (so that copies near zero loss are not dropped for noise-level wiggles), did not get back
    to the valley floor, and its trace is not comparable. The first copy is always kept.

    (A first version compared with the median of all the run's copies; it also dropped the earliest
    copies, whose loss is higher because they are early, not because of a spike.)
    """
    loss = np.asarray(train_loss, dtype=np.float64)
    best_before = np.minimum.accumulate(np.concatenate([[np.inf], loss[:-1]]))
    return (loss > factor * best_before) & (loss > best_before + margin)


def plateau_level(history: dict[str, np.ndarray], window: tuple[float, float] = (0.8, 1.0)) -> float:
    """Median training loss (whole training set, eval mode) over the evaluations in the fraction
    ``window`` of the run (the median: the large-LR phase has loss spikes)."""
    step = np.asarray(history["step"], dtype=np.float64)
    loss = np.asarray(history["train_loss"], dtype=np.float64)
    end = step.max()
    sel = (step > window[0] * end) & (step <= window[1] * end)
    return float(np.median(loss[sel]))


def plateau_statistics(table: Any) -> Any:
    """OVER-3, per seed, from a table with columns seed, lr, weight_decay, level and late_slope (one row per
    plateau run). Returns a DataFrame indexed by seed with

    * ``ratio``: the smallest log10(level with decay / level without decay at the same LR) over the runs
      with decay (at least 1: every run with decay sits ten times above the one without);
    * ``settle``: the smallest late log-log slope over the runs with decay (near 0: settled; -1: still
      falling like 1/t);
    * ``lambda_rise``: at the smallest LR, the smallest log-log slope of the level between consecutive
      decays (above 0: the level rises with every increase of lambda);
    * ``lr_effect``: the mean, over the decays run at both the smallest and the largest LR, of
      ln(level at the largest LR / level at the smallest) (far from 0: the level depends on eta).
    """
    import pandas as pd

    rows = {}
    for seed, sub in table.groupby("seed"):
        wd = sub[sub["weight_decay"] > 0]
        off = sub[sub["weight_decay"] == 0].set_index("lr")["level"]
        ratio = min(np.log10(r.level / off[r.lr]) if r.lr in off.index else np.nan for r in wd.itertuples())
        lrs = sorted(set(wd["lr"]))
        small = wd[wd["lr"] == lrs[0]].sort_values("weight_decay")
        lam, lev = np.log(small["weight_decay"].to_numpy()), np.log(small["level"].to_numpy())
        rise = float(np.min(np.diff(lev) / np.diff(lam))) if len(lam) > 1 else np.nan
        piv = wd.pivot_table(index="weight_decay", columns="lr", values="level")
        both = piv[[lrs[0], lrs[-1]]].dropna() if len(lrs) > 1 else piv.iloc[:0]
        effect = float(np.mean(np.log(both[lrs[-1]] / both[lrs[0]]))) if len(both) else np.nan
        rows[seed] = {
            "ratio": float(ratio),
            "settle": float(wd["late_slope"].min()),
            "lambda_rise": rise,
            "lr_effect": effect,
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("seed")


def pair_excess_z(pairs: list[tuple[Any, Any, float, float]], alpha: float = 0.05) -> float:
    """OVER-2, one seed: how far the most significant pair of :func:`equal_norm_pairs` clears the
    Bonferroni-corrected two-sided level ``alpha / len(pairs)``, in z units: z(smallest p) - z(level).
    Positive: that pair's test errors differ at family-wise level ``alpha``. NaN without pairs."""
    from scipy import stats as sps

    if not pairs:
        return float("nan")
    p_min = max(min(p for *_, p in pairs), 1e-300)
    return float(sps.norm.isf(p_min / 2) - sps.norm.isf(alpha / (2 * len(pairs))))


def equal_norm_pairs(
    copies: Any, n_test: int, norm_tol: float = 0.05, loss_tol: float = 0.2, loss_floor: float = 0.005
) -> list[tuple[Any, Any, float, float]]:
    """OVER-2: pairs of copies from different recipes (a different ``lr`` or ``weight_decay``) whose weight
    norms are within ``norm_tol`` (relative) and whose training losses are within ``loss_tol`` (relative)
    or ``loss_floor`` (absolute) of each other, each with its test-error gap and the two-proportion
    p-value of that gap on ``n_test`` points (:func:`wdlib.stats.two_proportion_p`), smallest p first.
    Rows are ``copies.itertuples()`` records."""
    rows = list(copies.itertuples())
    pairs = []
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            p, q = rows[i], rows[j]
            if (p.lr, p.weight_decay) == (q.lr, q.weight_decay):
                continue
            same_norm = abs(p.weight_norm - q.weight_norm) <= norm_tol * max(p.weight_norm, q.weight_norm)
            same_loss = abs(p.train_loss - q.train_loss) <= max(loss_tol * max(p.train_loss, q.train_loss), loss_floor)
            if same_norm and same_loss:
                pairs.append((p, q, abs(p.test_err - q.test_err), two_proportion_p(p.test_err, q.test_err, n_test)))
    return sorted(pairs, key=lambda t: t[3])


def paired_gain(table: Any, lr: float, metric: str = "val_acc") -> tuple[float, float, Any]:
    """WD's gain in ``metric`` at learning rate ``lr``: mean and standard error over seeds of the paired
    differences (same seed, so the same initialization and batch order), and the differences as a
    pandas Series indexed by seed (so that gains at two LRs subtract seed by seed)."""
    sub = table[table["lr"] == lr]
    on = sub[sub["weight_decay"] > 0].set_index("seed")[metric]
    off = sub[sub["weight_decay"] == 0].set_index("seed")[metric]
    d = (on - off.reindex(on.index)).astype(float)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return float(d.mean()), se, d


# --- OVER-5: effective learning rate of scale-invariant layers ---------------------------------------------


def _angular_base(s: Setup, optimizer: str, lr: float, wd: float, decay: str, seed: int) -> RunConfig:
    return RunConfig(
        data=s.data,
        data_args=s.data_args,
        subset=s.train_size,
        data_seed=0,
        seed=seed,
        model="mlp",
        model_args={"width": s.angular_width, "depth": 2, "scale_invariant": True, "bias": False},
        optimizer={"name": optimizer, "decay": decay},
        lr=lr,
        weight_decay=wd,
        batch_size=s.batch_size,
        steps=s.angular_steps,
        eval_every=max(s.angular_steps // 10, 1),
        divergence_factor=1e6,
        scale=s.scale,
        probes=[{"name": "angular", "tensors": [0, 1], "every": 1}],
    )


def _angular_specs(s: Setup, seeds: Any) -> list[tuple[str, bool, int, RunConfig]]:
    """The runs of :func:`angular_runs`: ``(rule, with_wd, seed, configuration)``, four per seed."""
    specs = []
    for seed in _check_seeds(seeds, s.angular_seeds, "angular_runs"):
        (sgd_lr, sgd_wd), (adam_lr, adam_wd) = s.angular_sgd, s.angular_adam
        specs += [
            ("sgd", True, seed, _angular_base(s, "sgd", sgd_lr, sgd_wd, "l2", seed)),
            ("sgd", False, seed, _angular_base(s, "sgd", sgd_lr, 0.0, "l2", seed)),
            ("adam", True, seed, _angular_base(s, "adam", adam_lr, adam_wd, "decoupled", seed)),
            ("adam", False, seed, _angular_base(s, "adam", adam_lr, 0.0, "decoupled", seed)),
        ]
    return specs


def angular_runs(
    s: Setup, seeds: Any, *, device: str = "cpu", store: Store | None = None
) -> dict[tuple[str, bool, int], Any]:
    """OVER-5: a scale-invariant MLP (two hidden layers, each bias-free and followed by LayerNorm without
    affine parameters) trained by SGD (L2 penalty) and by AdamW, each with and without decay, for every
    seed of ``seeds`` (``angular_seeds`` of them).

    Returns ``{(rule, with_wd, seed): RunResult}``, ``rule`` "sgd" or "adam"; each result's probes hold
    the per-step norm, gradient norm, update norm and angle of the two hidden matrices.
    """
    specs = _angular_specs(s, seeds)
    results = run_many(
        [c for *_, c in specs], store, workers=s.workers, device=device, desc="angular runs", progress=None
    )
    return {(rule, wd, seed): r for (rule, wd, seed, _), r in zip(specs, results)}


def angle_statistics(angle_windows: dict[bool, Any], held_windows: int = 4) -> dict[str, float]:
    """OVER-5, one optimizer and one seed, from the window means of the measured angle per step
    (``{with_wd: windows}``, :func:`window_means`): ``fall`` (no decay: last window / first window),
    ``held`` (with decay: the largest relative deviation of the last ``held_windows`` windows from their
    mean) and ``ratio`` (last window with decay / last window without)."""
    on, off = (np.asarray(angle_windows[k], dtype=np.float64) for k in (True, False))
    tail = on[-held_windows:]
    return {
        "fall": float(off[-1] / off[0]),
        "held": float(np.abs(tail / tail.mean() - 1).max()),
        "ratio": float(on[-1] / off[-1]),
    }


def rescaling_check(
    result: Any,
    s: Setup,
    scales: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0),
    samples: int = 512,
    adam_steps: int = 10,
) -> dict[str, Any]:
    """Rescale the hidden (scale-invariant) matrices of a trained model by ``c`` and measure, in float64 on
    the CPU: the loss on a fixed batch of ``samples`` training points (unchanged if the layers are
    scale-invariant), the gradient norm of those matrices (``~ 1/c``), the angle one real SGD step turns
    them through (``~ 1/c^2``), and the mean angle per step of ``adam_steps`` real Adam steps on a fixed
    sequence of batches, from a fresh state (``~ 1/c``: Adam's step size ignores the gradient's scale).

    The angles are measured (``arccos`` between the weights before and after), not computed from a
    formula. Returns the arrays and their log-log slopes against ``c``.
    """
    cfg = RunConfig.from_dict(result.config)
    ds = build_data(cfg)
    x, y = ds.x_train[:samples].double(), ds.y_train[:samples]

    def fresh(c: float) -> tuple[torch.nn.Module, list[torch.Tensor]]:
        model = result.model(data=ds).float().double()  # the trained weights as float32, then in float64
        mats = [p for p in model.parameters() if p.ndim >= 2][:2]
        with torch.no_grad():
            for p in mats:
                p.mul_(c)
        for p in model.parameters():
            p.requires_grad_(any(p is m for m in mats))
        return model, mats

    loss_, grad_, sgd_, adam_ = [], [], [], []
    lr_sgd = cfg.lr if cfg.optimizer["name"] == "sgd" else s.angular_sgd[0]
    for c in scales:
        model, mats = fresh(c)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        loss_.append(float(loss.detach()))
        grad_.append(float(torch.sqrt(sum((p.grad**2).sum() for p in mats))))
        before = [p.detach().clone() for p in mats]
        SGD(mats, lr=lr_sgd).step()
        sgd_.append(weight_angle(before, [p.detach() for p in mats]))
        model, mats = fresh(c)
        opt = Adam(mats, lr=s.angular_adam[0], weight_decay=0.0, decay="decoupled")
        angles = []
        for k in range(adam_steps):
            xb, yb = ds.batch(k, 12345, batch_size=s.batch_size)
            opt.zero_grad()
            F.cross_entropy(model(xb.double()), yb).backward()
            before = [p.detach().clone() for p in mats]
            opt.step()
            angles.append(weight_angle(before, [p.detach() for p in mats]))
        adam_.append(float(np.mean(angles)))
    sc = np.asarray(scales, dtype=np.float64)
    return {
        "scales": sc,
        "loss": np.asarray(loss_),
        "grad_norm": np.asarray(grad_),
        "sgd_angle": np.asarray(sgd_),
        "adam_angle": np.asarray(adam_),
        "slope_grad": loglog_slope(sc, grad_),
        "slope_sgd": loglog_slope(sc, sgd_),
        "slope_adam": loglog_slope(sc, adam_),
        "loss_spread": float(np.ptp(loss_) / np.mean(loss_)),
    }


def window_means(values: Any, windows: int = 10) -> np.ndarray:
    """Means of ``values`` over ``windows`` equal consecutive windows (to read a noisy per-step series)."""
    v = np.asarray(values, dtype=np.float64)
    return np.array([w.mean() for w in np.array_split(v, windows)])


def trace_correlations(copies: Any, seed: int, weight_decay: float) -> dict[str, float]:
    """For one trajectory run's copies not marked ``spoiled``: Spearman(trace, test error), Spearman(scale-aware
    trace, test error),
    Spearman(trace, epoch), the relative fall of the trace from the first to the last retained copy
    (``trace_fall`` = 1 - last/first), the largest relative standard error of a retained trace
    (``max_rel_se``), and the trace and error at the first and last retained copy."""
    sub = copies[
        (copies["role"] == "trajectory") & (copies["seed"] == seed) & (copies["weight_decay"] == weight_decay)
    ].sort_values("epoch")
    sub = sub[~sub["spoiled"]]
    if len(sub) < 2:
        raise ValueError(f"seed {seed}, weight decay {weight_decay:g}: {len(sub)} copies kept, a correlation needs 2")
    return {
        "n": len(sub),
        "rho_trace_err": spearman(sub["trace"], sub["test_err"]),
        "trace_fall": float(1.0 - sub["trace"].iloc[-1] / sub["trace"].iloc[0]),
        "max_rel_se": float((sub["trace_se"] / sub["trace"].abs()).max()),
        "rho_scale_aware_err": spearman(sub["scale_aware"], sub["test_err"]),
        "rho_trace_epoch": spearman(sub["epoch"], sub["trace"]),
        "trace_first": float(sub["trace"].iloc[0]),
        "trace_last": float(sub["trace"].iloc[-1]),
        "err_first": float(sub["test_err"].iloc[0]),
        "err_last": float(sub["test_err"].iloc[-1]),
    }


def estimator_spread(s: Setup, seeds: Any, store: Store, draws: int = 6) -> dict[str, float]:
    """How much the chapter's trace estimator varies from one draw of its probes to the next, against Hutchinson
    with the same number of Hessian-vector products (a sanity check shown beside OVER-4, not a test).

    On the last fine-tuned copy of the run with decay of the first of ``seeds`` (:func:`flow_copies` must have
    stored it), both estimators run ``draws`` times (probe seeds ``0..draws-1``) with ``trace_probes`` HVPs on
    the copy's first ``trace_samples`` training points in eval mode, as the copies' own measurement. Returns,
    per estimator, the empirical standard deviation over the draws (``std_<estimator>``), the mean reported
    standard error (``se_<estimator>``), the mean estimate (``mean_<estimator>``) and the estimate with probe
    seed 0 (``first_<estimator>``, for the chapter's estimator the copy's own measurement), with ``hvps``, ``draws``
    and ``epoch`` (of the copy's snapshot). Why: XTrace's reported error is the paper's heuristic (its
    leave-one-out estimates are exchangeable, not independent), and whether it beats Hutchinson depends on
    how fast the Hessian's spectrum decays (``benchmarks/trace_estimators.py``); this measures both on a model
    of the chapter.
    """
    seeds = _check_seeds(seeds, s.plateau_seeds, "seeds")
    configs, extra = _copy_configs(s, _plateau_configs(s, seeds))
    mine = [
        (c, e)
        for c, e in zip(configs, extra)
        if e["role"] == "trajectory" and e["parent_seed"] == seeds[0] and c.weight_decay == s.plateau_wd
    ]
    cfg, info = mine[-1]
    result = store.get(cfg)
    if result is None:
        raise ValueError("estimator_spread: the copy is not in the store; run flow_copies first")
    ds = build_data(cfg)
    model = result.model(data=ds)
    out: dict[str, float] = {"hvps": float(s.trace_probes), "draws": float(draws), "epoch": float(info["epoch"])}
    trace = MEASURES["hessian_trace"]  # the copies' own measurement, with another estimator or probe seed
    for est in dict.fromkeys((s.trace_estimator, "hutchinson")):
        results = [
            trace(model, ds, probes=s.trace_probes, samples=s.trace_samples, seed=seed,
                  probe_chunk=s.trace_probe_chunk, estimator=est)
            for seed in range(draws)
        ]  # fmt: skip
        values = [d["value"] for d in results]
        out[f"first_{est}"] = float(values[0])  # probe seed 0: the copy's own measurement, for that estimator
        out[f"mean_{est}"] = float(np.mean(values))
        out[f"std_{est}"] = float(np.std(values, ddof=1))
        out[f"se_{est}"] = float(np.mean([d["stderr"] for d in results]))
    return out


# --- what the notebook trains ------------------------------------------------------------------------------


def planned_runs(s: Setup, *, store: Store | None = None) -> list[RunConfig]:
    """Every run ``notebooks/04_overparameterized.ipynb`` trains at the settings ``s`` (its seeds from ``s.seed``),
    in the order it asks for them, built by the helpers its functions train: OVER-1's grid, the plateau runs
    (OVER-3, and the parents of OVER-4's copies), the fine-tuned copies of their snapshots (configurations with
    ``init_from``: buildable before their parents train) and OVER-5's angular runs. ``store`` is not needed (no
    configuration here depends on a result); it is accepted so every chapter's ``planned_runs`` is called
    alike."""
    grid_seeds, plateau_seeds, angular_seeds = (s.seeds(n) for n in (s.grid_seeds, s.plateau_seeds, s.angular_seeds))
    parents = _plateau_configs(s, plateau_seeds)
    configs = _grid_configs(s, grid_seeds)[0] + parents
    configs += _copy_configs(s, parents)[0]
    configs += [c for *_, c in _angular_specs(s, angular_seeds)]
    return configs
