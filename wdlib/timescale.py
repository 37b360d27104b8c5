"""The moving-average timescales of AdamW and the transfer of lambda across dataset size and width.

With lr-multiplied decoupled decay, the weights are an exponential moving average of the updates
with per-step weight ``eta*lambda`` (Su 2025, seed 000; Wang & Aitchison, arXiv 2405.13698, seed 001)::

    tau_iter  = 1 / (eta * lambda)                       iterations
    tau_epoch = tau_iter / (N / B) = B / (eta * lambda * N)   epochs, N samples, batch size B

(The 001 summary prints ``1/(eta^2*lambda*M)``; from ``tau_iter`` and ``M = N/B`` iterations per epoch
the right form is the one above.) Wang & Aitchison's rule: hold ``tau_epoch`` fixed as N grows, so the
optimal lambda falls like 1/N; under muP, where the hidden-layer LR scales like 1/fan_in, scale lambda
like fan_in so that ``eta*lambda`` stays fixed.

The end-of-training rise of the gradient norm (NEW-1; Defazio et al., arXiv 2506.02285) is the same
timescale read against the schedule: :func:`gradient_rise` says whether ``tau_iter`` is short enough for
the steady state ``||g||/||w|| = sqrt(2*lambda/eta_t)`` of normalized layers to follow a falling LR.

Used by chapter 1 (conventions) and the scaling chapter (SCALE-1..3); ``python -m wdlib tau`` prints it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ._checks import as_real, short_repr

__all__ = [
    "tau_iter",
    "tau_epoch",
    "weight_decay_for",
    "Transfer",
    "transfer_weight_decay",
    "GradientRise",
    "RISE_SCHEDULES",
    "gradient_rise",
]


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


#: The LR schedules :func:`gradient_rise` knows (the per-step values of :mod:`wdlib.schedules`' classes).
RISE_SCHEDULES: tuple[str, ...] = ("constant", "cosine", "linear")

#: ``rise_expected`` needs ``tau_iter`` at the peak LR at most this fraction of the run (a rule of thumb).
RISE_TAU_FRACTION = 0.1


@dataclass(frozen=True)
class GradientRise:
    """What :func:`gradient_rise` predicts for one run; the fields are documented there."""

    lr: float
    weight_decay: float
    steps: int
    schedule: str
    final_lr_fraction: float
    tau_iter: float
    tau_fraction: float
    ratio_peak: float
    track_step: int | None
    track_lr_fraction: float | None
    ratio_at_track: float | None
    rise_factor: float | None
    rise_expected: bool
    corrected_ratio: float
    corrected_track_step: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _lr_fraction(schedule: str, final: float, t: int, steps: int) -> float:
    """``eta_t/eta_max`` at step ``t`` (``t < steps``): :class:`wdlib.schedules.Cosine`/``LinearDecay``'s form."""
    u = t / steps
    if schedule == "cosine":
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * u))
    if schedule == "linear":
        return 1.0 + (final - 1.0) * u
    return 1.0


def _last_tracked(steps: int, tau: Any) -> int | None:
    """The last step ``t`` in ``[0, steps)`` with ``tau(t) <= steps - t``, or None when even step 0 fails.

    ``tau(t)`` is non-decreasing for the schedules here (the LR does not rise), ``steps - t`` falls, so the
    condition holds on a prefix of the steps: bisection on the integer steps finds its end.
    """
    if not tau(0) <= steps:
        return None
    lo, hi = 0, steps - 1  # the condition holds at lo; find the last step where it holds
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tau(mid) <= steps - mid:
            lo = mid
        else:
            hi = mid - 1
    return lo


