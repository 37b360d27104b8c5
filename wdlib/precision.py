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

from .optim import SGD, Adam, decay_factor, optimizer_spec
from .rounding import stochastic_round, ulp
from .runtime import resolve_device

__all__ = [
    "FAST_BF16_RATIO",
    "DecayOutsideKahanAdamW",
    "applied_decay",
    "bf16_matmul_speed",
    "decay_changes_fraction",
    "fast_bf16",
    "stochastic_round",
    "ulp",
]


#: The optimizers :func:`applied_decay` steps.
_APPLIED_OPTIMIZERS = ("adam", "sgd", "torch.adamw", "decay_outside_kahan")


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


class DecayOutsideKahanAdamW(torch.optim.Optimizer):
    """AdamW on low-precision weights with Kahan-compensated updates and the decay *outside* the compensation.

    A re-implementation of a placement some widely used bfloat16 optimizers chose (claim NEW-7, chapter 6),
    not their code: each step first multiplies the stored weights by ``1 - lr*lambda`` in their own dtype,
    rounding to nearest, and only then adds the Adam update through the Kahan buffer::

        p <- round(p * (1 - lr*lambda))                     # outside the compensation
        u = lr * m_hat / (sqrt(v_hat) + eps)                # float32 moments
        w = p + comp - u  (float32);  p <- round(w);  comp <- w - p

    At ``lr*lambda`` below about ``2^-9`` the first line changes no weight (:func:`decay_changes_fraction`),
    so the decay is lost however long the run. :class:`wdlib.optim.Adam` with ``bf16_update="kahan"`` puts
    the decay inside (``w = (p + comp)*(1 - lr*lambda) - u``), where it accumulates in ``comp``. Measured by
    :func:`applied_decay` (``optimizer="decay_outside_kahan"``). Float32 parameters run the same arithmetic
    without rounding.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < math.inf):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        super().__init__(
            params, dict(lr=float(lr), betas=tuple(betas), eps=float(eps), weight_decay=float(weight_decay))
        )

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """One step (``closure`` re-evaluates the loss, optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                    state["kahan_comp"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                g = p.grad.float()
                state["exp_avg"].lerp_(g, 1.0 - b1)
                state["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1.0 - b2)
                if wd != 0.0:
                    p.mul_(1.0 - lr * wd)  # in p's dtype: rounds to nearest, outside the compensation
                denom = (state["exp_avg_sq"] / (1.0 - b2**t)).sqrt_().add_(eps)
                w = p.float() + state["kahan_comp"].float()
                w.addcdiv_(state["exp_avg"], denom, value=-lr / (1.0 - b1**t))
                p.copy_(w)
                state["kahan_comp"].copy_(w - p.float())
        return loss


def applied_decay(
    weights: torch.Tensor | Sequence[torch.Tensor],
    lr: float,
    weight_decay: float,
    *,
    optimizer: str = "adam",
    bf16_update: str = "nearest",
    dtype: torch.dtype = torch.bfloat16,
    steps: int = 100,
    decay: str = "decoupled",
    impl: str = "auto",
    seed: int | None = 0,
) -> dict[str, Any]:
    """The per-step weight decay an optimizer really applies to weights stored in ``dtype``.

    ``weights`` (a tensor or a list of them, e.g. a trained model's matrices) are copied into
    ``dtype`` (round to nearest) and stepped ``steps`` times by :class:`wdlib.optim.Adam`,
    :class:`wdlib.optim.SGD` (no momentum), ``torch.optim.AdamW`` (``optimizer="torch.adamw"``, its
    own kernel choice; on CPU a per-tensor ``p.mul_(1 - lr*wd)``) or :class:`DecayOutsideKahanAdamW`
    (``optimizer="decay_outside_kahan"``: Kahan updates, the decay outside the compensation) with the
    given ``lr``, ``weight_decay``, ``decay``, ``impl`` and ``bf16_update``, on **zero gradients**:
    Adam's moments stay exactly zero, so its update is exactly zero too, and the decay is the only change.
    Then, from the stored (low-precision) values, in float64::

        requested          = s = decay_factor(group)  (lr*lambda decoupled, torch AdamW too; lambda independent;
                                                    lr*lambda l2-SGD, whose step on a zero gradient is that shrink)
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
    if optimizer not in _APPLIED_OPTIMIZERS:
        raise ValueError(
            f"optimizer must be one of {', '.join(repr(o) for o in _APPLIED_OPTIMIZERS)}, got {optimizer!r}"
        )
    outside = optimizer == "decay_outside_kahan"
    if outside and (decay != "decoupled" or bf16_update != "nearest" or impl != "auto"):
        raise ValueError(
            "optimizer 'decay_outside_kahan' takes decay='decoupled', bf16_update='nearest' (its Kahan buffer is "
            f"built in) and impl='auto', got decay={decay!r}, bf16_update={bf16_update!r}, impl={impl!r}"
        )
    # the registry's checks: the rule (torch.adamw follows 'decoupled' only) and bf16_update (wdlib's only)
    optimizer_spec(
        {
            "name": "torch.adamw" if outside else optimizer,
            "decay": decay,
            **({} if bf16_update == "nearest" else {"bf16_update": bf16_update}),
        }
    )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if optimizer == "adam" and decay == "l2":
        raise ValueError(
            "decay must be 'decoupled' or 'independent' with optimizer='adam': an L2 penalty's "
            "gradient is normalised by Adam, not a per-step shrink"
        )
    params = [torch.nn.Parameter(w.detach().to(dtype=dtype, copy=True)) for w in _as_list(weights)]
    if outside:
        opt: torch.optim.Optimizer = DecayOutsideKahanAdamW(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "torch.adamw":  # impl "auto": torch's own default; "foreach" / "fused" force that kernel
        kernel = {"auto": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}.get(impl)
        if kernel is None:
            raise ValueError(f"impl must be 'auto', 'foreach' or 'fused', got {impl!r}")
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kernel)
    else:
        cls = Adam if optimizer == "adam" else SGD
        opt = cls(params, lr=lr, weight_decay=weight_decay, decay=decay, impl=impl, bf16_update=bf16_update)
    group = opt.param_groups[0]
    if outside:
        group = {**group, "decay": "decoupled"}
    if decay == "l2":  # SGD without momentum on a zero gradient: theta - lr*lambda*theta, the decoupled shrink
        group = {**group, "decay": "decoupled"}
    requested = decay_factor(group, opt)

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


@functools.cache
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
    dev = resolve_device(device)
    f32, bf = _matmul_speed(str(dev), n)
    ratio = bf / f32 if f32 > 0 else math.nan
    return {
        "device": str(dev),
        "n": n,
        "float32_gflops": f32,
        "bfloat16_gflops": bf,
        "ratio": ratio,
        "fast": bool(ratio >= FAST_BF16_RATIO),
    }


def fast_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether bfloat16 arithmetic is fast on ``device``: on CUDA, ``torch.cuda.is_bf16_supported()``;
    elsewhere, a bfloat16 matmul reaching at least ``FAST_BF16_RATIO`` of float32's throughput
    (:func:`bf16_matmul_speed`, measured once per process)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bf16_matmul_speed(dev)["fast"]
