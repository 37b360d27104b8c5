"""What a run measures that needs its data or its model class: the measures of the final model, and the
diagnostics that read a model's internals.

:data:`MEASURES` names the measurements of the final model on its dataset that a run configuration can ask
for (``measures``): the Hessian trace and top eigenvalue of the training loss (:mod:`wdlib.hessian`, of
the run's objective :func:`wdlib.objective.loss`), how much label noise a model memorized, and the loss on
seen and unseen training text (:func:`wdlib.objective.evaluate`). The diagnostic ``attn_logit_max``
(:func:`wdlib.models.attention_logit_max`) joins the model-free ones of :mod:`wdlib.diagnostics` in
:data:`DIAGNOSTICS` when this module is imported. The training loop (:mod:`wdlib.train`) reads the three
registries, :data:`DIAGNOSTICS`, :data:`PROBES` and :data:`MEASURES`, from here; a chapter adds its own
diagnostic with :func:`register_diagnostic`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from . import objective
from .diagnostics import DIAGNOSTICS, PROBES, register_diagnostic
from .hessian import hutchinson_trace, scale_aware_trace, top_eigenvalue
from .models import attention_logit_max

__all__ = ["DIAGNOSTICS", "PROBES", "MEASURES", "register_diagnostic"]


# --- diagnostics that need a model class ------------------------------------------------------------------


def _attn_logit_max(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    batch: tuple[torch.Tensor, torch.Tensor],
    autocast: Callable[[], Any] | None = None,
) -> np.ndarray:
    """:func:`wdlib.models.attention_logit_max` per layer on a fixed validation batch, in the run's autocast."""
    return attention_logit_max(model, batch[0], autocast)


_attn_logit_max.needs_batch = True  # type: ignore[attr-defined]
register_diagnostic("attn_logit_max", _attn_logit_max)


# --- measures of the final model on its data ------------------------------------------------------------


