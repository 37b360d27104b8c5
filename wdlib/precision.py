"""Low-precision arithmetic of weight decay: rounding, spacing, and the decay bfloat16 weights really get.

A bfloat16 number keeps 8 significant bits (7 stored). For ``|x|`` in ``[2^e, 2^(e+1))`` the spacing
of representable values is ``ulp(x) = 2^(e-7)`` (:func:`ulp`), between ``2^-8`` and ``2^-7`` of
``|x|``. Decoupled decay ``x <- x*(1 - s)`` moves ``x`` by ``s*|x|``; rounded to nearest, that is
lost whenever ``s*|x| < ulp(x)/2``, i.e. for a relative shrink ``s`` below ``2^-9`` to ``2^-8``
(1.95e-3 to 3.9e-3, depending on the position of ``|x|`` in its binade). GPT-2-style settings
(lr 6e-4, lambda 0.1, ``s = 6e-5``) decay bfloat16 weights not at all.

:func:`stochastic_round` rounds float32 to bfloat16 up or down at random, unbiased:
``E[round(x)] = x``, so a shrink far below one ulp is applied on average. :func:`applied_decay`
measures the per-step decay an optimizer actually applies to a set of low-precision weights against
the one requested, for each remedy of :mod:`wdlib.optim` (``bf16_update``: "nearest", "master",
"kahan", "stochastic").

:func:`bf16_matmul_speed` measures how fast a device multiplies bfloat16 matrices against float32, and
:func:`fast_bf16` says whether bfloat16 is worth using there: many CPUs (AVX2 without AVX-512 BF16)
emulate it at a fiftieth of the float32 rate, so a bf16 run on them takes an hour where float32 takes a
minute. The decision is measured, not read from CPU flags.

Used by chapter 5 (``notebooks/05_llm_regime.ipynb``), claim LLM-7 and its precision policy.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["FAST_BF16_RATIO", "applied_decay", "bf16_matmul_speed", "decay_changes_fraction", "fast_bf16",
           "stochastic_round", "ulp"]

_LOW_MASK = -(1 << 16)  # int32 0xFFFF0000: keeps the sign, the exponent and bfloat16's 7 mantissa bits


def stochastic_round(x: torch.Tensor, dtype: torch.dtype = torch.bfloat16,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Round ``x`` to bfloat16 stochastically and without bias: ``E[stochastic_round(x)] = x``.

    A bfloat16 number is the top 16 bits of a float32. With ``r`` uniform on the integers
    ``[0, 2^16)`` (four per 64-bit draw of the generator), ``bits(x) + r`` with its low 16 bits
    masked off is ``x`` truncated toward zero when the dropped remainder ``d`` (an integer in
    ``[0, 2^16)``) satisfies ``d + r < 2^16``, and the next bfloat16 away from zero otherwise,
    which happens with probability ``d / 2^16``: the
    magnitude rounds up with probability proportional to the remainder, so the rounding is unbiased
    for either sign (float32 is sign-magnitude). A carry into the exponent gives the next binade's
    first value, as it should. The masked float32 converts to bfloat16 exactly.

    ``x`` is first taken to float32 (round to nearest, if it is float64). NaN and +-inf are returned
    unchanged; a finite value within one bfloat16 ulp of the largest float32 may round to inf.
    Random bits come from ``generator``, or from torch's global RNG for ``x``'s device when None (so
    a run that saves and restores the RNG state is reproducible).

    Args:
        x: a floating-point tensor.
        dtype: the target dtype; only ``torch.bfloat16`` is supported.
        generator: a torch.Generator on ``x``'s device, or None for the global one.

    Returns:
        A bfloat16 tensor of ``x``'s shape, each element one of the two bfloat16 neighbours of ``x``.
    """
    if dtype != torch.bfloat16:
        raise ValueError(f"dtype must be torch.bfloat16 (float16 has a different layout), got {dtype!r}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    x32 = x.detach().to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    return _stochastic_round_float32_(x32, generator)


def _stochastic_round_float32_(x32: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`stochastic_round` of a float32 tensor, using ``x32`` as scratch (it is overwritten)."""
    n = x32.numel()
    # four 16-bit draws per 64-bit one: the CPU generator's cost is per draw, not per bit
    draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x32.device)
    draws.random_(-(1 << 63), None, generator=generator)  # the full 64-bit range
    noise = draws.view(torch.int16)[:n].view(x32.shape).to(torch.int32).add_(1 << 15)  # uniform on [0, 2^16)
    bits = x32.view(torch.int32)
    # NaN (|bits| > 0x7F800000) keeps its bits: keep is 0 there and all ones elsewhere. (inf needs no
    # care: its low 16 bits are zero and the mask removes the noise again.) Integer ops only: on CPU
    # they are several times faster than isnan/where, which write bools.
    keep = (bits & 0x7FFFFFFF).sub_(0x7F800001).bitwise_right_shift_(31)
    bits.add_(noise.bitwise_and_(keep)).bitwise_and_(keep.bitwise_not_().bitwise_or_(_LOW_MASK))
    return x32.to(torch.bfloat16)  # exact: the low 16 bits are zero (or it is NaN)


def ulp(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Spacing of ``dtype``'s representable values at the magnitude of each element of ``x``.

    ``ulp(x) = 2^(floor(log2|x|) - p)``, with ``p`` the stored mantissa bits (7 for bfloat16, 10 for
    float16, 23 for float32, 52 for float64): the gap between ``|x|`` and the next number away from
    zero. Below the smallest normal number (zero included) the spacing is that of the subnormals,
    ``tiny * 2^-p``. NaN gives NaN and +-inf gives inf.

    Args:
        x: a floating-point tensor.
        dtype: the format whose spacing is wanted; ``x.dtype`` when None.

    Returns:
        A float32 tensor (float64 when ``dtype`` is float64) of ``x``'s shape.
    """
    dtype = x.dtype if dtype is None else dtype
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype!r}")
    info = torch.finfo(dtype)
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    mag = x.detach().to(torch.float64).abs()
    _, exponent = torch.frexp(mag)  # mag = m * 2^exponent, m in [0.5, 1): floor(log2 mag) = exponent - 1
    spacing = torch.ldexp(torch.full_like(mag, info.eps), exponent - 1)
    spacing = torch.where(mag < info.smallest_normal, torch.full_like(mag, info.smallest_normal * info.eps), spacing)
    spacing = torch.where(torch.isinf(mag), torch.full_like(mag, math.inf), spacing)
    spacing = torch.where(torch.isnan(mag), mag, spacing)
    return spacing.to(out_dtype)


def decay_changes_fraction(x: torch.Tensor, shrink: float) -> float:
    """Fraction of the elements of ``x`` that one decay step ``x*(1 - shrink)``, rounded to nearest in
    ``x.dtype``, changes at all. Zero for bfloat16 at ``shrink < 2^-9``, except subnormals."""
    x = x.detach()
    if x.numel() == 0:
        return 0.0
    return float((x.mul(1.0 - shrink) != x).double().mean())


def _as_list(weights: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(weights, torch.Tensor):
        return [weights]
    weights = list(weights)
    if not weights or not all(isinstance(w, torch.Tensor) for w in weights):
        raise ValueError("weights must be a tensor or a non-empty list of tensors")
    return weights


def _norm64(params: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(p.detach().double().square().sum()) for p in params))


def applied_decay(weights: torch.Tensor | Sequence[torch.Tensor], lr: float, weight_decay: float, *,
                  optimizer: str = "adam", bf16_update: str = "nearest", dtype: torch.dtype = torch.bfloat16,
                  steps: int = 100, decay: str = "decoupled", impl: str = "auto",
                  seed: int | None = 0) -> dict[str, Any]:
    """The per-step weight decay an optimizer really applies to weights stored in ``dtype``.

    ``weights`` (a tensor or a list of them, e.g. a trained model's matrices) are copied into
    ``dtype`` (round to nearest) and stepped ``steps`` times by :class:`wdlib.optim.Adam`,
    :class:`wdlib.optim.SGD` (no momentum) or ``torch.optim.AdamW`` (``optimizer="torch.adamw"``, its
    own kernel choice; on CPU a per-tensor ``p.mul_(1 - lr*wd)``) with the given ``lr``, ``weight_decay``, ``decay``,
    ``impl`` and ``bf16_update``, on **zero gradients**: Adam's moments stay exactly zero, so its
    update is exactly zero too, and the decay is the only change. Then, from the stored
    (low-precision) values, in float64::

        requested          = s = decay_factor(group)  (lr*lambda decoupled; lambda independent; lr*lambda l2-SGD)
        applied            = 1 - (||w_steps|| / ||w_0||)^(1/steps)
        ratio              = applied / requested
        applied_first_step = 1 - ||w_1|| / ||w_0||
        changed_first_step = fraction of elements with w_1 != w_0

    Exact arithmetic gives ``applied = requested`` and ``ratio = 1``. With "master" the stored
    weights lag the float32 master by under half an ulp, which the measurement over ``steps``
    averages out. ``decay="l2"`` is accepted for SGD only (under Adam the penalty's gradient is
    normalised, not a shrink). The stochastic remedy draws from torch's global RNG: with ``seed``
    not None the call runs on a forked RNG seeded with it, leaving the caller's RNG state untouched.

    Returns:
        A dict with ``requested``, ``applied``, ``ratio``, ``applied_first_step``,
        ``changed_first_step`` and the settings (``optimizer``, ``bf16_update``, ``dtype``,
        ``steps``, ``lr``, ``weight_decay``, ``decay``, ``numel``).

    Used by chapter 5 (``notebooks/05_llm_regime.ipynb``), claim LLM-7.
    """
    from wdlib.optim import SGD, Adam, decay_factor  # here: wdlib.optim imports this module

    if optimizer not in ("adam", "sgd", "torch.adamw"):
        raise ValueError(f"optimizer must be 'adam', 'sgd' or 'torch.adamw', got {optimizer!r}")
    if optimizer == "torch.adamw" and (bf16_update != "nearest" or decay != "decoupled"):
        raise ValueError("optimizer='torch.adamw' is torch's own AdamW: bf16_update must be 'nearest' and decay "
                         "'decoupled'")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if optimizer == "adam" and decay == "l2":
        raise ValueError("decay must be 'decoupled' or 'independent' with optimizer='adam': an L2 penalty's "
                         "gradient is normalised by Adam, not a per-step shrink")
    params = [torch.nn.Parameter(w.detach().to(dtype=dtype, copy=True)) for w in _as_list(weights)]
    if optimizer == "torch.adamw":  # impl "auto": torch's own default; "foreach" / "fused" force that kernel
        kernel = {"auto": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}.get(impl)
        if kernel is None:
            raise ValueError(f"impl must be 'auto', 'foreach' or 'fused', got {impl!r}")
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kernel)
        requested = lr * weight_decay
    else:
        cls = Adam if optimizer == "adam" else SGD
        opt = cls(params, lr=lr, weight_decay=weight_decay, decay=decay, impl=impl, bf16_update=bf16_update)
        requested = decay_factor(opt.param_groups[0])
    if decay == "l2":
        requested = lr * weight_decay  # SGD without momentum: g + lambda*theta with g = 0

    def run() -> tuple[float, float, float, float]:
        first = [p.detach().clone() for p in params]
        norm0 = _norm64(params)
        changed = n1 = 0.0
        for t in range(steps):
            for p in params:
                p.grad = torch.zeros_like(p)
            opt.step()
            if t == 0:
                changed = sum(float((p.detach() != f).sum()) for p, f in zip(params, first))
                n1 = _norm64(params)
        return norm0, n1, _norm64(params), changed

    if seed is None:
        norm0, norm1, norm_t, changed = run()
    else:
        devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            norm0, norm1, norm_t, changed = run()
    numel = sum(p.numel() for p in params)
    applied = 1.0 - (norm_t / norm0) ** (1.0 / steps) if norm0 > 0 else float("nan")
    return {
        "requested": requested,
        "applied": applied,
        "ratio": applied / requested if requested != 0 else float("nan"),
        "applied_first_step": 1.0 - norm1 / norm0 if norm0 > 0 else float("nan"),
        "changed_first_step": changed / numel,
        "optimizer": optimizer,
        "bf16_update": bf16_update,
        "dtype": str(dtype).removeprefix("torch."),
        "steps": steps,
        "lr": lr,
        "weight_decay": weight_decay,
        "decay": decay,
        "numel": numel,
    }


