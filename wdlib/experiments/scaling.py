"""Experiments of chapter 3, "Scaling weight decay with dataset size and width" (SCALE-1 to SCALE-3).

Sweeps through :func:`wdlib.runs.sweep` (cached in the run store, in parallel single-thread workers):
lambda against dataset size at a fixed number of epochs (SCALE-1, SCALE-2) and the base learning rate
against width under muP with the hidden weight decay kept or scaled (SCALE-3). The notebook draws the
tables and computes the verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import RunConfig
from ..runs import Store, sweep

__all__ = ["Setup", "SCALE_SETTINGS", "setup", "data_size_sweep", "width_sweep", "best_index", "tau_epoch_star"]


@dataclass(frozen=True)
class Setup:
    """Sizes of one scale."""

    scale: str
    pool: int                       # MNIST-1D samples drawn once (80% train, 20% the shared test set)
    sizes: tuple[int, ...]          # SCALE-1 training-set sizes, nested subsets of the pool's train split
    lams: tuple[float, ...]         # SCALE-1 lambda grid (factor 2)
    seeds: tuple[int, ...]
    width: int
    lr: float
    batch_size: int
    epochs: int
    widths: tuple[int, ...]         # SCALE-3
    base_width: int
    base_lrs: tuple[float, ...]     # SCALE-3 base LR grid (factor 2)
    s3_size: int
    s3_epochs: int
    s3_lambda: float
    s3_seeds: tuple[int, ...]
    workers: int


def _grid(start: float, n: int) -> tuple[float, ...]:
    return tuple(float(start * 2**i) for i in range(n))


SCALE_SETTINGS: dict[str, Setup] = {
    "smoke": Setup("smoke", pool=10_000, sizes=(2000, 4000, 8000), lams=_grid(0.125, 7), seeds=(0, 1, 2), width=256,
                   lr=1e-3, batch_size=128, epochs=40, widths=(64, 128, 256, 512), base_width=64,
                   base_lrs=_grid(2e-3, 6), s3_size=4000, s3_epochs=60, s3_lambda=1.0, s3_seeds=(0, 1), workers=2),
    "full": Setup("full", pool=200_000, sizes=(10_000, 20_000, 40_000, 80_000, 160_000), lams=_grid(0.015625, 10),
                  seeds=(0, 1, 2), width=1024, lr=1e-3, batch_size=128, epochs=40, widths=(128, 256, 512, 1024, 2048),
                  base_width=128, base_lrs=_grid(1e-3, 7), s3_size=40_000, s3_epochs=60, s3_lambda=1.0,
                  s3_seeds=(0, 1, 2), workers=1),
}


def setup(scale: str) -> Setup:
    """The settings of ``scale`` ("smoke" or "full")."""
    if scale not in SCALE_SETTINGS:
        raise ValueError(f"scale must be one of {', '.join(repr(s) for s in SCALE_SETTINGS)}, got {scale!r}")
    return SCALE_SETTINGS[scale]


def _base(s: Setup, size: int, epochs: int, width: int, **changes: Any) -> RunConfig:
    return RunConfig(data="mnist1d", data_args={"num_samples": s.pool}, subset=size, data_seed=0, model="mlp",
                     model_args={"width": width, "depth": 2}, optimizer="adam", decay="decoupled",
                     steps=epochs * size // s.batch_size, batch_size=s.batch_size, scale=s.scale,
                     divergence_factor=1e6, **changes)


def data_size_sweep(s: Setup, sizes: tuple[int, ...], *, device: str = "cpu", store: Store | None = None) -> Any:
    """SCALE-1: test loss for every (size, lambda, seed), AdamW at ``s.lr`` for ``s.epochs`` epochs at every size.

    Decay on weight matrices only. Returns a DataFrame with columns size, weight_decay, seed, val_loss,
    val_acc, diverged_at, steps.
    """
    import pandas as pd

    tables = []
    for size in sizes:
        t = sweep(_base(s, size, s.epochs, s.width, lr=s.lr), {"weight_decay": list(s.lams), "seed": list(s.seeds)},
                  store, workers=s.workers, device=device, progress=False)
        t["size"] = size
        t["steps"] = s.epochs * size // s.batch_size
        tables.append(t)
    return pd.concat(tables, ignore_index=True)


def width_sweep(s: Setup, decay: str, *, device: str = "cpu", store: Store | None = None) -> Any:
    """SCALE-3: test loss for every (width, base LR, seed) under muP, hidden weight decay ``decay``.

    ``decay="scaled"``: hidden and readout lambda = s3_lambda * width/base_width (lr*lambda fixed);
    ``"constant"``: lambda = s3_lambda at every width. Hidden and readout LR = base LR * base_width/width,
    readout initialized at zero (:func:`wdlib.params.mup_groups`).
    """
    import pandas as pd

    tables = []
    for width in s.widths:
        base = _base(s, s.s3_size, s.s3_epochs, width, weight_decay=s.s3_lambda,
                     mup={"base_width": s.base_width, "decay": decay, "zero_readout": True})
        t = sweep(base, {"lr": list(s.base_lrs), "seed": list(s.s3_seeds)}, store, workers=s.workers,
                  device=device, progress=False)
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
        per_seed = [int(np.argmin(seed_t.set_index(knob)["val_loss"].reindex(list(values)).to_numpy()))
                    for _, seed_t in sub.groupby("seed")]
        out[g] = {"best": int(np.argmin(mean.to_numpy())), "per_seed": per_seed, "mean_loss": mean.to_numpy()}
    return out


def tau_epoch_star(s: Setup, size: int, lam: float) -> float:
    """``tau_epoch = B/(eta*lambda*N)`` at the best lambda."""
    return s.batch_size / (s.lr * lam * size)
