"""Experiments of chapter 6, "Beyond the sources" (NEW-1 to NEW-7).

Newer results about weight decay, each measured with the option of :mod:`wdlib` that implements it: corrected
decay (``decay="corrected"``, NEW-1), rotational equilibrium (the angular-update probe, NEW-3), cautious decay
(``cautious=True``, NEW-2), the low-rank bias of decay on factorized products (NEW-4), the width rules of
:func:`wdlib.params.mup_groups` (NEW-5), Muon (:class:`wdlib.optim.Muon`, NEW-6) and the decay that Kahan
summation outside the compensation loses in bfloat16 (:class:`wdlib.precision.DecayOutsideKahanAdamW`, NEW-7).
Training runs go through :func:`wdlib.runs.run_many` (MNIST-1D MLPs and the small GPT of chapter 5); every
setting is in :class:`Setup`, so the notebook passes only the settings, the seeds and the store, and
:func:`planned_runs` lists every run it trains. The rules and thresholds are in
``wdlib/catalogue/06_beyond_sources.yml``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..components import build_data, build_model
from ..config import RunConfig, schedule_from_spec
from ..precision import applied_decay
from ..runs import Store, run_many
from ..schedules import kappa as schedule_kappa
from ..schedules import values
from ..timescale import gradient_rise
from ._scaffold import Setting, check_finished, pick_settings

__all__ = [
    "Setup",
    "SETTINGS",
    "setup",
    "rise_configs",
    "gradient_rise_runs",
    "rotation_configs",
    "rotation",
    "cautious_configs",
    "cautious",
    "factorization_toy",
    "effective_rank",
    "gpt_arms",
    "gpt_configs",
    "gpt_runs",
    "kappa",
    "predicted_angle",
    "width_kappa_min",
    "width_configs",
    "width_sweep",
    "kahan_placement",
    "planned_runs",
]


@dataclass(frozen=True)
class Setup(Setting):
    """Sizes of one scale."""

    num_samples: int  # MNIST-1D samples (NEW-1, NEW-2, NEW-3, NEW-5)
    width: int
    batch_size: int
    rise_steps: int  # NEW-1: SGD, cosine to zero
    rise_every: int
    rot_steps: int  # NEW-3: AdamW, constant LR after warmup
    rot_every: int
    caut_steps: int  # NEW-2
    caut_wds: tuple[float, ...]
    toy_dim: int  # NEW-4 toy
    toy_steps: int
    gpt_data_args: dict[str, Any] = field(default_factory=dict)
    gpt_model_args: dict[str, Any] = field(default_factory=dict)
    gpt_block: int = 64
    gpt_batch: int = 16
    gpt_steps: int = 300
    gpt_decay: float = 1.0  # NEW-6: lambda of the decayed arms, so that the run spans a timescale 1/(eta*lambda)
    width_widths: tuple[int, ...] = (64, 256)  # NEW-5
    width_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    width_steps: int = 600
    kahan_steps: int = 200  # NEW-7
    kahan_numel: int = 65536
    n_seeds: int = 3
    workers: int = 2


_GPT_DATA = {"max_bytes": 4_000_000, "val_split": "interleaved"}

SETTINGS: dict[str, Setup] = {
    "smoke": Setup(
        "smoke",
        num_samples=4000,
        width=128,
        batch_size=100,
        rise_steps=3000,
        rise_every=10,
        rot_steps=3000,
        rot_every=10,
        caut_steps=1500,
        caut_wds=(0.1, 0.3, 1.0),
        toy_dim=20,
        toy_steps=5000,
        gpt_data_args=dict(_GPT_DATA),
        gpt_model_args={"n_layer": 2, "n_head": 2, "n_embd": 128},
        gpt_block=64,
        gpt_batch=16,
        gpt_steps=300,
        gpt_decay=1.0,
        width_widths=(64, 256),
        width_lrs=(1e-3, 3e-3, 1e-2, 3e-2),
        width_steps=1200,
        kahan_steps=200,
        kahan_numel=65536,
        n_seeds=3,
        workers=2,
    ),
    "full": Setup(
        "full",
        num_samples=40_000,
        width=512,
        batch_size=128,
        rise_steps=30_000,
        rise_every=50,
        rot_steps=30_000,
        rot_every=50,
        caut_steps=15_000,
        caut_wds=(0.03, 0.1, 0.3, 1.0, 3.0),
        toy_dim=64,
        toy_steps=100_000,
        gpt_data_args={
            "max_bytes": 400_000_000,
            "site_packages": True,
            "val_split": "interleaved",
            "val_block": 65_536,
        },
        gpt_model_args={"n_layer": 6, "n_head": 6, "n_embd": 384},
        gpt_block=256,
        gpt_batch=64,
        gpt_steps=5000,
        gpt_decay=0.1,
        width_widths=(64, 128, 256, 512, 1024),
        width_lrs=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
        width_steps=5000,
        kahan_steps=1000,
        kahan_numel=1 << 20,
        n_seeds=5,
        workers=1,
    ),
    # the unit tests: seconds on one core
    "test": Setup(
        "test",
        num_samples=300,
        width=8,
        batch_size=20,
        rise_steps=60,
        rise_every=5,
        rot_steps=60,
        rot_every=5,
        caut_steps=30,
        caut_wds=(0.1, 1.0),
        toy_dim=4,
        toy_steps=200,
        gpt_data_args={"max_bytes": 200_000, "val_split": "interleaved"},
        gpt_model_args={"n_layer": 1, "n_head": 2, "n_embd": 16},
        gpt_block=16,
        gpt_batch=4,
        gpt_steps=8,
        gpt_decay=1.0,
        width_widths=(8, 16),
        width_lrs=(1e-3, 1e-2),
        width_steps=20,
        kahan_steps=5,
        kahan_numel=256,
        n_seeds=2,
        workers=1,
    ),
}

#: NEW-1: Defazio et al.'s toy settings (SGD without momentum, cosine from 0.1 to 0, lambda 0.05)
RISE = {"lr": 0.1, "weight_decay": 0.05}
#: the windows (fractions of the run) NEW-1 compares: the early one against the last tenth
RISE_EARLY, RISE_LATE = (0.2, 0.4), (0.9, 1.0)
#: NEW-3: AdamW at a constant LR (after 100 warmup steps), lambda chosen so the run spans several 1/(eta*lambda)
ROT = {"lr": 3e-3, "weight_decay": 0.5, "betas": (0.9, 0.999)}
#: NEW-2: AdamW, cosine to a tenth
CAUT_LR = 3e-3
#: NEW-4 toy: lambda against singular values of D spread over [0.2, 2]
TOY_LAMBDA = 1.0
#: NEW-4 and NEW-6: the GPT's peak LR (chapter 5's recipe) and AdamW's decays besides NEW-6's (NEW-4 compares 0 and 1)
GPT_LR = 5e-3
GPT_ADAMW_WDS = (0.0, 1.0)
#: NEW-5: the three width rules of lambda under muP, and the base lambda and width (at the base width all agree)
WIDTH_RULES = ("scaled", "sqrt", "independent")
WIDTH_WD, WIDTH_BASE = 1.0, 64
#: NEW-7: per-step shrinks lr*lambda below 2^-9 (where rounding to nearest loses them) and above
KAHAN_SHRINKS = (6e-5, 3e-4, 1e-3, 3e-3, 1e-2)


def setup(scale: str, device: str = "cpu", seed: int = 0) -> Setup:
    """The settings of ``scale`` ("smoke", "full" or "test"; :func:`wdlib.experiments.pick_settings`)."""
    return pick_settings(SETTINGS, scale, device=device, seed=seed)


def _mlp(s: Setup, seed: int, **changes: Any) -> RunConfig:
    cfg = RunConfig(
        data="mnist1d",
        data_args={"num_samples": s.num_samples},
        model="mlp",
        model_args={"width": s.width, "depth": 2},
        steps=s.rise_steps,
        batch_size=s.batch_size,
        seed=seed,
        scale=s.scale,
    )
    return cfg.replace(**changes)


def _window(steps: np.ndarray, total: int, frac: tuple[float, float]) -> np.ndarray:
    return (steps >= frac[0] * total) & (steps < frac[1] * total)


# --- NEW-1: the gradient-norm rise and corrected decay ------------------------------------------------------


def rise_configs(s: Setup, seed: int) -> dict[str, RunConfig]:
    """NEW-1's pair: SGD (no momentum) on the scale-invariant MLP, cosine from 0.1 to 0, lambda 0.05,
    standard (decoupled) decay against corrected decay on the normalized layers; the angular probe records
    ``||w||`` and ``||g||`` of every weight matrix."""
    out = {}
    for rule in ("decoupled", "corrected"):
        out[rule] = _mlp(
            s,
            seed,
            model_args={"width": s.width, "depth": 2, "scale_invariant": True},
            optimizer={"name": "sgd", "decay": rule},
            lr=RISE["lr"],
            weight_decay=RISE["weight_decay"],
            lr_schedule={"name": "cosine", "final": 0.0},
            steps=s.rise_steps,
            probes=({"name": "angular", "every": s.rise_every},),
        )
    return out


def gradient_rise_runs(
    s: Setup, seeds: tuple[int, ...], *, store: Store | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """NEW-1 per seed and rule: ``||g||/||w||`` of the normalized (hidden) layers over training against
    ``sqrt(2*lambda/eta_t)``, its rise (log2 of the late window's mean over the early window's), the rise of
    ``||g||`` itself, and the final training loss. Also the calculator's :func:`wdlib.timescale.gradient_rise`."""
    pairs = [rise_configs(s, seed) for seed in seeds]
    flat = [c for p in pairs for c in p.values()]
    results = iter(run_many(flat, store, workers=s.workers, device=device, desc="NEW-1 runs", progress=None))
    per_seed: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}
    for seed, pair in zip(seeds, pairs):
        row: dict[str, Any] = {"seed": seed}
        for rule in pair:
            r = check_finished(next(results))
            step = r.probes["angular/step"]
            lr = r.probes["angular/lr"]
            norm = r.probes["angular/norm"][:, :-1]  # the hidden (normalized) matrices; the readout is last
            grad = r.probes["angular/grad_norm"][:, :-1]
            ratio = (grad / norm).mean(1)
            gnorm = grad.mean(1)
            early, late = _window(step, s.rise_steps, RISE_EARLY), _window(step, s.rise_steps, RISE_LATE)
            pred = np.sqrt(2 * RISE["weight_decay"] / np.maximum(lr, 1e-12))
            row[rule] = {
                "rise": float(np.log2(ratio[late].mean() / ratio[early].mean())),
                "grad_rise": float(np.log2(gnorm[late].mean() / gnorm[early].mean())),
                "early_vs_prediction": float(np.log2(ratio[early].mean() / pred[early].mean())),
                "train_loss": float(r.final["train_loss"]),
                "val_loss": float(r.final["val_loss"]),
            }
            if seed == seeds[0]:
                curves[rule] = {"step": step, "lr": lr, "ratio": ratio, "grad_norm": gnorm, "prediction": pred}
        per_seed.append(row)
    calc = gradient_rise(RISE["lr"], RISE["weight_decay"], s.rise_steps)
    return {"per_seed": per_seed, "curves": curves, "calculator": calc}


