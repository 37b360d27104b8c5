"""What a run is made of, built from its :class:`~wdlib.config.RunConfig`: the data, the model, the optimizer.

:func:`build_data` loads the dataset (cut to a subset, with label noise if asked), :func:`build_model`
builds the model sized to that data, :func:`build_optimizer` the optimizer over the model's parameter
groups. The training loop (:mod:`wdlib.train`) and the chapters build their runs' parts through these.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import data as wd_data
from . import models
from .config import RunConfig
from .optim import SGD, Adam
from .params import decay_groups, group_counts, mup_groups

__all__ = ["build_data", "build_model", "build_optimizer", "is_language"]


# --- construction --------------------------------------------------------------------------------------

def build_data(cfg: RunConfig) -> Any:
    """The dataset of ``cfg`` (:func:`wdlib.data.load`), cut to ``cfg.subset`` training samples if set,
    then with ``cfg.label_noise`` of its training labels made wrong (:func:`wdlib.data.with_label_noise`)."""
    ds = wd_data.load(cfg.data, **cfg.data_args)
    for name, active in (("subset", cfg.subset is not None), ("label_noise", cfg.label_noise > 0)):
        if active and not isinstance(ds, wd_data.Dataset):
            raise ValueError(f"{name} applies to classification data, not to {cfg.data!r}")
    if cfg.subset is not None:
        ds = wd_data.subset(ds, cfg.subset, cfg.data_seed)
    if cfg.label_noise > 0:
        ds = wd_data.with_label_noise(ds, cfg.label_noise, cfg.data_seed)
    return ds


def is_language(ds: Any) -> bool:
    return hasattr(ds, "vocab_size")


def build_model(cfg: RunConfig, ds: Any) -> nn.Module:
    """The model of ``cfg`` (:func:`wdlib.models.build`), its input and output sizes filled from the data."""
    args = dict(cfg.model_args)
    if is_language(ds):
        args.setdefault("vocab_size", ds.vocab_size)
        args.setdefault("block_size", cfg.block_size)
    else:
        sample = ds.x_train[0]
        fills = {"mlp": {"in_dim": int(sample.numel()), "out_dim": ds.num_classes},
                 "cnn": {"in_channels": int(sample.shape[0]) if sample.ndim > 1 else 1,
                         "num_classes": ds.num_classes},
                 "convnet": {"in_channels": int(sample.shape[0]) if sample.ndim > 1 else 1,
                             "num_classes": ds.num_classes, "input_size": int(sample.shape[-1])},
                 "resnet18": {"in_channels": int(sample.shape[0]), "num_classes": ds.num_classes},
                 "tiedconv": {"in_channels": int(sample.shape[0]) if sample.ndim > 1 else 1,
                              "num_classes": ds.num_classes, "input_size": int(sample.shape[-1])},
                 "tiedrnn": {"input_size": int(sample.numel()), "num_classes": ds.num_classes}}
        for k, v in fills.get(cfg.model, {}).items():
            args.setdefault(k, v)
    torch.manual_seed(cfg.seed)
    return models.build(cfg.model, **args)


def build_optimizer(cfg: RunConfig, model: nn.Module) -> tuple[torch.optim.Optimizer, list[dict[str, Any]]]:
    """The optimizer of ``cfg`` over :func:`wdlib.params.decay_groups` of ``model``."""
    if cfg.mup is not None:
        groups = mup_groups(model, int(cfg.mup["base_width"]), int(cfg.model_args["width"]),
                            cfg.mup.get("decay", "scaled"), bool(cfg.mup.get("zero_readout", True)))
    else:
        groups = decay_groups(model, cfg.decay_vectors)
    counts = group_counts(groups)
    common = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    ours = dict(common, decay=cfg.decay)
    if cfg.bf16_update != "nearest":  # left out otherwise: the plain path, as before the option existed
        ours["bf16_update"] = cfg.bf16_update
    if cfg.optimizer == "adam":
        opt = Adam(groups, betas=cfg.betas, eps=cfg.eps, **ours)
    elif cfg.optimizer == "sgd":
        opt = SGD(groups, momentum=cfg.momentum, nesterov=cfg.nesterov, **ours)
    elif cfg.optimizer == "torch.adam":
        opt = torch.optim.Adam(groups, betas=cfg.betas, eps=cfg.eps, **common)
    elif cfg.optimizer == "torch.adamw":
        opt = torch.optim.AdamW(groups, betas=cfg.betas, eps=cfg.eps, **common)
    else:
        opt = torch.optim.SGD(groups, momentum=cfg.momentum, nesterov=cfg.nesterov, **common)
    return opt, [{"name": g["name"], **counts[g["name"]]} for g in groups]
