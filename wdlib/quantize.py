"""Post-training weight quantization to a symmetric integer grid (chapter 1b, DEC-6).

Symmetric ("absmax") quantization with ``b`` bits maps a weight ``w`` to ``Q(w) = clamp(round(w/d), -q, q) * d``
with ``q = 2^(b-1) - 1`` levels on each side of zero and step ``d = max|w| / q``, the maximum taken over the
whole tensor (``granularity="tensor"``) or over each output channel, the slices along dimension 0
(``"channel"``). It is the weight half of the int8 recipes of Jacob et al. (CVPR 2018) and Nagel et al.,
"A White Paper on Neural Network Quantization" (arXiv 2106.08295), without activation quantization.

The distance of a weight to the grid is ``|w/d - round(w/d)|``, in units of the step: 0 on a grid point,
at most 0.5, and 0.25 on average for weights spread evenly between grid points. Source 002 says decoupled
decay pulls weights toward grid points; this is the number that would show it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

__all__ = ["GRANULARITIES", "grid_step", "quantize", "grid_distance", "quantize_state", "quantizable"]

GRANULARITIES = ("tensor", "channel")


def _check(bits: int, granularity: str) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an integer from 2 to 16, got {bits!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(map(repr, GRANULARITIES))}, got {granularity!r}")


def grid_step(w: torch.Tensor, bits: int = 8, granularity: str = "tensor") -> torch.Tensor:
    """The step ``d = max|w| / (2^(bits-1) - 1)``: a scalar, or one per output channel shaped to broadcast
    against ``w`` (``(C, 1, ..., 1)``). An all-zero tensor or channel gets step 1 (every weight is on the grid)."""
    _check(bits, granularity)
    levels = 2 ** (bits - 1) - 1
    a = w.detach().abs()
    top = a.amax() if granularity == "tensor" or w.ndim == 0 else a.reshape(w.shape[0], -1).amax(dim=1)
    step = torch.where(top > 0, top / levels, torch.ones_like(top))
    return step if granularity == "tensor" or w.ndim == 0 else step.reshape(-1, *([1] * (w.ndim - 1)))


def quantize(w: torch.Tensor, bits: int = 8, granularity: str = "tensor") -> torch.Tensor:
    """``Q(w) = clamp(round(w/d), -q, q) * d`` (dequantized, in ``w``'s dtype); see the module docstring."""
    d = grid_step(w, bits, granularity)
    levels = 2 ** (bits - 1) - 1
    return (torch.round(w.detach() / d).clamp(-levels, levels) * d).to(w.dtype)


def grid_distance(w: torch.Tensor, bits: int = 8, granularity: str = "tensor") -> torch.Tensor:
    """Per weight, ``|w/d - round(w/d)|`` in units of the step ``d`` (in [0, 0.5]; 0.25 for evenly spread weights)."""
    r = w.detach().double() / grid_step(w, bits, granularity).double()
    return (r - torch.round(r)).abs()


def quantizable(name: str, tensor: torch.Tensor) -> bool:
    """The default choice of what to quantize: floating-point tensors with two or more dimensions (the
    weights of linear, convolution and embedding layers); biases and normalization parameters stay float."""
    return tensor.is_floating_point() and tensor.ndim >= 2


def quantize_state(
    state: Mapping[str, torch.Tensor],
    bits: int = 8,
    granularity: str = "tensor",
    which: Callable[[str, torch.Tensor], bool] = quantizable,
) -> dict[str, torch.Tensor]:
    """A copy of a ``state_dict`` with the tensors ``which(name, tensor)`` selects quantized (dequantized back
    to their dtype, so the model loads it unchanged); everything else (buffers such as BatchNorm's running
    statistics included) is copied as it is."""
    _check(bits, granularity)
    return {k: quantize(v, bits, granularity) if which(k, v) else v.clone() for k, v in state.items()}
