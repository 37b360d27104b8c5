"""A small, deterministic training loop for classification models.

Batches come from a ``torch.Generator`` seeded per run, so two runs with the same seed see the same
batches in the same order (how chapter 1 compares optimizers step for step). Hooks with
``before_step(step)`` / ``after_step(step)`` methods see every step (diagnostics such as
:class:`wdlib.diagnostics.ShrinkageProbe`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
try:  # a notebook widget where ipywidgets exists (Colab, Jupyter), plain text elsewhere: no IProgress warning
    import ipywidgets  # noqa: F401
    from tqdm.auto import tqdm
except ImportError:
    from tqdm import tqdm

from .data import Dataset, batches

__all__ = ["train_step", "evaluate", "History", "fit"]


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               hooks: Sequence[Any] = (), step: int = 0) -> float:
    """One optimizer step on the cross-entropy of ``model(x)`` against ``y``; returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    for h in hooks:
        h.before_step(step)
    opt.step()
    for h in hooks:
        h.after_step(step)
    return float(loss.detach())


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``."""
    was_training = model.training
    model.eval()
    logits = model(x)
    model.train(was_training)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(-1) == y).float().mean())


@dataclass
class History:
    """Per-step training loss and the periodic evaluations of a :func:`fit` run."""

    loss: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    wall_time: float = 0.0


def fit(model: nn.Module, opt: torch.optim.Optimizer, data: Dataset, steps: int, batch_size: int, seed: int,
        scheduler: Any = None, hooks: Sequence[Any] = (), eval_every: int = 0,
        progress: bool = False) -> History:
    """Train ``model`` for ``steps`` steps on ``data`` with batches drawn from ``seed``.

    ``scheduler.step()`` (a torch LR scheduler or :class:`wdlib.schedules.HyperparameterScheduler`)
    runs after each optimizer step. Evaluates on the test split every ``eval_every`` steps (0: only at
    the end).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    gen = torch.Generator().manual_seed(seed)
    hist = History()
    start = time.perf_counter()
    it = batches(data.x_train, data.y_train, batch_size, steps, gen)
    for step, (x, y) in enumerate(tqdm(it, total=steps, disable=not progress, mininterval=2.0, desc="train")):
        hist.loss.append(train_step(model, opt, x, y, hooks, step))
        if scheduler is not None:
            scheduler.step()
        if (eval_every and (step + 1) % eval_every == 0) or step + 1 == steps:
            tl, ta = evaluate(model, data.x_test, data.y_test)
            hist.eval_step.append(step + 1)
            hist.test_loss.append(tl)
            hist.test_acc.append(ta)
    hist.wall_time = time.perf_counter() - start
    return hist