def _train_points(model: torch.nn.Module, ds: Any, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``samples`` training points (a fixed subset: the training split is already in a seeded
    order), on the model's device and in its dtype."""
    if not hasattr(ds, "x_train"):
        raise ValueError("this measure applies to classification data (x_train, y_train)")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    p = next(model.parameters())
    n = min(samples, ds.x_train.shape[0])
    return ds.x_train[:n].to(p.device, p.dtype), ds.y_train[:n].to(p.device)


def _measure_trace(
    model: torch.nn.Module,
    ds: Any,
    *,
    probes: int = 10,
    samples: int = 1000,
    seed: int = 0,
    probe_chunk: int | None = None,
    data_chunk: int | None = 250,
    estimator: str = "hutchinson",
) -> dict[str, float]:
    """Trace of the training-loss Hessian on the first ``samples`` training points, eval mode.

    :func:`wdlib.hessian.hessian_trace` (alias ``hutchinson_trace``) with ``estimator`` ("hutchinson", the
    default, "hutchpp" or "xtrace"; ``probes`` is the budget of Hessian-vector products). Returns ``value``,
    ``stderr``, ``probes``, ``samples``, ``hvps`` (the products used) and ``scale_aware`` (sum over tensors
    of the tensor's trace times its squared norm, :func:`wdlib.hessian.scale_aware_trace`), all numbers:
    the training loop stores every value as a float, so the estimator's name is not among them (it is in
    the run's ``measures`` specification).
    ``data_chunk`` (250) bounds the memory of the batched probes and was the fastest setting on CPU
    (``benchmarks/hessian_trace.py``).
    """
    x, y = _train_points(model, ds, samples)
    est = hutchinson_trace(
        model,
        x,
        y,
        probes=probes,
        seed=seed,
        loss=objective.loss,
        probe_chunk=probe_chunk,
        data_chunk=data_chunk,
        mode="eval",
        estimator=estimator,
    )
    return {
        "value": est.value,
        "stderr": est.stderr,
        "probes": est.probes,
        "samples": est.samples,
        "hvps": est.hvps,
        "scale_aware": scale_aware_trace(est, model),
    }


def _measure_top_eigenvalue(
    model: torch.nn.Module, ds: Any, *, iters: int = 100, samples: int = 1000, seed: int = 0, tol: float = 1e-4
) -> dict[str, float]:
    """Largest-magnitude Hessian eigenvalue on the first ``samples`` training points (power iteration, eval mode)."""
    x, y = _train_points(model, ds, samples)
    est = top_eigenvalue(model, x, y, iters=iters, tol=tol, seed=seed, loss=objective.loss, mode="eval")
    return {"value": est.value, "iterations": est.iterations, "residual": est.residual}


@torch.no_grad()
def _measure_noise_fit(model: torch.nn.Module, ds: Any) -> dict[str, float]:
    """Of the training samples with a wrong label (:func:`wdlib.data.with_label_noise`), the fraction the
    model predicts as that wrong label (``noisy_fit``: memorized noise); of the others, the fraction it
    gets right (``clean_fit``). Eval mode."""
    if getattr(ds, "noisy", None) is None:
        raise ValueError("noise_fit needs a dataset with label noise (RunConfig.label_noise > 0)")
    was = model.training
    model.eval()
    p = next(model.parameters())
    pred = torch.cat(
        [
            model(ds.x_train[i : i + 1024].to(p.device, p.dtype)).argmax(-1).cpu()
            for i in range(0, ds.x_train.shape[0], 1024)
        ]
    )
    model.train(was)
    right = pred == ds.y_train.cpu()
    noisy = ds.noisy.cpu()
    return {
        "noisy_fit": float(right[noisy].double().mean()) if noisy.any() else float("nan"),
        "clean_fit": float(right[~noisy].double().mean()),
    }


def _measure_seen_unseen(
    model: torch.nn.Module,
    ds: Any,
    *,
    run: Any,
    autocast: Callable[[], Any] | None = None,
    windows: int = 256,
    recent: float = 0.1,
    seed: int = 0,
) -> dict[str, float]:
    """Loss on training windows the run trained on, on as many it never touched, and on validation windows.

    ``windows`` of each kind, in the run's autocast: ``seen`` drawn (seeded by ``seed``) from the
    windows of all training batches (:meth:`wdlib.data.TokenDataset.train_starts`); ``recent`` from
    the batches of the last ``recent`` fraction of the steps (what a model would remember best);
    ``unseen``, training-split windows no batch touched (:meth:`~wdlib.data.TokenDataset.unseen_starts`);
    ``val``, random windows of the validation split. Unseen minus seen near zero is single-pass
    training's signature: the model has not memorized what it saw (claim LLM-1, chapter 5).
    Returns ``seen_loss``, ``recent_loss``, ``unseen_loss``, ``val_loss`` and ``gap`` = unseen - seen.
    """
    if not hasattr(ds, "train_starts"):
        raise ValueError("the seen_unseen measure applies to language data (a TokenDataset)")
    if isinstance(windows, bool) or not isinstance(windows, int) or windows < 1:
        raise ValueError(f"windows must be an integer >= 1, got {windows!r}")
    if not 0 < recent <= 1:
        raise ValueError(f"recent must be a fraction in (0, 1], got {recent!r}")
    seen_all = ds.train_starts(run.steps, run.batch_size, run.block_size, run.seed)
    gen = torch.Generator().manual_seed(seed)
    seen = seen_all[torch.randperm(seen_all.numel(), generator=gen)[:windows]]
    last = seen_all[-max(1, int(round(recent * run.steps))) * run.batch_size :]
    recent_starts = last[torch.randperm(last.numel(), generator=gen)[:windows]]
    unseen = ds.unseen_starts(windows, run.block_size, seen_all, seed=seed)
    val = torch.randint(0, len(ds.val) - run.block_size, (windows,), generator=gen)
    device = next(model.parameters()).device
    out = {}
    for name, starts, split in (
        ("seen", seen, "train"),
        ("recent", recent_starts, "train"),
        ("unseen", unseen, "train"),
        ("val", val, "val"),
    ):
        out[f"{name}_loss"] = objective.evaluate(
            model, ds.windows(starts, run.block_size, run.batch_size, split=split, device=device), autocast
        )[0]
    out["gap"] = out["unseen_loss"] - out["seen_loss"]
    return out


_measure_seen_unseen.needs_run = True  # type: ignore[attr-defined]


#: Measurements of the final model on its dataset, as ``name -> f(model, dataset, **args) -> {value: float}``;
#: a run configuration names them in ``measures`` and the values land in ``final["<name>/<value>"]``. A
#: function with the attribute ``needs_run = True`` also gets ``run=<RunConfig>, autocast=<context factory>``.
#:
#: :meta hide-value:
MEASURES: dict[str, Callable[..., dict[str, float]]] = {
    "hessian_trace": _measure_trace,
    "top_eigenvalue": _measure_top_eigenvalue,
    "noise_fit": _measure_noise_fit,
    "seen_unseen": _measure_seen_unseen,
}
