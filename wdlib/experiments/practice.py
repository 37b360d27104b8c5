"""Experiments of chapter 1b, "Decoupled decay in practice" (DEC-8, DEC-4, DEC-5, DEC-6).

- DEC-8, the (lr, lambda) basin of Loshchilov & Hutter (ICLR 2019, figure 2): test error on a log grid
  of learning rate by weight decay for SGD+L2, SGDW, Adam+L2 and AdamW, the decoupled ones in the
  paper's convention (``lambda`` per step, times the schedule multiplier). At CPU scale the network is
  :class:`wdlib.models.ConvNet` with BatchNorm (every convolution scale-invariant, as in the paper's
  BatchNorm ResNets) on MNIST-1D, a cosine schedule, SGD with momentum 0.9. The valley's tilt is the
  log-log slope of the best lambda against the learning rate (:func:`valley`), with a bootstrap over
  seeds (:func:`tilt_measurement`). PyTorch's convention (``lr*lambda`` per step) is the same algorithm
  with ``lambda_torch = lambda_paper / lr``; :func:`convention_twins` retrains a few cells in it as a
  float32 cross-check of that conversion.
- DEC-4: a two-feature task (:func:`wdlib.data.spurious`) whose spurious feature agrees with the label
  only in training; an MLP trained with Adam+L2 and AdamW over a lambda grid, lambda picked on the
  in-distribution test split, then the spurious weight and out-of-distribution accuracy.
- DEC-5: a convolution and an RNN whose weights are tied over ``tie`` positions or time steps
  (:class:`wdlib.models.TiedConv`, :class:`wdlib.models.TiedRNN`); the per-weight effective shrinkage
  of the tied weights (:class:`wdlib.diagnostics.ShrinkageProbe`) against the sharing factor.
- DEC-6: int8 quantization (:mod:`wdlib.quantize`) of the DEC-8 Adam+L2 and AdamW models.

Every run goes through :func:`wdlib.runs.run_many` (cached in the run store, in parallel single-thread
workers). The training seeds are arguments (the notebook derives them from its ``seed`` parameter with
:meth:`wdlib.experiments.Setting.seeds`); a :class:`Setup` holds only how many of them each experiment uses.
The functions return tables and arrays; the notebook draws them and passes the measurements to the
claims ledger. :func:`planned_runs` lists every run the notebook trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..claims import Measurement
from ..components import build_data
from ..config import RunConfig
from ..data import spurious
from ..objective import evaluate
from ..quantize import grid_distance, quantizable, quantize_state
from ..runs import Store, expand_grid, results_table, run_many
from ..stats import loglog_slope
from ._scaffold import Setting, pick_settings

__all__ = [
    "Arm",
    "GRID_ARMS",
    "TORCH_ARMS",
    "Setup",
    "SETTINGS",
    "setup",
    "grid_values",
    "grid_sweeps",
    "wd_values",
    "lr_values",
    "error_matrix",
    "valley",
    "tilt_measurement",
    "convention_twins",
    "spurious_sweep",
    "spurious_reliance",
    "causal_only_accuracy",
    "select_lambda",
    "sharing_sweep",
    "quantization_table",
    "basin_cells",
    "planned_runs",
]


@dataclass(frozen=True)
class Arm:
    """One optimizer of the (lr, lambda) grid: wdlib's ``optimizer`` with ``decay`` and the grid's centre
    (log10 of lr and of lambda, in that decay rule's own units)."""

    label: str
    optimizer: str
    decay: str
    log_lr: float
    log_wd: float
    family: str  # "L2" or "decoupled"
    convention: str  # "coupled", "torch" (lr*lambda per step) or "paper" (lambda per step)
    lr_step: float | None = None  # decades between learning rates (default: the setup's grid_step)


#: The four judged grids. Centres picked from a one-seed pilot on a wider 7x7 grid (the notebook says
#: so); each grid spans ``(grid_points - 1) * lr_step`` decades of lr (``lr_step`` defaults to
#: ``grid_step``) and ``(grid_wd_points[family] - 1) * grid_step`` decades of lambda around its centre.
#: Adam's good learning rates span about one decade at smoke, so its arms step a quarter decade in lr
#: (centred half-way between the pilot's two best columns): five columns inside the band.
#:
#: :meta hide-value:
GRID_ARMS: tuple[Arm, ...] = (
    Arm("SGD+L2", "sgd", "l2", -1.0, -2.0, "L2", "coupled"),
    Arm("SGDW (paper)", "sgd", "independent", -1.0, -2.0, "decoupled", "paper"),
    Arm("Adam+L2", "adam", "l2", -1.75, -2.0, "L2", "coupled", lr_step=0.25),
    Arm("AdamW (paper)", "adam", "independent", -1.75, -2.5, "decoupled", "paper", lr_step=0.25),
)
#: PyTorch's convention of the two decoupled arms (``lr*lambda`` per step), the same algorithm as the
#: paper's with ``lambda_torch = lambda_paper / lr``, so it has no grid of its own (its tilt is the paper
#: tilt minus 1); :func:`convention_twins` retrains a few paper cells in it, as a cross-check.
#:
#: :meta hide-value:
TORCH_ARMS: dict[str, Arm] = {
    "SGDW (paper)": Arm("SGDW (torch)", "sgd", "decoupled", -1.0, -1.0, "decoupled", "torch"),
    "AdamW (paper)": Arm("AdamW (torch)", "adam", "decoupled", -2.0, -0.5, "decoupled", "torch"),
}


@dataclass(frozen=True)
class Setup(Setting):
    """Sizes of one scale; each experiment's fields carry its prefix."""

    workers: int
    # DEC-8 and DEC-6: BatchNorm ConvNet on MNIST-1D, cosine schedule
    grid_samples: int
    grid_channels: int
    grid_steps: int
    grid_batch: int
    grid_points: int  # learning rates (columns)
    grid_step: float  # decades between grid points, on both axes
    grid_seeds: int  # how many training seeds (the seeds come from the notebook)
    grid_wd_points: dict[str, int] = field(default_factory=dict)  # lambdas (rows) by family: "L2", "decoupled"
    grid_momentum: float = 0.9
    basin_factor: float = 2.0  # a column is in the basin when its best error <= factor * the grid's best
    # DEC-4: spurious feature, one-hidden-layer MLP, Adam at one LR, lambda grids per rule
    spur_data: dict[str, Any] = field(default_factory=dict)
    spur_ood_agreement: float = 0.5
    spur_width: int = 64
    spur_steps: int = 2000
    spur_batch: int = 50
    spur_lr: float = 1e-3
    spur_wds: dict[str, tuple[float, ...]] = field(default_factory=dict)
    spur_seeds: int = 5
    # DEC-5: tied convolution and RNN on MNIST-1D, Adam+L2 and AdamW at one (lr, lambda), float64
    share_samples: int = 4000
    share_steps: int = 600
    share_batch: int = 100
    share_lr: float = 1e-3
    share_wd: float = 1e-2
    share_conv: dict[str, Any] = field(default_factory=dict)
    share_conv_ties: tuple[int, ...] = (1, 2, 5, 10, 20, 40)
    share_rnn: dict[str, Any] = field(default_factory=dict)
    share_rnn_ties: tuple[int, ...] = (1, 2, 5, 10)
    share_seeds: int = 5
    # DEC-6
    quant_bits: tuple[int, ...] = (8, 6, 4)


# lambda = 0 and half-decade steps over the range where the in-distribution accuracy peaks (a one-seed
# pilot on decade steps; lambda*lr = 0.1 per step, AdamW's 100, no longer trains)
_SPUR_WDS = {"l2": (0.0, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1), "decoupled": (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)}

SETTINGS: dict[str, Setup] = {
    # 2 CPU cores. DEC-8: 5 learning rates (2 decades for SGD, 1 for Adam) by 7 lambdas (3 decades), 5 seeds,
    # 400 steps; DEC-5 on 3 seeds (the floor: the time budget)
    "smoke": Setup(
        "smoke",
        workers=2,
        grid_samples=4000,
        grid_channels=16,
        grid_steps=400,
        grid_batch=128,
        grid_points=5,
        grid_step=0.5,
        grid_seeds=5,
        grid_wd_points={"L2": 7, "decoupled": 7},
        spur_data={"num_train": 500, "num_test": 2000},
        spur_wds=_SPUR_WDS,
        spur_seeds=5,
        share_conv={"channels": 16, "kernel": 5},
        share_rnn={"hidden": 32, "chunk": 4},
        share_seeds=3,
    ),
    # one GPU: 2.5x the data, twice the channels, 3000 steps, 7 learning rates (3 decades) by 11 or 9 lambdas
    "full": Setup(
        "full",
        workers=4,
        grid_samples=10_000,
        grid_channels=32,
        grid_steps=3000,
        grid_batch=128,
        grid_points=7,
        grid_step=0.5,
        grid_seeds=5,
        grid_wd_points={"L2": 11, "decoupled": 9},
        spur_data={"num_train": 2000, "num_test": 10_000},
        spur_steps=8000,
        spur_wds=_SPUR_WDS,
        spur_seeds=10,
        share_samples=10_000,
        share_steps=3000,
        share_conv={"channels": 32, "kernel": 5},
        share_rnn={"hidden": 64, "chunk": 4},
        share_seeds=5,
    ),
    # the unit tests: seconds on one core
    "test": Setup(
        "test",
        workers=1,
        grid_samples=400,
        grid_channels=4,
        grid_steps=20,
        grid_batch=32,
        grid_points=3,
        grid_step=1.0,
        grid_seeds=1,
        grid_wd_points={"L2": 3, "decoupled": 3},
        spur_data={"num_train": 100, "num_test": 200, "noise_dims": 4},
        spur_steps=30,
        spur_batch=20,
        spur_wds={"l2": (0.0, 1e-2), "decoupled": (0.0, 1.0)},
        spur_seeds=2,
        share_samples=400,
        share_steps=12,
        share_batch=20,
        share_conv={"channels": 2, "kernel": 3},
        share_conv_ties=(1, 40),
        share_rnn={"hidden": 4, "chunk": 8},
        share_rnn_ties=(1, 5),
        share_seeds=1,
        quant_bits=(8, 4),
    ),
}


def setup(scale: str, device: str = "cpu", seed: int = 0) -> Setup:
    """The settings of ``scale`` ("smoke", "full" or "test"; :func:`wdlib.experiments.pick_settings`)."""
    return pick_settings(SETTINGS, scale, device=device, seed=seed)


# --- DEC-8: the (lr, lambda) grid --------------------------------------------------------------------


def grid_values(s: Setup, centre: float, points: int | None = None, step: float | None = None) -> list[float]:
    """``points`` (default ``grid_points``) values spaced ``step`` (default ``grid_step``) decades apart,
    centred on ``10**centre``."""
    points = s.grid_points if points is None else int(points)
    step = s.grid_step if step is None else float(step)
    half = (points - 1) / 2
    return [float(10 ** (centre + (i - half) * step)) for i in range(points)]


def lr_values(s: Setup, arm: Arm) -> list[float]:
    """The learning rates of ``arm``'s grid: ``grid_points`` values ``arm.lr_step`` (or ``grid_step``) apart."""
    return grid_values(s, arm.log_lr, s.grid_points, arm.lr_step)


def wd_values(s: Setup, arm: Arm) -> list[float]:
    """The lambdas of ``arm``'s grid: ``grid_wd_points[arm.family]`` values (``grid_points`` if unset)."""
    return grid_values(s, arm.log_wd, s.grid_wd_points.get(arm.family, s.grid_points))


def _grid_base(s: Setup, arm: Arm) -> RunConfig:
    return RunConfig(
        data="mnist1d",
        data_args={"num_samples": s.grid_samples},
        model="convnet",
        model_args={"channels": [s.grid_channels] * 3, "norm": "batch"},
        steps=s.grid_steps,
        batch_size=s.grid_batch,
        lr_schedule={"name": "cosine"},
        optimizer={
            "name": arm.optimizer,
            "decay": arm.decay,
            **({"momentum": s.grid_momentum} if arm.optimizer == "sgd" else {}),
        },
        decay_vectors=True,
        eval_every=s.grid_steps,
        scale=s.scale,
    )


def _store(store: Store | str | None) -> Store:
    return store if isinstance(store, Store) else Store(store)


def grid_sweeps(
    s: Setup,
    arms: tuple[Arm, ...] = GRID_ARMS,
    seeds: tuple[int, ...] = (0,),
    *,
    device: str = "cpu",
    store: Store | None = None,
) -> dict[str, Any]:
    """Every (seed, lr, lambda) of each arm's grid, trained in one pool of ``s.workers`` processes.

    Returns ``label -> table`` with the grid's fields, the final metrics and ``test_error`` (1 for a
    diverged run).
    """
    plans = _grid_plans(s, arms, seeds)
    results = run_many(
        [c for cs in plans.values() for c in cs],
        _store(store),
        workers=s.workers,
        device=device,
        desc="lr x wd grids",
        progress=None,
    )
    return _grid_tables(plans, results)


def _grid_plans(s: Setup, arms: tuple[Arm, ...], seeds: tuple[int, ...]) -> dict[str, list[RunConfig]]:
    """The runs of :func:`grid_sweeps`: ``label -> configurations`` (seed, lr, lambda of each arm's grid)."""
    return {
        arm.label: expand_grid(
            _grid_base(s, arm),
            {"seed": [int(x) for x in seeds], "lr": lr_values(s, arm), "weight_decay": wd_values(s, arm)},
        )
        for arm in arms
    }


def _grid_tables(plans: dict[str, list[RunConfig]], results: list[Any]) -> dict[str, Any]:
    """:func:`grid_sweeps`' tables from the results of its plans (in the order of the plans' configurations)."""
    tables, i = {}, 0
    for label, configs in plans.items():
        df = results_table(configs, results[i : i + len(configs)], ["seed", "lr", "weight_decay"])
        i += len(configs)
        df["test_error"] = np.where(df["diverged_at"].notna() | df["val_acc"].isna(), 1.0, 1.0 - df["val_acc"])
        df["arm"] = label
        tables[label] = df
    return tables


def error_matrix(table: Any, seed: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lrs, wds, error[wd, lr])``: the test error of one seed, or the mean over seeds (``seed=None``)."""
    t = table if seed is None else table[table["seed"] == seed]
    piv = t.groupby(["weight_decay", "lr"])["test_error"].mean().unstack()
    return piv.columns.to_numpy(float), piv.index.to_numpy(float), piv.to_numpy(float)


def valley(lrs: np.ndarray, wds: np.ndarray, err: np.ndarray, basin_factor: float = 2.0) -> dict[str, Any]:
    """The valley of an error grid: per learning rate the best lambda, and its tilt.

    For each column (one lr) the best lambda is the grid argmin, refined by the vertex of the parabola
    through it and its two neighbours in log(lambda) (moved at most half a grid step). A column counts
    when its minimum is interior (not on the grid's first or last lambda, where the valley leaves the
    grid) and its best error is at most ``basin_factor`` times the grid's best (the good region, not a
    learning rate that fails whatever the decay). The tilt is :func:`wdlib.stats.loglog_slope` of the
    counted columns' best lambda against lr: -1 when only the product lr*lambda matters, 0 when the
    best lambda does not depend on lr. ``nan`` with fewer than 3 counted columns.
    """
    lw = np.log10(wds)
    best = np.full(lrs.size, np.nan)
    interior = np.zeros(lrs.size, bool)
    col_best = np.nanmin(err, axis=0)
    for j in range(lrs.size):
        i = int(np.nanargmin(err[:, j]))
        x = lw[i]
        if 0 < i < wds.size - 1:
            interior[j] = True
            a, b, c = err[i - 1, j], err[i, j], err[i + 1, j]
            curv = a - 2 * b + c
            if curv > 0:
                x = lw[i] + float(np.clip(0.5 * (a - c) / curv, -0.5, 0.5)) * (lw[i + 1] - lw[i])
        best[j] = 10**x
    in_basin = col_best <= basin_factor * np.nanmin(err)
    counted = interior & in_basin
    tilt = loglog_slope(lrs[counted], best[counted]) if counted.sum() >= 3 else float("nan")
    return {
        "best_wd": best,
        "counted": counted,
        "interior": interior,
        "in_basin": in_basin,
        "tilt": tilt,
        "best_error": float(np.nanmin(err)),
        "columns_counted": int(counted.sum()),
    }


def tilt_measurement(table: Any, basin_factor: float = 2.0, *, resamples: int = 1000, seed: int = 0) -> Any:
    """The valley's tilt of a grid table with its spread over seeds (a :class:`wdlib.claims.Measurement`).

    The value is the tilt of the seed-mean error grid (:func:`valley`); the spread and interval come
    from ``resamples`` bootstrap resamples of the seeds (a seed drawn twice counts twice in the mean);
    ``per_seed`` holds each seed's own tilt (``nan`` where its grid has fewer than 3 counted columns).
    """
    seeds = sorted(int(x) for x in table["seed"].unique())
    mats = [error_matrix(table, seed=sd) for sd in seeds]
    lrs, wds = mats[0][0], mats[0][1]
    units = [m[2] for m in mats]

    def statistic(sample: list[np.ndarray]) -> float:
        return float(valley(lrs, wds, np.mean(sample, axis=0), basin_factor)["tilt"])

    per_seed = [valley(lrs, wds, u, basin_factor)["tilt"] for u in units]
    return Measurement.bootstrap(statistic, units, resamples=resamples, seed=seed, per_seed=per_seed)


def _twin_cells(tables: dict[str, Any], cells: int) -> list[tuple[str, float, float]]:
    """``(label, lr, lambda)`` of the ``cells`` cells with the lowest seed-mean test error of each decoupled arm of
    ``tables`` that has a twin in :data:`TORCH_ARMS`."""
    out = []
    for label, table in tables.items():
        if label in TORCH_ARMS:
            mean = table.groupby(["lr", "weight_decay"])["test_error"].mean().nsmallest(cells)
            out += [(label, lr, wd) for lr, wd in mean.index]
    return out


def _twin_config(s: Setup, label: str, seed: int, lr: float, wd: float) -> RunConfig:
    """The PyTorch-convention twin of arm ``label``'s grid cell (lr, lambda_paper): lambda_torch = lambda_paper/lr."""
    return _grid_base(s, TORCH_ARMS[label]).replace(seed=int(seed), lr=float(lr), weight_decay=float(wd / lr))


