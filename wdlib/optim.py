"""Optimizers where the weight-decay rule is a choice.

Four conventions for a weight decay ``lambda`` (argument ``weight_decay``), chosen with ``decay``:

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
    group as ``reference_lr``, a key of wdlib's own: torch's ``initial_lr`` is rewritten by some LR
    schedulers, ``OneCycleLR`` sets it to ``max_lr / 25``). The original AdamW of Loshchilov &
    Hutter (arXiv 1711.05101, Alg. 2): lambda does not change when the peak learning rate does.
    ``lambda_independent = peak_lr * lambda_decoupled`` (see :func:`convert_weight_decay`).
``"corrected"``
    ``theta <- theta*(1 - lr_t*lambda_t)`` with ``lambda_t = lambda * lr_t / reference_lr``, then the
    update: the shrink is ``s_t = lr_t^2 * lambda / reference_lr``, the decay follows the schedule twice.
    Defazio et al., "Why gradients rapidly increase near the end of training" (arXiv 2506.02285), AdamC
    and SGDC: for normalized layers it keeps the steady-state ratio of gradient to weight norm constant
    as the learning rate decays. It applies to the groups that say it: the param group's own ``decay``
    key is the per-group rule, so normalized layers go in a group with ``decay="corrected"`` and the rest
    in one with ``"decoupled"`` (the paper corrects normalized layers only).

Any decoupled rule may be made *cautious* (``cautious=True``; Chen et al., "Cautious weight decay", arXiv
2510.12402): the shrink applies only to coordinates whose update already moves the weight toward zero,
``theta <- theta - lr*u - s_t * 1[u*theta >= 0] * theta`` (``theta`` before the step). It masks the decay,
not the update (timm's ``caution=True`` masks the update, arXiv 2411.16085).

:class:`Muon` (Keller Jordan 2024; Liu et al., arXiv 2502.16982) orthogonalizes the momentum of 2-D
weights with a Newton-Schulz iteration and steps the other parameters with AdamW; it follows the same
rules.

Defaults follow torch's names: ``Adam`` and ``SGD`` default to ``decay="l2"``, so they mean what
``torch.optim.Adam`` and ``torch.optim.SGD`` mean (a coupled penalty); ``AdamW`` and ``SGDW`` are the
decoupled ones. A ``torch.optim`` state dict of the same algorithm loads into its wdlib namesake.

Both optimizers run on torch's own multi-tensor kernels: the fused kernel where every parameter is
a floating-point tensor on a device that has one (CPU and CUDA), the ``_foreach`` kernel otherwise.
The independent convention is the lr-multiplied one with ``lambda / lr_0``. Decoupled SGD on the fused
kernel runs torch's fused *coupled* SGD kernel with transformed scalars and momentum buffer, which
computes the decoupled update exactly in one pass over memory (:meth:`SGD._folded_step`); elsewhere
(``impl="foreach"``, Nesterov, the "kahan" and "stochastic" remedies) it scales the parameters with one
``_foreach_mul_`` and then takes torch's SGD step without decay.

Parameters stored in bfloat16 (``bf16_update``)
-----------------------------------------------
A bfloat16 number has 8 significant bits: for ``|x|`` in ``[2^e, 2^(e+1))`` the spacing of
representable values is ``ulp = 2^(e-7)``, so relative to ``|x|`` it is between ``2^-8`` and
``2^-7``. Rounding to nearest takes ``x*(1 - s)`` back to ``x`` whenever ``s*|x| < ulp/2``, that is
whenever the relative shrink ``s = lr*lambda`` is below ``2^-9`` to ``2^-8`` (about 2e-3 to 3.9e-3,
depending on where ``|x|`` sits in its binade). GPT-2-style settings (lr 6e-4, lambda 0.1,
``s = 6e-5``) therefore apply no decay at all to bfloat16 weights, and an update ``u`` is lost the
same way when ``|u| < ulp/2``. ``bf16_update`` chooses what the optimizer does about it, for
parameters stored in bfloat16 or float16 (float32 and float64 parameters ignore it: no extra state,
the same bits as ``"nearest"``):

``"nearest"`` (default)
    The kernels run on the stored dtype and round to nearest; torch's own behaviour, no extra memory.
``"master"``
    Standard mixed precision: a float32 master copy ``state["master"]`` (+4 bytes per parameter)
    takes the whole step (decay, update, and the momentum or Adam moments, which are float32 too);
    the parameter is the master rounded to nearest.
``"kahan"``
    Kahan-compensated summation (Zamirai et al., "Revisiting BFloat16 Training", arXiv 2010.06192):
    a buffer ``state["kahan_comp"]`` in the parameter's dtype (+2 bytes per parameter) keeps what the
    last rounding dropped. Each step runs on ``w = p + comp`` in float32, then ``p <- round(w)`` and
    ``comp <- w - p``, so small decays and updates accumulate in ``comp`` until they move ``p``.
``"stochastic"``
    Stochastic rounding (bfloat16 only; float16 raises ValueError): the step runs on ``p`` in float32
    and is written back rounded up or down at random with probabilities that make the rounding
    unbiased, ``E[p_new] = w`` (:func:`wdlib.rounding.stochastic_round`, global torch RNG, so a
    checkpoint with the RNG state resumes exactly). No extra state (+0 bytes).

With ``"master"``, ``"kahan"`` and ``"stochastic"`` the optimizer state of a low-precision parameter
(``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``) is float32 too: Adam's moments take 8 bytes per
parameter instead of 4, SGD's momentum 4 instead of 2, on top of the costs above. The kernels still
run once per group on the list of float32 work tensors (fused where it fits); only the conversions
are per tensor, plus float32 temporaries for the work tensors and gradients during the step.

Under "nearest" how much decay survives depends on the kernel (torch 2.13, CPU): the fused AdamW
kernel computes ``p*(1 - s) - update`` in float32 and rounds once, so with updates of several ulps
the decay survives on average (the rounding error is roughly uniform), and is lost with them when
they are below half an ulp; decoupled SGD on a fused kernel does the same (the shrink is folded into
the kernel's arithmetic; CUDA). The foreach paths (``impl="foreach"``, decoupled SGD with Nesterov, and
SGD on the CPU, whose fused SGD kernel skips bfloat16 updates in torch 2.12-2.13, see
:func:`fused_sgd_works`), shrink with ``torch._foreach_mul_`` before the step: they round
``p*(1 - s)`` on its own, and ``_foreach_mul_`` on bfloat16 even rounds the factor ``1 - s`` to
bfloat16 first: ``s < 2^-9`` becomes 0 and ``s = 3e-3`` becomes ``2^-8``. Measured by
:func:`wdlib.precision.applied_decay`; used by chapter 5 (``notebooks/05_llm_regime.ipynb``, claim LLM-7).

Run configurations name their optimizer through a registry, :data:`OPTIMIZERS`: a spec
``{"name": "sgd", "decay": "l2", "momentum": 0.9}`` is checked (and completed with its defaults) by
:func:`optimizer_spec`, the one place that knows each optimizer's options and the decay rules it can
follow, and built by :func:`make_optimizer`. torch's own optimizers are registered as they are
("torch.adam", "torch.adamw", "torch.sgd"), each with the one rule it implements. :func:`decay_factor`
answers, for a param group of any of them, what shrink it applies at the current step.

Used by every chapter; introduced in chapter 1 (``notebooks/01_l2_vs_decoupled.ipynb``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.optim.adam import adam as _adam_functional
from torch.optim.adamw import adamw as _adamw_functional
from torch.optim.sgd import sgd as _sgd_functional

from wdlib._checks import check_real, short_repr
from wdlib.rounding import stochastic_round_float32_

__all__ = [
    "BF16_UPDATES",
    "DECAYS",
    "IMPLS",
    "ADJUST_LRS",
    "SGD",
    "SGDW",
    "Adam",
    "AdamW",
    "Muon",
    "OPTIMIZERS",
    "OptimizerEntry",
    "convert_weight_decay",
    "decay_factor",
    "decay_rule",
    "fused_sgd_works",
    "make_optimizer",
    "optimizer_spec",
]

Decay = Literal["l2", "decoupled", "independent", "corrected"]
DECAYS: tuple[str, ...] = ("l2", "decoupled", "independent", "corrected")
ADJUST_LRS: tuple[str, ...] = ("match_rms_adamw", "original")
IMPLS: tuple[str, ...] = ("auto", "fused", "foreach")
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BF16_UPDATES: tuple[str, ...] = ("nearest", "master", "kahan", "stochastic")
_LOW_DTYPES = (torch.bfloat16, torch.float16)
_MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "momentum_buffer")  # float32 for remedied low-precision params


@functools.cache
def fused_sgd_works(device_type: str, dtype: torch.dtype) -> bool:
    """Whether torch's fused SGD kernel updates ``dtype`` tensors on ``device_type`` correctly (probed once).

    torch 2.12.1 and 2.13.0's CPU fused SGD kernel skips the update of every complete SIMD block of a
    bfloat16 or float16 tensor (pytorch/pytorch#191763, fixed by #192545): a tensor of 16 or more
    elements is not changed at all. The probe steps 64 ones by a gradient of ones, with and without a
    momentum buffer of ones (lr 0.25, momentum 0.5: every value exact in both dtypes), and compares
    with the exact answers 0.75 and 0.625. float32 and float64 are not probed. Where it fails,
    :class:`SGD` takes the foreach kernels for those parameters (``impl="fused"`` raises ValueError).
    """
    if dtype not in _LOW_DTYPES:
        return True
    try:
        p = torch.ones(64, dtype=dtype, device=device_type)
        g = torch.ones_like(p)
        torch._fused_sgd_([p], [g], [], weight_decay=0.0, momentum=0.0, lr=0.25, dampening=0.0,
                          nesterov=False, maximize=False, is_first_step=False)  # fmt: skip
        q, buf = torch.ones_like(p), torch.ones_like(p)
        torch._fused_sgd_([q], [g], [buf], weight_decay=0.0, momentum=0.5, lr=0.25, dampening=0.0,
                          nesterov=False, maximize=False, is_first_step=False)  # fmt: skip
        return bool((p == 0.75).all()) and bool((q == 0.625).all()) and bool((buf == 1.5).all())
    except (RuntimeError, NotImplementedError):
        return False


def _check_number(
    name: str, value: Any, *, low: float = 0.0, high: float | None = None, high_open: bool = False
) -> float:
    """``value`` as a finite float in range, or ValueError naming the argument and the allowed range.

    Python numbers, numpy scalars and 0-d tensors are numbers (:mod:`wdlib._checks`); bools are not.
    """
    return check_real(name, value, low=low, high=high, high_open=high_open)


def _check_betas(betas: Any, name: str = "betas") -> tuple[float, float]:
    try:
        pair = tuple(betas) if not isinstance(betas, (str, bytes)) else None
    except TypeError:  # a number, a 0-d tensor
        pair = None
    if pair is None or len(pair) != 2:
        raise ValueError(
            f"{name} must be a pair (beta1, beta2), each a finite number in [0, 1), got {short_repr(betas)}"
        )
    return (
        _check_number(f"{name}[0]", pair[0], high=1.0, high_open=True),
        _check_number(f"{name}[1]", pair[1], high=1.0, high_open=True),
    )


def _check_decay(decay: Any, name: str = "decay") -> str:
    """The one check of a weight-decay rule's name (wdlib's optimizers and :func:`optimizer_spec` call it)."""
    if not isinstance(decay, str) or decay not in DECAYS:
        raise ValueError(f"{name} must be one of {', '.join(repr(d) for d in DECAYS)}, got {short_repr(decay)}")
    return decay


def _check_impl(impl: Any, name: str = "impl") -> str:
    if not isinstance(impl, str) or impl not in IMPLS:
        raise ValueError(f"{name} must be one of {', '.join(repr(i) for i in IMPLS)}, got {short_repr(impl)}")
    return impl


def _check_adjust_lr(adjust_lr: Any, name: str = "adjust_lr") -> str:
    if not isinstance(adjust_lr, str) or adjust_lr not in ADJUST_LRS:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in ADJUST_LRS)}, got {short_repr(adjust_lr)}")
    return adjust_lr


def _check_ns_steps(ns_steps: Any, name: str = "ns_steps") -> int:
    if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or not 1 <= ns_steps < 100:
        raise ValueError(f"{name} must be an integer in [1, 100), got {short_repr(ns_steps)}")
    return int(ns_steps)


def _check_bf16_update(bf16_update: Any, params: Iterable[torch.Tensor] = (), name: str = "bf16_update") -> str:
    if not isinstance(bf16_update, str) or bf16_update not in BF16_UPDATES:
        raise ValueError(
            f"{name} must be one of {', '.join(repr(b) for b in BF16_UPDATES)}, got {short_repr(bf16_update)}"
        )
    if bf16_update == "stochastic" and any(p.dtype == torch.float16 for p in params):
        raise ValueError(
            "bf16_update='stochastic' rounds to bfloat16 only, and a parameter is float16; "
            "use 'master' or 'kahan' for float16 parameters"
        )
    return bf16_update


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
            raise ValueError(
                f"{name} must be 'decoupled' or 'independent' (an L2 penalty has no "
                f"equivalent lambda under Adam), got {value!r}"
            )
    if peak_lr == 0.0:
        raise ValueError("peak_lr must be > 0 to convert between conventions, got 0.0")
    if source == target:
        return weight_decay
    return weight_decay * peak_lr if target == "independent" else weight_decay / peak_lr


def decay_rule(group: dict[str, Any], optimizer: torch.optim.Optimizer | None = None) -> str:
    """The weight-decay rule ("l2", "decoupled", "independent" or "corrected") a param group follows.

    A group of wdlib's optimizers names it (``group["decay"]``, checked when the group was built). A
    ``torch.optim`` group: "decoupled" when it says ``decoupled_weight_decay=True`` (``torch.optim.AdamW``;
    ``torch.optim.Adam`` with that flag) or, for torch versions whose groups do not say, when ``optimizer``
    is a ``torch.optim.AdamW``; otherwise "l2" (the ``weight_decay`` of ``torch.optim.Adam``, ``SGD`` and
    the rest is a coupled penalty, ``g <- g + lambda*theta``).
    """
    if "decay" in group:
        return group["decay"]
    if "decoupled_weight_decay" in group:
        return "decoupled" if group["decoupled_weight_decay"] else "l2"
    return "decoupled" if isinstance(optimizer, torch.optim.AdamW) else "l2"


def decay_factor(group: dict[str, Any], optimizer: torch.optim.Optimizer | None = None) -> float:
    """The shrink ``s_t`` a param group applies at this step: its decay is ``theta <- theta*(1 - s_t)``.

    The one place that answers it, for every optimizer a run can use (:func:`decay_rule` reads the rule;
    ``optimizer`` only serves torch groups that do not record theirs)::

        decoupled:   s_t = lr_t * lambda                  (torch.optim.AdamW, wdlib's AdamW/SGDW)
        independent: s_t = lr_t / reference_lr * lambda   (the AdamW paper's; = s * lambda, s the schedule)
        corrected:   s_t = lr_t * lambda * lr_t / reference_lr   (AdamC/SGDC, arXiv 2506.02285)
        l2:          s_t = 0

    An L2 penalty shrinks nothing by itself: its gradient ``lambda*theta`` joins the data gradient before
    momentum or Adam's normalisation (plain SGD without momentum is the one case where its step is the
    shrink ``lr_t*lambda``; :func:`wdlib.precision.applied_decay` measures that case as the decoupled one).
    ``lr_t`` and ``lambda`` are the group's current ``lr`` and ``weight_decay`` (as schedules set them);
    ``reference_lr`` is the learning rate the group was built with (see :class:`Adam`), and state dicts
    saved before it existed fall back to ``initial_lr``. Used by the optimizers' own steps,
    :mod:`wdlib.diagnostics` (the update probes), :mod:`wdlib.ema` and :func:`wdlib.precision.applied_decay`.
    """
    rule, wd, lr = decay_rule(group, optimizer), group["weight_decay"], group["lr"]
    if "decay" not in group:  # torch keeps what it was given (a 0-d tensor lr, say); wdlib stores floats
        wd, lr = float(wd), float(lr)
    if rule == "decoupled":
        return lr * wd
    if rule == "independent":
        return lr / _reference_lr(group) * wd
    if rule == "corrected":  # lr * (wd * (lr / ref)): exactly lr * wd when lr == ref
        return lr * (wd * (lr / _reference_lr(group))) if wd else 0.0
    return 0.0


def _reference_lr(group: dict[str, Any]) -> float:
    return group.get("reference_lr", group.get("initial_lr", group["lr"]))


#: Keys of torch's own param groups that wdlib's optimizers do not use (dropped when a torch state dict is loaded).
_TORCH_ONLY_KEYS = (
    "amsgrad",
    "maximize",
    "foreach",
    "capturable",
    "differentiable",
    "fused",
    "decoupled_weight_decay",
    "dampening",
)


class _DecayOptimizer(torch.optim.Optimizer):
    """Shared plumbing: argument checks, ``reference_lr``, loading state dicts, and the choice of kernel."""

    #: the hyperparameters of a group besides lr, weight_decay, decay, impl, bf16_update (set by subclasses)
    _HYPER: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        super().__init__(params, self._normalize(dict(defaults)))

    def _normalize(self, group: dict[str, Any]) -> dict[str, Any]:
        """Check every hyperparameter of ``group`` and store numbers as Python floats (in place).

        ValueError names the first bad one and its allowed values. Subclasses add their own.
        """
        group["lr"] = _check_number("lr", group["lr"])
        group["weight_decay"] = _check_number("weight_decay", group["weight_decay"])
        _check_decay(group["decay"])
        _check_impl(group["impl"])
        _check_bf16_update(group["bf16_update"], group.get("params", ()))
        cautious = group.setdefault("cautious", False)
        if not isinstance(cautious, bool):
            raise ValueError(f"cautious must be True or False, got {short_repr(cautious)}")
        if cautious and group["decay"] == "l2":
            raise ValueError(
                "cautious=True needs a decoupled decay ('decoupled', 'independent' or 'corrected'), got decay='l2': "
                "cautious weight decay (arXiv 2510.12402) masks the decoupled shrink, and an L2 penalty has none"
            )
        return group

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``, then the checks; ``reference_lr`` defaults to the group's lr.

        ``reference_lr`` is the learning rate the independent rule divides by (``s_t = lr_t /
        reference_lr``). It is wdlib's own key, so LR schedulers that rewrite ``initial_lr``
        (``OneCycleLR`` sets it to ``max_lr / div_factor``) do not change the decay.
        """
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._normalize(group)
            if "reference_lr" in group:
                group["reference_lr"] = _check_number("reference_lr", group["reference_lr"])
            group.setdefault("reference_lr", group["lr"])
            if (
                group["decay"] in ("independent", "corrected")
                and group["reference_lr"] == 0.0
                and group["weight_decay"] != 0.0
            ):
                raise ValueError(
                    f"lr must be > 0 with decay={group['decay']!r}: the decay is scaled by lr_t / lr, "
                    "the schedule multiplier, which needs the constructed lr"
                )
        except ValueError:
            self.param_groups.pop()  # a rejected group must not stay behind
            raise
        group.setdefault("initial_lr", group["lr"])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # state dicts saved before bf16_update / reference_lr existed
            group.setdefault("bf16_update", "nearest")
            group.setdefault("reference_lr", group.get("initial_lr", group["lr"]))
            group.setdefault("cautious", False)

    def _foreign_group(self, saved: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
        """A param group of a ``torch.optim`` state dict, as a group of this optimizer.

        The same algorithm loads (torch's Adam into ``Adam(decay="l2")``, AdamW into ``AdamW``, SGD into
        ``SGD(decay="l2")``): the hyperparameters come from the state dict, the decay rule, kernel and
        bf16 mode stay this optimizer's. Anything that would change the algorithm is refused.
        """
        me = type(self).__name__
        adam_like = "betas" in saved
        if adam_like != ("betas" in current):
            kind = "an Adam-type optimizer" if adam_like else "SGD"
            raise ValueError(f"this state dict is from {kind} (torch.optim); it cannot load into wdlib.{me}")
        for flag in ("amsgrad", "maximize"):
            if saved.get(flag):
                raise ValueError(f"this state dict has {flag}=True, which wdlib.{me} does not implement")
        if saved.get("dampening", 0):
            raise ValueError(
                f"this state dict has dampening={saved['dampening']!r}; wdlib.{me} implements dampening 0 only"
            )
        if adam_like:
            if "decoupled_weight_decay" in saved:
                rule = "decoupled" if saved["decoupled_weight_decay"] else "l2"
            else:  # torch before 2.6 does not say whether Adam or AdamW wrote it
                rule = current["decay"] if not saved.get("weight_decay") else None
        else:
            rule = "l2"  # torch.optim.SGD's weight_decay is a coupled L2 penalty
        if saved.get("weight_decay", 0) and rule != current["decay"]:
            source = {
                "decoupled": "torch.optim.AdamW (decoupled decay)",
                "l2": f"torch.optim.{'Adam' if adam_like else 'SGD'} (coupled L2 decay)",
                None: "torch.optim.Adam or AdamW (torch < 2.6 does not record which)",
            }[rule]
            fix = {
                "decoupled": "wdlib.AdamW",
                "l2": f"wdlib.{'Adam' if adam_like else 'SGD'} (decay='l2')",
                None: "the optimizer whose rule it used, after checking which",
            }[rule]
            raise ValueError(
                f"this state dict is from {source}, but wdlib.{me} uses decay={current['decay']!r}; load it into {fix}"
            )
        group = {k: v for k, v in saved.items() if k not in _TORCH_ONLY_KEYS}
        for key in ("decay", "impl", "bf16_update", "cautious"):
            group[key] = current[key]
        if not adam_like:
            group.setdefault("nesterov", False)
        group["reference_lr"] = current.get("reference_lr", saved["lr"])  # torch has no independent rule
        group.setdefault("initial_lr", saved["lr"])
        missing = [k for k in ("lr", "weight_decay", *self._HYPER) if k not in group]
        if missing:
            raise ValueError(
                f"this state dict's param groups lack {missing}; it is not from torch.optim."
                f"{'Adam/AdamW' if adam_like else 'SGD'} or wdlib.{me}"
            )
        return group

    def _normalize_state_dict(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """``state_dict`` with every param group in this optimizer's form (a torch.optim one converted)."""
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError("state_dict must be an optimizer state dict with 'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"the state dict has {len(saved_groups)} param group(s), this optimizer {len(self.param_groups)}"
            )
        groups = []
        for saved, current in zip(saved_groups, self.param_groups):
            if "decay" not in saved:
                saved = self._foreign_group(saved, current)
            else:
                saved = dict(saved)
                saved.setdefault("bf16_update", "nearest")
                saved.setdefault("reference_lr", saved.get("initial_lr", saved["lr"]))
                saved.setdefault("cautious", False)
            groups.append(saved)
        return {**state_dict, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load, plus two things.

        A ``torch.optim.Adam``/``AdamW``/``SGD`` state dict loads when it is the same algorithm as this
        optimizer (its hyperparameters are taken; see :meth:`_foreign_group`) and is refused with a
        ValueError otherwise, at load time rather than at the next ``step()``. And the float32 state of
        remedied low-precision parameters stays float32:

        ``torch.optim.Optimizer.load_state_dict`` casts every floating-point state tensor to its
        parameter's dtype, which would round the master copy and the moments to bfloat16.
        """
        state_dict = self._normalize_state_dict(state_dict)
        super().load_state_dict(state_dict)
        self.__dict__.pop("_settled", None)  # loaded states may be in another mode's form: settle them again
        saved_ids = iter([i for g in state_dict["param_groups"] for i in g["params"]])
        for group in self.param_groups:
            for p in group["params"]:
                saved = state_dict["state"].get(next(saved_ids))
                if group["bf16_update"] == "nearest" or p.dtype not in _LOW_DTYPES or not saved:
                    continue
                for key in ("master", *_MOMENT_KEYS):
                    value = saved.get(key)
                    if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
                        self.state[p][key] = value.to(device=p.device, copy=True)

    @staticmethod
    def _fits_fused(p: torch.Tensor) -> bool:
        """Whether torch's fused kernels take ``p``: a dense floating-point tensor on cpu or cuda."""
        return p.dtype in _FUSED_DTYPES and (p.is_cpu or p.is_cuda) and not p.is_sparse

    @staticmethod
    def _fused_choice(group: dict[str, Any], fits: bool) -> bool:
        """Fused kernel or not, from ``impl`` and whether every parameter fits (ValueError for impl="fused")."""
        impl = group["impl"]
        if impl == "fused" and not fits:
            raise ValueError(
                "impl='fused' needs floating-point dense parameters on cpu or cuda, and a fused kernel that "
                "updates their dtype correctly (torch 2.12-2.13's CPU fused SGD skips bfloat16/float16 updates, "
                "pytorch#191763: see wdlib.optim.fused_sgd_works); use impl='auto' or 'foreach'"
            )
        return impl != "foreach" and fits

    @classmethod
    def _use_fused(cls, group: dict[str, Any], params: list[torch.Tensor]) -> bool:
        return cls._fused_choice(group, all(cls._fits_fused(p) for p in params))

    def _gather(
        self, group: dict[str, Any]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[dict[str, Any]], bool, bool]:
        """One pass over a group: the parameters with a gradient, their gradients and states, whether the
        fused kernel takes them all, and whether any is bfloat16/float16.

        One loop with one state lookup per parameter: at ~40 tensors the optimizer's Python work per step
        is comparable to a fused kernel on a million parameters (``benchmarks/optim_step.py``).
        """
        params, grads, states = [], [], []
        fits, low = True, False
        state_of = self.state
        nearest = group["bf16_update"] == "nearest"  # otherwise the kernel steps float32 work tensors
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            params.append(p)
            grads.append(g)
            states.append(state_of[p])
            if fits and not self._fits_fused(p):
                fits = False
            if p.dtype in _LOW_DTYPES:
                low = True
                if fits and nearest and not self._fused_takes(p):
                    fits = False
        return params, grads, states, fits, low

    @staticmethod
    def _fused_takes(p: torch.Tensor) -> bool:
        """Whether this optimizer's fused kernel updates a bfloat16/float16 ``p`` correctly (see :class:`SGD`)."""
        return True

    def _work(
        self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[torch.Tensor, ...]]]:
        """The tensors the kernel steps, their gradients, and (parameter, work, float32 grad) to write back.

        Under "nearest", and for float32/float64 parameters, the work tensor is the parameter itself.
        A remedied bfloat16/float16 parameter is stepped through a float32 work tensor: the master
        copy ("master"), ``p + comp`` ("kahan") or ``p`` ("stochastic"), with ``grad.float()``.
        """
        mode = group["bf16_update"]
        low = [p.dtype in _LOW_DTYPES for p in params]
        if not any(low):
            return params, grads, []  # (callers that know there is none skip this call)
        if mode == "nearest":
            settled = self.__dict__.setdefault("_settled", {})  # id(group) -> the mode its states were settled to
            if settled.get(id(group)) != mode:  # after a load or a change of mode; then once per step is wasted
                for p, is_low in zip(params, low):
                    if is_low:
                        self._settle_state(p, mode)
                settled[id(group)] = mode
            return params, grads, []
        self.__dict__.get("_settled", {}).pop(id(group), None)  # a later "nearest" must settle again
        work, work_grads, back = [], [], []
        for p, g, is_low in zip(params, grads, low):
            if not is_low:
                work.append(p)
                work_grads.append(g)
                continue
            state = self._settle_state(p, mode)
            if mode == "master":
                w = state.get("master")
                if w is None:
                    w = state["master"] = p.detach().float()
            elif mode == "kahan":
                comp = state.get("kahan_comp")
                if comp is None:
                    comp = state["kahan_comp"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                w = p.float().add_(comp)  # exact in float32 unless |comp| < 2^-16 |p|
            else:
                if p.dtype != torch.bfloat16:
                    _check_bf16_update(mode, [p])
                w = p.float()
            g32 = g.float()
            work.append(w)
            work_grads.append(g32)
            back.append((p, w, g32))
        return work, work_grads, back

    def _settle_state(self, p: torch.Tensor, mode: str) -> dict[str, Any]:
        """Bring a low-precision parameter's state in line with ``mode`` (after a mode change or a load).

        Remedied modes keep the moments in float32 and drop the other modes' buffers; "nearest" keeps
        them in the parameter's dtype, as torch does.
        """
        state = self.state[p]
        if not state:
            return state
        moment_dtype = p.dtype if mode == "nearest" else torch.float32
        for key in _MOMENT_KEYS:
            value = state.get(key)
            if isinstance(value, torch.Tensor) and value.dtype != moment_dtype:
                state[key] = value.to(moment_dtype)
        if mode != "master":
            state.pop("master", None)
        if mode != "kahan":
            state.pop("kahan_comp", None)
        return state

    def _write_back(self, group: dict[str, Any], back: list[tuple[torch.Tensor, ...]]) -> None:
        """Store the stepped float32 work tensors into their low-precision parameters.

        The float32 gradient copies are dead once the kernel has run and serve as scratch.
        """
        if not back:
            return
        mode = group["bf16_update"]
        params = [p for p, _, _ in back]
        work = [w for _, w, _ in back]
        if mode == "master":
            torch._foreach_copy_(params, work)  # round to nearest; the master keeps the bits
        elif mode == "kahan":
            scratch = [g32 for _, _, g32 in back]
            torch._foreach_copy_(params, work)  # p <- round(w)
            torch._foreach_copy_(scratch, params)
            torch._foreach_sub_(work, scratch)  # w - p: what rounding dropped, exact in float32
            torch._foreach_copy_([self.state[p]["kahan_comp"] for p in params], work)
        else:  # the work tensors are temporaries here: round them in place
            torch._foreach_copy_(params, [stochastic_round_float32_(w) for w in work])


def _check_momentum(group: dict[str, Any]) -> dict[str, Any]:
    """A group's ``momentum`` (in [0, 1)) and ``nesterov`` (a bool, True only with momentum > 0), checked in
    place (:class:`SGD`, :class:`Muon`)."""
    group["momentum"] = _check_number("momentum", group["momentum"], high=1.0, high_open=True)
    if not isinstance(group["nesterov"], bool):
        raise ValueError(f"nesterov must be True or False, got {group['nesterov']!r}")
    if group["nesterov"] and group["momentum"] == 0.0:
        raise ValueError("nesterov=True needs momentum > 0, got momentum=0.0")
    return group


def _cautious_decay_(work: list[torch.Tensor], before: list[torch.Tensor], shrink: float) -> None:
    """Cautious weight decay (Chen et al., arXiv 2510.12402) after a step taken without decay, in place.

    ``work`` holds the weights after the step, ``before`` their values before it (overwritten: scratch).
    With ``delta = work - before`` (``-lr*u``), ``work <- work - shrink * 1[delta*before <= 0] * before``:
    the decay applies where the update moves the weight toward zero (or not at all), ``u*theta >= 0``.
    """
    delta = torch._foreach_sub(work, before)
    torch._foreach_mul_(delta, before)
    for d in delta:
        d.le_(0)  # 1.0 where the step does not move away from zero, else 0.0 (NaN: 0.0)
    torch._foreach_addcmul_(work, delta, before, value=-shrink)


def _decay_rate_of(group: dict[str, Any]) -> float:
    """``lambda_t = s_t / lr_t``, the shrink per unit of learning rate of a decoupled rule (0 under "l2"):
    ``weight_decay`` ("decoupled"), ``weight_decay / reference_lr`` ("independent"), ``weight_decay * lr_t /
    reference_lr`` ("corrected"); computed without dividing by lr_t."""
    wd, decay = group["weight_decay"], group["decay"]
    if not wd or decay == "l2":
        return 0.0
    if decay == "independent":
        return wd / _reference_lr(group)
    if decay == "corrected":
        return wd * (group["lr"] / _reference_lr(group))
    return wd


class SGD(_DecayOptimizer):
    """Stochastic gradient descent with heavy-ball or Nesterov momentum and a chosen decay rule.

    Update, with ``g`` the gradient, ``mu`` the momentum, ``b`` its buffer (torch's convention)::

        l2:          g <- g + lambda*theta;  b <- mu*b + g;  theta <- theta - lr*b
        decoupled:   theta <- theta*(1 - lr*lambda);            b <- mu*b + g;  theta <- theta - lr*b
        independent: theta <- theta*(1 - lr/reference_lr*lambda); b <- mu*b + g;  theta <- theta - lr*b
        corrected:   theta <- theta*(1 - lr^2/reference_lr*lambda); b <- mu*b + g;  theta <- theta - lr*b

    (Nesterov uses ``g + mu*b`` in place of ``b`` in the last step.) "corrected" is SGDC (Defazio et al.,
    arXiv 2506.02285); the group's ``decay`` key is per group. With ``cautious=True`` the shrink is applied
    only where ``-lr*b`` moves the weight toward zero (arXiv 2510.12402; see the module docstring; not timm's
    ``caution``, which masks the update). Without momentum the first three rules
    give the same iterates when ``lambda`` is matched; with momentum L2 feeds the decay through the
    buffer and decoupled decay does not (claim DEC-1, chapter 1).

    Args:
        params: parameters or param groups.
        lr: learning rate (>= 0).
        momentum: momentum factor in [0, 1).
        nesterov: Nesterov momentum (needs momentum > 0).
        weight_decay: lambda (>= 0).
        decay: "l2" (default, as ``torch.optim.SGD``), "decoupled" (:class:`SGDW`), "independent" or
            "corrected".
        impl: "auto" (fused where it fits, else foreach), "fused" or "foreach".
        bf16_update: how bfloat16/float16 parameters are updated: "nearest", "master", "kahan" or
            "stochastic" (see the module docstring); float32/float64 parameters ignore it.
        cautious: cautious weight decay (arXiv 2510.12402); needs a decoupled rule (ValueError with "l2").
            Takes the shrink-then-step path (never the fold): a copy of the weights and three extra passes.

    Numbers may be Python numbers, numpy scalars or 0-d tensors (stored as floats).
    """

    _HYPER = ("momentum", "nesterov")

    @staticmethod
    def _fused_takes(p: torch.Tensor) -> bool:
        return fused_sgd_works(p.device.type, p.dtype)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        decay: Decay = "l2",
        impl: str = "auto",
        bf16_update: str = "nearest",
        cautious: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            decay=decay,
            impl=impl,
            bf16_update=bf16_update,
            cautious=cautious,
        )
        super().__init__(params, defaults)

    def _normalize(self, group: dict[str, Any]) -> dict[str, Any]:
        return _check_momentum(super()._normalize(group))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """Take one step; ``closure`` re-evaluates the model and returns the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, states, fits, low = self._gather(group)
            if not params:
                continue
            fused = self._fused_choice(group, fits)
            work, work_grads, back = self._work(group, params, grads) if low else (params, grads, [])
            shrink = decay_factor(group)
            if self._foldable(group, fused, back, shrink):
                self._folded_step(group, params, states, work, work_grads, shrink)
                self._write_back(group, back)
                continue
            for p, state in zip(params, states):
                if "folded" in state:
                    self._unfold(p)
            bufs = [state.get("momentum_buffer") for state in states]
            cautious = group["cautious"] and shrink != 0.0
            if cautious:
                before = [w.clone() for w in work]
            elif shrink != 0.0:
                torch._foreach_mul_(work, 1.0 - shrink)
            _sgd_functional(
                work,
                work_grads,
                bufs,
                weight_decay=group["weight_decay"] if group["decay"] == "l2" else 0.0,
                momentum=group["momentum"],
                lr=group["lr"],
                dampening=0.0,
                nesterov=group["nesterov"],
                maximize=False,
                foreach=not fused,
                fused=fused,
            )
            if cautious:
                _cautious_decay_(work, before, shrink)
            if group["momentum"] != 0.0:
                for state, buf in zip(states, bufs):
                    state["momentum_buffer"] = buf
            self._write_back(group, back)
        return loss

    # --- decoupled decay folded into the coupled kernel (one pass over memory) -------------------------

    @staticmethod
    def _foldable(group: dict[str, Any], fused: bool, back: list[Any], shrink: float) -> bool:
        """Whether this group's decoupled/independent/corrected step runs as one fused coupled step (see
        :meth:`_folded_step`). Never with ``cautious`` (its mask needs the step before the shrink).

        Yes for the fused kernel without Nesterov and with ``shrink < 1``: on float32/float64 parameters, on
        bfloat16/float16 parameters under "nearest" where the fused SGD kernel works for them (CUDA; it
        computes the shrink and the step in float32 and rounds once, as torch's fused AdamW kernel does)
        and on the float32 master copies of "master". "kahan" and "stochastic" keep the shrink-then-step
        path, because the weight their next step starts from is not exactly the one this step computed (the
        fold's buffer refers to that one).
        """
        return (
            fused
            and group["decay"] != "l2"
            and not group["nesterov"]
            and not group["cautious"]
            and (not back or group["bf16_update"] == "master")
            and shrink < 1.0
        )

    @staticmethod
    def _decay_rate(group: dict[str, Any]) -> float:
        """``lambda_t = s_t / lr_t``, the shrink per unit of learning rate: ``weight_decay`` under
        "decoupled", ``weight_decay / reference_lr`` under "independent", ``weight_decay * lr_t /
        reference_lr`` under "corrected" (it changes every step, which the fold allows: ``c = lambda_t -
        mu*lambda_{t-1}``); computed without dividing by lr_t."""
        return _decay_rate_of(group)

    def _folded_step(
        self,
        group: dict[str, Any],
        params: list[torch.Tensor],
        states: list[dict[str, Any]],
        work: list[torch.Tensor],
        grads: list[torch.Tensor],
        shrink: float,
    ) -> None:
        """Decoupled SGD in one pass: torch's fused *coupled* SGD kernel with transformed scalars and buffer.

        The decoupled step with shrink ``s_t = lr_t*lambda_t``::

            b_{t+1} = mu*b_t + g_t;   theta_{t+1} = (1 - s_t)*theta_t - lr_t*b_{t+1}

        costs a separate pass over the weights for the shrink (1.37x torch's fused SGD at 12.9M parameters
        on 2 CPU threads). The coupled kernel computes ``B <- mu'*B + g + c*theta; theta <- theta - lr*B``
        in one pass. It computes the decoupled update exactly when it keeps the buffer in a moving basis,
        ``B_t = alpha_t*b_t + beta_t*theta_t`` with ``alpha_{t+1} = 1/(1 - s_t)`` and ``beta_{t+1} =
        lambda_t/(1 - s_t)``, and is called with::

            mu' = mu*(1 - s_{t-1}),   c = lambda_t - mu*lambda_{t-1},   lr = lr_t

        (expand ``theta_t - lr_t*B_{t+1}`` and ``B_{t+1}`` and compare coefficients of ``b_t``, ``g_t``,
        ``theta_t``). A fresh buffer starts in the basis ``(1, 0)``: the kernel's first step sets
        ``B_1 = g + lambda_0*theta_0``, which is ``alpha_1*b_1 + beta_1*theta_1``. ``c`` may be negative
        (a weight decay that falls). Each parameter's state keeps ``folded = (s_{t-1}, lambda_{t-1})``
        beside the transformed buffer ``state["momentum_buffer"] = B``; torch's buffer is
        ``b = (1 - s_{t-1})*B - lambda_{t-1}*theta`` (:meth:`momentum_buffer`). The state dict saves ``B``
        and ``folded`` as they are, so a resumed run continues bit for bit; a path that does not fold
        (foreach, Nesterov, L2) converts the buffer back first. Without momentum it is the coupled
        kernel with ``c = lambda_t``. Parameters whose last steps differ (one
        skipped a step without a gradient) are stepped in separate calls.
        """
        mu, lr = group["momentum"], group["lr"]
        lam = self._decay_rate(group)
        if mu == 0.0:
            _sgd_functional(
                work, grads, [None] * len(params), weight_decay=lam, momentum=0.0, lr=lr,
                dampening=0.0, nesterov=False, maximize=False, foreach=False, fused=True,
            )  # fmt: skip
            return
        # parameters whose last step differs (one skipped a step) need their own call; usually one batch
        batches: dict[tuple[float, float] | None, list[int]] = {}
        for i, state in enumerate(states):
            key = state.get("folded", (0.0, 0.0)) if "momentum_buffer" in state else None
            batches.setdefault(key, []).append(i)
        whole = len(batches) == 1
        new_key = None if shrink == 0.0 and lam == 0.0 else (shrink, lam)
        for key, idx in batches.items():
            if whole:
                ws, gs, sts = work, grads, states
            else:
                ws, gs, sts = [work[i] for i in idx], [grads[i] for i in idx], [states[i] for i in idx]
            if key is None:
                bufs: list[torch.Tensor | None] = [None] * len(ws)
                mu_k, c = mu, lam
            else:
                bufs = [st["momentum_buffer"] for st in sts]
                mu_k, c = mu * (1.0 - key[0]), lam - mu * key[1]
            _sgd_functional(
                ws, gs, bufs, weight_decay=c, momentum=mu_k, lr=lr,
                dampening=0.0, nesterov=False, maximize=False, foreach=False, fused=True,
            )  # fmt: skip
            for st, buf in zip(sts, bufs):
                if key is None:
                    st["momentum_buffer"] = buf
                if new_key is None:
                    st.pop("folded", None)
                else:
                    st["folded"] = new_key

    def momentum_buffer(self, p: torch.Tensor) -> torch.Tensor | None:
        """The momentum buffer ``b`` of ``p`` in torch's convention (``b <- mu*b + g``), None before its first step.

        ``state[p]["momentum_buffer"]`` is that buffer except where a decoupled step kept it folded (see
        :meth:`_folded_step`); this returns a new tensor then.
        """
        state = self.state.get(p, {})
        buf = state.get("momentum_buffer")
        if buf is None or "folded" not in state:
            return buf
        s_prev, lam_prev = state["folded"]
        theta = state.get("master", p.detach())  # the weights the fold stepped
        return buf.mul(1.0 - s_prev).add_(theta, alpha=-lam_prev)

    def _unfold(self, p: torch.Tensor) -> None:
        """Bring a folded buffer back to torch's convention before a step that does not fold (rare: a group
        switched to Nesterov, L2 or foreach)."""
        state = self.state.get(p)
        if state and "folded" in state:
            state["momentum_buffer"] = self.momentum_buffer(p)
            del state["folded"]


class Adam(_DecayOptimizer):
    """Adam (Kingma & Ba, arXiv 1412.6980) with a chosen decay rule; ``AdamW`` is the decoupled one.

    With ``m`` and ``v`` the bias-corrected first and second moments of the gradient ``g``::

        l2:          g <- g + lambda*theta;  theta <- theta - lr*m/(sqrt(v) + eps)
        decoupled:   theta <- theta*(1 - lr*lambda);            theta <- theta - lr*m/(sqrt(v) + eps)
        independent: theta <- theta*(1 - lr/reference_lr*lambda); theta <- theta - lr*m/(sqrt(v) + eps)
        corrected:   theta <- theta*(1 - lr^2/reference_lr*lambda); theta <- theta - lr*m/(sqrt(v) + eps)

    Under "l2" the decay is divided by ``sqrt(v)``: weights with large gradients are decayed less
    (claim DEC-2, chapter 1). "decoupled" is ``torch.optim.AdamW``; "independent" is Loshchilov &
    Hutter's AdamW (arXiv 1711.05101); "corrected" is AdamC (Defazio et al., arXiv 2506.02285), meant for
    the groups of normalized layers (the group's ``decay`` key is per group). With ``cautious=True`` the
    shrink applies only where the Adam step moves the weight toward zero (arXiv 2510.12402; not timm's
    ``caution``, which masks the update).

    Args:
        params: parameters or param groups.
        lr: learning rate (>= 0).
        betas: (beta1, beta2), each in [0, 1).
        eps: term added to the denominator (>= 0).
        weight_decay: lambda (>= 0).
        decay: "l2" (default, as ``torch.optim.Adam``), "decoupled" (:class:`AdamW`, as
            ``torch.optim.AdamW``), "independent" (the AdamW paper's) or "corrected" (AdamC).
        impl: "auto" (fused where it fits, else foreach), "fused" or "foreach".
        bf16_update: how bfloat16/float16 parameters are updated: "nearest", "master", "kahan" or
            "stochastic" (see the module docstring); float32/float64 parameters ignore it.
        cautious: cautious weight decay (arXiv 2510.12402); needs a decoupled rule (ValueError with "l2").
            The kernel steps without decay, then the masked shrink (a copy of the weights, three more passes).

    Numbers may be Python numbers, numpy scalars or 0-d tensors (stored as floats).
    """

    _HYPER = ("betas", "eps")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decay: Decay = "l2",
        impl: str = "auto",
        bf16_update: str = "nearest",
        cautious: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decay=decay,
            impl=impl,
            bf16_update=bf16_update,
            cautious=cautious,
        )
        super().__init__(params, defaults)

    def _normalize(self, group: dict[str, Any]) -> dict[str, Any]:
        group = super()._normalize(group)
        group["betas"] = _check_betas(group["betas"])
        group["eps"] = _check_number("eps", group["eps"])
        return group

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """Take one step; ``closure`` re-evaluates the model and returns the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, states, fits, low = self._gather(group)
            if params:
                self._adam_group(group, params, grads, states, fits, low)
        return loss

    def _adam_group(
        self,
        group: dict[str, Any],
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        states: list[dict[str, Any]],
        fits: bool,
        low: bool,
    ) -> None:
        """One group's Adam step (what :meth:`_gather` found); :class:`Muon` steps its non-Muon groups with it."""
        fused = self._fused_choice(group, fits)
        work, work_grads, back = self._work(group, params, grads) if low else (params, grads, [])
        exp_avgs, exp_avg_sqs, steps = [], [], []
        for p, w, state in zip(params, work, states):
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device if fused else torch.device("cpu"))
                state["exp_avg"] = torch.zeros_like(w, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(w, memory_format=torch.preserve_format)
            elif fused and state["step"].device != p.device:
                state["step"] = state["step"].to(p.device)  # fused kernels want the step beside p
            elif not fused and state["step"].device.type != "cpu":
                state["step"] = state["step"].cpu()
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        beta1, beta2 = group["betas"]
        if group["decay"] == "l2":
            functional, wd_arg = _adam_functional, group["weight_decay"]
        else:  # lr-multiplied kernel with lambda_t = s_t / lr_t (independent: lambda/lr_0; corrected: lambda*lr_t/lr_0)
            functional, wd_arg = _adamw_functional, _decay_rate_of(group)
        before = None
        if group["cautious"] and wd_arg != 0.0 and group["decay"] != "l2":
            before, wd_arg = [w.clone() for w in work], 0.0  # step without decay, then the masked shrink
        functional(
            work,
            work_grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            foreach=not fused,
            fused=fused,
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=wd_arg,
            eps=group["eps"],
            maximize=False,
        )
        if before is not None:
            _cautious_decay_(work, before, decay_factor(group))
        self._write_back(group, back)


class SGDW(SGD):
    """SGD with decoupled, lr-multiplied weight decay: ``SGD(..., decay="decoupled")``."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        impl: str = "auto",
        bf16_update: str = "nearest",
        cautious: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            decay="decoupled",
            impl=impl,
            bf16_update=bf16_update,
            cautious=cautious,
        )


class AdamW(Adam):
    """Adam with decoupled, lr-multiplied weight decay (``torch.optim.AdamW``); default lambda 1e-2."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        impl: str = "auto",
        bf16_update: str = "nearest",
        cautious: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decay="decoupled",
            impl=impl,
            bf16_update=bf16_update,
            cautious=cautious,
        )


_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic (torch.optim.Muon's defaults)
_NS_EPS = 1e-7  # torch.optim.Muon's: the Frobenius norm is clamped to at least this before dividing


def _newton_schulz5(x: torch.Tensor, steps: int) -> torch.Tensor:
    """``U V^T``-ish orthogonalization of a 2-D ``x = U S V^T`` by the quintic Newton-Schulz iteration, in bfloat16.

    ``X <- X / max(||X||_F, 1e-7)`` (transposed when it has more rows than columns), then ``steps`` times
    ``A = X X^T;  X <- a X + (b A + c A^2) X`` with ``(a, b, c) = (3.4445, -4.7750, 2.0315)``: the singular
    values end near ``Uniform(0.5, 1.5)`` rather than 1 (Keller Jordan 2024). The operations, their order
    and the bfloat16 arithmetic are those of ``torch.optim.Muon`` (torch 2.13, ``_zeropower_via_newtonschulz``).
    """
    a, b, c = _NS_COEFFICIENTS
    o = x.bfloat16()
    tall = x.size(0) > x.size(1)
    if tall:
        o = o.T
    o.div_(o.norm().clamp(min=_NS_EPS))
    for _ in range(steps):
        gram = o @ o.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        o = torch.addmm(o, poly, o, beta=a)
    return o.T if tall else o


def _muon_scale(adjust_lr: str, shape: torch.Size) -> float:
    """The factor on lr for a ``rows x cols`` weight: ``0.2*sqrt(max(rows, cols))`` ("match_rms_adamw", Liu et
    al.: update RMS ~0.2, AdamW's) or ``sqrt(max(1, rows/cols))`` ("original", Keller Jordan's)."""
    rows, cols = shape[0], shape[1]
    if adjust_lr == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1.0, rows / cols))


class Muon(_DecayOptimizer):
    """Muon (Keller Jordan 2024) for 2-D weights, AdamW for the rest, with a chosen decay rule.

    The conventions of Liu et al., "Muon is scalable for LLM training" (arXiv 2502.16982). In a group with
    ``muon=True`` (every parameter 2-D, ``rows x cols``), with ``g`` the gradient and ``b`` the momentum buffer::

        b <- mu*b + g;   d = g + mu*b (nesterov) or b;   O = NS5(d)
        theta <- theta*(1 - s_t) - lr*scale*O

    ``NS5`` is five steps of the quintic Newton-Schulz iteration in bfloat16 (as ``torch.optim.Muon``;
    :func:`_newton_schulz5`); ``scale = 0.2*sqrt(max(rows, cols))`` (``adjust_lr="match_rms_adamw"``, Liu et
    al.: the update RMS is ~0.2 like AdamW's, so AdamW's lr and lambda carry over) or ``sqrt(max(1,
    rows/cols))`` (``"original"``, Keller Jordan's). The shrink ``s_t`` is :func:`decay_factor`'s with the
    *unadjusted* lr: "decoupled" ``lr*lambda`` (Liu et al., torch.optim.Muon), "independent",
    "corrected"; under "l2" ``lambda*theta`` joins ``g`` before the momentum. ``cautious`` masks the
    shrink with the Muon step (arXiv 2510.12402).

    ``torch.optim.Muon`` keeps ``b`` as an average, ``b <- mu*b + (1-mu)*g`` and ``d = (1-mu)*g + mu*b``:
    its ``d`` is ``(1-mu)`` times this one, and the iteration divides by the norm first, so the steps agree
    up to bfloat16 rounding (its buffer is ``(1-mu)`` times this ``momentum_buffer``).

    Groups with ``muon=False`` take the AdamW step of :class:`Adam` (``betas``, ``eps``, the same rule and
    ``cautious``): Liu et al. use AdamW for embeddings, the readout and vectors. Plain tensors are split:
    the 2-D ones into a Muon group, the others into an AdamW group (a 2-D embedding or readout belongs in an
    explicit ``muon=False`` group: :func:`wdlib.params.muon_groups` builds them).

    Args:
        params: parameters (split by dimension) or param groups (``muon`` defaults to True).
        lr: learning rate (>= 0), of both Muon and AdamW groups.
        momentum: Muon's momentum factor in [0, 1) (0.95).
        nesterov: Nesterov momentum (needs momentum > 0).
        adjust_lr: "match_rms_adamw" (default) or "original".
        ns_steps: Newton-Schulz steps, an integer in [1, 100) (5).
        betas, eps: the AdamW groups' (Liu et al.'s Moonlight code: (0.9, 0.95), 1e-8).
        weight_decay: lambda (>= 0); 0.1 as torch.optim.Muon.
        decay: "decoupled" (default), "l2", "independent" or "corrected".
        impl: the AdamW groups' kernel: "auto", "fused" or "foreach" (Muon groups ignore it).
        bf16_update: "nearest", "master", "kahan" or "stochastic" (see the module docstring): Muon's step
            runs on the float32 work tensors like Adam's.
        cautious: cautious weight decay (needs a decoupled rule).
    """

    _HYPER = ("betas", "eps", "momentum", "nesterov", "adjust_lr", "ns_steps", "muon")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.95,
        nesterov: bool = True,
        adjust_lr: str = "match_rms_adamw",
        ns_steps: int = 5,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
        decay: Decay = "decoupled",
        impl: str = "auto",
        bf16_update: str = "nearest",
        cautious: bool = False,
    ) -> None:
        params = list(params)
        if params and all(isinstance(p, torch.Tensor) for p in params):
            matrices = [p for p in params if p.ndim == 2]
            others = [p for p in params if p.ndim != 2]
            params = [{"params": ps, "muon": flag} for ps, flag in ((matrices, True), (others, False)) if ps]
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            adjust_lr=adjust_lr,
            ns_steps=ns_steps,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decay=decay,
            impl=impl,
            bf16_update=bf16_update,
            cautious=cautious,
            muon=True,
        )
        super().__init__(params, defaults)

    def _normalize(self, group: dict[str, Any]) -> dict[str, Any]:
        group = _check_momentum(super()._normalize(group))
        group["betas"] = _check_betas(group["betas"])
        group["eps"] = _check_number("eps", group["eps"])
        if not isinstance(group["muon"], bool):
            raise ValueError(f"muon must be True or False, got {short_repr(group['muon'])}")
        _check_adjust_lr(group["adjust_lr"])
        group["ns_steps"] = _check_ns_steps(group["ns_steps"])
        if group["muon"]:
            for p in group.get("params", ()):
                if p.ndim != 2:
                    raise ValueError(
                        f"a param group with muon=True takes 2-D parameters only, got one of shape {tuple(p.shape)}; "
                        "put it in a group with muon=False (stepped by AdamW)"
                    )
        return group

    def _foreign_group(self, saved: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("wdlib.Muon loads its own state dicts only (this one is not from wdlib.Muon)")

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """Take one step; ``closure`` re-evaluates the model and returns the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, states, fits, low = self._gather(group)
            if not params:
                continue
            if group["muon"]:
                self._muon_group(group, params, grads, states, low)
            else:
                Adam._adam_group(self, group, params, grads, states, fits, low)  # type: ignore[arg-type]
        return loss

    def _muon_group(
        self,
        group: dict[str, Any],
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        states: list[dict[str, Any]],
        low: bool,
    ) -> None:
        work, work_grads, back = self._work(group, params, grads) if low else (params, grads, [])
        mu, lr = group["momentum"], group["lr"]
        if group["decay"] == "l2" and group["weight_decay"]:
            work_grads = torch._foreach_add(work_grads, work, alpha=group["weight_decay"])
        bufs = []
        for w, state in zip(work, states):
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(w, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])
        torch._foreach_mul_(bufs, mu)
        torch._foreach_add_(bufs, work_grads)
        directions = torch._foreach_add(work_grads, bufs, alpha=mu) if group["nesterov"] else bufs
        shrink = decay_factor(group)
        before = None
        if group["cautious"] and shrink != 0.0:
            before = [w.clone() for w in work]
        elif shrink != 0.0:
            torch._foreach_mul_(work, 1.0 - shrink)
        for w, d in zip(work, directions):
            w.add_(_newton_schulz5(d, group["ns_steps"]), alpha=-lr * _muon_scale(group["adjust_lr"], w.shape))
        if before is not None:
            _cautious_decay_(work, before, shrink)
        self._write_back(group, back)


# --- the optimizers a run configuration names ----------------------------------------------------------


def _spec_number(high: float | None = None) -> Callable[[str, Any], float]:
    def check(name: str, value: Any) -> float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-8 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {short_repr(value)}") from None
        return _check_number(name, value, high=high, high_open=high is not None)

    return check


def _spec_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {short_repr(value)}")
    return value


def _spec_betas(name: str, value: Any) -> list[float]:
    if isinstance(value, (list, tuple)):  # "0.9" strings too (YAML 1.1)
        value = [_spec_number()(f"{name}[{i}]", v) if isinstance(v, str) else v for i, v in enumerate(value)]
    return list(_check_betas(value, name))


#: How each option of an optimizer spec is checked: ``check(field_name, value) -> normalised value``.
_OPTION_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "betas": _spec_betas,
    "eps": _spec_number(),
    "momentum": _spec_number(high=1.0),
    "nesterov": _spec_bool,
    "bf16_update": lambda name, value: _check_bf16_update(value, name=name),
    "impl": lambda name, value: _check_impl(value, name),
    "cautious": _spec_bool,
    "adjust_lr": lambda name, value: _check_adjust_lr(value, name),
    "ns_steps": lambda name, value: _check_ns_steps(value, name),
}


@dataclass(frozen=True)
class OptimizerEntry:
    """An optimizer that a run configuration names: ``{"name": <name>, "decay": <rule>, **options}``.

    Attributes:
        name: the registered name.
        build: ``build(params, lr=..., weight_decay=..., decay=..., **options)``, the optimizer over
            ``params`` (tensors or param groups).
        options: its options besides ``decay``, with their defaults (checked by :data:`_OPTION_CHECKS`).
        decays: the weight-decay rules it can follow, its default first. wdlib's optimizers follow all
            four; torch's follow the one their class implements.
        summary: what it is, in a few words (error messages and help).
    """

    name: str
    build: Callable[..., torch.optim.Optimizer]
    options: Mapping[str, Any]
    decays: tuple[str, ...]
    summary: str


_ADAM_OPTIONS = {"betas": [0.9, 0.999], "eps": 1e-8}
_SGD_OPTIONS = {"momentum": 0.0, "nesterov": False}
_ANY_DECAY = ("decoupled", "l2", "independent", "corrected")  # wdlib's optimizers: any rule, "decoupled" first

#: The optimizers a run configuration can name (``RunConfig.optimizer``; :func:`optimizer_spec`). "adam",
#: "sgd" and "muon" are wdlib's (:class:`Adam`, :class:`SGD`, :class:`Muon`) and follow any rule,
#: "decoupled" by default (so a bare "adam" is AdamW). "torch.adam", "torch.adamw" and "torch.sgd" are
#: ``torch.optim``'s classes as they are, with the one rule each implements: L2 for Adam and SGD, decoupled
#: for AdamW.
#:
#: :meta hide-value:
OPTIMIZERS: dict[str, OptimizerEntry] = {
    e.name: e
    for e in (
        OptimizerEntry(
            "adam",
            lambda params, *, betas, decay, **kw: Adam(params, betas=tuple(betas), decay=decay, **kw),
            {**_ADAM_OPTIONS, "bf16_update": "nearest", "impl": "auto", "cautious": False},
            _ANY_DECAY,
            "wdlib.optim.Adam, any decay rule",
        ),
        OptimizerEntry(
            "sgd",
            lambda params, *, decay, **kw: SGD(params, decay=decay, **kw),
            {**_SGD_OPTIONS, "bf16_update": "nearest", "impl": "auto", "cautious": False},
            _ANY_DECAY,
            "wdlib.optim.SGD, any decay rule",
        ),
        OptimizerEntry(
            "muon",
            lambda params, *, betas, decay, **kw: Muon(params, betas=tuple(betas), decay=decay, **kw),
            {
                "momentum": 0.95,
                "nesterov": True,
                "adjust_lr": "match_rms_adamw",
                "ns_steps": 5,
                "betas": [0.9, 0.95],
                "eps": 1e-8,
                "cautious": False,
                "bf16_update": "nearest",
                "impl": "auto",
            },
            _ANY_DECAY,
            "wdlib.optim.Muon (AdamW for groups with muon=False), any decay rule",
        ),
        OptimizerEntry(
            "torch.adam",
            lambda params, *, betas, decay, **kw: torch.optim.Adam(params, betas=tuple(betas), **kw),
            dict(_ADAM_OPTIONS),
            ("l2",),
            "torch.optim.Adam, whose weight_decay is an L2 penalty",
        ),
        OptimizerEntry(
            "torch.adamw",
            lambda params, *, betas, decay, **kw: torch.optim.AdamW(params, betas=tuple(betas), **kw),
            dict(_ADAM_OPTIONS),
            ("decoupled",),
            "torch.optim.AdamW, whose weight decay is decoupled",
        ),
        OptimizerEntry(
            "torch.sgd",
            lambda params, *, decay, **kw: torch.optim.SGD(params, **kw),
            dict(_SGD_OPTIONS),
            ("l2",),
            "torch.optim.SGD, whose weight_decay is an L2 penalty",
        ),
    )
}


def optimizer_spec(spec: str | Mapping[str, Any], field: str = "optimizer") -> dict[str, Any]:
    """The full, checked form of an optimizer spec: ``{"name", "decay", **options}``, defaults filled in.

    ``spec`` is a registered name (:data:`OPTIMIZERS`; shorthand for ``{"name": name}``) or a dict with
    ``name`` and any of its options::

        {"name": "adam", "decay": "l2", "betas": [0.9, 0.999], "eps": 1e-8, "bf16_update": "nearest"}
        {"name": "sgd", "decay": "decoupled", "momentum": 0.9, "nesterov": True, "bf16_update": "nearest",
         "impl": "auto"}
        {"name": "torch.adamw", "decay": "decoupled", "betas": [0.9, 0.999], "eps": 1e-8}
        {"name": "muon", "decay": "decoupled", "momentum": 0.95, "nesterov": True, "adjust_lr": "match_rms_adamw",
         "ns_steps": 5, "betas": [0.9, 0.95], "eps": 1e-8, "cautious": False, "bf16_update": "nearest", "impl": "auto"}

    ``decay`` is the rule (see the module docstring); torch's optimizers take their own only, and asking
    one for another (``{"name": "torch.adamw", "decay": "l2"}``) is an error, as is an option the
    optimizer does not have. Options: ``betas`` (a pair in [0, 1)), ``eps`` (>= 0), ``momentum`` (in
    [0, 1)), ``nesterov`` (needs momentum > 0), ``bf16_update`` (wdlib's optimizers: "nearest",
    "master", "kahan", "stochastic"), ``impl`` (wdlib's optimizers: "auto", "fused", "foreach"; the
    kernel, which changes rounding only: decoupled SGD on "foreach" shrinks and then steps, two passes,
    where the fused kernel folds the shrink into the coupled arithmetic), ``cautious`` (wdlib's optimizers:
    cautious weight decay, not with "l2"), ``adjust_lr`` ("muon": "match_rms_adamw" or "original"),
    ``ns_steps`` ("muon": Newton-Schulz steps, an integer in [1, 100)). Numbers are stored as floats (a
    string such as "1e-8", as YAML 1.1 reads it, as the number it spells), ``betas`` as a list.

    The one place a spec is checked: a bad one raises ValueError naming the field (``optimizer.<option>``,
    ``field`` being the prefix) and its allowed values. Used by :class:`wdlib.config.RunConfig` and
    :func:`make_optimizer`.
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise ValueError(
            f"{field} must be an optimizer name ({', '.join(repr(n) for n in OPTIMIZERS)}) or a dict "
            f'like {{"name": "adam", "decay": "decoupled"}}, got {short_repr(spec)}'
        )
    if "name" not in spec:
        raise ValueError(
            f"{field}.name is missing: a spec names its optimizer, one of {', '.join(repr(n) for n in OPTIMIZERS)}"
        )
    name = spec["name"]
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ValueError(
            f"{field}.name must be one of {', '.join(repr(n) for n in OPTIMIZERS)}, got {short_repr(name)}"
        )
    entry = OPTIMIZERS[name]
    allowed = ("name", "decay", *entry.options)
    for key in spec:
        if key not in allowed:
            owners = [n for n, e in OPTIMIZERS.items() if key in e.options]
            also = f"; {key} is an option of {', '.join(repr(n) for n in owners)}" if owners else ""
            raise ValueError(
                f"{field}.{key} is not an option of optimizer {name!r} (its options: {', '.join(allowed)}){also}"
            )
    decay = _check_decay(spec.get("decay", entry.decays[0]), f"{field}.decay")
    if decay not in entry.decays:
        raise ValueError(
            f"{field}.decay must be {' or '.join(repr(d) for d in entry.decays)} for optimizer "
            f"{name!r} ({entry.summary}), got {decay!r}; for the {decay} rule use "
            f'{{"name": "{name.removeprefix("torch.").removesuffix("w")}", "decay": "{decay}"}}'
        )
    out: dict[str, Any] = {"name": name, "decay": decay}
    for key, default in entry.options.items():
        out[key] = _OPTION_CHECKS[key](f"{field}.{key}", spec.get(key, default))
    if out.get("nesterov") and out["momentum"] == 0.0:
        raise ValueError(f"{field}.nesterov true needs {field}.momentum > 0, got momentum 0.0")
    if out.get("cautious") and decay == "l2":
        raise ValueError(
            f"{field}.cautious true needs a decoupled decay ('decoupled', 'independent' or 'corrected'), got 'l2'"
        )
    return out


def make_optimizer(
    spec: str | Mapping[str, Any], params: Iterable[Any], *, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """The optimizer a spec describes (:func:`optimizer_spec`, checked first), over ``params`` (tensors or
    param groups), with learning rate ``lr`` and weight decay ``weight_decay`` (lambda, in the spec's rule)."""
    spec = optimizer_spec(spec)
    options = {k: v for k, v in spec.items() if k != "name"}
    return OPTIMIZERS[spec["name"]].build(params, lr=lr, weight_decay=weight_decay, **options)
