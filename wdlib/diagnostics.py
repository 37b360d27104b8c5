"""Training diagnostics.

:class:`ShrinkageProbe` splits each step of an Adam-type optimizer into its data part and its decay
part, per weight, and measures the effective shrinkage each weight receives (claim DEC-2, chapter 1).
:class:`AngularProbe` records the norm, gradient norm and angular update of weight matrices every
step, and :func:`effective_lr` / :func:`adam_effective_lr` the effective learning rates of
scale-invariant layers (OVER-5, chapter 4). The Hessian measurements (:func:`hutchinson_trace`,
:func:`top_eigenvalue`, :func:`hvp`) live in :mod:`wdlib.hessian` and are re-exported here.
:data:`DIAGNOSTICS` and :data:`PROBES` name what a run configuration can ask the training loop
(:mod:`wdlib.train`) to record at each evaluation and at each step; :mod:`wdlib.measures` (which needs
the data and the models) adds its own diagnostics to them and holds the measures of the final model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from .hessian import EigenEstimate, TraceEstimate, hutchinson_trace, hvp, scale_aware_trace, top_eigenvalue
from .optim import decay_factor, decay_rule

__all__ = [
    "ShrinkageProbe",
    "UpdateRecorder",
    "AngularProbe",
    "RelativeUpdateProbe",
    "DIAGNOSTICS",
    "PROBES",
    "register_diagnostic",
    "effective_lr",
    "adam_effective_lr",
    "weight_norms",
    "update_to_weight_ratio",
    "weight_angle",
    "hvp",
    "hutchinson_trace",
    "top_eigenvalue",
    "scale_aware_trace",
    "TraceEstimate",
    "EigenEstimate",
]


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
        if any(
            "betas" not in optimizer.param_groups[gi] or "eps" not in optimizer.param_groups[gi]
            for gi in self._group_index.values()
        ):
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
            v_hat = st["exp_avg_sq"] / (1 - beta2**t)
            data_part = g["lr"] * (m / (1 - beta1**t)) / (v_hat.sqrt() + g["eps"])
            decay = (prev - p) - data_part
            prev64 = prev.double()
            self.cross[i] += decay.double() * prev64
            self.sq[i] += prev64 * prev64
            self.v_sum[i] += v_hat.double()
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue accumulating after a resume."""
        return {
            "m_data": [m.clone() for m in self.m_data],
            "cross": [c.clone() for c in self.cross],
            "sq": [q.clone() for q in self.sq],
            "v_sum": [v.clone() for v in self.v_sum],
            "count": self.count,
        }

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
    ``eta_t*lambda_t`` (``lr/reference_lr*lambda`` for the independent rule) and the final values.
    Chapter 2 (EMA-1) rebuilds ``theta_T`` from these with :func:`wdlib.ema.reconstruct`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, param: torch.Tensor, coords: int = 1024) -> None:
        self.optimizer, self.param = optimizer, param
        n = param.numel()
        k = min(int(coords), n)
        self.index = torch.arange(k, dtype=torch.int64) * (n - 1) // max(k - 1, 1)
        self.group_index = next(i for i, g in enumerate(optimizer.param_groups) if any(q is param for q in g["params"]))
        g = optimizer.param_groups[self.group_index]
        if "betas" not in g or decay_rule(g, optimizer) == "l2":
            raise ValueError(
                "UpdateRecorder needs Adam with decoupled or independent decay (wdlib's Adam with "
                "decay 'decoupled' or 'independent', or torch.optim.AdamW)"
            )
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
        shrink = decay_factor(g, self.optimizer)
        self.shrink.append(float(shrink))

    def state_dict(self) -> dict[str, Any]:
        return {"theta0": self.theta0, "updates": list(self.updates), "lr": list(self.lr), "shrink": list(self.shrink)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta0 = state["theta0"]
        self.updates, self.lr, self.shrink = list(state["updates"]), list(state["lr"]), list(state["shrink"])

    def result(self) -> dict[str, np.ndarray]:
        if not self.updates or self.theta0 is None:
            raise RuntimeError("the recorder has seen no step")
        return {
            "theta0": self.theta0.numpy(),
            "updates": torch.stack(self.updates).numpy(),
            "lr": np.array(self.lr),
            "shrink": np.array(self.shrink),
            "final": self._take(self.param).numpy(),
        }


def _update_recorder(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, tensor: int = 0, coords: int = 1024
) -> UpdateRecorder:
    """An :class:`UpdateRecorder` on the ``tensor``-th weight matrix of the model."""
    mats = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    if not 0 <= tensor < len(mats):
        raise ValueError(f"tensor must index one of the model's {len(mats)} weight matrices, got {tensor!r}")
    return UpdateRecorder(optimizer, mats[tensor], coords)


def _shrinkage_probe(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, start: int = 0, tensors: str | list[str] = "matrices"
) -> ShrinkageProbe:
    """A :class:`ShrinkageProbe` on the model's weight matrices ("matrices"), on every tensor ("all"), or
    on the parameters named in a list (``model.named_parameters()`` names, in the list's order)."""
    if isinstance(tensors, (list, tuple)):
        named = dict(model.named_parameters())
        unknown = [n for n in tensors if n not in named]
        if unknown or not tensors:
            raise ValueError(f"tensors: unknown parameter names {unknown}; the model has {sorted(named)}")
        return ShrinkageProbe(optimizer, [named[n] for n in tensors], start=start)
    if tensors not in ("matrices", "all"):
        raise ValueError(f"tensors must be 'matrices', 'all' or a list of parameter names, got {tensors!r}")
    params = [p for p in model.parameters() if p.requires_grad and (tensors == "all" or p.ndim >= 2)]
    return ShrinkageProbe(optimizer, params, start=start)


# --- norms and effective learning rates ----------------------------------------------------------------


def weight_norms(model: torch.nn.Module, *, matrices_only: bool = False) -> dict[str, float]:
    """``||w||`` (Frobenius) of each named parameter (only tensors with >= 2 dims if ``matrices_only``)."""
    return {
        n: float(p.detach().double().norm()) for n, p in model.named_parameters() if not matrices_only or p.ndim >= 2
    }


def effective_lr(lr: float | np.ndarray, weight_norm: float | np.ndarray, rule: str = "sgd") -> float | np.ndarray:
    """The effective learning rate of a scale-invariant weight ``w`` (one whose loss satisfies L(c w) = L(w)).

    Scale invariance gives ``grad L(w) = grad L(w/||w||) / ||w||``: the gradient shrinks like
    ``1/||w||`` and is orthogonal to ``w``. The angular step ``||dw|| / ||w||`` is then

    * SGD, ``dw = -eta * grad``: ``eta * ||grad L(w_hat)|| / ||w||^2``, so ``eta_eff = eta / ||w||^2``;
    * Adam-type, whose update size ignores the gradient's scale (``m / sqrt(v)`` is invariant to
      rescaling every gradient by ``1/||w||``): ``||dw|| ~ eta``, so ``eta_eff = eta / ||w||``.

    Without weight decay the norm only grows (each SGD step adds ``eta^2 ||grad||^2`` to ``||w||^2``),
    so ``eta_eff`` decays; decay holds the norm at an equilibrium and with it ``eta_eff``
    (Andriushchenko et al., arXiv 2310.04415; van Laarhoven 2017, arXiv 1706.05350; OVER-5).

    ``rule``: "sgd" or "adam". Works elementwise on arrays.
    """
    if rule not in ("sgd", "adam"):
        raise ValueError(f"rule must be 'sgd' or 'adam', got {rule!r}")
    norm = np.asarray(weight_norm, dtype=np.float64)
    out = np.asarray(lr, dtype=np.float64) / (norm**2 if rule == "sgd" else norm)
    return float(out) if out.ndim == 0 else out


@torch.no_grad()
def adam_effective_lr(optimizer: torch.optim.Optimizer) -> float:
    """Mean over every weight of ``lr / (sqrt(v_hat) + eps)``: the per-weight step size of an Adam-type
    optimizer (what the source's nanoGPT fork logs as ``avg_adam_elr``; Andriushchenko et al.).

    ``v_hat = exp_avg_sq / (1 - beta2^t)`` is the bias-corrected second moment; weights without state
    yet are skipped. NaN before the first step.
    """
    total, count = 0.0, 0
    for g in optimizer.param_groups:
        if "betas" not in g:
            raise ValueError("adam_effective_lr needs an Adam-type optimizer (param groups with betas and eps)")
        for p in g["params"]:
            st = optimizer.state.get(p, {})
            if "exp_avg_sq" not in st:
                continue
            step = float(st["step"])
            v_hat = st["exp_avg_sq"].double() / (1 - g["betas"][1] ** step)
            total += float((g["lr"] / (v_hat.sqrt() + g["eps"])).sum())
            count += p.numel()
    return total / count if count else float("nan")


def weight_angle(before: Iterable[torch.Tensor], after: Iterable[torch.Tensor]) -> float:
    """The angle (radians) between two weight vectors, each given as a list of tensors taken together:
    ``arccos(<w0, w1> / (||w0|| ||w1||))``, computed in float64."""
    b = [t.detach().double() for t in before]
    a = [t.detach().double() for t in after]
    dot = sum(float((x * y).sum()) for x, y in zip(b, a))
    n0 = np.sqrt(sum(float((x * x).sum()) for x in b))
    n1 = np.sqrt(sum(float((y * y).sum()) for y in a))
    return float(np.arccos(np.clip(dot / max(n0 * n1, 1e-300), -1.0, 1.0)))


def update_to_weight_ratio(before: Iterable[torch.Tensor], after: Iterable[torch.Tensor]) -> np.ndarray:
    """``||w_after - w_before|| / ||w_before||`` per tensor (the relative update of one step)."""
    return np.array(
        [float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)) for b, a in zip(before, after)]
    )


