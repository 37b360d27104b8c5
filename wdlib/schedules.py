"""Learning-rate and weight-decay schedules, a driver for an optimizer, and their moving-average view.

A schedule is a small frozen dataclass that maps a step ``s = 0, 1, 2, ...`` to a value; calling it
on an integer gives a float, on a NumPy array an array (so a whole run is evaluated at once).
``Warmup(inner, steps)`` ramps linearly to ``inner(0)`` and then runs ``inner`` shifted by ``steps``,
so any schedule can follow a warmup. :class:`HyperparameterScheduler` drives an optimizer's ``lr`` and
``weight_decay`` from two independent schedules.

The moving-average quantities follow Su, "Weight Decay and Learning Rate from a Moving Average
Perspective" (2025; seed 000): with the update ``theta_t = (1 - eta_t*lambda_t)*theta_{t-1} - eta_t*u_t``, ::

    theta_T = prod_{k<=T}(1 - eta_k*lambda_k) theta_0 - sum_i [eta_i prod_{k>i}(1 - eta_k*lambda_k)] u_i
            ~ exp(-kappa_T) (theta_0 - sum_i exp(kappa_i) eta_i u_i),   kappa_t = sum_{i<=t} eta_i*lambda_i.

Used in chapter 1 (warmup and cumulative decay, DEC-7) and the moving-average chapter (EMA-1..EMA-5).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "Constant",
    "Cosine",
    "LinearDecay",
    "WarmupStableDecay",
    "StepDrop",
    "InverseSqrt",
    "EqualContribution",
    "Warmup",
    "Delayed",
    "Schedule",
    "HyperparameterScheduler",
    "values",
    "kappa",
    "contribution_weights",
]

ArrayOrFloat = float | np.ndarray


def _steps(step: Any) -> np.ndarray:
    s = np.asarray(step, dtype=np.float64)
    if np.any(s < 0):
        raise ValueError(f"step must be >= 0, got {step!r}")
    return s


def _out(x: np.ndarray, step: Any) -> ArrayOrFloat:
    return float(x) if np.ndim(step) == 0 else x


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value != value
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        raise ValueError(f"{name} must be a number {'>= 0' if allow_zero else '> 0'}, got {value!r}")


class Schedule:
    """Base class: ``schedule(step)`` for an int gives a float, for an array an array."""

    def __call__(self, step: Any) -> ArrayOrFloat:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serializable description (``{"kind": ..., **fields}``)."""
        out: dict[str, Any] = {"kind": type(self).__name__}
        for key, value in asdict(self).items():  # type: ignore[call-overload]
            out[key] = value
        if isinstance(self, (Warmup, Delayed)):
            out["schedule"] = self.schedule.to_dict()
        return out


@dataclass(frozen=True)
class Constant(Schedule):
    """``value`` at every step."""

    value: float

    def __post_init__(self) -> None:
        _positive("value", self.value, allow_zero=True)

    def __call__(self, step: Any) -> ArrayOrFloat:
        s = _steps(step)
        return _out(np.full_like(s, self.value), step)


@dataclass(frozen=True)
class Cosine(Schedule):
    """``final + (peak - final) * (1 + cos(pi*s/steps)) / 2`` for ``s < steps``, then ``final``."""

    peak: float
    steps: int
    final: float = 0.0

    def __post_init__(self) -> None:
        _positive("peak", self.peak, allow_zero=True)
        _positive("steps", self.steps)
        _positive("final", self.final, allow_zero=True)

    def __call__(self, step: Any) -> ArrayOrFloat:
        s = np.minimum(_steps(step), self.steps)
        return _out(self.final + (self.peak - self.final) * 0.5 * (1.0 + np.cos(np.pi * s / self.steps)), step)


@dataclass(frozen=True)
class LinearDecay(Schedule):
    """``peak + (final - peak) * s/steps`` for ``s < steps``, then ``final``."""

    peak: float
    steps: int
    final: float = 0.0

    def __post_init__(self) -> None:
        _positive("peak", self.peak, allow_zero=True)
        _positive("steps", self.steps)
        _positive("final", self.final, allow_zero=True)

    def __call__(self, step: Any) -> ArrayOrFloat:
        s = np.minimum(_steps(step), self.steps)
        return _out(self.peak + (self.final - self.peak) * s / self.steps, step)


