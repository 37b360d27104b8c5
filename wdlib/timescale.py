"""The moving-average timescales of AdamW and the transfer of lambda across dataset size and width.

With lr-multiplied decoupled decay, the weights are an exponential moving average of the updates
with per-step weight ``eta*lambda`` (Su 2025, seed 000; Wang & Aitchison, arXiv 2405.13698, seed 001)::

    tau_iter  = 1 / (eta * lambda)                       iterations
    tau_epoch = tau_iter / (N / B) = B / (eta * lambda * N)   epochs, N samples, batch size B

(The 001 summary prints ``1/(eta^2*lambda*M)``; from ``tau_iter`` and ``M = N/B`` iterations per epoch
the right form is the one above.) Wang & Aitchison's rule: hold ``tau_epoch`` fixed as N grows, so the
optimal lambda falls like 1/N; under muP, where the hidden-layer LR scales like 1/fan_in, scale lambda
like fan_in so that ``eta*lambda`` stays fixed.

Used by chapter 1 (conventions) and the scaling chapter (SCALE-1..3); ``python -m wdlib tau`` prints it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ._checks import as_real, short_repr

__all__ = ["tau_iter", "tau_epoch", "weight_decay_for", "Transfer", "transfer_weight_decay"]


def _pos(name: str, value: Any) -> float:
    """``value`` as a finite float > 0 (Python numbers, numpy scalars, 0-d tensors), else ValueError naming it."""
    x = as_real(value)
    if x is None or not (0 < x < math.inf):
        raise ValueError(f"{name} must be a finite number > 0, got {short_repr(value)}")
    return x


def _finite(name: str, value: float, *inputs: tuple[str, Any]) -> float:
    """``value`` when it is a finite number > 0; else ValueError saying which inputs put it out of range."""
    if not (_TINY <= value < math.inf):
        given = ", ".join(f"{n}={short_repr(v)}" for n, v in inputs)
        raise ValueError(
            f"{name} is out of range for {given}: it must be a finite number > 0 (between "
            f"{_TINY:g} and {_HUGE:g}), and these inputs make it {value!r}"
        )
    return value


_TINY, _HUGE = 2.2250738585072014e-308, 1.7976931348623157e308  # the normal float64 range


def tau_iter(lr: float, weight_decay: float) -> float:
    """``tau_iter = 1/(lr*weight_decay)``: the EMA timescale in iterations (seed 000, 001)."""
    lr, weight_decay = _pos("lr", lr), _pos("weight_decay", weight_decay)
    inputs = (("lr", lr), ("weight_decay", weight_decay))
    return _finite("tau_iter", 1.0 / _finite("lr*weight_decay", lr * weight_decay, *inputs), *inputs)


def tau_epoch(lr: float, weight_decay: float, dataset_size: int, batch_size: int) -> float:
    """``tau_epoch = batch_size/(lr*weight_decay*dataset_size)``: the EMA timescale in epochs (arXiv 2405.13698)."""
    b, n = _pos("batch_size", batch_size), _pos("dataset_size", dataset_size)
    steps_per_epoch = _finite("dataset_size/batch_size", n / b, ("dataset_size", n), ("batch_size", b))
    return _finite(
        "tau_epoch",
        tau_iter(lr, weight_decay) / steps_per_epoch,
        ("lr", lr),
        ("weight_decay", weight_decay),
        ("dataset_size", n),
        ("batch_size", b),
    )


def weight_decay_for(tau_epoch: float, lr: float, dataset_size: int, batch_size: int) -> float:
    """The lambda that gives ``tau_epoch``: ``batch_size/(lr*tau_epoch*dataset_size)``."""
    b, n = _pos("batch_size", batch_size), _pos("dataset_size", dataset_size)
    inputs = (("tau_epoch", tau_epoch), ("lr", lr), ("dataset_size", n), ("batch_size", b))
    per_sample = _finite(
        "lr*tau_epoch*dataset_size/batch_size", _pos("lr", lr) * _pos("tau_epoch", tau_epoch) * (n / b), *inputs
    )
    return _finite("weight_decay", 1.0 / per_sample, *inputs)


@dataclass(frozen=True)
class Transfer:
    """A transferred setting: the LR and weight decay to use at the target, and their timescales."""

    lr: float
    weight_decay: float
    tau_iter: float
    tau_epoch: float
    dataset_size: int
    batch_size: int
    width: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def transfer_weight_decay(
    lr: float,
    weight_decay: float,
    dataset_size: int,
    batch_size: int,
    *,
    to_dataset_size: int | None = None,
    to_batch_size: int | None = None,
    width: float | None = None,
    to_width: float | None = None,
    mup: bool = False,
) -> Transfer:
    """Transfer a tuned ``(lr, weight_decay)`` to another dataset size, batch size or width.

    ``tau_epoch`` is held fixed (Wang & Aitchison, arXiv 2405.13698). Across width, with ``mup=True``
    the (hidden-layer) LR becomes ``lr * width/to_width`` and lambda grows by ``to_width/width`` so that
    ``lr*lambda`` is unchanged; without muP the LR is kept and so is lambda. The batch size is kept
    unless ``to_batch_size`` is given (then lambda scales with it at fixed LR).

    Example: lr 1e-3, wd 0.1 tuned on 50,000 samples at batch 128 -> on 200,000 samples wd 0.025.
    """
    lr = _pos("lr", lr)
    weight_decay = _pos("weight_decay", weight_decay)
    n0, b0 = _pos("dataset_size", dataset_size), _pos("batch_size", batch_size)
    n1 = n0 if to_dataset_size is None else _pos("to_dataset_size", to_dataset_size)
    b1 = b0 if to_batch_size is None else _pos("to_batch_size", to_batch_size)
    if (width is None) != (to_width is None):
        raise ValueError("width and to_width must be given together (both or neither)")
    if mup and width is None:
        raise ValueError("mup=True needs width and to_width")
    lr1 = lr
    w1 = None
    if width is not None:
        w0, w1 = _pos("width", width), _pos("to_width", to_width)
        if mup:
            lr1 = lr * w0 / w1
    target_tau = tau_epoch(lr, weight_decay, n0, b0)
    wd1 = weight_decay_for(target_tau, lr1, n1, b1)
    return Transfer(
        lr=lr1,
        weight_decay=wd1,
        tau_iter=tau_iter(lr1, wd1),
        tau_epoch=target_tau,
        dataset_size=int(n1),
        batch_size=int(b1),
        width=w1,
    )
