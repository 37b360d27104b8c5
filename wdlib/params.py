"""Parameter groups: which tensors are decayed, and by which rule.

By default only tensors with two or more dimensions (weight matrices, conv kernels, embeddings) are
decayed; vectors (biases, normalization gains) are not, as in nanoGPT's ``configure_optimizers``
and most recipes since. Groups carry a ``name`` and a ``wd_mult`` that
:class:`wdlib.schedules.HyperparameterScheduler` multiplies the weight-decay schedule by; a group may
also carry its own ``decay`` rule (wdlib's optimizers read it per group) or a ``muon`` flag.

- :func:`decay_groups`: decayed and not; with ``corrected=True`` the decayed tensors of normalized
  layers (:func:`normalized_params`) get the "corrected" rule (Defazio et al., arXiv 2506.02285).
- :func:`mup_groups`: muP's input/hidden/readout/vectors groups, with a width rule for lambda
  (:data:`WIDTH_RULES`, :func:`width_weight_decay`).
- :func:`muon_groups`: hidden weight matrices for Muon, the rest for its AdamW (arXiv 2502.16982).

Used by :mod:`wdlib.train` (through :func:`wdlib.components.build_optimizer`) for every chapter's runs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = [
    "NORM_TYPES",
    "WIDTH_RULES",
    "decay_groups",
    "group_counts",
    "muon_groups",
    "mup_groups",
    "normalized_params",
    "width_weight_decay",
]

#: The width rules for the hidden-layer lambda under muP (:func:`mup_groups`, :func:`width_weight_decay`).
WIDTH_RULES: tuple[str, ...] = ("scaled", "constant", "sqrt", "independent")

#: Layers whose weights :func:`normalized_params` counts: their output can go straight into a normalization.
_NORMALIZABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: The normalization modules :func:`normalized_params` recognises (``nn.RMSNorm`` where torch has it).
NORM_TYPES: tuple[type[nn.Module], ...] = tuple(
    t
    for t in (
        nn.LayerNorm,
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.SyncBatchNorm,
        nn.GroupNorm,
        getattr(nn, "RMSNorm", None),
        nn.InstanceNorm1d,
        nn.InstanceNorm2d,
        nn.InstanceNorm3d,
    )
    if t is not None
)


def _trainable(model: nn.Module) -> list[torch.Tensor]:
    """The trainable parameters, each shared tensor once (``parameters()`` already deduplicates)."""
    return [p for p in model.parameters() if p.requires_grad]


def normalized_params(model: nn.Module) -> list[torch.Tensor]:
    """The weights of the layers whose output goes straight into a normalization module.

    The rule, applied to every module's children in registration order, recursively: an ``nn.Linear``
    or ``nn.Conv1d/2d/3d`` immediately followed by a normalization module (:data:`NORM_TYPES`:
    ``nn.LayerNorm``, ``nn.BatchNorm1d/2d/3d``, ``nn.SyncBatchNorm``, ``nn.GroupNorm``, ``nn.RMSNorm``,
    ``nn.InstanceNorm1d/2d/3d``) contributes its weight (``ndim >= 2``, trainable). Its bias is not
    included: the normalization removes the weight's scale, not the bias's. Registration order is how
    ``nn.Sequential`` runs and how most modules are written (``self.conv1``, ``self.bn1``); a ``forward``
    that calls its children in another order is not seen, nor a normalization applied as a function.

    These are the layers whose output is invariant to the scale of their weight, the setting of the
    "corrected" decay rule (Defazio et al., arXiv 2506.02285, lambda_t = lambda*eta_t/eta_max), and
    of the steady state ``||g||/||w|| = sqrt(2*lambda/eta)`` (:func:`wdlib.timescale.gradient_rise`).
    Example: ``wdlib.models.MLP(scale_invariant=True)`` (Linear, LayerNorm, ReLU, ..., Linear): every
    hidden Linear is normalized, the readout not. Tensors shared between modules appear once.
    """
    found: dict[int, torch.Tensor] = {}
    for parent in model.modules():
        children = list(parent.children())
        for layer, after in zip(children[:-1], children[1:]):
            if isinstance(layer, _NORMALIZABLE) and isinstance(after, NORM_TYPES):
                w = layer.weight
                if isinstance(w, torch.Tensor) and w.ndim >= 2 and w.requires_grad:
                    found.setdefault(id(w), w)
    order = {id(p): i for i, p in enumerate(model.parameters())}
    return sorted(found.values(), key=lambda p: order.get(id(p), len(order)))


def decay_groups(model: nn.Module, decay_vectors: bool = False, corrected: bool = False) -> list[dict[str, Any]]:
    """``[{"name": "decay", ...}, {"name": "no_decay", "wd_mult": 0.0, ...}]`` for the trainable parameters.

    With ``decay_vectors=True`` every parameter is in the "decay" group (torch's default when
    ``model.parameters()`` is passed straight to an optimizer). Empty groups are left out.
    Parameters shared between modules (tied embeddings) appear once.

    With ``corrected=True`` (Defazio et al., arXiv 2506.02285) the decayed weights of normalized layers
    (:func:`normalized_params`) form a first group ``{"name": "normalized", "decay": "corrected"}``,
    whose shrink is ``lr_t*lambda*lr_t/reference_lr`` (the decay follows the LR schedule a second time,
    which keeps their steady-state ``||g||/||w||`` flat as the LR falls), and the other decayed tensors
    ``{"name": "decay", "decay": "decoupled"}`` (``lr_t*lambda``): the correction is derived for
    scale-invariant layers only. A model without a normalized layer raises ValueError: a corrected run
    on it would be a plain decoupled run, almost certainly not what was meant.
    """
    for name, flag in (("decay_vectors", decay_vectors), ("corrected", corrected)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    normalized = {id(p) for p in normalized_params(model)} if corrected else set()
    if corrected and not normalized:
        raise ValueError(
            f"corrected=True needs a normalized layer (a Linear/Conv followed by one of "
            f"{', '.join(t.__name__ for t in NORM_TYPES)}), and {type(model).__name__} has none: "
            "the 'corrected' rule applies to scale-invariant layers; use decay 'decoupled'"
        )
    norm, decay, no_decay = [], [], []
    for p in _trainable(model):
        if id(p) in normalized:
            norm.append(p)
        else:
            (decay if decay_vectors or p.ndim >= 2 else no_decay).append(p)
    groups: list[dict[str, Any]] = []
    if norm:
        groups.append({"params": norm, "name": "normalized", "wd_mult": 1.0, "decay": "corrected"})
    if decay:
        groups.append({"params": decay, "name": "decay", "wd_mult": 1.0})
        if corrected:
            groups[-1]["decay"] = "decoupled"
    if no_decay:
        groups.append({"params": no_decay, "name": "no_decay", "wd_mult": 0.0, "weight_decay": 0.0})
    return groups


def group_counts(groups: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Tensors and parameters per group: ``{"decay": {"tensors": 4, "parameters": 22000}, ...}``."""
    return {g["name"]: {"tensors": len(g["params"]), "parameters": sum(p.numel() for p in g["params"])} for g in groups}