@dataclass(frozen=True)
class WarmupStableDecay(Schedule):
    """Stable at ``peak`` for ``steps - decay_steps`` steps, then linear to ``final`` over ``decay_steps``.

    The warmup part is :class:`Warmup` around this one; alone it is "stable then decay" (WSD without
    warmup), as in MiniCPM (arXiv 2404.06395).
    """

    peak: float
    steps: int
    decay_steps: int
    final: float = 0.0

    def __post_init__(self) -> None:
        _positive("peak", self.peak, allow_zero=True)
        _positive("steps", self.steps)
        _positive("decay_steps", self.decay_steps)
        _positive("final", self.final, allow_zero=True)
        if self.decay_steps > self.steps:
            raise ValueError(f"decay_steps must be <= steps ({self.steps}), got {self.decay_steps}")

    def __call__(self, step: Any) -> ArrayOrFloat:
        s = _steps(step)
        start = self.steps - self.decay_steps
        frac = np.clip((s - start) / self.decay_steps, 0.0, 1.0)
        return _out(self.peak + (self.final - self.peak) * frac, step)


@dataclass(frozen=True)
class StepDrop(Schedule):
    """``peak`` for the first ``drop_at`` steps, then ``final``: one LR drop, as in the vision runs of
    Andriushchenko et al. (arXiv 2310.04415: a large LR, then at half the epochs a small "flow" LR).

    ``eta_s = peak`` for ``s < drop_at``, ``final`` from then on.
    """

    peak: float
    drop_at: int
    final: float = 0.0

    def __post_init__(self) -> None:
        _positive("peak", self.peak, allow_zero=True)
        _positive("drop_at", self.drop_at, allow_zero=True)
        _positive("final", self.final, allow_zero=True)

    def __call__(self, step: Any) -> ArrayOrFloat:
        s = _steps(step)
        return _out(np.where(s < self.drop_at, self.peak, self.final), step)


@dataclass(frozen=True)
class EqualContribution(Schedule):
    """``eta_s = peak / (weight_decay*peak*s + 1)``: every step weighs the same in the final parameters.

    Solves ``lambda*eta_s + (d eta_s/ds)/eta_s = 0`` so that ``exp(kappa_s)*eta_s`` stays constant
    (Su 2025, seed 000, for a constant weight decay). Needs no total step count.
    """

    peak: float
    weight_decay: float

    def __post_init__(self) -> None:
        _positive("peak", self.peak)
        _positive("weight_decay", self.weight_decay, allow_zero=True)

    def __call__(self, step: Any) -> ArrayOrFloat:
        s = _steps(step)
        return _out(self.peak / (self.weight_decay * self.peak * s + 1.0), step)


@dataclass(frozen=True)
class InverseSqrt(Schedule):
    """``peak / sqrt(rate*s + 1)``.

    With ``rate = 2*lambda_max*eta_max`` and both the LR and the weight decay following it, every
    step weighs the same in the final parameters (Su 2025, seed 000, "WD proportional to LR"):
    ``eta_s*lambda_s = eta_max*lambda_max/(rate*s + 1)`` and ``d/ds log eta_s = -eta_s*lambda_s``.
    """

    peak: float
    rate: float

    def __post_init__(self) -> None:
        _positive("peak", self.peak)
        _positive("rate", self.rate, allow_zero=True)

    def __call__(self, step: Any) -> ArrayOrFloat:
        s = _steps(step)
        return _out(self.peak / np.sqrt(self.rate * s + 1.0), step)


@dataclass(frozen=True)
class Warmup(Schedule):
    """Linear warmup ``(s+1)/steps * schedule(0)`` for ``s < steps``, then ``schedule(s - steps)``.

    The ramp starts at ``schedule(0)/steps`` (not 0, so no step is wasted) and reaches
    ``schedule(0)`` at ``s = steps - 1``.
    """

    schedule: Schedule
    steps: int

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, Schedule):
            raise ValueError(f"schedule must be a wdlib.schedules.Schedule, got {self.schedule!r}")
        _positive("steps", self.steps)

    def __call__(self, step: Any) -> ArrayOrFloat:
        s = _steps(step)
        ramp = (s + 1.0) / self.steps * float(self.schedule(0))
        after = np.asarray(self.schedule(np.maximum(s - self.steps, 0.0)), dtype=np.float64)
        return _out(np.where(s < self.steps, ramp, after), step)