class _RowsProbe:
    """A probe that records every ``every``-th step from ``start`` into ``self.rows`` (name -> list), with
    ``self.count``, and saves them with a checkpoint."""

    rows: dict[str, list[Any]]
    count: int
    start: int
    every: int

    def _due(self, step: int) -> bool:
        """Whether ``step`` is recorded: every ``every``-th step from ``start`` on."""
        return step >= self.start and (step - self.start) % self.every == 0

    def state_dict(self) -> dict[str, Any]:
        """The rows recorded so far (plain lists: checkpoints load with ``weights_only=True``)."""
        return {"rows": {k: list(v) for k, v in self.rows.items()}, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (a resumed run)."""
        self.rows = {k: list(v) for k, v in state["rows"].items()}
        self.count = state["count"]


class AngularProbe(_RowsProbe):
    """Per step, for chosen weight matrices: ``||w||``, the gradient norm, the update norm and the angle
    between ``w_t`` and ``w_{t+1}`` (the angular update, in radians).

    For a scale-invariant matrix the angle is set by the effective learning rate
    (:func:`effective_lr`): ``eta * ||grad L(w_hat)|| / ||w||^2`` for SGD. ``grad_norm`` is ``p.grad``
    as the optimizer receives it (the data gradient; an L2 penalty is added inside the optimizer).
    Records every ``every`` steps from ``start``.

    With ``per_row=True`` it also records ``row_angle``: the angular update of every row (each output
    neuron: the row's angle between ``w_t`` and ``w_{t+1}``), the rows of the watched matrices one after
    another (``sum of their rows`` values per recorded step), so a neuron's average over steps can be
    compared with another's: the per-neuron equilibrium of Kosson et al. (arXiv 2305.17212, claim NEW-3,
    chapter 6).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: Iterable[torch.Tensor],
        *,
        every: int = 1,
        start: int = 0,
        per_row: bool = False,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        if not isinstance(per_row, bool):
            raise ValueError(f"per_row must be True or False, got {per_row!r}")
        self.optimizer, self.params, self.every, self.start = optimizer, list(params), every, start
        self.per_row = per_row
        names = ["step", "lr", "norm", "grad_norm", "update_norm", "angle"]
        if per_row:
            names.append("row_angle")
        self.rows: dict[str, list[Any]] = {k: [] for k in names}
        self._prev: list[torch.Tensor] | None = None
        self.count = 0

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        self._prev = None
        if not self._due(step):
            return
        self._prev = [p.detach().double().clone() for p in self.params]
        self.rows["step"].append(step)
        self.rows["lr"].append(float(self.optimizer.param_groups[0]["lr"]))
        self.rows["norm"].append([float(w.norm()) for w in self._prev])
        self.rows["grad_norm"].append(
            [float(p.grad.double().norm()) if p.grad is not None else float("nan") for p in self.params]
        )

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        if self._prev is None:
            return
        upd, ang, rows = [], [], []
        for w0, p in zip(self._prev, self.params):
            w1 = p.detach().double()
            upd.append(float((w1 - w0).norm()))
            ang.append(weight_angle([w0], [w1]))
            if self.per_row:
                a, b = w0.flatten(1), w1.flatten(1)
                cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)
                rows += torch.arccos(cos.clamp(-1.0, 1.0)).tolist()
        self.rows["update_norm"].append(upd)
        self.rows["angle"].append(ang)
        if self.per_row:
            self.rows["row_angle"].append(rows)
        self._prev = None
        self.count += 1

    def result(self) -> dict[str, np.ndarray]:
        """``step``, ``lr`` (steps,), and ``norm``, ``grad_norm``, ``update_norm``, ``angle`` (steps, tensors)."""
        return {k: np.asarray(v, dtype=np.float64) for k, v in self.rows.items()}