# --- is bfloat16 fast here? -----------------------------------------------------------------------------

#: bfloat16 counts as fast on a device when its matmul throughput is at least this fraction of float32's.
FAST_BF16_RATIO = 0.5


def _device(device: str | torch.device) -> torch.device:
    from .runtime import resolve_device  # "auto" -> CUDA when available, else CPU

    return resolve_device(device)


def _best_gflops(a: torch.Tensor, b: torch.Tensor, budget: float, repeats: int) -> float:
    """Best-of GFLOP/s of ``a @ b`` within about ``budget`` seconds: a first (warm-up) product, kept as the
    measurement when it alone used half the budget (a slow kernel: one-off setup costs little beside it),
    then up to ``repeats`` timed products while the budget lasts."""
    sync = torch.cuda.synchronize if a.device.type == "cuda" else (lambda: None)
    flops = 2.0 * a.shape[0] * a.shape[1] * b.shape[1]
    start = time.perf_counter()
    sync()
    a @ b
    sync()
    best = time.perf_counter() - start
    if best < budget / 2:
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            sync()
            best = min(best, time.perf_counter() - t0)
            if time.perf_counter() - start > budget:
                break
    return flops / max(best, 1e-9) / 1e9


@functools.lru_cache(maxsize=None)
def _matmul_speed(device: str, n: int) -> tuple[float, float]:
    dev = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a32 = torch.randn(n, n, generator=gen).to(dev)
    b32 = torch.randn(n, n, generator=gen).to(dev)
    f32 = _best_gflops(a32, b32, budget=0.15, repeats=5)
    bf = _best_gflops(a32.to(torch.bfloat16), b32.to(torch.bfloat16), budget=0.3, repeats=5)
    return f32, bf