# --- NEW-3: rotational equilibrium ----------------------------------------------------------------------------


def rotation_configs(s: Setup, seed: int) -> RunConfig:
    """NEW-3's run: AdamW at a constant LR (100 warmup steps) on the scale-invariant MLP, the angular probe
    with per-neuron angles on every matrix."""
    return _mlp(
        s,
        seed,
        model_args={"width": s.width, "depth": 2, "scale_invariant": True},
        optimizer={"name": "adam", "decay": "decoupled", "betas": list(ROT["betas"])},
        lr=ROT["lr"],
        weight_decay=ROT["weight_decay"],
        lr_schedule={"name": "cosine", "warmup": min(100, s.rot_steps // 10), "final": 1.0},
        steps=s.rot_steps,
        probes=({"name": "angular", "every": s.rot_every, "per_row": True},),
    )


def predicted_angle(lr: float, weight_decay: float, beta1: float) -> float:
    """Kosson et al.'s equilibrium angular update of AdamW per step, ``sqrt(2*eta*lambda*(1-beta1)/(1+beta1))``
    (arXiv 2305.17212)."""
    return math.sqrt(2 * lr * weight_decay * (1 - beta1) / (1 + beta1))


def rotation(s: Setup, seeds: tuple[int, ...], *, store: Store | None = None, device: str = "cpu") -> dict[str, Any]:
    """NEW-3 per seed: the mean angular update of each matrix over the second half of the run against
    :func:`predicted_angle`, and each neuron's (row's) mean angular update over those steps, summarised per
    hidden matrix by its 10th, 50th and 90th percentiles across neurons."""
    rs = run_many(
        [rotation_configs(s, seed) for seed in seeds],
        store,
        workers=s.workers,
        device=device,
        desc="NEW-3 runs",
        progress=None,
    )
    pred = predicted_angle(ROT["lr"], ROT["weight_decay"], ROT["betas"][0])
    per_seed, curve = [], None
    for seed, r in zip(seeds, rs):
        check_finished(r)
        step = r.probes["angular/step"]
        half = step >= s.rot_steps / 2
        angle = r.probes["angular/angle"][half].mean(0)
        neuron = r.probes["angular/row_angle"][half].mean(0)  # each row's mean over the second half
        hidden = [neuron[k * s.width : (k + 1) * s.width] for k in range(2)]  # the two hidden matrices come first
        q = [np.percentile(h, [10, 50, 90]).tolist() for h in hidden]
        per_seed.append(
            {
                "seed": seed,
                "angle_over_prediction": (angle / pred).tolist(),
                "neuron_p10": [x[0] for x in q],
                "neuron_median": [x[1] for x in q],
                "neuron_p90": [x[2] for x in q],
                "norm_end": r.probes["angular/norm"][-1].tolist(),
            }
        )
        if curve is None:
            curve = {"step": step, "angle": r.probes["angular/angle"], "neurons": hidden}
    return {"prediction": pred, "per_seed": per_seed, "curve": curve}


# --- NEW-2: cautious weight decay -----------------------------------------------------------------------------


def cautious_configs(s: Setup, seed: int) -> list[tuple[float, bool, RunConfig]]:
    """NEW-2's runs of one seed: AdamW and cautious AdamW at every lambda of ``s.caut_wds`` (MLP on MNIST-1D,
    cosine to a tenth)."""
    out = []
    for wd in s.caut_wds:
        for cautious_ in (False, True):
            cfg = _mlp(
                s,
                seed,
                optimizer={"name": "adam", "decay": "decoupled", "cautious": cautious_},
                lr=CAUT_LR,
                weight_decay=wd,
                lr_schedule={"name": "cosine", "warmup": min(50, s.caut_steps // 10), "final": 0.1},
                steps=s.caut_steps,
            )
            out.append((wd, cautious_, cfg))
    return out


def cautious(s: Setup, seeds: tuple[int, ...], *, store: Store | None = None, device: str = "cpu") -> dict[str, Any]:
    """NEW-2 per seed and lambda: final training and validation loss of AdamW and cautious AdamW."""
    plan = [(seed, wd, c, cfg) for seed in seeds for wd, c, cfg in cautious_configs(s, seed)]
    rs = run_many([p[-1] for p in plan], store, workers=s.workers, device=device, desc="NEW-2 runs", progress=None)
    table: dict[int, dict[float, dict[str, dict[str, float]]]] = {}
    for (seed, wd, c, _), r in zip(plan, rs):
        check_finished(r)
        name = "cautious" if c else "plain"
        table.setdefault(seed, {}).setdefault(wd, {})[name] = {
            "train_loss": float(r.final["train_loss"]),
            "val_loss": float(r.final["val_loss"]),
        }
    return {"wds": list(s.caut_wds), "table": table}


# --- NEW-4: decay makes factorized products low-rank --------------------------------------------------------


def factorization_toy(dim: int, lam: float, steps: int, seed: int) -> dict[str, Any]:
    """Gradient descent on ``||A B^T - D||^2 + (lam/2)(||A||^2 + ||B||^2)`` (float64, full batch) from a small
    random start; ``D`` has singular values evenly spread over [0.2, 2] and random singular vectors (seeded).

    The minimum of ``(||A||^2 + ||B||^2)/2`` over factorizations of ``X`` is the nuclear norm ``||X||_*``, so
    the objective is ``||X - D||^2 + lam*||X||_*``, whose minimizer shrinks each singular value of ``D`` by
    ``lam/2``: ``s_i = max(d_i - lam/2, 0)`` (Kobayashi et al., arXiv 2410.23819). Returns the trained and the
    predicted singular values and the largest error over ``d_1``."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    d = torch.linspace(2.0, 0.2, dim, dtype=torch.float64)
    target = u @ torch.diag(d) @ v.T
    a = (0.1 * torch.randn(dim, dim, generator=g, dtype=torch.float64)).requires_grad_()
    b = (0.1 * torch.randn(dim, dim, generator=g, dtype=torch.float64)).requires_grad_()
    lr = 0.05
    for _ in range(steps):
        loss = (a @ b.T - target).square().sum() + lam / 2 * (a.square().sum() + b.square().sum())
        ga, gb = torch.autograd.grad(loss, (a, b))
        with torch.no_grad():
            a -= lr * ga
            b -= lr * gb
    with torch.no_grad():
        got = torch.linalg.svdvals(a @ b.T)
    pred = (d - lam / 2).clamp_min(0.0)
    return {
        "d": d.tolist(),
        "trained": got.tolist(),
        "predicted": pred.tolist(),
        "max_error": float((got - pred).abs().max() / d.max()),
        "rank_trained": int((got > 1e-3 * d.max()).sum()),
        "rank_predicted": int((pred > 0).sum()),
    }


def effective_rank(m: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank ``exp(H(p))``, ``p_i = s_i / sum_j s_j`` the normalised singular values."""
    s = torch.linalg.svdvals(m.double())
    p = s / s.sum().clamp_min(1e-300)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def _qk_ranks(state: dict[str, torch.Tensor], n_head: int) -> list[float]:
    """Effective rank of ``W_Q,h^T W_K,h`` for every layer and head of a GPT state dict."""
    out = []
    for name, w in state.items():
        if not name.endswith("attn.qkv.weight"):
            continue
        c = w.shape[1]
        wq, wk = w[:c].double(), w[c : 2 * c].double()
        hd = c // n_head
        for h in range(n_head):
            out.append(effective_rank(wq[h * hd : (h + 1) * hd].T @ wk[h * hd : (h + 1) * hd]))
    return out


# --- NEW-4 (GPT part) and NEW-6: the small GPT --------------------------------------------------------------


def gpt_arms(s: Setup) -> dict[str, tuple[str, float]]:
    """The GPT arms, name -> (optimizer, lambda): AdamW at :data:`GPT_ADAMW_WDS` and ``s.gpt_decay``, Muon at 0
    and ``s.gpt_decay`` (NEW-6 compares Muon and AdamW at ``s.gpt_decay``, chosen so that the run spans about a
    timescale ``1/(eta*lambda)``: 1 at smoke scale, Liu et al.'s 0.1 at full scale)."""
    arms = {f"adamw wd {wd:g}": ("adam", wd) for wd in sorted({*GPT_ADAMW_WDS, s.gpt_decay})}
    arms |= {"muon wd 0": ("muon", 0.0), f"muon wd {s.gpt_decay:g}": ("muon", s.gpt_decay)}
    return arms


def kappa(spec: dict[str, Any], lr: float, weight_decay: float, steps: int) -> float:
    """``kappa_T = sum_t eta_t*lambda``: how many timescales ``1/(eta*lambda)`` a run with LR schedule ``spec``
    (a run configuration's ``lr_schedule``) spans; ``exp(-kappa_T)`` of the initial weights survives the decay
    alone (chapter 2)."""
    return float(schedule_kappa(values(schedule_from_spec(spec, lr, steps), steps), weight_decay)[-1])


def _gpt_schedule(s: Setup) -> dict[str, Any]:
    return {"name": "cosine", "warmup": max(1, s.gpt_steps // 10), "final": 0.1}


def gpt_configs(s: Setup, seed: int) -> dict[str, RunConfig]:
    """The GPT arms of one seed (:func:`gpt_arms`): the chapter-5 model and data, float32, betas (0.9, 0.95),
    clip 1.0, cosine from 5e-3 to a tenth after 10% warmup; Muon on the hidden matrices with its update RMS
    matched to AdamW's (Liu et al.), AdamW on embeddings and vectors."""
    out = {}
    for arm, (name, wd) in gpt_arms(s).items():
        opt: dict[str, Any] = {"name": name, "decay": "decoupled", "betas": [0.9, 0.95]}
        out[arm] = RunConfig(
            data="stdlib_chars",
            data_args=dict(s.gpt_data_args),
            model="gpt",
            model_args=dict(s.gpt_model_args),
            optimizer=opt,
            lr=GPT_LR,
            weight_decay=wd,
            grad_clip=1.0,
            steps=s.gpt_steps,
            batch_size=s.gpt_batch,
            block_size=s.gpt_block,
            lr_schedule=_gpt_schedule(s),
            eval_batches=8,
            seed=seed,
            scale=s.scale,
        )
    return out


def _hidden_rms(state: dict[str, torch.Tensor]) -> float:
    """RMS over the hidden matrices of a GPT (attention and MLP weights of the blocks: Muon's)."""
    mats = [w.double() for n, w in state.items() if n.startswith("blocks.") and w.ndim == 2]
    return math.sqrt(sum(float(w.square().sum()) for w in mats) / sum(w.numel() for w in mats))


def gpt_runs(s: Setup, seeds: tuple[int, ...], *, store: Store | None = None, device: str = "cpu") -> dict[str, Any]:
    """Every GPT arm per seed: final validation loss, RMS of the hidden matrices at the start and the end, and
    the effective ranks of ``W_Q^T W_K`` per layer and head; and ``kappa``, the timescales the decayed arms
    span (:func:`kappa` at ``s.gpt_decay``)."""
    plan = [(seed, arm, cfg) for seed in seeds for arm, cfg in gpt_configs(s, seed).items()]
    rs = run_many([p[-1] for p in plan], store, workers=s.workers, device=device, desc="GPT runs", progress=None)
    table: dict[int, dict[str, dict[str, Any]]] = {}
    init: dict[int, float] = {}
    n_head = int(s.gpt_model_args["n_head"])
    for (seed, arm, cfg), r in zip(plan, rs):
        check_finished(r)
        if seed not in init:
            init[seed] = _hidden_rms(build_model(cfg, build_data(cfg)).state_dict())
        table.setdefault(seed, {})[arm] = {
            "val_loss": float(r.final["val_loss"]),
            "rms_init": init[seed],
            "rms_end": _hidden_rms(r.model_state),
            "qk_ranks": _qk_ranks(r.model_state, n_head),
        }
    return {
        "arms": list(gpt_arms(s)),
        "table": table,
        "kappa": kappa(_gpt_schedule(s), GPT_LR, s.gpt_decay, s.gpt_steps),
    }


# --- NEW-5: lambda across width under muP -------------------------------------------------------------------


def _width_schedule(s: Setup) -> dict[str, Any]:
    return {"name": "cosine", "warmup": min(50, s.width_steps // 10), "final": 0.1}


def width_configs(s: Setup, seed: int) -> list[tuple[str, int, float, RunConfig]]:
    """NEW-5's runs of one seed: AdamW under muP (:func:`wdlib.params.mup_groups`) at every width and base LR,
    for each rule of :data:`WIDTH_RULES`, cosine to a tenth. Lambda is WIDTH_WD at the base width (for the
    independent rule WIDTH_WD times the middle base LR, so that all rules agree there)."""
    mid = s.width_lrs[len(s.width_lrs) // 2]
    out = []
    for rule in WIDTH_RULES:
        for width in s.width_widths:
            for lr in s.width_lrs:
                wd = WIDTH_WD * mid if rule == "independent" else WIDTH_WD
                cfg = _mlp(
                    s,
                    seed,
                    model_args={"width": width, "depth": 3},
                    optimizer={"name": "adam", "decay": "decoupled"},
                    mup={"base_width": WIDTH_BASE, "decay": rule},
                    lr=lr,
                    weight_decay=wd,
                    lr_schedule=_width_schedule(s),
                    steps=s.width_steps,
                )
                out.append((rule, width, lr, cfg))
    return out


def _top_sv(state: dict[str, torch.Tensor]) -> float:
    """Largest singular value over the hidden matrices of an MLP (the weights between the first and last)."""
    mats = [w.double() for w in state.values() if w.ndim == 2][1:-1]
    return max(float(torch.linalg.matrix_norm(w, ord=2)) for w in mats)


def width_sweep(s: Setup, seeds: tuple[int, ...], *, store: Store | None = None, device: str = "cpu") -> dict[str, Any]:
    """NEW-5 per seed, rule, width and base LR: final validation loss and the top singular value of the hidden
    matrices."""
    plan = [(seed, *rest) for seed in seeds for rest in width_configs(s, seed)]
    rs = run_many([p[-1] for p in plan], store, workers=s.workers, device=device, desc="NEW-5 runs", progress=None)
    table: dict[str, dict[int, dict[float, list[dict[str, float]]]]] = {}
    for (_, rule, width, lr, _), r in zip(plan, rs):
        loss = float("inf") if r.diverged else float(r.final["val_loss"])
        sv = float("nan") if r.diverged else _top_sv(r.model_state)
        table.setdefault(rule, {}).setdefault(width, {}).setdefault(lr, []).append({"val_loss": loss, "top_sv": sv})
    return {
        "rules": list(WIDTH_RULES),
        "widths": list(s.width_widths),
        "lrs": list(s.width_lrs),
        "table": table,
        "kappa_min": width_kappa_min(s),
    }


def width_kappa_min(s: Setup) -> float:
    """The fewest timescales a hidden layer of NEW-5 spans at the middle base LR: ``min`` over rules and widths
    of ``sum_t s_t``, the hidden group's per-step shrink (scaled: ``eta_t*lambda``; sqrt: ``eta_t*lambda/sqrt(m)``;
    independent: ``lambda_ind*schedule_t``, equal to scaled at the middle LR; m = width/base width). Below a few,
    the hidden weights still carry their initialization and the top singular value says little about decay."""
    mid = s.width_lrs[len(s.width_lrs) // 2]
    base = kappa(_width_schedule(s), mid, WIDTH_WD, s.width_steps)
    return min(
        base / math.sqrt(w / WIDTH_BASE) if rule == "sqrt" else base for rule in WIDTH_RULES for w in s.width_widths
    )


# --- NEW-7: decay outside the Kahan compensation -------------------------------------------------------------


def kahan_placement(s: Setup, seeds: tuple[int, ...]) -> dict[str, Any]:
    """NEW-7 per seed and per-step shrink ``lr*lambda`` (:data:`KAHAN_SHRINKS`): the decay applied to bfloat16
    weights (a normal draw with std 0.02, seeded) over ``s.kahan_steps`` zero-gradient steps, as a ratio to the
    one requested (:func:`wdlib.precision.applied_decay`), with the decay outside the Kahan compensation
    (:class:`wdlib.precision.DecayOutsideKahanAdamW`) and with wdlib's remedies ("kahan": inside; "master";
    "stochastic"), and plain rounding to nearest."""
    arms = {
        "outside Kahan": {"optimizer": "decay_outside_kahan"},
        "nearest": {"optimizer": "adam", "bf16_update": "nearest"},
        "kahan (wdlib)": {"optimizer": "adam", "bf16_update": "kahan"},
        "master (wdlib)": {"optimizer": "adam", "bf16_update": "master"},
        "stochastic (wdlib)": {"optimizer": "adam", "bf16_update": "stochastic"},
    }
    out: dict[str, dict[float, list[float]]] = {a: {x: [] for x in KAHAN_SHRINKS} for a in arms}
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        w = (0.02 * torch.randn(s.kahan_numel, generator=g)).to(s.device)
        for arm, kw in arms.items():
            for shrink in KAHAN_SHRINKS:
                r = applied_decay(w, 1.0, shrink, steps=s.kahan_steps, seed=seed, **kw)
                out[arm][shrink].append(r["ratio"])
    return {"shrinks": list(KAHAN_SHRINKS), "ratios": out}


# --- the plan -------------------------------------------------------------------------------------------------


def planned_runs(s: Setup, *, store: Store | None = None) -> list[RunConfig]:
    """Every run ``notebooks/06_beyond_sources.ipynb`` trains at the settings ``s`` (its seeds from ``s.seed``),
    in the order it asks for them. ``store`` is not needed; it is accepted so every chapter's ``planned_runs``
    is called alike."""
    seeds = s.seeds(s.n_seeds)
    configs = [c for seed in seeds for c in rise_configs(s, seed).values()]
    configs += [rotation_configs(s, seed) for seed in seeds]
    configs += [cfg for seed in seeds for _, _, cfg in cautious_configs(s, seed)]
    configs += [cfg for seed in seeds for cfg in gpt_configs(s, seed).values()]
    configs += [cfg for seed in seeds for *_, cfg in width_configs(s, seed)]
    return configs