def convention_twins(
    s: Setup, tables: dict[str, Any], seed: int, cells: int = 2, *, device: str = "cpu", store: Store | None = None
) -> Any:
    """PyTorch-convention twins of a few paper-convention grid cells (a float32 cross-check of DEC-9).

    For each decoupled arm of ``tables`` with a twin in :data:`TORCH_ARMS`, the ``cells`` cells of
    ``seed`` with the lowest seed-mean test error are retrained with ``decay="decoupled"`` and
    ``lambda_torch = lambda_paper / lr``. One row per cell: both test errors and their difference.
    """
    import pandas as pd

    rows, configs = [], []
    for label, lr, wd in _twin_cells(tables, cells):
        table = tables[label]
        paper = table[(table["seed"] == seed) & (table["lr"] == lr) & (table["weight_decay"] == wd)]
        configs.append(_twin_config(s, label, seed, lr, wd))
        rows.append(
            {
                "arm": label,
                "lr": float(lr),
                "weight_decay_paper": float(wd),
                "weight_decay_torch": float(wd / lr),
                "test_error_paper": float(paper["test_error"].iloc[0]),
            }
        )
    results = run_many(configs, _store(store), workers=s.workers, device=device, desc="convention twins", progress=None)
    for row, r in zip(rows, results):
        row["test_error_torch"] = 1.0 if r.diverged else 1.0 - float(r.final["val_acc"])
        row["difference"] = row["test_error_torch"] - row["test_error_paper"]
    return pd.DataFrame(rows)


