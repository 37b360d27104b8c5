"""Rounding of floating-point tensors at the bit level: stochastic rounding to bfloat16 and the spacing of a format.

The low-level layer under :mod:`wdlib.optim` (its ``bf16_update="stochastic"`` step) and
:mod:`wdlib.precision` (which measures what rounding does to weight decay). Depends on torch only.

A bfloat16 number keeps 8 significant bits (7 stored): for ``|x|`` in ``[2^e, 2^(e+1))`` the spacing
of representable values is ``ulp(x) = 2^(e-7)`` (:func:`ulp`). :func:`stochastic_round` rounds float32
to bfloat16 up or down at random without bias, ``E[round(x)] = x``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["stochastic_round", "stochastic_round_float32_", "ulp"]

_LOW_MASK = -(1 << 16)  # int32 0xFFFF0000: keeps the sign, the exponent and bfloat16's 7 mantissa bits


def stochastic_round(
    x: torch.Tensor, dtype: torch.dtype = torch.bfloat16, generator: torch.Generator | None = None
) -> torch.Tensor:
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
    return stochastic_round_float32_(x32, generator)


def stochastic_round_float32_(x32: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
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
