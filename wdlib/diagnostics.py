"""Training diagnostics.

:class:`ShrinkageProbe` splits each step of an Adam-type optimizer into its data part and its decay
part, per weight, and measures the effective shrinkage each weight receives (claim DEC-2, chapter 1).
:data:`DIAGNOSTICS` and :data:`PROBES` name what a run configuration can ask the training loop
(:mod:`wdlib.train`) to record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

__all__ = ["ShrinkageProbe", "UpdateRecorder", "DIAGNOSTICS", "PROBES", "register_diagnostic"]


class ShrinkageProbe:
    """Per-weight effective decay of Adam with an L2 penalty or decoupled decay, measured on a run.

    Adam's first moment is linear in the gradients, so with ``g = g_data + lambda*theta`` it splits
    exactly into ``m = m_data + m_penalty``. The probe keeps its own EMA ``m_data`` of the raw
    gradients (same beta1, same lerp as torch), and after each step measures the decay part as what
    the step moved beyond the data part::

        decay_t = (theta_{t-1} - theta_t) - lr * m_data_hat / (sqrt(v_hat) + eps)

    ``v_hat`` is the optimizer's own bias-corrected second moment. For AdamW ``decay_t`` comes out as
    ``lr*lambda*theta_{t-1}``; for Adam+L2 as ``lr*m_penalty_hat/(sqrt(v_hat)+eps)``. Over the window
    the per-weight shrinkage rate is the least-squares ratio ``sum_t decay_t*theta_{t-1} / sum_t
    theta_{t-1}^2`` (per step), reported with the mean ``v_hat``.

    Use: call :meth:`before_step` after ``backward()`` and before ``opt.step()``, and :meth:`after_step`
    after it (``wdlib.train.train`` does for the probes a run configuration names). Only steps at or after
    ``start`` are accumulated. Works on an optimizer whose state has ``exp_avg_sq`` and ``step`` and whose
    groups have ``betas``, ``eps`` and ``lr`` (``wdlib.optim.Adam``, ``torch.optim.Adam``/``AdamW``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor], start: int = 0) -> None:
        self.optimizer = optimizer
        self.params = [p for p in params]
        wanted = {id(p) for p in self.params}
        # group *indices*, not the group dicts: optimizer.load_state_dict (a resumed run) replaces the dicts
        self._group_index: dict[int, int] = {}
        for gi, g in enumerate(optimizer.param_groups):
            for p in g["params"]:
                if id(p) in wanted:
                    self._group_index[id(p)] = gi
        missing = [i for i, p in enumerate(self.params) if id(p) not in self._group_index]
        if missing:
            raise ValueError(f"params {missing} are not in the optimizer's param groups")
        if any("betas" not in optimizer.param_groups[gi] or "eps" not in optimizer.param_groups[gi]
               for gi in self._group_index.values()):
            raise ValueError("ShrinkageProbe needs an Adam-type optimizer (param groups with betas and eps)")
        self.start = start
        self.m_data = [torch.zeros_like(p) for p in self.params]
        self._prev: list[torch.Tensor] = []
        self._active = False
        self.cross = [torch.zeros_like(p, dtype=torch.float64) for p in self.params]
        self.sq = [torch.zeros_like(p, dtype=torch.float64) for p in self.params]
        self.v_sum = [torch.zeros_like(p, dtype=torch.float64) for p in self.params]
        self.count = 0

    def _group(self, p: torch.Tensor) -> dict[str, Any]:
        return self.optimizer.param_groups[self._group_index[id(p)]]

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        for p, m in zip(self.params, self.m_data):
            beta1 = self._group(p)["betas"][0]
            m.lerp_(p.grad, 1 - beta1)
        self._active = step >= self.start
        if self._active:
            self._prev = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        if not self._active:
            return
        for i, (p, prev, m) in enumerate(zip(self.params, self._prev, self.m_data)):
            g = self._group(p)
            st = self.optimizer.state[p]
            beta1, beta2 = g["betas"]
            t = float(st["step"])
            v_hat = st["exp_avg_sq"] / (1 - beta2 ** t)
            data_part = g["lr"] * (m / (1 - beta1 ** t)) / (v_hat.sqrt() + g["eps"])
            decay = (prev - p) - data_part
            prev64 = prev.double()
            self.cross[i] += decay.double() * prev64
            self.sq[i] += prev64 * prev64
            self.v_sum[i] += v_hat.double()
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue accumulating after a resume."""
        return {"m_data": [m.clone() for m in self.m_data], "cross": [c.clone() for c in self.cross],
                "sq": [q.clone() for q in self.sq], "v_sum": [v.clone() for v in self.v_sum], "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("m_data", "cross", "sq", "v_sum"):
            for mine, saved in zip(getattr(self, name), state[name]):
                mine.copy_(saved)
        self.count = int(state["count"])

    def result(self) -> dict[str, np.ndarray]:
        """``shrinkage`` (per-step decay rate per weight) and ``v_hat`` (its mean), flattened."""
        if self.count == 0:
            raise RuntimeError("the probe has accumulated no step yet")
        shrink = torch.cat([(c / s.clamp_min(1e-300)).reshape(-1) for c, s in zip(self.cross, self.sq)])
        v = torch.cat([(v / self.count).reshape(-1) for v in self.v_sum])
        return {"shrinkage": shrink.cpu().numpy(), "v_hat": v.cpu().numpy()}


class UpdateRecorder:
    """Records, for ``coords`` evenly strided coordinates of one weight matrix, everything the EMA
    closed form needs: ``theta_0``, each step's Adam direction ``u_t = m_hat/(sqrt(v_hat)+eps)`` (read
    from the optimizer's state after the step, not from the parameters), ``eta_t``, the decay factor
    ``eta_t*lambda_t`` (``lr/initial_lr*lambda`` for the independent rule) and the final values.
    Chapter 2 (EMA-1) rebuilds ``theta_T`` from these with :func:`wdlib.ema.reconstruct`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, param: torch.Tensor, coords: int = 1024) -> None:
        self.optimizer, self.param = optimizer, param
        n = param.numel()
        k = min(int(coords), n)
        self.index = torch.arange(k, dtype=torch.int64) * (n - 1) // max(k - 1, 1)
        self.group_index = next(i for i, g in enumerate(optimizer.param_groups)
                                if any(q is param for q in g["params"]))
        g = optimizer.param_groups[self.group_index]
        if "betas" not in g or g.get("decay", "decoupled") == "l2":
            raise ValueError("UpdateRecorder needs Adam with decoupled or independent decay")
        self.theta0: torch.Tensor | None = None
        self.updates: list[torch.Tensor] = []
        self.lr: list[float] = []
        self.shrink: list[float] = []

    def _take(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().reshape(-1)[self.index.to(t.device)].double().cpu()

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        if self.theta0 is None:
            self.theta0 = self._take(self.param)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        g = self.optimizer.param_groups[self.group_index]
        st = self.optimizer.state[self.param]
        beta1, beta2 = g["betas"]
        t = float(st["step"])
        m_hat = self._take(st["exp_avg"]) / (1 - beta1**t)
        v_hat = self._take(st["exp_avg_sq"]) / (1 - beta2**t)
        self.updates.append(m_hat / (v_hat.sqrt() + g["eps"]))
        self.lr.append(float(g["lr"]))
        shrink = g["lr"] / g["initial_lr"] * g["weight_decay"] if g.get("decay") == "independent" \
            else g["lr"] * g["weight_decay"]
        self.shrink.append(float(shrink))

    def state_dict(self) -> dict[str, Any]:
        return {"theta0": self.theta0, "updates": list(self.updates), "lr": list(self.lr), "shrink": list(self.shrink)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta0 = state["theta0"]
        self.updates, self.lr, self.shrink = list(state["updates"]), list(state["lr"]), list(state["shrink"])

    def result(self) -> dict[str, np.ndarray]:
        if not self.updates or self.theta0 is None:
            raise RuntimeError("the recorder has seen no step")
        return {"theta0": self.theta0.numpy(), "updates": torch.stack(self.updates).numpy(),
                "lr": np.array(self.lr), "shrink": np.array(self.shrink), "final": self._take(self.param).numpy()}


def _update_recorder(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, tensor: int = 0,
                     coords: int = 1024) -> UpdateRecorder:
    """An :class:`UpdateRecorder` on the ``tensor``-th weight matrix of the model."""
    mats = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    if not 0 <= tensor < len(mats):
        raise ValueError(f"tensor must index one of the model's {len(mats)} weight matrices, got {tensor!r}")
    return UpdateRecorder(optimizer, mats[tensor], coords)


def _shrinkage_probe(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, start: int = 0,
                     tensors: str = "matrices") -> ShrinkageProbe:
    """A :class:`ShrinkageProbe` on the model's weight matrices ("matrices") or on every tensor ("all")."""
    if tensors not in ("matrices", "all"):
        raise ValueError(f"tensors must be 'matrices' or 'all', got {tensors!r}")
    params = [p for p in model.parameters() if p.requires_grad and (tensors == "all" or p.ndim >= 2)]
    return ShrinkageProbe(optimizer, params, start=start)


PARAMS_SNAPSHOT_MAX = 32_768


def _params_snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> np.ndarray:
    """The parameters, flattened in model order, as float64, for trajectory comparisons between runs.

    Every coordinate when there are at most ``PARAMS_SNAPSHOT_MAX`` (32,768); otherwise that many
    evenly strided ones (the same for every run of the same model), to keep histories small.
    """
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    if flat.numel() > PARAMS_SNAPSHOT_MAX:
        n, k = flat.numel(), PARAMS_SNAPSHOT_MAX
        flat = flat[torch.arange(k, device=flat.device, dtype=torch.int64) * (n - 1) // (k - 1)]
    return flat.double().cpu().numpy()


def _matrix_rms(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> np.ndarray:
    """RMS of each weight matrix (tensors with >= 2 dims), in model order."""
    return np.array([float(p.detach().double().pow(2).mean().sqrt()) for p in model.parameters() if p.ndim >= 2])


#: Diagnostics recorded at each evaluation: ``name -> f(model, optimizer) -> float or array``.
DIAGNOSTICS: dict[str, Callable[[torch.nn.Module, torch.optim.Optimizer], Any]] = {
    "params": _params_snapshot,
    "matrix_rms": _matrix_rms,
}

#: Hooks that watch every step: ``name -> factory(model, optimizer, **args)`` returning an object with
#: ``before_step(step)``, ``after_step(step)``, ``state_dict()``, ``load_state_dict()`` and ``result()``.
PROBES: dict[str, Callable[..., Any]] = {
    "shrinkage": _shrinkage_probe,
    "updates": _update_recorder,
}


def register_diagnostic(name: str, fn: Callable[[torch.nn.Module, torch.optim.Optimizer], Any]) -> None:
    """Add a chapter's own diagnostic ``fn(model, optimizer) -> float or array`` under ``name``.

    A run configuration then names it in ``diagnostics``. The name, not the function, enters the
    run's key: register a changed function under a new name, or results stored for the old one are
    returned for it.
    """
    if not isinstance(name, str) or not name or not callable(fn):
        raise ValueError("register_diagnostic needs a non-empty name and a callable fn(model, optimizer)")
    DIAGNOSTICS[name] = fn