def basin_cells(table: Any, basin_factor: float = 2.0) -> Any:
    """The rows of a grid table whose seed-mean error is at most ``basin_factor`` times the grid's best."""
    mean = table.groupby(["lr", "weight_decay"])["test_error"].transform("mean")
    return table[mean <= basin_factor * mean.min()]


# --- DEC-4: a spurious feature -------------------------------------------------------------------------


def _spur_base(s: Setup, decay: str) -> RunConfig:
    return RunConfig(
        data="spurious",
        data_args=dict(s.spur_data),
        model="mlp",
        model_args={"width": s.spur_width, "depth": 1},
        steps=s.spur_steps,
        batch_size=s.spur_batch,
        optimizer={"name": "adam", "decay": decay},
        lr=s.spur_lr,
        lr_schedule={"name": "cosine"},
        decay_vectors=False,
        eval_every=s.spur_steps,
        scale=s.scale,
    )


def _spurious_configs(s: Setup, seeds: tuple[int, ...]) -> list[RunConfig]:
    """The runs of :func:`spurious_sweep`: each rule's lambda grid for every seed (each seed its own data)."""
    return [
        _spur_base(s, decay).replace(seed=sd, weight_decay=float(wd), data_args={**s.spur_data, "seed": sd})
        for decay in ("l2", "decoupled")
        for sd in map(int, seeds)
        for wd in s.spur_wds[decay]
    ]


