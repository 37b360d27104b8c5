"""What a run is made of, built from its :class:`~wdlib.config.RunConfig`: the data, the model, the optimizer.

:func:`build_data` loads the dataset (cut to a subset, with label noise if asked) as the run reads it
(:func:`run_data`), :func:`build_model` builds the model sized to that data (each model names the sizes
it takes from the data, :func:`wdlib.models.data_args`), :func:`build_optimizer` the optimizer over the
model's parameter groups. The training loop (:mod:`wdlib.train`) and the chapters build their runs'
parts through these.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import data as wd_data
from . import models
from .config import RunConfig
from .optim import OPTIMIZERS, make_optimizer
from .params import decay_groups, group_counts, muon_groups, mup_groups

__all__ = ["build_data", "build_model", "build_optimizer", "run_data"]


# --- construction --------------------------------------------------------------------------------------


def build_data(cfg: RunConfig) -> wd_data.Dataset | wd_data.TokenDataset:
    """The dataset of ``cfg`` (:func:`wdlib.data.load`), cut to ``cfg.subset`` training samples if set,
    then with ``cfg.label_noise`` of its training labels made wrong (:func:`wdlib.data.with_label_noise`),
    as the run reads it (:func:`run_data`: token data with windows of ``cfg.block_size`` tokens)."""
    ds = wd_data.load(cfg.data, **cfg.data_args)
    for name, active in (("subset", cfg.subset is not None), ("label_noise", cfg.label_noise > 0)):
        if active and not isinstance(ds, wd_data.Dataset):
            raise ValueError(f"{name} applies to classification data, not to {cfg.data!r}")
    if cfg.subset is not None:
        ds = wd_data.subset(ds, cfg.subset, cfg.data_seed)
    if cfg.label_noise > 0:
        ds = wd_data.with_label_noise(ds, cfg.label_noise, cfg.data_seed)
    return run_data(cfg, ds)


def run_data(cfg: RunConfig, ds: Any) -> Any:
    """``ds`` (the dataset ``cfg`` names, already loaded) as the run reads it: a token dataset with its window
    length bound to ``cfg.block_size`` (:meth:`wdlib.data.TokenDataset.with_block_size`); any other as it is."""
    return ds.with_block_size(cfg.block_size) if isinstance(ds, wd_data.TokenDataset) else ds


def build_model(cfg: RunConfig, ds: Any) -> nn.Module:
    """The model of ``cfg`` (:func:`wdlib.models.build`) with ``cfg.model_args``, the arguments it takes from the
    data (:func:`wdlib.models.data_args` of ``ds.sizes``) filled in where ``model_args`` leaves them out.

    The global torch seed is set to ``cfg.seed`` right before construction: the initial weights depend on
    the seed and the model alone.
    """
    args = {**models.data_args(cfg.model, run_data(cfg, ds).sizes), **cfg.model_args}
    torch.manual_seed(cfg.seed)
    return models.build(cfg.model, **args)


def build_optimizer(cfg: RunConfig, model: nn.Module) -> tuple[torch.optim.Optimizer, list[dict[str, Any]]]:
    """The optimizer ``cfg.optimizer`` names, built by the registry (:func:`wdlib.optim.make_optimizer`) over
    the parameter groups of ``model``, with ``cfg.lr`` and ``cfg.weight_decay``. Returns it and each group's
    name and parameter counts.

    The groups (:mod:`wdlib.params`): muP's (:func:`~wdlib.params.mup_groups`) when ``cfg.mup`` is set;
    Muon's (:func:`~wdlib.params.muon_groups`, a ``muon`` flag per group) for the optimizer "muon"; with
    ``optimizer.decay`` "corrected", :func:`~wdlib.params.decay_groups` with ``corrected=True`` (the
    normalized layers keep "corrected", the other decayed tensors are "decoupled"; ValueError for a model
    without a normalized layer); otherwise :func:`~wdlib.params.decay_groups`. Groups that name their own
    decay rule need an optimizer that follows it (wdlib's): ValueError otherwise.
    """
    name, rule = cfg.optimizer["name"], cfg.optimizer.get("decay")
    if cfg.mup is not None:
        if name == "muon" or rule == "corrected":
            what = "the optimizer 'muon'" if name == "muon" else "optimizer.decay 'corrected'"
            raise ValueError(f"mup is not supported with {what}: their groups would have to be combined")
        groups = mup_groups(
            model,
            int(cfg.mup["base_width"]),
            int(cfg.model_args["width"]),
            cfg.mup.get("decay", "scaled"),
            bool(cfg.mup.get("zero_readout", True)),
        )
    elif name == "muon":
        if rule == "corrected":
            raise ValueError("optimizer.decay 'corrected' is not supported with the optimizer 'muon'")
        groups = muon_groups(model, cfg.decay_vectors)
    else:
        groups = decay_groups(model, cfg.decay_vectors, corrected=rule == "corrected")
    own = sorted({g["decay"] for g in groups if "decay" in g} - set(OPTIMIZERS[name].decays))
    if own:
        raise ValueError(
            f"optimizer {name!r} follows only decay {', '.join(repr(d) for d in OPTIMIZERS[name].decays)}, and "
            f"these parameter groups ask for {', '.join(repr(d) for d in own)}; use a wdlib optimizer (adam, sgd)"
        )
    counts = group_counts(groups)
    opt = make_optimizer(cfg.optimizer, groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, [{"name": g["name"], **counts[g["name"]]} for g in groups]