def bf16_matmul_speed(device: str | torch.device = "cpu", n: int = 512) -> dict[str, Any]:
    """Measured throughput of an ``n x n`` matmul on ``device`` in float32 and in bfloat16.

    Best of a few products per dtype after a warm-up, within about half a second in all (a CPU that
    emulates bfloat16, at about 1 GFLOP/s, gets a single timed product). Measured once per process and
    device (cached): later calls return the same numbers. The threads are torch's current ones.

    Returns:
        A dict with ``device``, ``n``, ``float32_gflops``, ``bfloat16_gflops``, ``ratio`` (bfloat16 over
        float32) and ``fast`` (``ratio >= FAST_BF16_RATIO``; for CUDA see :func:`fast_bf16`).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    dev = _device(device)
    f32, bf = _matmul_speed(str(dev), n)
    ratio = bf / f32 if f32 > 0 else math.nan
    return {"device": str(dev), "n": n, "float32_gflops": f32, "bfloat16_gflops": bf, "ratio": ratio,
            "fast": bool(ratio >= FAST_BF16_RATIO)}


def fast_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether bfloat16 arithmetic is fast on ``device``: on CUDA, ``torch.cuda.is_bf16_supported()``;
    elsewhere, a bfloat16 matmul reaching at least ``FAST_BF16_RATIO`` of float32's throughput
    (:func:`bf16_matmul_speed`, measured once per process)."""
    dev = _device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bf16_matmul_speed(dev)["fast"]
