"""One prepared GPU check: does wdlib compute on a GPU what the book computes on a CPU, and how fast?

Usage::

    python -m wdlib.check --device cuda [--size full|tiny] [--out DIR]     # or: make gpu-check

Six sections, each a table of rows (what was measured, the numbers, the tolerance it is held to, pass/fail;
a row without a tolerance is reported, not judged):

``optimizers``
    float32 parity of every wdlib optimizer and decay rule with torch.optim, on the same gradients (fixed,
    seeded), after ``opt_steps`` steps, once with ``impl="fused"`` and once with ``impl="foreach"``:
    ``Adam(decay="l2")`` vs ``torch.optim.Adam``, ``AdamW`` vs ``torch.optim.AdamW``, ``decay="independent"``
    with lambda vs ``torch.optim.AdamW`` with ``lambda / lr`` (constant lr), ``SGD`` (L2; plain, momentum,
    Nesterov) vs ``torch.optim.SGD``, and ``SGDW`` vs a hand-written ``theta <- theta*(1 - lr*lambda)`` then
    heavy-ball SGD. Error: ``max|theta - theta_ref| / max|theta_ref|`` <= :data:`FP32_RTOL`. Then bfloat16
    storage: each ``bf16_update`` remedy against the float32 trajectory of the least-squares problem of
    ``tests/core/test_precision.py`` (256 x 16, 200 steps, lr 1e-3, lambda 0.1: ``lr*lambda = 1e-4`` is below
    half a bfloat16 ulp of ``|w| ~ 1``) with that test's thresholds in bfloat16 ulps (master, kahan <= 1,
    nearest > 20; stochastic closer than nearest, :data:`BF16_GAP_ULPS` says why), and
    :func:`wdlib.precision.applied_decay` on the device with the thresholds of the same test file (nearest
    applies 0 of ``s = 1e-4``; the remedies apply ``s = 1e-3`` within 2% (master, kahan) or 10% (stochastic)).
``gpt_bf16``
    the library's GPT on ``stdlib_chars`` in ``precision="bf16-autocast"`` through :func:`wdlib.train.train`:
    train loss at the first evaluation and at the end (finite, falling, and at the end below ``ln(vocab)``, the
    loss of uniform logits), the attention kernel and tokens per second.
``hutchinson``
    :func:`wdlib.hessian.hutchinson_trace` against a PyHessian-style loop (Yao et al. 2020, arXiv 1912.07145:
    one ``create_graph`` gradient, one reverse pass per probe) on the same Rademacher probes (the rule of
    :mod:`wdlib.hessian`, written out here), an MLP on random data: the per-probe ``v^T H v`` agree within
    ``benchmarks/hessian_trace.py``'s tolerance (``rtol 1e-4, atol 1e-5 max(1, |Tr H|)``); the time ratio is
    reported.
``optimizer_bandwidth``
    step time of wdlib's AdamW and of ``torch.optim.AdamW(fused=True)`` at ``bw_params`` float32 parameters,
    and the fraction of the memory-bandwidth bound each reaches: an AdamW step reads p, g, m, v and writes
    p, m, v, ``7 x 4`` bytes per parameter; bandwidth = ``2 x bytes / time`` of ``dst.copy_(src)`` of a
    buffer as large as the parameters, measured in the same run. Reported, not judged (benchmarks are not
    tests): the section passes if it ran.
``packed``
    the chapters' small models (chapter 1's and chapter 2's MLP on MNIST-1D, chapter 4's ConvNet, chapter
    1b's BatchNorm ConvNet) trained solo (:func:`wdlib.train.train`) and packed
    (:func:`wdlib.packed.train_packed`, members differing in seed, lr and lambda): largest relative difference
    of a member's final train loss and weights from its solo run, in float32 over ``parity_steps`` against
    ``wdlib.packed.PARITY_RTOL`` and in float64 over ``packed_steps`` against :data:`PACKED_FLOAT64_RTOL`
    (which says why float32 is held over fewer steps), and the speed-up ``solo time / packed time`` over
    ``packed_steps`` in float32 (the dataset built once, outside both timings). A family that
    :func:`wdlib.packed.why_not_packed` refuses is reported with the reason, not judged.
``chapter``
    chapter 1 (``notebooks/01_l2_vs_decoupled.ipynb``) executed end to end: its code cells in order in one
    namespace with the scale and device set as papermill sets them (no Jupyter needed on the GPU machine),
    figures drawn off screen, run store and claims in a temporary directory; passes when every claim the
    catalogue gives the chapter gets a verdict.

A section that raises is recorded as failed with its error and the others still run. ``--out`` (default
``_build/gpu-check``) receives ``report.json`` and ``report.md``; the Markdown is printed too, and the exit
status is 1 when a section failed. The report records the command, the device, torch's version and the wall
time of each section and of the whole; CUDA timings are taken between ``torch.cuda.synchronize()`` calls.

Sizes (:data:`SIZES`): ``full`` is for one H100/H200 and must finish in under 8 minutes; ``tiny`` runs
every code path in well under a minute on a 2-core CPU (``--device cpu --size tiny``; the unit tests run it,
so no GPU code path goes untested). ``tiny`` on a CPU runs in one torch thread: its tensors are small, and
intra-op threads only add synchronisation, which costs up to 100x on a busy 2-core machine (measured in
``tests/core/test_precision.py``).

On the device machine (torch and the scientific stack preinstalled, no network), first fetch the few pure
Python wheels wdlib needs beyond them on a machine with a network, ``sh tools/gpu_wheels.sh`` (into the
git-ignored ``.whl/``), carry ``.whl`` with the working tree, and there run::

    pip install --no-index --no-deps .whl/*.whl
    pip install --no-index --find-links .whl --no-deps -e .    # optional: python -m wdlib.check also runs
                                                                # from the repository root uninstalled
    python -m wdlib.check --device cuda --size full
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from . import hessian, packed
from .claims import catalogue, environment
from .components import build_data
from .config import RunConfig
from .experiments import decoupling as dec
from .experiments import ema_view, overparam, practice
from .models import MLP
from .optim import SGD, SGDW, Adam, AdamW, Muon
from .precision import applied_decay
from .rounding import ulp
from .runs import Store
from .runtime import resolve_device
from .train import RunResult, train

__all__ = [
    "FP32_RTOL",
    "SECTIONS",
    "SIZES",
    "Row",
    "SectionResult",
    "Sizes",
    "exit_status",
    "main",
    "markdown",
    "run_check",
]

#: Relative error ``max|theta - theta_ref| / max|theta_ref|`` allowed between a wdlib optimizer and its
#: torch.optim reference after ``opt_steps`` float32 steps on the same gradients (both run torch's kernels,
#: so the error is a few float32 roundings, about 1e-7, where it is not exactly 0).
FP32_RTOL = 1e-5
#: bfloat16 remedies against the float32 trajectory, in bfloat16 ulps of the largest float32 weight: "master" and
#: "kahan" at most 1 ulp away, "nearest" more than 20 (it loses every update), the thresholds of
#: ``tests/core/test_precision.py::test_master_bf16_training_tracks_float32_and_nearest_drifts``. That test's
#: 8 ulps for "stochastic" is not used: over 40 RNG seeds (CPU) the Adam cases exceed it for 25-30% of the seeds
#: (mean 6.9, largest 11.4 ulps; the SGD cases at most 3.4), so it holds for the test's RNG state, not for any.
#: Here "stochastic" (seeded 0) must be closer than "nearest", which is the chapters' claim.
BF16_GAP_ULPS: dict[str, float] = {"master": 1.0, "kahan": 1.0, "nearest": 20.0}
#: Per-probe agreement of wdlib's Hutchinson estimate with the PyHessian-style loop (``benchmarks/hessian_trace.py``).
HUTCHINSON_RTOL, HUTCHINSON_ATOL = 1e-4, 1e-5
#: Packed against solo in float64, over ``packed_steps``: the same algorithm agrees far below this (measured on a
#: CPU at 500 steps of the chapters' smoke settings: weights within 1e-13 to 8e-9 relative, final loss within 8e-8).
#: In float32 the members part from their solo runs beyond ~100 steps of these settings (final loss 1e-3 to 7e-2
#: apart at 200-500 steps on a CPU, where float64 agrees to 1e-15..1e-9): the rounding differences of batched and
#: fused kernels (wdlib.packed's docstring) are amplified by training, which is why float32 is held to
#: ``wdlib.packed.PARITY_RTOL`` over ``parity_steps`` and only reported at ``packed_steps``.
PACKED_FLOAT64_RTOL = 1e-6
OUT_DEFAULT = Path("_build/gpu-check")


# --- sizes -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How much work each section does at one ``--size``."""

    name: str
    scale: str  # the chapters' scale (wdlib.config.SCALES) of the runs: packed models, the chapter, GPT's config
    opt_shapes: tuple[tuple[int, ...], ...]  # the parameter tensors of the parity runs
    opt_steps: int
    gpt_model: dict[str, int]  # GPT n_layer, n_head, n_embd
    gpt_block: int
    gpt_batch: int
    gpt_steps: int
    gpt_max_bytes: int  # characters of the stdlib_chars corpus
    gpt_lr: float
    hess_width: int
    hess_depth: int
    hess_samples: int
    hess_probes: int
    repeats: int  # timed repetitions (median) of the timing rows
    bw_params: float  # parameters of the optimizer-bandwidth section
    bw_width: int  # d of its transformer-like tensors (d x 4d, 4d x d, d x d, d, d, 4d)
    packed_members: int  # configurations per packed model (seeds x lrs x lambdas)
    packed_steps: int  # steps of the float64 parity runs and of the float32 speed runs
    parity_steps: int  # steps of the float32 parity runs (PACKED_FLOAT64_RTOL says why fewer)