@dataclass(frozen=True)
class Delayed(Schedule):
    """0 for ``s < steps``, then ``schedule(s)``: e.g. weight decay switched on after the warmup."""

    schedule: Schedule
    steps: int

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, Schedule):
            raise ValueError(f"schedule must be a wdlib.schedules.Schedule, got {self.schedule!r}")
        _positive("steps", self.steps, allow_zero=True)

    def __call__(self, step: Any) -> ArrayOrFloat:
        s = _steps(step)
        inner = np.asarray(self.schedule(s), dtype=np.float64)
        return _out(np.where(s < self.steps, 0.0, inner), step)


def values(schedule: Schedule, steps: int) -> np.ndarray:
    """The schedule at steps ``0 .. steps-1`` as a float64 array."""
    _positive("steps", steps)
    return np.asarray(schedule(np.arange(steps)), dtype=np.float64)


class HyperparameterScheduler:
    """Drive an optimizer's ``lr`` and ``weight_decay`` from two independent schedules.

    At step ``t`` each param group gets ``lr = lr_schedule(t) * group.get("lr_mult", 1)`` and
    ``weight_decay = wd_schedule(t) * group.get("wd_mult", 1)`` (a schedule left as ``None`` leaves that
    value alone). Call :meth:`step` after each ``optimizer.step()``, as with torch's LR schedulers.
    With ``decay="independent"`` the optimizer's decay follows ``lr_t / reference_lr`` (the LR it was
    constructed with): construct it with the peak LR.
    """

    def __init__(self, optimizer: Any, lr: Schedule | None = None, weight_decay: Schedule | None = None) -> None:
        for name, sched in (("lr", lr), ("weight_decay", weight_decay)):
            if sched is not None and not isinstance(sched, Schedule):
                raise ValueError(f"{name} must be a wdlib.schedules.Schedule or None, got {sched!r}")
        self.optimizer = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.step_count = 0
        self._apply()

    def _apply(self) -> None:
        t = self.step_count
        lr = None if self.lr is None else float(self.lr(t))
        wd = None if self.weight_decay is None else float(self.weight_decay(t))
        for group in self.optimizer.param_groups:
            if lr is not None:
                group["lr"] = lr * group.get("lr_mult", 1.0)
            if wd is not None:
                group["weight_decay"] = wd * group.get("wd_mult", 1.0)

    def step(self) -> None:
        """Advance one step and set the new values on the optimizer."""
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self._apply()


def kappa(lr: Any, weight_decay: Any) -> np.ndarray:
    """Cumulative decay ``kappa_t = sum_{i<=t} eta_i*lambda_i`` for per-step arrays (or a scalar wd).

    ``exp(-kappa_t)`` is how much of ``theta_0`` survives to step t under lr-multiplied decay.
    """
    eta = np.asarray(lr, dtype=np.float64)
    lam = np.broadcast_to(np.asarray(weight_decay, dtype=np.float64), eta.shape)
    return np.cumsum(eta * lam)


def contribution_weights(lr: Any, weight_decay: Any, exact: bool = True) -> tuple[np.ndarray, float]:
    """Weight of each step's update ``u_i`` in the final parameters, and the weight of ``theta_0``.

    Exact for the update ``theta_t = (1 - eta_t*lambda_t) theta_{t-1} - eta_t*u_t``:
    ``w_i = eta_i * prod_{k>i} (1 - eta_k*lambda_k)`` and ``w_0 = prod_k (1 - eta_k*lambda_k)``.
    With ``exact=False``, Su's continuous form ``w_i = eta_i*exp(-(kappa_T - kappa_i))``,
    ``w_0 = exp(-kappa_T)``.
    """
    eta = np.asarray(lr, dtype=np.float64)
    lam = np.broadcast_to(np.asarray(weight_decay, dtype=np.float64), eta.shape)
    if exact:
        shrink = eta * lam
        if np.any(shrink >= 1.0):
            raise ValueError("lr*weight_decay must be < 1 at every step for the exact weights")
        log_keep = np.log1p(-shrink)
        suffix = np.concatenate([np.cumsum(log_keep[::-1])[::-1][1:], [0.0]])  # sum_{k>i} log(1 - s_k)
        return eta * np.exp(suffix), float(math.exp(log_keep.sum()))
    k = kappa(eta, lam)
    return eta * np.exp(-(k[-1] - k)), float(math.exp(-k[-1]))