def spurious_sweep(s: Setup, seeds: tuple[int, ...] = (0,), *, device: str = "cpu", store: Store | None = None) -> Any:
    """Adam+L2 ("l2") and AdamW ("decoupled", torch convention) over their lambda grids and seeds, with
    each model's spurious reliance and out-of-distribution accuracy (:func:`spurious_reliance`).

    Seed ``k`` draws its own dataset (``spurious(seed=k)``) as well as its own initialization and
    batches, so the spread over seeds includes the data.
    """
    import pandas as pd

    configs = _spurious_configs(s, seeds)
    results = run_many(
        configs, _store(store), workers=s.workers, device=device, desc="spurious-feature sweep", progress=None
    )
    df = results_table(configs, results, ["decay", "seed", "weight_decay"])
    rows = []
    for cfg, result in zip(configs, results):
        rows.append(spurious_reliance(result.model().float(), cfg, s.spur_ood_agreement))
    return pd.concat([df, pd.DataFrame(rows)], axis=1)


def causal_only_accuracy(s: Setup) -> float:
    """The accuracy of the best rule that reads only the causal feature, ``Phi(1 / causal_noise)``: the most
    any model can score out of distribution (up to what the noise features leak, nothing)."""
    from scipy.stats import norm

    return float(norm.cdf(1.0 / float(s.spur_data.get("causal_noise", 1.0))))


