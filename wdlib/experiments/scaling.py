"""Experiments of chapter 3, "Scaling weight decay with dataset size and width" (SCALE-1 to SCALE-3).

Sweeps through :func:`wdlib.runs.sweep` (cached in the run store, in parallel single-thread workers):
lambda against dataset size at a fixed number of epochs (SCALE-1, SCALE-2) and the base learning rate
against width under muP with the hidden weight decay kept or scaled (SCALE-3). Run seeds come from the
notebook (``setting.seeds(n)``; the Setup holds the counts); the MNIST-1D draw that defines the task is
fixed (``data_seed=0``). Optima are read from the seed-mean loss on the factor-2 grid and refined by a
parabola through the best point and its two neighbours (:func:`refined_index`), so that statistics of
them move continuously and a bootstrap over seeds gives them a spread. The notebook draws the tables and
passes the measurements to the claims ledger. :func:`planned_runs` lists every run the notebook trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import RunConfig
from ..runs import Store, expand_grid, sweep
from ._scaffold import Setting, pick_settings

__all__ = [
    "Setup",
    "SETTINGS",
    "setup",
    "data_size_sweep",
    "width_sweep",
    "best_index",
    "tau_epoch_star",
    "loss_grid",
    "refined_index",
    "optimum_log2",
    "tau_log2_spread",
    "lambda_exponent",
    "tau_log2_over_epochs",
    "lr_drift",
    "planned_runs",
]


@dataclass(frozen=True)
class Setup(Setting):
    """Sizes of one scale."""

    pool: int  # MNIST-1D samples drawn once (80% train, 20% the shared test set)
    sizes: tuple[int, ...]  # SCALE-1 training-set sizes, nested subsets of the pool's train split
    lams: tuple[float, ...]  # SCALE-1 lambda grid (factor 2)
    size_seeds: int  # SCALE-1/2 training seeds (count)
    width: int
    lr: float
    batch_size: int
    epochs: int
    widths: tuple[int, ...]  # SCALE-3
    base_width: int
    base_lrs: tuple[float, ...]  # SCALE-3 base LR grid (factor 2)
    mup_size: int  # SCALE-3 (the muP width sweep): training-set size
    mup_epochs: int
    mup_lambda: float  # hidden and readout lambda at base_width
    mup_seeds: int  # SCALE-3 training seeds (count)
    workers: int


def _grid(start: float, n: int) -> tuple[float, ...]:
    return tuple(float(start * 2**i) for i in range(n))


SETTINGS: dict[str, Setup] = {
    "smoke": Setup(
        "smoke",
        pool=10_000,
        sizes=(2000, 4000, 8000),
        lams=_grid(0.125, 7),
        size_seeds=3,
        width=256,
        lr=1e-3,
        batch_size=128,
        epochs=40,
        widths=(64, 128, 256, 512),
        base_width=64,
        base_lrs=_grid(2e-3, 6),
        mup_size=4000,
        mup_epochs=60,
        mup_lambda=1.0,
        mup_seeds=3,
        workers=2,
    ),
    "full": Setup(
        "full",
        pool=200_000,
        sizes=(10_000, 20_000, 40_000, 80_000, 160_000),
        lams=_grid(0.015625, 10),
        size_seeds=5,
        width=1024,
        lr=1e-3,
        batch_size=128,
        epochs=40,
        widths=(128, 256, 512, 1024, 2048),
        base_width=128,
        base_lrs=_grid(1e-3, 7),
        mup_size=40_000,
        mup_epochs=60,
        mup_lambda=1.0,
        mup_seeds=5,
        workers=1,
    ),
    # the unit tests: seconds on one core
    "test": Setup(
        "test",
        pool=1000,
        sizes=(200, 400),
        lams=_grid(0.125, 3),
        size_seeds=2,
        width=16,
        lr=1e-3,
        batch_size=32,
        epochs=2,
        widths=(8, 16),
        base_width=8,
        base_lrs=_grid(2e-3, 3),
        mup_size=200,
        mup_epochs=2,
        mup_lambda=1.0,
        mup_seeds=2,
        workers=1,
    ),
}


def setup(scale: str, device: str = "cpu", seed: int = 0) -> Setup:
    """The settings of ``scale`` ("smoke", "full" or "test"; :func:`wdlib.experiments.pick_settings`)."""
    return pick_settings(SETTINGS, scale, device=device, seed=seed)


def _base(s: Setup, size: int, epochs: int, width: int, **changes: Any) -> RunConfig:
    return RunConfig(
        data="mnist1d",
        data_args={"num_samples": s.pool},
        subset=size,
        data_seed=0,
        model="mlp",
        model_args={"width": width, "depth": 2},
        optimizer={"name": "adam", "decay": "decoupled"},
        steps=epochs * size // s.batch_size,
        batch_size=s.batch_size,
        scale=s.scale,
        divergence_factor=1e6,
        **changes,
    )


def _size_sweeps(
    s: Setup, sizes: tuple[int, ...], seeds: tuple[int, ...]
) -> list[tuple[int, RunConfig, dict[str, list[Any]]]]:
    """The sweeps of :func:`data_size_sweep`: ``(size, base configuration, grid)`` per training-set size."""
    return [
        (size, _base(s, size, s.epochs, s.width, lr=s.lr), {"weight_decay": list(s.lams), "seed": list(seeds)})
        for size in sizes
    ]


def data_size_sweep(
    s: Setup, sizes: tuple[int, ...], seeds: tuple[int, ...], *, device: str = "cpu", store: Store | None = None
) -> Any:
    """SCALE-1: test loss for every (size, lambda, seed), AdamW at ``s.lr`` for ``s.epochs`` epochs at every size.

    Decay on weight matrices only. Returns a DataFrame with columns size, weight_decay, seed, val_loss,
    val_acc, diverged_at, steps.
    """
    import pandas as pd

    tables = []
    for size, base, grid in _size_sweeps(s, sizes, seeds):
        t = sweep(
            base,
            grid,
            store,
            workers=s.workers,
            device=device,
            desc=f"data size {size}",
            progress=None,
        )
        t["size"] = size
        t["steps"] = s.epochs * size // s.batch_size
        tables.append(t)
    return pd.concat(tables, ignore_index=True)


def _width_sweeps(s: Setup, decay: str, seeds: tuple[int, ...]) -> list[tuple[int, RunConfig, dict[str, list[Any]]]]:
    """The sweeps of :func:`width_sweep`: ``(width, base configuration, grid)`` per width, muP with ``decay``."""
    mup = {"base_width": s.base_width, "decay": decay, "zero_readout": True}
    return [
        (
            width,
            _base(s, s.mup_size, s.mup_epochs, width, weight_decay=s.mup_lambda, mup=dict(mup)),
            {"lr": list(s.base_lrs), "seed": list(seeds)},
        )
        for width in s.widths
    ]


def width_sweep(
    s: Setup, decay: str, seeds: tuple[int, ...], *, device: str = "cpu", store: Store | None = None
) -> Any:
    """SCALE-3: test loss for every (width, base LR, seed) under muP, hidden weight decay ``decay``.

    ``decay="scaled"``: hidden and readout lambda = mup_lambda * width/base_width (lr*lambda fixed);
    ``"constant"``: lambda = mup_lambda at every width. Hidden and readout LR = base LR * base_width/width,
    readout initialized at zero (:func:`wdlib.params.mup_groups`).
    """
    import pandas as pd

    tables = []
    for width, base, grid in _width_sweeps(s, decay, seeds):
        t = sweep(
            base,
            grid,
            store,
            workers=s.workers,
            device=device,
            desc=f"width {width}, {decay} decay",
            progress=None,
        )
        t["width"] = width
        tables.append(t)
    out = pd.concat(tables, ignore_index=True)
    out["decay"] = decay
    return out


def best_index(table: Any, group: str, knob: str, values: tuple[float, ...]) -> dict[Any, dict[str, Any]]:
    """Per ``group`` value: the grid index of the best ``knob`` by mean test loss over seeds, and per seed.

    Diverged runs count as infinitely bad. Returns ``{g: {"best": i, "per_seed": [i, ...], "mean_loss": [...]}}``.
    """
    out = {}
    t = table.copy()
    t.loc[t["diverged_at"].notna(), "val_loss"] = np.inf
    for g, sub in t.groupby(group):
        mean = sub.groupby(knob)["val_loss"].mean().reindex(list(values))
        per_seed = [
            int(np.argmin(seed_t.set_index(knob)["val_loss"].reindex(list(values)).to_numpy()))
            for _, seed_t in sub.groupby("seed")
        ]
        out[g] = {"best": int(np.argmin(mean.to_numpy())), "per_seed": per_seed, "mean_loss": mean.to_numpy()}
    return out


def tau_epoch_star(s: Setup, size: int, lam: float) -> float:
    """``tau_epoch = B/(eta*lambda*N)`` at the best lambda."""
    return s.batch_size / (s.lr * lam * size)


def loss_grid(
    table: Any, group: str, knob: str, groups: tuple[Any, ...], values: tuple[float, ...]
) -> list[np.ndarray]:
    """Per seed (in sorted order), the test losses as a ``len(groups) x len(values)`` array; diverged or
    missing runs are ``inf`` (infinitely bad). The list is the unit of a bootstrap over seeds."""
    t = table.copy()
    t.loc[t["diverged_at"].notna(), "val_loss"] = np.inf
    out = []
    for _, sub in t.groupby("seed"):
        grid = sub.pivot_table(index=group, columns=knob, values="val_loss", aggfunc="mean")
        out.append(grid.reindex(index=list(groups), columns=list(values)).fillna(np.inf).to_numpy(dtype=np.float64))
    return out


def refined_index(losses: Any) -> float:
    """Fractional grid index of the minimum of ``losses`` (one row): the argmin, moved to the vertex of the
    parabola through it and its two neighbours (at most half a step either way). NaN when the argmin sits
    at an edge of the grid (the optimum may lie outside) or is not finite; when a neighbour is not finite
    (a diverged run) the argmin itself is returned."""
    y = np.asarray(losses, dtype=np.float64)
    i = int(np.argmin(np.where(np.isfinite(y), y, np.inf)))
    if not np.isfinite(y[i]) or i == 0 or i == len(y) - 1:
        return float("nan")
    a, b, c = y[i - 1], y[i], y[i + 1]
    if not (np.isfinite(a) and np.isfinite(c)):
        return float(i)
    curv = a - 2 * b + c
    return float(i) if curv <= 0 else float(i + 0.5 * (a - c) / curv)


def optimum_log2(units: list[np.ndarray], values: tuple[float, ...]) -> np.ndarray:
    """log2 of the refined best value of a factor-2 grid ``values``, per row of the seed-mean loss of ``units``."""
    mean = np.mean(np.stack(units), axis=0)
    return np.array([np.log2(values[0]) + refined_index(row) for row in mean])


def _log2_tau(s: Setup, units: list[np.ndarray], sizes: tuple[int, ...]) -> np.ndarray:
    """log2 of the best tau_epoch = B/(eta*lambda*N) per size."""
    return np.log2(s.batch_size / (s.lr * np.asarray(sizes, dtype=np.float64))) - optimum_log2(units, s.lams)


def tau_log2_spread(s: Setup, units: list[np.ndarray], sizes: tuple[int, ...]) -> float:
    """SCALE-1: max - min over sizes of log2(best tau_epoch), in factor-2 grid steps (NaN if any optimum is
    undefined)."""
    t = _log2_tau(s, units, sizes)
    return float(t.max() - t.min()) if np.all(np.isfinite(t)) else float("nan")


def lambda_exponent(s: Setup, units: list[np.ndarray], sizes: tuple[int, ...]) -> float:
    """SCALE-1: least-squares slope of log(best lambda) against log(N) (-1 if lambda* ~ 1/N)."""
    lam = optimum_log2(units, s.lams)
    return float(np.polyfit(np.log2(sizes), lam, 1)[0]) if np.all(np.isfinite(lam)) else float("nan")


def tau_log2_over_epochs(s: Setup, units: list[np.ndarray], sizes: tuple[int, ...]) -> np.ndarray:
    """SCALE-2: log2(best tau_epoch / epochs trained) per size (<= 0: the optimum is shorter than training)."""
    return _log2_tau(s, units, sizes) - np.log2(s.epochs)


def lr_drift(units: list[np.ndarray], values: tuple[float, ...]) -> float:
    """SCALE-3: max - min over widths (rows) of log2(refined best base LR), in factor-2 grid steps."""
    o = optimum_log2(units, values)
    return float(o.max() - o.min()) if np.all(np.isfinite(o)) else float("nan")


# --- what the notebook trains ------------------------------------------------------------------------------


def planned_runs(s: Setup, *, store: Store | None = None) -> list[RunConfig]:
    """Every run ``notebooks/03_scaling_rules.ipynb`` trains at the settings ``s`` (its seeds from ``s.seed``), in
    the order it asks for them, built by the helpers its sweeps train: SCALE-1's lambda grid at every dataset
    size (the smallest first, then the rest) and SCALE-3's base-LR grid at every width with the hidden decay
    kept constant, then scaled. ``store`` is not needed (no run here depends on another's result); it is accepted
    so every chapter's ``planned_runs`` is called alike."""
    size_seeds, mup_seeds = s.seeds(s.size_seeds), s.seeds(s.mup_seeds)
    sweeps = _size_sweeps(s, s.sizes[:1], size_seeds) + _size_sweeps(s, s.sizes[1:], size_seeds)
    for decay in ("constant", "scaled"):
        sweeps += _width_sweeps(s, decay, mup_seeds)
    return [c for _, base, grid in sweeps for c in expand_grid(base, grid)]