def _angular_probe(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    tensors: list[int] | None = None,
    every: int = 1,
    start: int = 0,
    per_row: bool = False,
) -> AngularProbe:
    """An :class:`AngularProbe` on the weight matrices of the given indices (model order), all by default."""
    mats = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    idx = list(range(len(mats))) if tensors is None else list(tensors)
    if not idx or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(mats) for i in idx):
        raise ValueError(f"tensors must index the model's {len(mats)} weight matrices, got {tensors!r}")
    return AngularProbe(optimizer, [mats[i] for i in idx], every=every, start=start, per_row=per_row)


class RelativeUpdateProbe(_RowsProbe):
    """Relative update size ``||W_{t+1} - W_t|| / ||W_t||`` of the weight matrices at every step.

    The norms are global over the watched tensors (the Frobenius norm of all of them together),
    computed in float32 with ``_foreach`` kernels, so recording every step costs two norms of the
    parameters. Under decoupled decay with Adam the relative update is ``lr * ||u - lambda*W|| / ||W||``:
    a smaller weight norm makes the same ``lr`` a larger relative step, the *effective* learning
    rate of Andriushchenko et al. (arXiv 2310.04415, Section 4; claim LLM-3, chapter 5). Records
    ``step``, ``lr``, ``weight_norm`` and ``update_norm`` every ``every`` steps from ``start``, and
    ``step_norm`` = ``||W_{t+1} - W_t + s_t W_t||``, the update without the decay's own shrink
    ``s_t W_t`` (``s_t`` from :func:`wdlib.optim.decay_factor`: ``lr*lambda`` for decoupled decay, wdlib's
    or ``torch.optim.AdamW``'s, ``lr/reference_lr*lambda`` for the independent rule, 0 for an L2 penalty,
    whose decay goes through the gradient).
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor], *, every: int = 1, start: int = 0
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.optimizer, self.params, self.every, self.start = optimizer, list(params), every, start
        if not self.params:
            raise ValueError("RelativeUpdateProbe needs at least one tensor to watch")
        self.rows: dict[str, list[float]] = {k: [] for k in ("step", "lr", "weight_norm", "update_norm", "step_norm")}
        self._prev: list[torch.Tensor] | None = None
        self._shrink: list[float] = []
        self.count = 0

    def _shrinks(self) -> list[float]:

        group_of = {id(p): g for g in self.optimizer.param_groups for p in g["params"]}
        out = []
        for p in self.params:
            g = group_of.get(id(p))
            out.append(0.0 if g is None else decay_factor(g, self.optimizer))
        return out

    @staticmethod
    def _norm(tensors: list[torch.Tensor]) -> float:
        return float(torch.stack(torch._foreach_norm(tensors)).double().pow(2).sum().sqrt())

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        self._prev = None
        if not self._due(step):
            return
        self._prev = [p.detach().float().clone() for p in self.params]
        self._shrink = self._shrinks()
        self.rows["step"].append(step)
        self.rows["lr"].append(float(self.optimizer.param_groups[0]["lr"]))
        self.rows["weight_norm"].append(self._norm(self._prev))

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        if self._prev is None:
            return
        diff = torch._foreach_sub([p.detach().float() for p in self.params], self._prev)
        self.rows["update_norm"].append(self._norm(diff))
        torch._foreach_add_(diff, torch._foreach_mul(self._prev, self._shrink))
        self.rows["step_norm"].append(self._norm(diff))
        self._prev = None
        self.count += 1

    def result(self) -> dict[str, np.ndarray]:
        """``step``, ``lr``, ``weight_norm``, ``update_norm``, ``step_norm``, and ``ratio`` = update / weight
        norm and ``step_ratio`` = step_norm / weight norm (without the decay's shrink), per recorded step."""
        out = {k: np.asarray(v, dtype=np.float64) for k, v in self.rows.items()}
        out["ratio"] = out["update_norm"] / out["weight_norm"]
        out["step_ratio"] = out["step_norm"] / out["weight_norm"]
        return out


def _relative_update_probe(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, every: int = 1, start: int = 0
) -> RelativeUpdateProbe:
    """A :class:`RelativeUpdateProbe` on every weight matrix (tensors with >= 2 dims) of the model."""
    return RelativeUpdateProbe(
        optimizer, [p for p in model.parameters() if p.requires_grad and p.ndim >= 2], every=every, start=start
    )


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


def _matrix_norm(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> np.ndarray:
    """Frobenius norm of each weight matrix (tensors with >= 2 dims), in model order."""
    return np.array(list(weight_norms(model, matrices_only=True).values()))


def _adam_elr(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """:func:`adam_effective_lr` as a diagnostic recorded at each evaluation."""
    return adam_effective_lr(optimizer)


#: Diagnostics recorded at each evaluation, as ``name -> f(model, optimizer) -> float or array``. A function
#: with the attribute ``needs_batch = True`` is called as ``f(model, optimizer, batch=(x, y), autocast=...)``
#: with the first validation batch and the run's autocast context factory. These need the model and the
#: optimizer alone; :mod:`wdlib.measures` adds those that need a model class (``attn_logit_max``) with
#: :func:`register_diagnostic`, and is where the training loop reads the registries from.
#:
#: :meta hide-value:
DIAGNOSTICS: dict[str, Callable[[torch.nn.Module, torch.optim.Optimizer], Any]] = {
    "params": _params_snapshot,
    "matrix_rms": _matrix_rms,
    "matrix_norm": _matrix_norm,
    "adam_elr": _adam_elr,
}

#: Hooks that watch every step, as ``name -> factory(model, optimizer, **args)`` returning an object with
#: ``before_step(step)``, ``after_step(step)``, ``state_dict()``, ``load_state_dict()`` and ``result()``.
#:
#: :meta hide-value:
PROBES: dict[str, Callable[..., Any]] = {
    "shrinkage": _shrinkage_probe,
    "updates": _update_recorder,
    "angular": _angular_probe,
    "relative_update": _relative_update_probe,
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