@torch.no_grad()
def spurious_reliance(model: torch.nn.Module, cfg: RunConfig, ood_agreement: float = 0.5) -> dict[str, float]:
    """How much a trained model leans on the spurious feature of :func:`wdlib.data.spurious`.

    ``w_causal`` and ``w_spurious`` are the norms of the first layer's input columns 0 and 1 (the weight
    leaving each feature), ``spurious_ratio = w_spurious / w_causal``; ``id_acc`` and ``ood_acc`` the
    accuracies on the in-distribution test split (the one lambda is chosen on) and on an independent
    draw of the test split (``test_draw=1``) with the spurious feature's agreement set to
    ``ood_agreement`` (0.5: independent of the label).
    """
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    cols = first.weight.detach().double().norm(dim=0)
    model.eval()
    accs = {}
    for name, changes in (("id_acc", {}), ("ood_acc", {"test_agreement": ood_agreement, "test_draw": 1})):
        ds = spurious(**{**cfg.data_args, **changes})
        accs[name] = float((model(ds.x_test).argmax(-1) == ds.y_test).double().mean())
    return {
        "w_causal": float(cols[0]),
        "w_spurious": float(cols[1]),
        "spurious_ratio": float(cols[1] / cols[0]),
        **accs,
    }


def select_lambda(table: Any, decay: str, metric: str = "id_acc") -> float:
    """The lambda of rule ``decay`` with the best seed-mean ``metric`` (ties: the smaller lambda)."""
    t = table[table["decay"] == decay].groupby("weight_decay")[metric].mean()
    return float(t[t == t.max()].index.min())


