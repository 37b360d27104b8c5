"""Parameter groups: which tensors are decayed.

By default only tensors with two or more dimensions (weight matrices, conv kernels, embeddings) are
decayed; vectors (biases, normalization gains) are not, as in nanoGPT's ``configure_optimizers``
and most recipes since. Groups carry a ``name`` and a ``wd_mult`` that
:class:`wdlib.schedules.HyperparameterScheduler` multiplies the weight-decay schedule by.
Used by :mod:`wdlib.train` for every chapter's runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["decay_groups", "group_counts", "mup_groups"]


def decay_groups(model: nn.Module, decay_vectors: bool = False) -> list[dict[str, Any]]:
    """``[{"name": "decay", ...}, {"name": "no_decay", "wd_mult": 0.0, ...}]`` for the trainable parameters.

    With ``decay_vectors=True`` every parameter is in the "decay" group (torch's default when
    ``model.parameters()`` is passed straight to an optimizer). Empty groups are left out.
    Parameters shared between modules (tied embeddings) appear once.
    """
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() already yields each shared tensor once
        if not p.requires_grad:
            continue
        (decay if decay_vectors or p.ndim >= 2 else no_decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "name": "decay", "wd_mult": 1.0})
    if no_decay:
        groups.append({"params": no_decay, "name": "no_decay", "wd_mult": 0.0, "weight_decay": 0.0})
    return groups


def group_counts(groups: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Tensors and parameters per group: ``{"decay": {"tensors": 4, "parameters": 22000}, ...}``."""
    return {g["name"]: {"tensors": len(g["params"]), "parameters": sum(p.numel() for p in g["params"])} for g in groups}


def mup_groups(
    model: nn.Module, base_width: int, width: int, decay: str = "scaled", zero_readout: bool = True
) -> list[dict[str, Any]]:
    """muP-style parameter groups for a feed-forward model whose weight matrices run input -> hidden -> readout.

    The first weight matrix (in ``model.parameters()`` order) is the input layer, the last the readout,
    the ones between hidden; tensors with fewer than two dimensions are vectors. With ``m =
    width/base_width``:

    ========  =============  ============================================
    group     lr multiplier  weight-decay multiplier
    ========  =============  ============================================
    input     1              1
    hidden    1/m            ``m`` ("scaled": lr*lambda, and so tau_iter, unchanged) or 1 ("constant")
    readout   1/m            as hidden
    vectors   1              0 (no decay)
    ========  =============  ============================================

    Hidden LR ∝ 1/fan_in is muP for Adam (Yang et al., Tensor Programs V, arXiv 2203.03466);
    "scaled" decay is microsoft/mup's MuAdamW and the rule of seed 001 (Wang & Aitchison,
    arXiv 2405.13698). With ``zero_readout`` the readout weights start at zero, as muP prescribes.
    The multipliers are applied by :class:`wdlib.schedules.HyperparameterScheduler` (``lr_mult``,
    ``wd_mult``). Used by chapter 3 (SCALE-3).
    """
    if decay not in ("scaled", "constant"):
        raise ValueError(f"decay must be 'scaled' or 'constant', got {decay!r}")
    for name, value in (("base_width", base_width), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    mats = [p for p in params if p.ndim >= 2]
    if len(mats) < 2:
        raise ValueError("mup_groups needs at least an input and a readout weight matrix")
    m = width / base_width
    wd_mult = m if decay == "scaled" else 1.0
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
    return [g for g in groups if g["params"]]
