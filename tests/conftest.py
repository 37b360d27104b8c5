"""Shared fixtures: a real model on real (offline) data, trained with any optimizer for N steps."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from wdlib.data import batches, mnist1d
from wdlib.models import MLP, flat_parameters


@pytest.fixture(scope="session")
def data():
    """MNIST-1D, 1,000 samples generated offline."""
    return mnist1d(1000, seed=0)


def train(
    data,
    make_opt: Callable,
    steps: int = 300,
    dtype: torch.dtype = torch.float32,
    make_sched: Callable | None = None,
    seed: int = 0,
    before_step: Callable | None = None,
) -> torch.Tensor:
    """Train an MLP 40-64-64-10 for ``steps`` steps (batches of 50, fixed order); return its flat parameters."""
    torch.manual_seed(seed)
    model = MLP(data.input_dim, 64, 2, data.num_classes).to(dtype)
    opt = make_opt(model.parameters())
    sched = make_sched(opt) if make_sched is not None else None
    gen = torch.Generator().manual_seed(seed + 1)
    for x, y in batches(data.x_train.to(dtype), data.y_train, 50, steps, gen):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if before_step is not None:
            before_step(model, opt)
        opt.step()
        if sched is not None:
            sched.step()
    return flat_parameters(model)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())
