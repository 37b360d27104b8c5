"""Optimizers where the weight-decay rule is a choice.

Three conventions for a weight decay ``lambda`` (argument ``weight_decay``), chosen with ``decay``:

``"l2"``
    Coupled L2 penalty: the gradient of ``(lambda/2)*||theta||^2`` is added to the gradient before
    the momentum or Adam statistics, ``g <- g + lambda*theta``. ``SGD(decay="l2")`` equals
    ``torch.optim.SGD(weight_decay=...)`` and ``Adam(decay="l2")`` equals
    ``torch.optim.Adam(weight_decay=...)``.
``"decoupled"``
    ``theta <- theta*(1 - lr_t*lambda)``, then the update. The convention of ``torch.optim.AdamW``,
    optax and Keras: the decay is multiplied by the current learning rate.
``"independent"``
    ``theta <- theta*(1 - s_t*lambda)``, then the update, where ``s_t = lr_t / lr_0`` is the schedule
    multiplier and ``lr_0`` the learning rate the optimizer was constructed with (kept in each param
    group as ``initial_lr``, the key torch's LR schedulers use). The original AdamW of Loshchilov &
    Hutter (arXiv 1711.05101, Alg. 2): lambda does not change when the peak learning rate does.
    ``lambda_independent = peak_lr * lambda_decoupled`` (see :func:`convert_weight_decay`).

Both optimizers run on torch's own multi-tensor kernels: the fused kernel where every parameter is
a floating-point tensor on a device that has one (CPU and CUDA), the ``_foreach`` kernel otherwise.
The independent convention is the lr-multiplied one with ``lambda / lr_0``; decoupled SGD scales the
parameters with one ``_foreach_mul_`` and then takes torch's SGD step without decay.

Used by every chapter; introduced in chapter 1 (``notebooks/01_l2_vs_decoupled.ipynb``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch.optim.adam import adam as _adam_functional
from torch.optim.adamw import adamw as _adamw_functional
from torch.optim.sgd import sgd as _sgd_functional

__all__ = [
    "DECAYS",
    "IMPLS",
    "SGD",
    "SGDW",
    "Adam",
    "AdamW",
    "convert_weight_decay",
    "decay_factor",
]

Decay = Literal["l2", "decoupled", "independent"]
DECAYS: tuple[str, ...] = ("l2", "decoupled", "independent")
IMPLS: tuple[str, ...] = ("auto", "fused", "foreach")
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FUSED_DEVICES = ("cpu", "cuda")


def _check_number(name: str, value: Any, *, low: float = 0.0, high: float | None = None,
                  high_open: bool = False) -> float:
    """Return ``value`` as a float or raise ValueError naming the argument and the allowed range."""
    allowed = f"a number >= {low}" if high is None else f"a number in [{low}, {high}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    value = float(value)
    ok = value >= low and (high is None or (value < high if high_open else value <= high))
    if not ok or value != value:  # NaN fails every comparison
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def _check_decay(decay: Any) -> str:
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {', '.join(repr(d) for d in DECAYS)}, got {decay!r}")
    return decay


def _check_impl(impl: Any) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(repr(i) for i in IMPLS)}, got {impl!r}")
    return impl


def convert_weight_decay(weight_decay: float, peak_lr: float, source: str, target: str) -> float:
    """Convert lambda between the lr-multiplied ("decoupled") and the "independent" convention.

    The decoupled rule shrinks by ``lr_t * lambda_d = peak_lr * s_t * lambda_d`` per step, the
    independent rule by ``s_t * lambda_i``; they agree when ``lambda_i = peak_lr * lambda_d``.
    Example: torch's AdamW with lr 1e-3 and weight_decay 0.1 is the paper's AdamW with 1e-4.
    (Loshchilov & Hutter, arXiv 1711.05101; MosaicML's DecoupledAdamW uses the independent one.)
    """
    peak_lr = _check_number("peak_lr", peak_lr)
    weight_decay = _check_number("weight_decay", weight_decay)
    for name, value in (("source", source), ("target", target)):
        if value not in ("decoupled", "independent"):
            raise ValueError(f"{name} must be 'decoupled' or 'independent' (an L2 penalty has no "
                             f"equivalent lambda under Adam), got {value!r}")
    if peak_lr == 0.0:
        raise ValueError("peak_lr must be > 0 to convert between conventions, got 0.0")
    if source == target:
        return weight_decay
    return weight_decay * peak_lr if target == "independent" else weight_decay / peak_lr


def decay_factor(group: dict[str, Any]) -> float:
    """The per-step shrink ``s`` of a param group, so that the decay is ``theta <- theta*(1 - s)``.

    ``lr*lambda`` for "decoupled", ``(lr/initial_lr)*lambda`` for "independent", and 0 for "l2"
    (whose decay goes through the gradient instead).
    """
    decay, wd, lr = group["decay"], group["weight_decay"], group["lr"]
    if decay == "decoupled":
        return lr * wd
    if decay == "independent":
        return lr / group["initial_lr"] * wd
    return 0.0


class _DecayOptimizer(torch.optim.Optimizer):
    """Shared plumbing: argument checks, ``initial_lr``, and the choice of kernel."""

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_number("lr", group["lr"])
        _check_number("weight_decay", group["weight_decay"])
        _check_decay(group["decay"])
        _check_impl(group["impl"])
        group.setdefault("initial_lr", group["lr"])
        if group["decay"] == "independent" and group["initial_lr"] == 0.0 and group["weight_decay"] != 0.0:
            raise ValueError("lr must be > 0 with decay='independent': the decay is scaled by lr_t / lr, "
                             "the schedule multiplier, which needs the constructed lr")

    @staticmethod
    def _use_fused(group: dict[str, Any], params: list[torch.Tensor]) -> bool:
        impl = group["impl"]
        fits = all(p.dtype in _FUSED_DTYPES and p.device.type in _FUSED_DEVICES and not p.is_sparse
                   for p in params)
        if impl == "fused" and not fits:
            raise ValueError("impl='fused' needs floating-point dense parameters on cpu or cuda; "
                             "use impl='auto' or 'foreach'")
        return impl != "foreach" and fits

    def _collect(self, group: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        params, grads = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            params.append(p)
            grads.append(p.grad)
        return params, grads


class SGD(_DecayOptimizer):
    """Stochastic gradient descent with heavy-ball or Nesterov momentum and a chosen decay rule.

    Update, with ``g`` the gradient, ``mu`` the momentum, ``b`` its buffer (torch's convention)::

        l2:          g <- g + lambda*theta;  b <- mu*b + g;  theta <- theta - lr*b
        decoupled:   theta <- theta*(1 - lr*lambda);            b <- mu*b + g;  theta <- theta - lr*b
        independent: theta <- theta*(1 - lr/initial_lr*lambda); b <- mu*b + g;  theta <- theta - lr*b

    (Nesterov uses ``g + mu*b`` in place of ``b`` in the last step.) Without momentum the three rules
    give the same iterates when ``lambda`` is matched; with momentum L2 feeds the decay through the
    buffer and decoupled decay does not (claim DEC-1, chapter 1).

    Args:
        params: parameters or param groups.
        lr: learning rate (>= 0).
        momentum: momentum factor in [0, 1).
        nesterov: Nesterov momentum (needs momentum > 0).
        weight_decay: lambda (>= 0).
        decay: "l2", "decoupled" or "independent".
        impl: "auto" (fused where it fits, else foreach), "fused" or "foreach".
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, decay: Decay = "decoupled", impl: str = "auto") -> None:
        lr = _check_number("lr", lr)
        momentum = _check_number("momentum", momentum, high=1.0, high_open=True)
        weight_decay = _check_number("weight_decay", weight_decay)
        _check_decay(decay)
        _check_impl(impl)
        if not isinstance(nesterov, bool):
            raise ValueError(f"nesterov must be True or False, got {nesterov!r}")
        if nesterov and momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0, got momentum=0.0")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        decay=decay, impl=impl)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """Take one step; ``closure`` re-evaluates the model and returns the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = self._collect(group)
            if not params:
                continue
            fused = self._use_fused(group, params)
            bufs = [self.state[p].get("momentum_buffer") for p in params]
            shrink = decay_factor(group)
            if shrink != 0.0:
                torch._foreach_mul_(params, 1.0 - shrink)
            _sgd_functional(
                params, grads, bufs,
                weight_decay=group["weight_decay"] if group["decay"] == "l2" else 0.0,
                momentum=group["momentum"], lr=group["lr"], dampening=0.0,
                nesterov=group["nesterov"], maximize=False,
                foreach=not fused, fused=fused,
            )
            if group["momentum"] != 0.0:
                for p, buf in zip(params, bufs):
                    self.state[p]["momentum_buffer"] = buf
        return loss


class Adam(_DecayOptimizer):
    """Adam (Kingma & Ba, arXiv 1412.6980) with a chosen decay rule; ``AdamW`` is the decoupled one.

    With ``m`` and ``v`` the bias-corrected first and second moments of the gradient ``g``::

        l2:          g <- g + lambda*theta;  theta <- theta - lr*m/(sqrt(v) + eps)
        decoupled:   theta <- theta*(1 - lr*lambda);            theta <- theta - lr*m/(sqrt(v) + eps)
        independent: theta <- theta*(1 - lr/initial_lr*lambda); theta <- theta - lr*m/(sqrt(v) + eps)

    Under "l2" the decay is divided by ``sqrt(v)``: weights with large gradients are decayed less
    (claim DEC-2, chapter 1). "decoupled" is ``torch.optim.AdamW``; "independent" is Loshchilov &
    Hutter's AdamW (arXiv 1711.05101).

    Args:
        params: parameters or param groups.
        lr: learning rate (>= 0).
        betas: (beta1, beta2), each in [0, 1).
        eps: term added to the denominator (>= 0).
        weight_decay: lambda (>= 0).
        decay: "l2", "decoupled" or "independent".
        impl: "auto" (fused where it fits, else foreach), "fused" or "foreach".
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decay: Decay = "decoupled",
                 impl: str = "auto") -> None:
        lr = _check_number("lr", lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), each in [0, 1), got {betas!r}")
        betas = (_check_number("betas[0]", betas[0], high=1.0, high_open=True),
                 _check_number("betas[1]", betas[1], high=1.0, high_open=True))
        eps = _check_number("eps", eps)
        weight_decay = _check_number("weight_decay", weight_decay)
        _check_decay(decay)
        _check_impl(impl)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decay=decay, impl=impl)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """Take one step; ``closure`` re-evaluates the model and returns the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = self._collect(group)
            if not params:
                continue
            fused = self._use_fused(group, params)
            exp_avgs, exp_avg_sqs, steps = [], [], []
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32,
                                                device=p.device if fused else torch.device("cpu"))
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                elif fused and state["step"].device != p.device:
                    state["step"] = state["step"].to(p.device)  # fused kernels want the step beside p
                elif not fused and state["step"].device.type != "cpu":
                    state["step"] = state["step"].cpu()
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
            beta1, beta2 = group["betas"]
            decay, wd = group["decay"], group["weight_decay"]
            if decay == "l2":
                functional, wd_arg = _adam_functional, wd
            else:  # lr-multiplied kernel; the independent rule divides lambda by the constructed lr
                functional = _adamw_functional
                wd_arg = wd if decay == "decoupled" else (wd / group["initial_lr"] if wd else 0.0)
            functional(
                params, grads, exp_avgs, exp_avg_sqs, [], steps,
                foreach=not fused, fused=fused,
                amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=wd_arg,
                eps=group["eps"], maximize=False,
            )
        return loss


class SGDW(SGD):
    """SGD with decoupled, lr-multiplied weight decay: ``SGD(..., decay="decoupled")``."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, impl: str = "auto") -> None:
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                         decay="decoupled", impl=impl)


class AdamW(Adam):
    """Adam with decoupled, lr-multiplied weight decay (``torch.optim.AdamW``); default lambda 1e-2."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, impl: str = "auto") -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decay="decoupled",
                         impl=impl)