def gradient_rise(
    lr: float, weight_decay: float, steps: int, schedule: str = "cosine", final_lr_fraction: float = 0.0
) -> GradientRise:
    """Whether the end-of-training rise of the gradient norm (NEW-1) is expected, and how large it gets.

    For a normalized (scale-invariant) layer under SGD with decoupled decay, the weight norm settles where
    the decay's shrink balances the growth from the orthogonal updates, which gives the steady state
    (Defazio et al. 2025, arXiv 2506.02285)::

        ||g_t|| / ||w_t|| = sqrt(2 * lambda / eta_t)

    As the LR falls to zero the steady ratio grows without bound, but the weights can only follow it
    while the equilibration time ``tau_iter(t) = 1/(eta_t*lambda)`` is short compared with what is left of
    the run. The tracked rise is read at ``track_step``, the last step ``t`` with ``tau_iter(t) <= steps -
    t`` (found on the schedule's per-step values ``eta_t = lr * s(t/steps)``, :mod:`wdlib.schedules`'
    ``Cosine``/``LinearDecay`` forms with ``final = final_lr_fraction``). Fields of :class:`GradientRise`:

    ``tau_iter``, ``tau_fraction``
        ``1/(lr*lambda)`` at the peak LR, and as a fraction of ``steps``.
    ``ratio_peak``
        ``sqrt(2*lambda/lr)``, the steady ratio at the peak LR.
    ``track_step``, ``track_lr_fraction``, ``ratio_at_track``, ``rise_factor``
        the last tracked step, ``eta_t/lr`` there, ``sqrt(2*lambda/eta_t)`` there, and its rise over the
        peak, ``sqrt(lr/eta_t)`` (1 for a constant LR: the ratio is flat). None when ``tau_iter`` at the
        peak is already longer than the run: no equilibrium is reached.
    ``rise_expected``
        ``tau_iter <= steps/10`` and an LR that falls (not "constant", ``final_lr_fraction < 1``). The
        threshold is a rule of thumb, not a derivation: after ``3*tau_iter`` the initial weights' share
        is ``e^-3 = 5%``, so at ``tau_iter <= steps/10`` the equilibrium is reached within the first third
        of the run; and for cosine to zero it is tracked until about 64% of the run, where the LR is down to
        28% of its peak and the tracked ratio has risen 1.9 times: a rise large enough to see.
    ``corrected_ratio``, ``corrected_track_step``
        the "corrected" rule's counterpart (``lambda_t = lambda*eta_t/eta_max``): its steady ratio
        ``sqrt(2*lambda_t/eta_t) = sqrt(2*lambda/lr)`` is flat through the schedule, which is how it removes
        the rise; its timescale ``lr/(eta_t^2*lambda)`` grows faster, so it tracks until ``corrected_track_step``.

    Example: ``gradient_rise(0.1, 5e-4, 50_000)`` (SGD on CIFAR-scale runs): ``tau_iter = 20,000`` steps,
    40% of the run: no rise expected (1.2 times at most); with ``weight_decay=5e-3``, 4% and a rise of 2.5 times.
    """
    lr, weight_decay = _pos("lr", lr), _pos("weight_decay", weight_decay)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {short_repr(steps)}")
    if not isinstance(schedule, str) or schedule not in RISE_SCHEDULES:
        raise ValueError(
            f"schedule must be one of {', '.join(repr(s) for s in RISE_SCHEDULES)}, got {short_repr(schedule)}"
        )
    final = as_real(final_lr_fraction)
    if final is None or not 0.0 <= final <= 1.0:
        raise ValueError(f"final_lr_fraction must be a number in [0, 1], got {short_repr(final_lr_fraction)}")
    tau = tau_iter(lr, weight_decay)

    def frac(t: int) -> float:
        return _lr_fraction(schedule, final, t, steps)

    def tau_at(t: int) -> float:
        f = frac(t)
        return math.inf if f <= 0.0 else tau / f

    def tau_corrected(t: int) -> float:
        f = frac(t)
        return math.inf if f <= 0.0 else tau / (f * f)

    ratio_peak = math.sqrt(2.0 * weight_decay / lr)
    track = _last_tracked(steps, tau_at)
    track_frac = None if track is None else frac(track)
    return GradientRise(
        lr=lr,
        weight_decay=weight_decay,
        steps=steps,
        schedule=schedule,
        final_lr_fraction=final,
        tau_iter=tau,
        tau_fraction=tau / steps,
        ratio_peak=ratio_peak,
        track_step=track,
        track_lr_fraction=track_frac,
        ratio_at_track=None if track_frac is None else ratio_peak / math.sqrt(track_frac),
        rise_factor=None if track_frac is None else 1.0 / math.sqrt(track_frac),
        rise_expected=tau <= RISE_TAU_FRACTION * steps and schedule != "constant" and final < 1.0,
        corrected_ratio=ratio_peak,
        corrected_track_step=_last_tracked(steps, tau_corrected),
    )
