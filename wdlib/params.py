"""Parameter groups: which tensors are decayed.

By default only tensors with two or more dimensions (weight matrices, conv kernels, embeddings) are
decayed; vectors (biases, normalization gains) are not, as in nanoGPT's ``configure_optimizers``
and most recipes since. Groups carry a ``name`` and a ``wd_mult`` that
:class:`wdlib.schedules.HyperparameterScheduler` multiplies the weight-decay schedule by.
Used by :mod:`wdlib.train` for every chapter's runs.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["decay_groups", "group_counts"]


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
    return {g["name"]: {"tensors": len(g["params"]), "parameters": sum(p.numel() for p in g["params"])}
            for g in groups}
