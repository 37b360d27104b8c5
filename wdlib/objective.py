"""The objective every run minimizes and evaluates: cross-entropy of the model's logits against the labels.

:func:`loss` is the loss of logits against targets: classification logits ``(N, C)`` against labels
``(N,)``, or a language model's ``(B, T, V)`` logits against next-token targets ``(B, T)``, flattened
to ``(B*T, V)`` so that the mean is per token. :func:`model_loss` is the training loop's loss of a model
on a batch (logits in float32), :func:`loss_and_correct` the summed loss and the number of right
predictions that :func:`evaluate` adds up over evaluation batches. The training loop
(:mod:`wdlib.train`) and the measures of a final model (:mod:`wdlib.measures`) compute it here and
nowhere else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["loss", "model_loss", "loss_and_correct", "evaluate"]


def _flat(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, y)`` with a language model's ``(B, T, V)`` logits and ``(B, T)`` targets flattened over tokens."""
    if logits.ndim == 3:
        return logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
    return logits, y


def loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``logits`` against the class indices ``y``: the mean (or ``reduction="sum"``, the sum)
    over samples, or over tokens for a language model's ``(B, T, V)`` logits.

    Computed in the logits' own dtype, as ``torch.nn.functional.cross_entropy`` of the flattened logits.
    """
    logits, y = _flat(logits, y)
    return F.cross_entropy(logits, y, reduction=reduction)


def model_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mean :func:`loss` of ``model`` on the batch ``(x, y)``, its logits cast to float32 first (under
    bfloat16 autocast or with bfloat16 parameters the softmax still runs in float32), as the training step
    computes it."""
    return loss(model(x).float(), y)


def loss_and_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed :func:`loss` of ``model`` on ``(x, y)`` (logits in float32) and the number of samples (or
    tokens) whose largest logit is the label, both as 0-dim tensors."""
    logits = model(x).float()
    return loss(logits, y, reduction="sum"), (logits.argmax(-1) == y).sum()


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], autocast: Callable[[], Any] | None = None
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over ``(x, y)`` batches (per token for language).

    The model runs in eval mode (its mode is restored after), each forward inside ``autocast()`` when
    given (a factory of the run's autocast context). The sums are taken in Python floats and divided by
    the number of labels seen: ``(0.0, 0.0)`` when there are no batches.
    """
    was_training = model.training
    model.eval()
    total, correct, count = 0.0, 0, 0
    for x, y in batches:
        with autocast() if autocast is not None else contextlib.nullcontext():
            summed, right = loss_and_correct(model, x, y)
        total += float(summed)
        correct += int(right)
        count += y.numel()
    model.train(was_training)
    return total / max(count, 1), correct / max(count, 1)