def _check_width(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _check_rule(rule: Any, name: str = "decay") -> str:
    if not isinstance(rule, str) or rule not in WIDTH_RULES:
        raise ValueError(f"{name} must be one of {', '.join(repr(r) for r in WIDTH_RULES)}, got {rule!r}")
    return rule


def _width_mult(rule: str, m: float) -> float:
    """The hidden/readout ``wd_mult`` of ``rule`` at width ratio ``m`` (see :func:`mup_groups`)."""
    if rule in ("scaled", "independent"):
        return m
    if rule == "sqrt":
        return math.sqrt(m)
    return 1.0


def width_weight_decay(rule: str, weight_decay: float, base_width: int, width: int) -> float:
    """The hidden-layer lambda of a muP model at ``width`` when ``weight_decay`` is tuned at ``base_width``.

    ``lambda_hidden = weight_decay * wd_mult`` with ``m = width/base_width``: ``m`` for "scaled" and
    "independent", ``sqrt(m)`` for "sqrt", 1 for "constant" (the rules and their per-step shrinks are
    tabulated in :func:`mup_groups`). For "independent" the value is in that rule's convention (the
    shrink per step is ``lr_t/reference_lr * lambda``, the lambda of the AdamW paper). Example:
    ``width_weight_decay("sqrt", 0.1, 64, 256) == 0.2``.
    """
    _check_rule(rule, "rule")
    base_width, width = _check_width("base_width", base_width), _check_width("width", width)
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if not math.isfinite(weight_decay):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    return float(weight_decay) * _width_mult(rule, width / base_width)


def mup_groups(
    model: nn.Module, base_width: int, width: int, decay: str = "scaled", zero_readout: bool = True
) -> list[dict[str, Any]]:
    """muP-style parameter groups for a feed-forward model whose weight matrices run input -> hidden -> readout.

    The first weight matrix (in ``model.parameters()`` order) is the input layer, the last the readout,
    the ones between hidden; tensors with fewer than two dimensions are vectors. With ``m =
    width/base_width``:

    ========  =============  =======================================================================
    group     lr multiplier  weight-decay multiplier (``decay``, the width rule of :data:`WIDTH_RULES`)
    ========  =============  =======================================================================
    input     1              1
    hidden    1/m            ``m`` ("scaled", "independent"), ``sqrt(m)`` ("sqrt") or 1 ("constant")
    readout   1/m            as hidden
    vectors   1              0 (no decay)
    ========  =============  =======================================================================

    Per-step shrink of a hidden layer, base LR ``eta``, lambda tuned at ``base_width`` (constant schedules):

    =============  ===============================  ================================================
    rule           shrink per step                  source
    =============  ===============================  ================================================
    scaled         ``eta*lambda``                   microsoft/mup's MuAdamW; Wang & Aitchison,
                                                    arXiv 2405.13698 (lr*lambda, tau_iter fixed)
    constant       ``eta*lambda/m``                 lambda as tuned, the decay weakens with width
    sqrt           ``eta*lambda/sqrt(m)``           Fan et al. 2025, arXiv 2510.15262: lambda ∝
                                                    sqrt(width), so that the top singular value of a
                                                    hidden matrix, ~ sqrt(eta/lambda)*d^0.75, keeps
                                                    its scale across width
    independent    ``lambda`` (times the schedule)  Kosson et al. 2025, arXiv 2510.19093: decay
                                                    independent of the LR, in any layer and width
    =============  ===============================  ================================================

    "independent" derivation. These groups carry ``"decay": "independent"`` (input, hidden and readout:
    one lambda, one convention), whose shrink is ``s_t = lr_t/reference_lr * lambda_t``
    (:func:`wdlib.optim.decay_factor`). The optimizer is constructed with the base LR ``eta`` and the
    groups carry no ``lr`` of their own, so ``reference_lr = eta``; the scheduler then sets ``lr_t =
    eta*s(t)*lr_mult`` and ``lambda_t = lambda*w(t)*wd_mult``. For a hidden group ``s_t = (s(t)/m) *
    lambda*w(t)*wd_mult``, which is ``lambda*s(t)*w(t)``, free of ``eta`` and of the width, exactly when
    ``wd_mult = m``; for the input group (``lr_mult = 1``) ``wd_mult = 1``. (Were ``reference_lr`` the
    group's own ``eta/m``, the multiplier would be 1.) The optimizer must follow per-group rules
    (wdlib's "adam"/"sgd"; torch's classes ignore the key).

    Hidden LR ∝ 1/fan_in is muP for Adam (Yang et al., Tensor Programs V, arXiv 2203.03466). With
    ``zero_readout`` the readout weights start at zero, as muP prescribes. The multipliers are applied by
    :class:`wdlib.schedules.HyperparameterScheduler` (``lr_mult``, ``wd_mult``). "scaled" and "constant"
    are used by chapter 3 (SCALE-3).
    """
    _check_rule(decay)
    base_width, width = _check_width("base_width", base_width), _check_width("width", width)
    params = _trainable(model)
    mats = [p for p in params if p.ndim >= 2]
    if len(mats) < 2:
        raise ValueError("mup_groups needs at least an input and a readout weight matrix")
    m = width / base_width
    wd_mult = _width_mult(decay, m)
    if zero_readout:
        with torch.no_grad():
            mats[-1].zero_()
    groups = [
        {"params": [mats[0]], "name": "input", "lr_mult": 1.0, "wd_mult": 1.0},
        {"params": mats[1:-1], "name": "hidden", "lr_mult": 1.0 / m, "wd_mult": wd_mult},
        {"params": [mats[-1]], "name": "readout", "lr_mult": 1.0 / m, "wd_mult": wd_mult},
        {
            "params": [p for p in params if p.ndim < 2],
            "name": "vectors",
            "lr_mult": 1.0,
            "wd_mult": 0.0,
            "weight_decay": 0.0,
        },
    ]
    if decay == "independent":
        for g in groups[:3]:
            g["decay"] = "independent"
    return [g for g in groups if g["params"]]


def muon_groups(model: nn.Module, decay_vectors: bool = False) -> list[dict[str, Any]]:
    """Param groups for Muon: ``"muon": True`` for the hidden weight matrices, ``"muon": False`` for the rest.

    Hidden matrices are the 2-D weights of ``nn.Linear`` modules, except the model's last ``nn.Linear``
    (the readout, in ``model.modules()`` order) and any tensor that is also an ``nn.Embedding``'s weight
    (a tied readout appears once, with the embeddings). As Liu et al. 2025 (Muon is scalable for LLM
    training, arXiv 2502.16982), embeddings, the head, vectors and other tensors (conv kernels) are
    left to AdamW. Groups, empty ones left out::

        {"name": "muon", "muon": True, "wd_mult": 1.0}       hidden Linear weights (orthogonalized updates)
        {"name": "decay", "muon": False, "wd_mult": 1.0}     embeddings, readout, other tensors with ndim >= 2
        {"name": "no_decay", "muon": False, "wd_mult": 0.0}  vectors (in "decay" with ``decay_vectors=True``)

    Example: for ``wdlib.models.GPT`` the attention and MLP projections are "muon"; ``wte`` (= ``lm_head``)
    and ``wpe`` are "decay"; the biases and LayerNorm gains "no_decay".
    """
    if not isinstance(decay_vectors, bool):
        raise ValueError(f"decay_vectors must be True or False, got {decay_vectors!r}")
    linears = [mod for mod in model.modules() if isinstance(mod, nn.Linear)]
    excluded = {id(mod.weight) for mod in model.modules() if isinstance(mod, nn.Embedding)}
    if linears:
        excluded.add(id(linears[-1].weight))
    hidden = {id(mod.weight) for mod in linears if mod.weight.ndim == 2} - excluded
    muon, decay, no_decay = [], [], []
    for p in _trainable(model):
        if id(p) in hidden:
            muon.append(p)
        else:
            (decay if decay_vectors or p.ndim >= 2 else no_decay).append(p)
    groups: list[dict[str, Any]] = []
    if muon:
        groups.append({"params": muon, "name": "muon", "muon": True, "wd_mult": 1.0})
    if decay:
        groups.append({"params": decay, "name": "decay", "muon": False, "wd_mult": 1.0})
    if no_decay:
        groups.append({"params": no_decay, "name": "no_decay", "muon": False, "wd_mult": 0.0, "weight_decay": 0.0})
    return groups