SIZES: dict[str, Sizes] = {
    # one H100/H200, under 8 minutes in all (GPT ~85M parameters; AdamW at GPT-2 small's 124M)
    "full": Sizes(
        "full",
        scale="smoke",
        opt_shapes=((1024, 1024), (1024,), (1024, 256), (256,)),
        opt_steps=50,
        gpt_model={"n_layer": 12, "n_head": 12, "n_embd": 768},
        gpt_block=256,
        gpt_batch=32,
        gpt_steps=60,
        gpt_max_bytes=2_000_000,
        gpt_lr=6e-4,
        hess_width=512,
        hess_depth=3,
        hess_samples=2000,
        hess_probes=50,
        repeats=20,
        bw_params=124e6,
        bw_width=768,
        packed_members=8,
        packed_steps=500,
        parity_steps=50,
    ),
    # every code path in seconds on a 2-core CPU (the unit tests)
    "tiny": Sizes(
        "tiny",
        scale="test",
        opt_shapes=((40, 30), (30,)),
        opt_steps=50,
        gpt_model={"n_layer": 1, "n_head": 2, "n_embd": 16},
        gpt_block=16,
        gpt_batch=4,
        gpt_steps=12,
        gpt_max_bytes=100_000,
        gpt_lr=1e-2,
        hess_width=16,
        hess_depth=1,
        hess_samples=100,
        hess_probes=8,
        repeats=3,
        bw_params=1e6,
        bw_width=128,
        packed_members=4,
        packed_steps=20,
        parity_steps=20,
    ),
}


# --- results -----------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One measurement: ``passed`` is None when it is reported, not judged (no tolerance)."""

    what: str
    numbers: dict[str, Any]
    tolerance: str = ""
    passed: bool | None = None