# --- DEC-5: weight sharing -----------------------------------------------------------------------------

#: the probed tensors of each model, with the row group each one reports under: the shared weights ("tied";
#: for the RNN its input weights, every group used exactly ``tie`` times), the RNN's recurrent weights
#: ("recurrent", reported apart: at step 0 they multiply h_0 = 0 and get no data gradient), and the head
#: (used once in every model: the control)
_PROBED = {
    "tiedconv": [("tied.weight", "tied"), ("head.weight", "head")],
    "tiedrnn": [("w_x", "tied"), ("w_h", "recurrent"), ("head.weight", "head")],
}


def _share_base(s: Setup, model: str, decay: str) -> RunConfig:
    args = dict(s.share_conv if model == "tiedconv" else s.share_rnn)
    window = max(s.share_steps // 3, 1)
    return RunConfig(
        data="mnist1d",
        data_args={"num_samples": s.share_samples},
        model=model,
        model_args=args,
        steps=s.share_steps,
        batch_size=s.share_batch,
        optimizer={"name": "adam", "decay": decay},
        lr=s.share_lr,
        weight_decay=s.share_wd,
        decay_vectors=False,
        dtype="float64",
        eval_every=s.share_steps,
        probes=[
            {"name": "shrinkage", "start": s.share_steps - window, "tensors": [name for name, _ in _PROBED[model]]}
        ],
        scale=s.scale,
    )


def _sharing_configs(s: Setup, model: str | tuple[str, ...], seeds: tuple[int, ...]) -> list[RunConfig]:
    """The runs of :func:`sharing_sweep`: Adam+L2 and AdamW on each model for every sharing factor and seed."""
    models = (model,) if isinstance(model, str) else tuple(model)
    for m in models:
        if m not in _PROBED:
            raise ValueError(f"model must be one of {', '.join(map(repr, _PROBED))} (or a tuple of them), got {m!r}")
    configs = []
    for m in models:
        ties = s.share_conv_ties if m == "tiedconv" else s.share_rnn_ties
        for decay in ("l2", "decoupled"):
            base = _share_base(s, m, decay)
            configs += [
                base.replace(seed=sd, model_args={**base.model_args, "tie": t}) for sd in map(int, seeds) for t in ties
            ]
    return configs


def sharing_sweep(
    s: Setup,
    model: str | tuple[str, ...] = ("tiedconv", "tiedrnn"),
    seeds: tuple[int, ...] = (0,),
    *,
    device: str = "cpu",
    store: Store | None = None,
) -> Any:
    """Adam+L2 and AdamW on ``model`` ("tiedconv", "tiedrnn" or both) for each sharing factor and seed, in
    one pool of ``s.workers`` processes.

    One row per run and tensor group: ``group`` ("tied", "recurrent" for the RNN, or "head"), the median and mean
    relative
    shrinkage (the per-step decay rate divided by ``lr*lambda``; 1 is AdamW's rate) of its weights over
    the last third of training, measured by :class:`wdlib.diagnostics.ShrinkageProbe` in float64.
    """
    import pandas as pd

    configs = _sharing_configs(s, model, seeds)
    results = run_many(
        configs, _store(store), workers=s.workers, device=device, desc="weight-sharing sweep", progress=None
    )
    rows = []
    for cfg, r in zip(configs, results):
        named = dict(r.model().named_parameters())  # (their shapes)
        rel = r.probes["shrinkage/shrinkage"] / (s.share_lr * s.share_wd)
        start = 0
        for name, group in _PROBED[cfg.model]:
            size = named[name].numel()
            values = rel[start : start + size]
            start += size
            if name == "w_h" and cfg.model_args["tie"] == 1:
                values = values[named[name][0].numel() :]  # the step-0 weights never see a data gradient
            rows.append(
                {
                    "model": cfg.model,
                    "decay": cfg.optimizer["decay"],
                    "seed": cfg.seed,
                    "tie": int(cfg.model_args["tie"]),
                    "group": group,
                    "weights": int(values.size),
                    "median": float(np.median(values)),
                    "mean": float(np.mean(values)),
                    "test_acc": r.final["val_acc"],
                }
            )
    return pd.DataFrame(rows)


# --- DEC-6: quantization ---------------------------------------------------------------------------------


@torch.no_grad()
def quantization_table(
    s: Setup, tables: dict[str, Any], *, bits: tuple[int, ...] | None = None, store: Store | None = None
) -> Any:
    """Quantize the stored models of the grid rows in ``tables`` (label -> grid table) and evaluate them.

    One row per model, bit width and granularity ("tensor", "channel"): float and quantized test accuracy
    and loss, the accuracy drop, and the mean distance of the quantized tensors' weights to their grid
    (:func:`wdlib.quantize.grid_distance`, in grid steps). Weights with >= 2 dimensions are quantized;
    BatchNorm parameters, statistics and biases stay in float32.
    """
    import pandas as pd

    stored = _store(store)
    arms = {a.label: a for a in GRID_ARMS}
    rows = []
    for label, table in tables.items():
        base = _grid_base(s, arms[label])
        data = None
        for _, row in table.iterrows():
            if row["test_error"] >= 1.0:
                continue
            cfg = base.replace(seed=int(row["seed"]), lr=float(row["lr"]), weight_decay=float(row["weight_decay"]))
            r = stored.get(cfg)
            if r is None:
                raise RuntimeError(
                    f"run {cfg.key()} ({label}, seed {cfg.seed}, lr {cfg.lr:g}, lambda "
                    f"{cfg.weight_decay:g}) is not in the store at {stored.root}: run grid_sweeps first"
                )
            if data is None:
                data = build_data(cfg)
            model = r.model(data=data).float()
            f_loss, f_acc = evaluate(model, data.eval_batches("test"))
            for b in bits or s.quant_bits:
                for gran in ("tensor", "channel"):
                    model.load_state_dict(quantize_state(r.model_state, b, gran))
                    q_loss, q_acc = evaluate(model, data.eval_batches("test"))
                    dist = torch.cat(
                        [grid_distance(v, b, gran).reshape(-1) for k, v in r.model_state.items() if quantizable(k, v)]
                    )
                    rows.append(
                        {
                            "arm": label,
                            "seed": int(row["seed"]),
                            "lr": float(row["lr"]),
                            "weight_decay": float(row["weight_decay"]),
                            "bits": b,
                            "granularity": gran,
                            "float_acc": f_acc,
                            "quant_acc": q_acc,
                            "acc_drop": f_acc - q_acc,
                            "loss_rise": q_loss - f_loss,
                            "grid_distance": float(dist.mean()),
                        }
                    )
    return pd.DataFrame(rows)


# --- what the notebook trains ------------------------------------------------------------------------------

#: cells of each decoupled grid that the notebook retrains in PyTorch's convention (``convention_twins``' default)
TWIN_CELLS = 2


def _planned_twins(s: Setup, plans: dict[str, list[RunConfig]], seed: int, store: Store | None) -> list[RunConfig]:
    """The configurations of ``convention_twins(s, grid_sweeps(...), seed)``: the twins of the best cells, which
    only the grids' results tell. With every grid run in ``store`` they are exact; otherwise they are stand-ins
    that cost the same (cells of each grid's centre column), so a plan made before the grids is right in its
    counts and times but not in these keys."""
    grid = [c for cs in plans.values() for c in cs]
    results = [store.get(c) for c in grid] if store is not None else [None]
    if all(r is not None for r in results):
        cells = _twin_cells(_grid_tables(plans, results), TWIN_CELLS)
        return [_twin_config(s, label, seed, lr, wd) for label, lr, wd in cells]
    arms = {a.label: a for a in GRID_ARMS}
    out = []
    for label in (lb for lb in plans if lb in TORCH_ARMS):
        lrs, wds = lr_values(s, arms[label]), wd_values(s, arms[label])
        out += [_twin_config(s, label, seed, lrs[len(lrs) // 2], wds[k % len(wds)]) for k in range(TWIN_CELLS)]
    return out


def planned_runs(s: Setup, *, store: Store | None = None) -> list[RunConfig]:
    """Every run ``notebooks/01b_decoupling_in_practice.ipynb`` trains at the settings ``s`` (its seeds from
    ``s.seed``), in the order it asks for them, built by the helpers its functions train: the four (lr, lambda)
    grids (DEC-8), the PyTorch-convention twins of their best cells, the spurious-feature sweep (DEC-4) and the
    weight-sharing sweep (DEC-5). The twins depend on the grids' results: exact when ``store`` holds every grid
    run, stand-ins of the same cost otherwise (:func:`_planned_twins`)."""
    grid_seeds, spur_seeds, share_seeds = (s.seeds(n) for n in (s.grid_seeds, s.spur_seeds, s.share_seeds))
    plans = _grid_plans(s, GRID_ARMS, grid_seeds)
    configs = [c for cs in plans.values() for c in cs]
    configs += _planned_twins(s, plans, grid_seeds[0], store)
    configs += _spurious_configs(s, spur_seeds)
    configs += _sharing_configs(s, ("tiedconv", "tiedrnn"), share_seeds)
    return configs
