"""Models for the chapters, each sized by a few numbers so one class serves smoke and full scale."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Sequential):
    """``depth`` hidden layers of ``width`` units with ReLU: in_dim -> width -> ... -> out_dim.

    Used in chapter 1 on MNIST-1D (40 -> 100 -> 100 -> 10 at smoke scale).
    """

    def __init__(self, in_dim: int, width: int, depth: int, out_dim: int, bias: bool = True) -> None:
        for name, value in (("in_dim", in_dim), ("width", width), ("out_dim", out_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth must be an integer >= 0, got {depth!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        dims = [in_dim] + [width] * depth
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b, bias=bias), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], out_dim, bias=bias))
        super().__init__(*layers)


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """All parameters of ``model`` concatenated into one detached vector."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])