@dataclass
class SectionResult:
    """A section's rows, status ("pass" or "fail"), wall time and, if it raised, its error and traceback."""

    name: str
    status: str
    seconds: float
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class Context:
    """What every section gets: the device, the sizes and a temporary directory of its own."""

    device: torch.device
    sizes: Sizes
    workdir: Path

    def sync(self) -> None:
        """Wait for the device's queued work (CUDA); nothing on the CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        """``fn()`` and its wall time in seconds, between two synchronizations."""
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - start

    def median_time(self, fn: Callable[[], Any], repeats: int | None = None, warmup: int = 2) -> float:
        """Median seconds of ``fn()`` over ``repeats`` (default ``sizes.repeats``) runs after ``warmup`` runs."""
        for _ in range(warmup):
            fn()
        return statistics.median(self.timed(fn)[1] for _ in range(repeats or self.sizes.repeats))


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|``, in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / scale if scale > 0 else float((a - b).abs().max())


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double().cpu() for t in tensors])


# --- 1. optimizers -----------------------------------------------------------------------------------------


def _given_grads(
    shapes: Sequence[tuple[int, ...]], steps: int, device: torch.device, seed: int = 0
) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Initial tensors and ``steps`` gradients per tensor, N(0, 1) from a seeded CPU generator, on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen).to(device) for s in shapes]
    grads = [[torch.randn(s, generator=gen).to(device) for s in shapes] for _ in range(steps)]
    return init, grads


def _trajectory(
    make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    init: Sequence[torch.Tensor],
    grads: Sequence[Sequence[torch.Tensor]],
) -> torch.Tensor:
    """The flat parameters after stepping ``make(params)`` through the given gradients."""
    params = [torch.nn.Parameter(t.clone()) for t in init]
    opt = make(params)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()
        opt.step()
    return _flat(params)


def _sgdw_reference(
    init: Sequence[torch.Tensor], grads: Sequence[Sequence[torch.Tensor]], *, lr: float, wd: float, momentum: float
) -> torch.Tensor:
    """Decoupled SGD by hand: ``theta <- theta*(1 - lr*lambda)``; ``b <- momentum*b + g`` (``b = g`` at the
    first step, torch's convention); ``theta <- theta - lr*b`` (SGDW, Loshchilov & Hutter arXiv 1711.05101)."""
    params = [t.clone() for t in init]
    bufs: list[torch.Tensor | None] = [None] * len(params)
    for step in grads:
        for i, (p, g) in enumerate(zip(params, step)):
            p.mul_(1.0 - lr * wd)
            bufs[i] = g.clone() if bufs[i] is None else bufs[i].mul_(momentum).add_(g)
            p.add_(bufs[i], alpha=-lr)
    return _flat(params)


def _kernel(impl: str) -> dict[str, bool]:
    """torch.optim's flag for the kernel wdlib's ``impl`` names."""
    return {"fused": True} if impl == "fused" else {"foreach": True}


def _parity_cases() -> list[tuple[str, Callable[..., Any], Callable[..., Any] | None]]:
    """(what, wdlib factory ``(params, impl)``, torch.optim factory ``(params, impl)`` or None for hand SGDW)."""
    lr, wd, lam_ind, sgd_lr = 1e-2, 0.1, 1e-3, 0.05
    return [
        (
            "Adam(decay='l2') vs torch.optim.Adam",
            lambda ps, impl: Adam(ps, lr=lr, weight_decay=wd, decay="l2", impl=impl),
            lambda ps, impl: torch.optim.Adam(ps, lr=lr, weight_decay=wd, **_kernel(impl)),
        ),
        (
            "AdamW (decoupled) vs torch.optim.AdamW",
            lambda ps, impl: AdamW(ps, lr=lr, weight_decay=wd, impl=impl),
            lambda ps, impl: torch.optim.AdamW(ps, lr=lr, weight_decay=wd, **_kernel(impl)),
        ),
        (
            f"Adam(decay='independent', lambda={lam_ind}) vs torch.optim.AdamW(weight_decay=lambda/lr)",
            lambda ps, impl: Adam(ps, lr=lr, weight_decay=lam_ind, decay="independent", impl=impl),
            lambda ps, impl: torch.optim.AdamW(ps, lr=lr, weight_decay=lam_ind / lr, **_kernel(impl)),
        ),
        (
            "SGD(decay='l2') vs torch.optim.SGD",
            lambda ps, impl: SGD(ps, lr=sgd_lr, weight_decay=wd, impl=impl),
            lambda ps, impl: torch.optim.SGD(ps, lr=sgd_lr, weight_decay=wd, **_kernel(impl)),
        ),
        (
            "SGD(decay='l2', momentum=0.9) vs torch.optim.SGD",
            lambda ps, impl: SGD(ps, lr=sgd_lr, momentum=0.9, weight_decay=wd, impl=impl),
            lambda ps, impl: torch.optim.SGD(ps, lr=sgd_lr, momentum=0.9, weight_decay=wd, **_kernel(impl)),
        ),
        (
            "SGD(decay='l2', momentum=0.9, nesterov) vs torch.optim.SGD",
            lambda ps, impl: SGD(ps, lr=sgd_lr, momentum=0.9, nesterov=True, weight_decay=wd, impl=impl),
            lambda ps, impl: torch.optim.SGD(
                ps, lr=sgd_lr, momentum=0.9, nesterov=True, weight_decay=wd, **_kernel(impl)
            ),
        ),
        (
            "SGDW(momentum=0.9) vs hand-written decoupled SGD",
            lambda ps, impl: SGDW(ps, lr=sgd_lr, momentum=0.9, weight_decay=wd, impl=impl),
            None,
        ),
    ]


def _parity_rows(ctx: Context) -> list[Row]:
    init, grads = _given_grads(ctx.sizes.opt_shapes, ctx.sizes.opt_steps, ctx.device)
    hand = _sgdw_reference(init, grads, lr=0.05, wd=0.1, momentum=0.9)
    rows = []
    for what, ours, theirs in _parity_cases():
        for impl in ("fused", "foreach"):
            got = _trajectory(lambda ps, ours=ours, impl=impl: ours(ps, impl), init, grads)
            ref = (
                hand
                if theirs is None
                else _trajectory(lambda ps, theirs=theirs, impl=impl: theirs(ps, impl), init, grads)
            )
            err = _rel_err(got, ref)
            rows.append(
                Row(
                    f"{what}, impl={impl}, float32",
                    {"rel_err": err, "steps": ctx.sizes.opt_steps},
                    f"<= {FP32_RTOL:g}",
                    err <= FP32_RTOL,
                )
            )
    return rows


def _least_squares(
    device: torch.device, dtype: torch.dtype, bf16_update: str, make: Callable[..., Any], steps: int = 200
) -> torch.Tensor:
    """``tests/core/test_precision.py``'s problem: least squares 256 x 16 (seed 10), the loss computed in
    float32 from the stored weights, ``steps`` steps; the weights as float32."""
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(256, 16, generator=gen)
    y = x @ torch.randn(16, generator=gen)
    w = torch.nn.Parameter(torch.randn(16, generator=gen).to(device=device, dtype=dtype))
    x, y = x.to(device), y.to(device)
    opt = make([w], bf16_update=bf16_update)
    for _ in range(steps):
        opt.zero_grad()
        ((x @ w.float() - y) ** 2).mean().backward()
        opt.step()
    return w.detach().float()


@contextlib.contextmanager
def _seeded(device: torch.device, seed: int) -> Iterator[None]:
    """torch's global RNG (CPU and ``device``) seeded with ``seed`` inside the block, the caller's state restored."""
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _bf16_gaps_ok(gaps: Mapping[str, float]) -> bool:
    """:data:`BF16_GAP_ULPS`: master and kahan within 1 ulp, nearest beyond 20, stochastic closer than nearest."""
    near = gaps["nearest"]
    within = all(gaps[m] <= BF16_GAP_ULPS[m] for m in ("master", "kahan"))
    return within and near > BF16_GAP_ULPS["nearest"] and gaps["stochastic"] < near


def _bf16_trajectory_rows(ctx: Context) -> list[Row]:
    """Each remedy's distance from the float32 run, in bfloat16 ulps of the largest float32 weight."""
    makers = {
        "AdamW (decoupled), lr 1e-3, lambda 0.1": lambda ps, **kw: Adam(
            ps, lr=1e-3, weight_decay=0.1, decay="decoupled", **kw
        ),
        "Adam + L2, lr 1e-3, lambda 0.1": lambda ps, **kw: Adam(ps, lr=1e-3, weight_decay=0.1, decay="l2", **kw),
        "SGDW momentum 0.9, lr 1e-3, lambda 0.1": lambda ps, **kw: SGD(
            ps, lr=1e-3, momentum=0.9, weight_decay=0.1, decay="decoupled", **kw
        ),
        "SGD + L2 momentum 0.9, lr 1e-3, lambda 0.1": lambda ps, **kw: SGD(
            ps, lr=1e-3, momentum=0.9, weight_decay=0.1, decay="l2", **kw
        ),
    }
    rows = []
    for name, make in makers.items():
        ref = _least_squares(ctx.device, torch.float32, "nearest", make)
        scale = float(ulp(ref.abs().max(), torch.bfloat16))
        gaps = {}
        for mode in ("master", "kahan", "stochastic", "nearest"):
            with _seeded(ctx.device, 0):  # the stochastic remedy draws from the global RNG
                gaps[mode] = float((_least_squares(ctx.device, torch.bfloat16, mode, make) - ref).abs().max()) / scale
        rows.append(
            Row(
                f"bf16 weights, least squares 200 steps, {name}: max gap to the float32 run (bf16 ulps)",
                {f"{m}_ulps": v for m, v in gaps.items()},
                "master, kahan <= 1 and nearest > 20 (tests/core/test_precision.py); stochastic < nearest "
                "(see BF16_GAP_ULPS)",
                _bf16_gaps_ok(gaps),
            )
        )
    return rows


def _applied_decay_rows(ctx: Context) -> list[Row]:
    """The decay each remedy applies to bfloat16 weights on the device (:func:`wdlib.precision.applied_decay`)."""
    gen = torch.Generator().manual_seed(6)
    weights = [
        torch.randn(100, 80, generator=gen).to(ctx.device),
        (torch.randn(2000, generator=gen) * 0.02).to(ctx.device),
    ]
    rows = []
    for optimizer in ("adam", "sgd"):
        lost = applied_decay(weights, lr=1e-3, weight_decay=0.1, optimizer=optimizer, steps=50)
        rows.append(
            Row(
                f"applied_decay, {optimizer}, bf16 nearest, s = lr*lambda = 1e-4 (below half an ulp)",
                {"ratio": lost["ratio"], "changed_first_step": lost["changed_first_step"]},
                "ratio == 0 (tests/core/test_precision.py)",
                lost["ratio"] == 0.0,
            )
        )
        for remedy in ("master", "kahan", "stochastic"):
            r = applied_decay(weights, lr=1e-2, weight_decay=0.1, optimizer=optimizer, bf16_update=remedy, steps=200)
            tol = 0.1 if remedy == "stochastic" else 0.02
            rows.append(
                Row(
                    f"applied_decay, {optimizer}, bf16 {remedy}, s = 1e-3",
                    {"ratio": r["ratio"], "changed_first_step": r["changed_first_step"]},
                    f"|ratio - 1| <= {tol} (tests/core/test_precision.py)",
                    abs(r["ratio"] - 1.0) <= tol,
                )
            )
    return rows


#: Muon against torch.optim.Muon: the Newton-Schulz iteration runs in bfloat16, and torch keeps its momentum as
#: an average ((1 - mu) times wdlib's buffer), which the iteration's normalisation cancels up to bf16 rounding.
MUON_RTOL = 5e-2


def _beyond_rows(ctx: Context) -> list[Row]:
    """Chapter 6's optimizer options on the device: Muon (match_rms_adamw, decoupled decay, Nesterov) against
    ``torch.optim.Muon`` on the matrices, and cautious AdamW and corrected SGD on the device against the same
    on the CPU."""
    mats = tuple(s for s in ctx.sizes.opt_shapes if len(s) == 2)
    init, grads = _given_grads(mats, ctx.sizes.opt_steps, ctx.device)
    got = _trajectory(lambda ps: Muon(ps, lr=1e-2, weight_decay=0.1), init, grads)
    ref = _trajectory(
        lambda ps: torch.optim.Muon(ps, lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"), init, grads
    )
    err = _rel_err(got, ref)
    rows = [
        Row(
            "Muon vs torch.optim.Muon (match_rms_adamw, decoupled decay)",
            {"rel_err": err, "steps": ctx.sizes.opt_steps},
            f"<= {MUON_RTOL:g}",
            err <= MUON_RTOL,
        )
    ]
    init, grads = _given_grads(ctx.sizes.opt_shapes, ctx.sizes.opt_steps, ctx.device)
    cpu_init, cpu_grads = _given_grads(ctx.sizes.opt_shapes, ctx.sizes.opt_steps, torch.device("cpu"))
    for what, make in (
        ("AdamW(cautious=True)", lambda ps: AdamW(ps, lr=1e-2, weight_decay=0.1, cautious=True)),
        (
            "SGD(decay='corrected', momentum=0.9)",
            lambda ps: SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.1, decay="corrected"),
        ),
    ):
        err = _rel_err(_trajectory(make, init, grads), _trajectory(make, cpu_init, cpu_grads))
        rows.append(
            Row(
                f"{what}: the device against the CPU (float32)",
                {"rel_err": err, "steps": ctx.sizes.opt_steps},
                f"<= {FP32_RTOL:g}",
                err <= FP32_RTOL,
            )
        )
    return rows


def section_optimizers(ctx: Context) -> list[Row]:
    """float32 parity with torch.optim (fused and foreach), chapter 6's options, then the bfloat16 remedies."""
    return _parity_rows(ctx) + _beyond_rows(ctx) + _bf16_trajectory_rows(ctx) + _applied_decay_rows(ctx)


# --- 2. GPT in bf16 autocast -------------------------------------------------------------------------------


def _gpt_config(sz: Sizes) -> RunConfig:
    """Chapter 5's recipe (AdamW, betas (0.9, 0.95), clip 1, bf16 autocast) at the check's size; a constant LR
    after a linear warmup over the first sixth of the steps."""
    return RunConfig(
        data="stdlib_chars",
        data_args={"max_bytes": sz.gpt_max_bytes},
        model="gpt",
        model_args=dict(sz.gpt_model),
        optimizer={"name": "adam", "decay": "decoupled", "betas": [0.9, 0.95]},
        lr=sz.gpt_lr,
        weight_decay=0.1,
        lr_schedule={"name": "constant", "warmup": max(sz.gpt_steps // 6, 1)},
        grad_clip=1.0,
        precision="bf16-autocast",
        steps=sz.gpt_steps,
        batch_size=sz.gpt_batch,
        block_size=sz.gpt_block,
        eval_every=max(sz.gpt_steps // 3, 1),
        eval_batches=4,
        scale=sz.scale,
    )


def section_gpt_bf16(ctx: Context) -> list[Row]:
    """A few dozen steps of the GPT in bf16 autocast: losses finite and falling, kernel, tokens/s."""
    cfg = _gpt_config(ctx.sizes)
    result, seconds = ctx.timed(lambda: train(cfg, device=ctx.device, progress=False))
    losses = result.history["train_loss"]
    first, last = float(losses[0]), float(losses[-1])
    uniform = math.log(result.model_state["wte.weight"].shape[0])  # the loss of uniform logits
    tokens = cfg.steps * cfg.batch_size * cfg.block_size
    finite = bool(np.all(np.isfinite(losses))) and not result.diverged
    return [
        Row(
            f"GPT {cfg.model_args}, block {cfg.block_size}, batch {cfg.batch_size}, {cfg.steps} steps: train loss "
            f"at step {int(result.history['step'][0])} and at the end",
            {"first": first, "last": last, "ln_vocab": uniform, "diverged_at": result.diverged_at},
            "finite, last < first, last < ln(vocab)",
            finite and last < first and last < uniform,
        ),
        Row(
            "attention kernel and speed (wall time of train(), its evaluations included)",
            {
                "attention_backend": result.info["attention_backend"],
                "tokens_per_s": tokens / result.wall_time,
                "train_s": result.wall_time,
                "call_s": seconds,
                "parameters": sum(v.numel() for k, v in result.model_state.items() if k != "lm_head.weight"),
            },
        ),
    ]


# --- 3. Hutchinson -----------------------------------------------------------------------------------------


def rademacher_probes(params: Sequence[torch.Tensor], probes: int, seed: int) -> list[list[torch.Tensor]]:
    """The probes :func:`wdlib.hessian.hutchinson_trace` draws (the rule in its module docstring), written
    out independently: ``r_i = randint(0, 2, (P,), int8)`` from one CPU generator seeded ``seed``, ``v_i = 2 r_i - 1``
    split into the parameters in order, cast to their dtype and moved to their device."""
    sizes = [p.numel() for p in params]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(probes):
        r = torch.randint(0, 2, (sum(sizes),), generator=gen, dtype=torch.int8)
        out.append([(2 * c.to(p.dtype) - 1).view(p.shape).to(p.device) for c, p in zip(torch.split(r, sizes), params)])
    return out


def pyhessian_trace(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, probes: Sequence[Sequence[torch.Tensor]]
) -> np.ndarray:
    """PyHessian's single-batch ``trace()`` (Yao et al. 2020): the gradient once with ``create_graph=True``,
    then ``v^T (d grad / d theta) v`` by one reverse pass per probe, reusing the graph."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
    out = []
    for v in probes:
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        out.append(float(sum(torch.sum(a * b) for a, b in zip(hv, v))))
    return np.asarray(out, dtype=np.float64)


def section_hutchinson(ctx: Context) -> list[Row]:
    """Same probes, two implementations: per-probe agreement and the time ratio."""
    sz = ctx.sizes
    torch.manual_seed(0)
    model = MLP(40, sz.hess_width, sz.hess_depth, 10).to(ctx.device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(sz.hess_samples, 40, generator=gen).to(ctx.device)
    y = torch.randint(0, 10, (sz.hess_samples,), generator=gen).to(ctx.device)
    params = [p for p in model.parameters() if p.requires_grad]

    def ours() -> hessian.TraceEstimate:
        return hessian.hutchinson_trace(model, x, y, probes=sz.hess_probes, seed=0)

    def theirs() -> np.ndarray:
        return pyhessian_trace(model, x, y, rademacher_probes(params, sz.hess_probes, 0))

    est, ref = ours(), theirs()
    atol = HUTCHINSON_ATOL * max(1.0, abs(float(ref.mean())))
    agree = bool(np.allclose(est.samples_per_probe, ref, rtol=HUTCHINSON_RTOL, atol=atol))
    repeats = max(3, sz.repeats // 4)
    t_ours, t_ref = ctx.median_time(ours, repeats, warmup=1), ctx.median_time(theirs, repeats, warmup=1)
    n_params = sum(p.numel() for p in params)
    return [
        Row(
            f"Tr(H), MLP 40-{sz.hess_width}x{sz.hess_depth}-10 ({n_params} parameters), {sz.hess_samples} points, "
            f"{sz.hess_probes} probes: wdlib vs PyHessian-style loop, probe by probe",
            {
                "trace": est.value,
                "stderr": est.stderr,
                "trace_ref": float(ref.mean()),
                "max_abs_diff": float(np.abs(est.samples_per_probe - ref).max()),
            },
            f"rtol {HUTCHINSON_RTOL:g}, atol {HUTCHINSON_ATOL:g} x max(1, |Tr H|) (benchmarks/hessian_trace.py)",
            agree,
        ),
        Row(
            f"time, median of {repeats} (wdlib default: all probes in one vmap)",
            {"wdlib_s": t_ours, "pyhessian_s": t_ref, "speedup": t_ref / t_ours},
        ),
    ]


# --- 4. optimizer bandwidth --------------------------------------------------------------------------------


def _transformer_params(total: float, d: int, device: torch.device) -> list[torch.nn.Parameter]:
    """Float32 tensors (d x 4d, 4d x d, d x d, d, d, 4d), repeated until ``total`` elements, with gradients
    (``benchmarks/optim_step.py``'s layout); drawn on the device (the values do not matter for the time)."""
    block = ((d, 4 * d), (4 * d, d), (d, d), (d,), (d,), (4 * d,))
    gen = torch.Generator(device=device).manual_seed(0)
    params, count = [], 0
    while count < total:
        shape = block[len(params) % len(block)]
        p = torch.nn.Parameter(torch.randn(shape, generator=gen, device=device))
        p.grad = torch.randn(shape, generator=gen, device=device) * 1e-3
        params.append(p)
        count += p.numel()
    return params


def _copy_bandwidth(ctx: Context, numel: int) -> float:
    """Bytes per second of ``dst.copy_(src)``, float32 buffers of ``numel`` elements: ``2 x 4 x numel / time``."""
    src = torch.empty(numel, device=ctx.device).uniform_()
    dst = torch.empty_like(src)
    seconds = ctx.median_time(lambda: dst.copy_(src))
    return 2 * 4 * numel / seconds


def section_optimizer_bandwidth(ctx: Context) -> list[Row]:
    """AdamW step time, wdlib against torch fused, and the fraction of the copy bandwidth each reaches."""
    sz = ctx.sizes
    params = _transformer_params(sz.bw_params, sz.bw_width, ctx.device)
    n = sum(p.numel() for p in params)
    bandwidth = _copy_bandwidth(ctx, n)
    makers = {
        "wdlib AdamW (impl auto)": lambda: AdamW(params, lr=1e-3, weight_decay=0.1),
        "torch.optim.AdamW(fused=True)": lambda: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, fused=True),
    }
    times = {}
    for name, make in makers.items():
        opt = make()
        times[name] = ctx.median_time(opt.step)
        del opt
    bound = 7 * 4 * n  # read p, g, m, v; write p, m, v
    rows = [
        Row(
            f"device-to-device copy of {4 * n / 1e6:.0f} MB",
            {"bandwidth_GB_s": bandwidth / 1e9},
        )
    ]
    for name, t in times.items():
        rows.append(
            Row(
                f"{name} step, {n / 1e6:.1f}M float32 parameters in {len(params)} tensors, median of {sz.repeats}",
                {
                    "step_ms": t * 1e3,
                    "fraction_of_bandwidth": bound / t / bandwidth,
                    "ratio_to_torch_fused": t / times["torch.optim.AdamW(fused=True)"],
                },
            )
        )
    return rows


# --- 5. packed ---------------------------------------------------------------------------------------------


def _members(base: RunConfig, count: int) -> list[RunConfig]:
    """``count`` configurations around ``base`` differing in seed, lr (x 1, 0.5, 2) and lambda (x 1, 2, 0.5, 0)."""
    lr_f, wd_f = (1.0, 0.5, 2.0), (1.0, 2.0, 0.5, 0.0)
    return [
        base.replace(seed=base.seed + i, lr=base.lr * lr_f[i % 3], weight_decay=base.weight_decay * wd_f[i % 4])
        for i in range(count)
    ]


def packed_families(sz: Sizes) -> dict[str, RunConfig]:
    """The chapters' small models, as their modules configure them at ``sz.scale`` (``packed_steps`` steps)."""
    steps = sz.packed_steps
    s_dec, s_ema = dec.setup(sz.scale), ema_view.setup(sz.scale)
    s_over, s_prac = overparam.setup(sz.scale), practice.setup(sz.scale)
    convnet = dict(data=s_over.data, data_args=s_over.data_args, subset=s_over.train_size, model=s_over.model)
    return {
        "MLP, chapter 1 (decoupling.base_config), SGD momentum 0.9 + L2": dec.base_config(
            s_dec, optimizer={"name": "sgd", "decay": "l2", "momentum": 0.9}, lr=0.05, weight_decay=5e-4, steps=steps
        ),
        "MLP, chapter 2 (ema_view.base_config), AdamW": ema_view.base_config(
            s_ema, lr=1e-3, weight_decay=0.1, steps=steps
        ),
        "ConvNet, chapter 4 (overparam's runs), SGD + L2": RunConfig(
            **convnet,
            model_args=s_over.model_args,
            optimizer={"name": "sgd", "decay": "l2", "momentum": 0.0},
            decay_vectors=True,
            batch_size=s_over.batch_size,
            lr=s_over.plateau_lr,
            weight_decay=s_over.plateau_wd,
            steps=steps,
            eval_every=0,
            scale=s_over.scale,
        ),
        "BatchNorm ConvNet, chapter 1b (practice's grid), SGDW momentum 0.9, cosine": RunConfig(
            data="mnist1d",
            data_args={"num_samples": s_prac.grid_samples},
            model="convnet",
            model_args={"channels": [s_prac.grid_channels] * 3, "norm": "batch"},
            optimizer={"name": "sgd", "decay": "decoupled", "momentum": s_prac.grid_momentum},
            lr_schedule={"name": "cosine"},
            decay_vectors=True,
            batch_size=s_prac.grid_batch,
            lr=0.1,
            weight_decay=1e-3,
            steps=steps,
            eval_every=0,
            scale=s_prac.scale,
        ),
    }


def _state_rel_err(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    keys = [k for k, v in b.items() if v.is_floating_point()]
    return _rel_err(_flat([a[k] for k in keys]), _flat([b[k] for k in keys]))


def _parity(solo: Sequence[RunResult], together: Sequence[RunResult]) -> dict[str, float]:
    """Largest relative difference of a packed member from its solo run: final train loss, and weights
    (``max|w_packed - w_solo| / max|w_solo|`` over all its tensors)."""
    loss = max(
        abs(p.final["train_loss"] - s.final["train_loss"]) / abs(s.final["train_loss"]) for p, s in zip(together, solo)
    )
    weights = max(_state_rel_err(p.model_state, s.model_state) for p, s in zip(together, solo))
    return {"loss_rel_diff": loss, "weight_rel_diff": weights}


def _solo_and_packed(
    ctx: Context, configs: Sequence[RunConfig], data: Any
) -> tuple[list[RunResult], list[RunResult], float, float]:
    """``configs`` trained one by one (:func:`wdlib.train.train`) and as one pack: results and seconds of each."""
    solo, solo_s = [], 0.0
    for cfg in configs:
        result, seconds = ctx.timed(lambda cfg=cfg: train(cfg, device=ctx.device, progress=False, data=data))
        solo.append(result)
        solo_s += seconds
    together, packed_s = ctx.timed(lambda: packed.train_packed(list(configs), device=ctx.device, data=data))
    return solo, together, solo_s, packed_s


def _packed_rows(ctx: Context, name: str, configs: list[RunConfig]) -> list[Row]:
    """One family: float32 parity at ``parity_steps`` (judged against ``PARITY_RTOL``), float64 parity at
    ``packed_steps`` (:data:`PACKED_FLOAT64_RTOL`), and the speed-up at ``packed_steps`` in float32."""
    sz = ctx.sizes
    reasons = {r for r in (packed.why_not_packed(c) for c in configs) if r}
    if reasons:
        return [Row(f"{name}: not packed", {"reason": "; ".join(sorted(reasons))})]
    data = build_data(configs[0])  # once, outside the timings
    solo, together, solo_s, packed_s = _solo_and_packed(ctx, configs, data)
    short = (solo, together)
    if sz.parity_steps != sz.packed_steps:
        short = _solo_and_packed(ctx, [c.replace(steps=sz.parity_steps) for c in configs], data)[:2]
    f32, f64 = (
        _parity(*short),
        _parity(*_solo_and_packed(ctx, [c.replace(dtype="float64") for c in configs[:2]], data)[:2]),
    )
    return [
        Row(
            f"{name}: {len(configs)} members (seed, lr, lambda), float32, {sz.parity_steps} steps: packed vs solo",
            f32,
            f"<= PARITY_RTOL = {packed.PARITY_RTOL:g}",
            max(f32.values()) <= packed.PARITY_RTOL,
        ),
        Row(
            f"{name}: 2 members, float64, {sz.packed_steps} steps: packed vs solo (the same algorithm)",
            f64,
            f"<= {PACKED_FLOAT64_RTOL:g}",
            max(f64.values()) <= PACKED_FLOAT64_RTOL,
        ),
        Row(
            f"{name}: {len(configs)} members, float32, {sz.packed_steps} steps: speed, and the float32 gap there",
            {"speedup": solo_s / packed_s, "solo_s": solo_s, "packed_s": packed_s, **_parity(solo, together)},
        ),
    ]


def section_packed(ctx: Context) -> list[Row]:
    """Packed against solo training of each chapter model."""
    families = packed_families(ctx.sizes)
    return [
        row
        for name, base in families.items()
        for row in _packed_rows(ctx, name, _members(base, ctx.sizes.packed_members))
    ]


# --- 6. a chapter end to end -------------------------------------------------------------------------------


#: The chapter the ``chapter`` section executes, relative to the repository root.
CHAPTER_NOTEBOOK = Path("notebooks/01_l2_vs_decoupled.ipynb")


def notebook_cells(path: Path) -> list[tuple[list[str], str]]:
    """The code cells of the notebook at ``path`` as ``(tags, source)``, read as JSON (no Jupyter needed)."""
    nb = json.loads(path.read_text())
    cells = []
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code":
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            cells.append((list(cell.get("metadata", {}).get("tags", [])), source))
    return cells


def run_notebook(path: Path, parameters: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Execute a chapter's code cells in order in one namespace, as papermill would without a kernel: the
    ``parameters`` cell, then ``parameters`` (plain values, never source text) set over it, the Colab install
    cell (tag ``colab``) skipped; ``env`` set in ``os.environ`` meanwhile (run store, results directory).
    Returns the namespace. The cells are this repository's own code, run as the book build runs them."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    namespace: dict[str, Any] = {"__name__": "__chapter__"}
    try:
        for i, (tags, source) in enumerate(notebook_cells(path)):
            if "colab" in tags:
                continue
            exec(compile(source, f"{path.name}, code cell {i}", "exec"), namespace)  # the repository's own cells
            if "parameters" in tags:
                namespace.update(parameters)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return namespace


def section_chapter(ctx: Context) -> list[Row]:
    """Chapter 1 executed end to end (:func:`run_notebook`: every code cell, figures drawn off screen) at
    ``sizes.scale`` on the check's device, its run store and claims in a temporary directory; passes when every
    claim the catalogue gives the chapter gets a verdict."""
    sz = ctx.sizes
    path = Path(__file__).resolve().parent.parent / CHAPTER_NOTEBOOK
    env = {
        "WDLIB_STORE": str(ctx.workdir / "store"),
        "WDLIB_RESULTS_DIR": str(ctx.workdir / "results"),
        "WDLIB_PROGRESS": "0",
        "MPLBACKEND": "Agg",
    }
    params = {"scale": sz.scale, "device": str(ctx.device), "seed": 0}
    namespace, seconds = ctx.timed(lambda: run_notebook(path, params, env))
    plt.close("all")
    ledger = namespace["ledger"]
    wanted = [cid for cid, c in catalogue().items() if c.chapter == CHAPTER_NOTEBOOK.stem]
    rows = []
    for claim_id in wanted:
        verdict = next((r.verdict for r in ledger.results if r.claim == claim_id), None)
        rows.append(
            Row(
                f"{claim_id} ({CHAPTER_NOTEBOOK}), scale {sz.scale!r}",
                {"verdict": verdict},
                "a verdict computed",
                isinstance(verdict, str) and bool(verdict),
            )
        )
    store = Store(ctx.workdir / "store")
    rows.append(Row("the chapter", {"seconds": seconds, "runs": len(store.list()), "workers": namespace["workers"]}))
    return rows


# --- the check ---------------------------------------------------------------------------------------------

#: The sections, in the order they run, as ``name -> fn(ctx) -> rows``.
#:
#: :meta hide-value:
SECTIONS: dict[str, Callable[[Context], list[Row]]] = {
    "optimizers": section_optimizers,
    "gpt_bf16": section_gpt_bf16,
    "hutchinson": section_hutchinson,
    "optimizer_bandwidth": section_optimizer_bandwidth,
    "packed": section_packed,
    "chapter": section_chapter,
}


def _run_section(name: str, fn: Callable[[Context], list[Row]], ctx: Context) -> SectionResult:
    """One section, timed; an exception is its failure, never the end of the check."""
    start = time.perf_counter()
    try:
        rows = fn(ctx)
        status = "fail" if any(r.passed is False for r in rows) else "pass"
        result = SectionResult(name, status, 0.0, rows)
    except Exception as err:  # a failing section is recorded, and the others still run
        result = SectionResult(
            name, "fail", 0.0, error=f"{type(err).__name__}: {err}", notes=[traceback.format_exc(limit=8)]
        )
    with contextlib.suppress(Exception):  # a failed section's work may still be queued, its memory cached
        ctx.sync()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    result.seconds = time.perf_counter() - start
    return result


@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` inside the block (None: left as they are), restored after."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def run_check(
    device: str | torch.device = "cuda",
    size: str = "full",
    out: str | Path | None = OUT_DEFAULT,
    *,
    sections: Mapping[str, Callable[[Context], list[Row]]] | None = None,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``sections`` (default :data:`SECTIONS`) on ``device`` at ``size`` ("full" or "tiny"); write
    ``report.json`` and ``report.md`` into ``out`` (None: write nothing) and return the report as a dict.

    ``log`` receives one line per finished section (the command line prints them to stderr as it goes).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(repr(s) for s in SIZES)}, got {size!r}")
    dev = resolve_device(device)
    sections = SECTIONS if sections is None else sections
    started = time.perf_counter()
    results = []
    threads = 1 if dev.type == "cpu" and size == "tiny" else None
    with _torch_threads(threads), tempfile.TemporaryDirectory(prefix="wdlib-check-") as tmp:
        for name, fn in sections.items():
            workdir = Path(tmp) / name
            workdir.mkdir()
            result = _run_section(name, fn, Context(dev, SIZES[size], workdir))
            results.append(result)
            if log is not None:
                log(f"[wdlib.check] {name}: {result.status} ({result.seconds:.1f} s)")
    report = {
        "command": command,
        "device": str(dev),
        "device_name": _device_name(dev),
        "torch": torch.__version__,
        "size": size,
        "wall_seconds": time.perf_counter() - started,
        "passed": all(r.status != "fail" for r in results),
        "environment": environment(),
        "sections": [_section_dict(r) for r in results],
    }
    if out is not None:
        _write(report, Path(out))
    return report


def _section_dict(r: SectionResult) -> dict[str, Any]:
    return {
        "name": r.name,
        "status": r.status,
        "seconds": r.seconds,
        "error": r.error,
        "notes": r.notes,
        "rows": [
            {"what": row.what, "numbers": _plain(row.numbers), "tolerance": row.tolerance, "passed": row.passed}
            for row in r.rows
        ],
    }


def _plain(value: Any) -> Any:
    """JSON-ready: numpy and torch scalars as Python numbers, non-finite floats as strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _write(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "0" if value == 0 else f"{value:.3g}"
    return str(value).replace("|", "\\|")


def markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: the header facts, then one table per section (what, numbers, tolerance, result)."""
    lines = [
        f"# wdlib GPU check: {'PASS' if report['passed'] else 'FAIL'}",
        "",
        f"- command: `{report['command']}`",
        f"- device: {report['device']} ({report['device_name']}), torch {report['torch']}, "
        f"Python {report['environment']['python']}",
        f"- size: {report['size']}; wall time {report['wall_seconds']:.1f} s",
        "",
    ]
    for sec in report["sections"]:
        lines += [f"## {sec['name']}: {sec['status']} ({sec['seconds']:.1f} s)", ""]
        if sec["error"]:
            lines += [f"**error:** `{sec['error'].replace('`', chr(39))}`", ""]
        if sec["rows"]:
            lines += ["| what | numbers | tolerance | result |", "|---|---|---|---|"]
            for row in sec["rows"]:
                numbers = ", ".join(f"{k} {_fmt(v)}" for k, v in row["numbers"].items())
                result = {True: "pass", False: "**FAIL**", None: "reported"}[row["passed"]]
                lines.append(f"| {_fmt(row['what'])} | {numbers} | {_fmt(row['tolerance']) or '-'} | {result} |")
        lines.append("")
    return "\n".join(lines)


def exit_status(report: Mapping[str, Any]) -> int:
    """0 when every section passed, 1 otherwise."""
    return 0 if report["passed"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m wdlib.check``: run the check, print the Markdown report, return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m wdlib.check", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, cpu or auto")
    ap.add_argument("--size", default="full", choices=list(SIZES), help="full: one H100/H200; tiny: a CPU")
    ap.add_argument("--out", default=str(OUT_DEFAULT), help=f"report directory (default {OUT_DEFAULT})")
    args = ap.parse_args(argv)
    command = " ".join(["python -m wdlib.check", *map(shlex.quote, argv)])
    try:
        dev = resolve_device(args.device)
    except ValueError as err:  # e.g. --device cuda where CUDA is not available: exit 2 with the reason
        ap.error(str(err))
    report = run_check(dev, args.size, args.out, command=command, log=lambda line: print(line, file=sys.stderr))
    print(markdown(report))
    return exit_status(report)


if __name__ == "__main__":
    sys.exit(main())
