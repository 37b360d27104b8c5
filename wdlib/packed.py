"""Packed training: runs that differ only in per-member scalars, trained as one batched model.

A sweep over seeds, learning rates and weight decays of a tiny model is, run by run, a long series of
small kernels: on a GPU each run is bound by kernel launches, not arithmetic. :func:`train_packed` trains
``M`` such configurations at once. Their parameters are stacked along a new first axis (``[M, ...]``),
one forward and backward pass of the stacked model runs the ``M`` members side by side
(:func:`torch.func.functional_call` under :func:`torch.vmap`, so every matmul is one batched matmul),
and :class:`PackedOptimizer` steps all members with per-member learning rates and decays.

What may differ between the members of a pack (:data:`VARYING`): ``seed`` (initial weights and batch
order), ``lr``, ``weight_decay``, their schedules, ``perturb_step`` and ``init_from`` (the stored snapshot
a member starts from). Everything else (model, data,
steps, batch size, optimizer and its decay rule, precision, evaluation) is shared: :func:`signature`.

Each member is its own run: its own :class:`~wdlib.train.RunState` (schedules, history, snapshots, EMA,
running minimum of the loss), its own divergence (a member whose loss is not finite or exceeds
``divergence_factor`` times its running minimum is taken out of the stack at that step, with the
weights it had, and the others go on), its own :class:`~wdlib.train.RunResult` with the measures of its
final model. A pack checkpoints as a whole (every member's run state, the stacked optimizer state and
the set of members still training) and resumes bit-identically on CPU.

What is trained alone instead (:func:`why_not_packed`, decided automatically and reported in
``result.info["pack"]``): active dropout (its random masks under ``vmap`` would not be the solo run's), the
bf16-pure precision (its rounding remedies live in the solo optimizer), optimizers other than wdlib's Adam
and SGD, and DDP. Probes and diagnostics, written for one model and one optimizer, run per member: each
member's own module holds views of its slice of the stacked weights, and around their calls its own
parameters and optimizer are given views of its slice of the stacked gradients and optimizer state
(:meth:`_Pack.expose`). BatchNorm packs (its running statistics are stacked buffers), and so does label
noise (the members share the dataset, noisy labels included, as their solo runs would).

Parity: a member is not bit-identical to its solo run, only close to it (:data:`PARITY_RTOL`). The
batched matmuls reduce in another order than the solo ones, and the packed optimizer does Adam's and
SGD's arithmetic with ``_foreach`` ops on per-member scalars where the solo run uses torch's fused
kernel, which rounds its intermediate products differently. Both are float32 rounding differences of
about 1e-7 per step; training amplifies them slowly, so a float32 member's history and weights stay
within :data:`PARITY_RTOL` of its solo run (tested over 60 steps; a float64 member within 1e-6, limited by
the loss, which the training step computes in float32 for every dtype), and the packed optimizer given the
same gradients equals the solo one to 1e-12 in float64. Under ``bf16-autocast`` the members differ from
their solo runs at bfloat16's resolution instead (measured up to 7e-3 relative in a GPT's validation loss
after 30 steps): packing there changes results at the level that seeds do, not more. Over long runs any
float-level difference grows as training amplifies it, in float32 too: ``benchmarks/packed.py`` at the
chapters' smoke settings (100 steps) measured final training losses within 1e-7 to 5e-3 relative of the
solo runs, the largest for the scale-invariant MLPs at chapter 4's learning rate; that is the size of the
difference between two CPUs, which the verdicts' seed-spread margins are built to absorb.

The GPT packs too, but torch 2.13 has no ``vmap`` batching rule for the CPU flash-attention kernel (nor for
CUDA's flash/efficient kernels): attention then loops over the members inside the batched call (a
performance warning, silenced here), so a packed GPT gains less than an MLP (``benchmarks/packed.py``).

When to pack (:func:`plan_packs`, ``pack="auto"``): on a GPU always, where the members' launches collapse
into one; elsewhere never (:data:`CPU_REASON`), and ``pack="always"`` packs anyway. On a 2-core CPU,
``benchmarks/packed.py`` (one thread, 8 float32 members, no evaluation) measured packing 1.3x for
MLP-128x2 at batch 128, 1.0x for MLP-256x2, 0.65x for MLP-512x2 and 0.8-1.1x for 1-D ConvNets; but the
chapters' smoke build, which trains in two single-thread worker processes with frequent evaluations and
diagnostics and packs of 2-5 members, ran slower packed: chapter 1 took 92 s packed against 82 s alone
(same machine, same day), its float64 packs of 3 at 2.3 ms per member-step against 1.6 ms for a run alone
(its float32 packs of 5 at 1.0 ms against 1.3 ms). Packing pays on a CPU only in a narrow window (float32,
small linear models, many members), too narrow for a default.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import models
from .components import build_data, run_data
from .config import RunConfig
from .objective import loss_and_correct, model_loss
from .optim import SGD, Adam, decay_factor
from .progress import progress_bar, show_progress
from .runtime import resolve_device
from .train import (
    RunResult,
    RunState,
    _atomic_save,
    _autocast,
    _cpu_copy,
    _diagnostics,
    _diverges,
    _Feed,
    _group_norms,
    _param_dtype,
    _result,
    _rng_state,
    _set_rng_state,
    load_checkpoint,
)

__all__ = [
    "VARYING",
    "PARITY_RTOL",
    "CPU_REASON",
    "PACK_MODES",
    "PACK_FORMAT",
    "signature",
    "why_not_packed",
    "model_obstacle",
    "plan_packs",
    "pack_key",
    "PackedOptimizer",
    "train_packed",
]

#: Configuration fields in which the members of one pack may differ.
VARYING: tuple[str, ...] = ("seed", "lr", "weight_decay", "lr_schedule", "wd_schedule", "perturb_step", "init_from")
#: Relative tolerance of a packed member's final training loss against its solo run (see the module docstring).
PARITY_RTOL = 1e-3
#: Why ``pack="auto"`` trains alone on a device other than a GPU (see the module docstring for the measurements).
CPU_REASON = (
    "not packed off a GPU by default: the chapters' smoke build on a 2-core CPU ran slower packed "
    "(pack='always' packs anyway; benchmarks/packed.py measures the ratio here)"
)
#: The values ``pack`` takes in :func:`plan_packs` and :func:`wdlib.runs.run_many`.
PACK_MODES: tuple[str, ...] = ("auto", "always", "never")
#: The ``"format"`` of a pack's checkpoint.
PACK_FORMAT = "wdlib-pack-checkpoint-1"
#: At most this many members per pack, and at most ``_MAX_PACK_PARAMS`` parameters in all.
MAX_MEMBERS = 64
_MAX_PACK_PARAMS = 50_000_000


def signature(cfg: RunConfig) -> str:
    """What the members of a pack share: the configuration without the :data:`VARYING` fields, as JSON."""
    d = cfg.to_dict()
    for name in VARYING:
        d.pop(name, None)
    return json.dumps(d, sort_keys=True)


def why_not_packed(cfg: RunConfig) -> str | None:
    """Why ``cfg`` must be trained alone, judged from the configuration (None: it can be packed).

    The model's own obstacles (BatchNorm, dropout) are :func:`model_obstacle`'s."""
    if cfg.precision == "bf16-pure":
        return "bf16-pure storage (its rounding remedies live in the solo optimizer)"
    if cfg.optimizer["name"] not in ("adam", "sgd"):
        return f"optimizer {cfg.optimizer['name']!r} (packed: wdlib's adam and sgd)"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "DDP (several processes train one run)"
    return None


def model_obstacle(model: nn.Module) -> str | None:
    """Why ``model`` cannot be trained as a member of a pack (None: it can): active dropout draws random
    masks, which under ``vmap`` would not be those of the solo run. (BatchNorm packs: its running statistics
    are stacked buffers, one per member, updated in place under ``vmap``.)"""
    for module in model.modules():
        if isinstance(module, nn.Dropout) and module.p > 0:
            return "dropout (random masks per member)"
        if isinstance(getattr(module, "dropout", None), float) and module.dropout > 0:
            return "dropout (random masks per member)"
    return None


def _model_facts(cfg: RunConfig, ds: Any) -> tuple[int, str | None]:
    """The model's parameter count and its :func:`model_obstacle`, built on the meta device (no memory, no RNG
    draw)."""
    args = {**models.data_args(cfg.model, run_data(cfg, ds).sizes), **cfg.model_args}
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = models.build(cfg.model, **args)
    return sum(p.numel() for p in model.parameters()), model_obstacle(model)


def plan_packs(
    configs: Sequence[RunConfig],
    device: str | torch.device = "auto",
    pack: str = "auto",
    *,
    max_members: int = MAX_MEMBERS,
    split: int = 1,
    data: Callable[[RunConfig], Any] = build_data,
) -> tuple[list[list[int]], dict[int, str]]:
    """Which of ``configs`` train together: a list of packs (lists of indices into ``configs``, a singleton
    trained alone) and the reason each index trained alone has (``"alone in its group"`` when no other
    configuration shares its :func:`signature`).

    ``pack``: ``"never"`` (every run alone), ``"always"`` (every group of two or more packable
    configurations), ``"auto"`` (as ``"always"`` on a GPU, as ``"never"`` elsewhere: :data:`CPU_REASON`).
    Packs hold at most ``max_members`` members and 50M parameters, and a group is split into at least
    ``split`` packs where it has the members (:func:`wdlib.runs.run_many` passes its number of workers).
    Configurations with the same key are trained once (the first index).
    """
    if pack not in PACK_MODES:
        raise ValueError(f"pack must be one of {', '.join(repr(p) for p in PACK_MODES)}, got {pack!r}")
    if isinstance(max_members, bool) or not isinstance(max_members, int) or max_members < 1:
        raise ValueError(f"max_members must be an integer >= 1, got {max_members!r}")
    if isinstance(split, bool) or not isinstance(split, int) or split < 1:
        raise ValueError(f"split must be an integer >= 1, got {split!r}")
    dev = resolve_device(device)
    reasons: dict[int, str] = {}
    groups: dict[str, list[int]] = {}
    seen: set[str] = set()
    for i, cfg in enumerate(configs):
        key = cfg.key()
        if key in seen:
            continue
        seen.add(key)
        reason = "pack='never'" if pack == "never" else why_not_packed(cfg)
        if reason is not None:
            reasons[i] = reason
            continue
        groups.setdefault(signature(cfg), []).append(i)
    packs: list[list[int]] = []
    for members in groups.values():
        if len(members) == 1:
            reasons[members[0]] = "alone in its group (no other run shares model, data and settings)"
            continue
        count, obstacle = _model_facts(configs[members[0]], data(configs[members[0]]))
        if obstacle is None and pack == "auto" and dev.type != "cuda":
            obstacle = CPU_REASON
        if obstacle is not None:
            reasons.update({i: obstacle for i in members})
            continue
        size = max(2, min(max_members, _MAX_PACK_PARAMS // max(count, 1), -(-len(members) // split)))
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            if len(chunk) == 1:
                reasons[chunk[0]] = "alone in its group (the last of a split pack)"
            else:
                packs.append(chunk)
    packs += [[i] for i in sorted(reasons)]
    return packs, reasons


def pack_key(keys: Sequence[str]) -> str:
    """A key naming the pack of the runs ``keys`` (24 hex digits, like a run key; order matters)."""
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:24]


# --- the stacked model ---------------------------------------------------------------------------------


class _Stack:
    """The members' parameters and buffers stacked along a new first axis, and each member's tensors as
    views into them (so the members' own modules always hold the current weights)."""

    def __init__(self, models: list[nn.Module]) -> None:
        self.models = models
        self.template = models[0]
        self.param_names = [n for n, _ in self.template.named_parameters()]
        self.buffer_names = [n for n, _ in self.template.named_buffers()]
        self.params: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for n in self.param_names:
                self.params[n] = torch.stack([m.get_parameter(n).detach() for m in models]).requires_grad_(True)
            for n in self.buffer_names:
                self.buffers[n] = torch.stack([m.get_buffer(n) for m in models])
        self.active = list(range(len(models)))
        self._point()

    def _point(self) -> None:
        """Make each active member's parameters and buffers views of its slice of the stack."""
        for slot, i in enumerate(self.active):
            model = self.models[i]
            for n in self.param_names:
                model.get_parameter(n).data = self.params[n].data[slot]
            for n in self.buffer_names:
                owner, _, attr = n.rpartition(".")
                module = model.get_submodule(owner) if owner else model
                module._buffers[attr] = self.buffers[n][slot]

    def keep(self, slots: list[int]) -> None:
        """Keep only the members at ``slots`` (positions in the stack); the others keep their last weights."""
        index = torch.tensor(slots, device=next(iter(self.params.values())).device)
        with torch.no_grad():
            for i in [self.active[s] for s in range(len(self.active)) if s not in slots]:
                for n in self.param_names:  # a removed member keeps a copy of its weights
                    p = self.models[i].get_parameter(n)
                    p.data = p.data.clone()
                for n in self.buffer_names:
                    owner, _, attr = n.rpartition(".")
                    module = self.models[i].get_submodule(owner) if owner else self.models[i]
                    module._buffers[attr] = module._buffers[attr].clone()
            for n in self.param_names:  # the gradients of the step under way go along
                old = self.params[n]
                self.params[n] = old.detach().index_select(0, index).requires_grad_(True)
                if old.grad is not None:
                    self.params[n].grad = old.grad.index_select(0, index)
            for n in self.buffer_names:
                self.buffers[n] = self.buffers[n].index_select(0, index)
        self.active = [self.active[s] for s in slots]
        self._point()

    def call(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The template model's output with ``params`` and ``buffers`` (one member's, inside ``vmap``)."""
        return functional_call(self.template, (params, buffers), (x,), tie_weights=True)


@contextlib.contextmanager
def _quiet_fallback() -> Iterator[None]:
    """Attention on torch's math kernel, which ``vmap`` batches (the flash and memory-efficient kernels have no
    batching rule in torch 2.13 and would loop over the members), and torch's warning about any other op that
    loops over members silenced."""
    with warnings.catch_warnings(), sdpa_kernel([SDPBackend.MATH]):
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
        yield


def _member_losses(stack: _Stack, x: torch.Tensor, y: torch.Tensor, shared: bool) -> torch.Tensor:
    """Each member's mean training loss on its batch (``[M]``): :func:`wdlib.objective.model_loss` under vmap."""

    def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return model_loss(lambda inp: stack.call(p, b, inp), xb, yb)  # type: ignore[arg-type]

    dims = None if shared else 0
    return torch.vmap(one, in_dims=(0, 0, dims, dims))(stack.params, stack.buffers, x, y)


@torch.no_grad()
def _member_eval(
    stack: _Stack,
    params: dict[str, torch.Tensor],
    batches: Any,
    autocast: Callable[[], Any],
    dtype: torch.dtype | None = None,
) -> list[tuple[float, float]]:
    """Each stacked member's mean loss and accuracy over ``batches`` (shared by all), summed as
    :func:`wdlib.objective.evaluate` sums them (Python floats, divided by the number of labels)."""
    was_training = stack.template.training
    stack.template.eval()
    m = next(iter(params.values())).shape[0]
    total, correct, count = [0.0] * m, [0] * m, 0

    def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> Any:
        return loss_and_correct(lambda inp: stack.call(p, b, inp), xb, yb)  # type: ignore[arg-type]

    for x, y in batches:
        if dtype is not None and x.is_floating_point():
            x = x.to(dtype)
        with autocast(), _quiet_fallback():
            summed, right = torch.vmap(one, in_dims=(0, 0, None, None))(params, stack.buffers, x, y)
        for i, (s, r) in enumerate(zip(summed.tolist(), right.tolist())):
            total[i] += float(s)
            correct[i] += int(r)
        count += y.numel()
    stack.template.train(was_training)
    return [(t / max(count, 1), c / max(count, 1)) for t, c in zip(total, correct)]


# --- the packed optimizer ------------------------------------------------------------------------------


def _per_member(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """``values`` (one per member) as a tensor shaped to broadcast against ``like`` (``[M, 1, ..., 1]``)."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, *([1] * (like.ndim - 1)))


class PackedOptimizer:
    """Adam or SGD over stacked parameters, each member with its own learning rate and weight decay.

    ``members`` are the members' own wdlib optimizers (never stepped): their param groups hold each
    member's current ``lr`` and ``weight_decay`` (set by its schedules) and the decay rule, so the shrink
    of member ``m`` is :func:`wdlib.optim.decay_factor` of its group, the one shrink function of the
    library. The update is that of :class:`wdlib.optim.Adam` / :class:`wdlib.optim.SGD` (torch's
    algorithms, ``_foreach`` arithmetic), with per-member scalars as ``[M, 1, ...]`` tensors::

        theta <- theta * (1 - s_m)                  (s_m: decay_factor; 0 under l2)
        g     <- g + lambda_m * theta               (l2 only)
        Adam: m <- lerp(m, g, 1-beta1);  v <- beta2 v + (1-beta2) g^2
              theta <- theta - lr_m / (1-beta1^t) * m / (sqrt(v) / sqrt(1-beta2^t) + eps)
        SGD:  b <- mu b + g (b = g at the first step);  theta <- theta - lr_m (g + mu b if nesterov else b)

    ``names``: the stacked parameter name of each of the members' parameters (by position in each group).
    """

    def __init__(self, params: dict[str, torch.Tensor], members: list[torch.optim.Optimizer], names: list[list[str]]):
        first = members[0]
        if isinstance(first, Adam):
            self.kind = "adam"
        elif isinstance(first, SGD):
            self.kind = "sgd"
        else:
            raise ValueError(f"packed training supports wdlib's Adam and SGD, got {type(first).__name__}")
        self.params, self.members, self.names = params, list(members), names
        self.state: dict[str, dict[str, Any]] = {}

    def rebind(self, params: dict[str, torch.Tensor], members: list[torch.optim.Optimizer], slots: list[int]) -> None:
        """Follow the stack after :meth:`_Stack.keep`: new tensors, fewer members, their state rows kept."""
        self.params, self.members = params, list(members)
        for st in self.state.values():
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and v.ndim > 0:
                    st[k] = v.index_select(0, torch.tensor(slots, device=v.device))

    def _hyper(self, g: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Per-member ``lr``, keep factor ``1 - s`` (None if no member shrinks) and L2 ``lambda`` (None if 0)."""
        groups = [opt.param_groups[g] for opt in self.members]
        lr = _per_member([float(gr["lr"]) for gr in groups], like)
        shrink = [decay_factor(gr) for gr in groups]
        keep = _per_member([1.0 - s for s in shrink], like) if any(shrink) else None
        l2 = [float(gr["weight_decay"]) if gr["decay"] == "l2" else 0.0 for gr in groups]
        return lr, keep, (_per_member(l2, like) if any(l2) else None)

    @torch.no_grad()
    def step(self) -> None:
        """One step of every member on the stacked gradients."""
        for g, names in enumerate(self.names):
            names = [n for n in names if self.params[n].grad is not None]
            if not names:
                continue
            ps = [self.params[n] for n in names]
            gs = [p.grad for p in ps]
            lr, keep, l2 = self._hyper(g, ps[0])
            lrs = [lr.view(-1, *([1] * (p.ndim - 1))) for p in ps]
            if keep is not None:
                torch._foreach_mul_(ps, [keep.view(-1, *([1] * (p.ndim - 1))) for p in ps])
            if l2 is not None:
                gs = torch._foreach_addcmul(gs, ps, [l2.view(-1, *([1] * (p.ndim - 1))) for p in ps])
            group = self.members[0].param_groups[g]
            if self.kind == "adam":
                self._adam(names, ps, gs, lrs, group)
            else:
                self._sgd(names, ps, gs, lrs, group)

    def _adam(self, names: list[str], ps: list, gs: list, lrs: list, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        for n, p in zip(names, ps):
            if n not in self.state:
                self.state[n] = {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            self.state[n]["step"] += 1
        ms = [self.state[n]["exp_avg"] for n in names]
        vs = [self.state[n]["exp_avg_sq"] for n in names]
        torch._foreach_lerp_(ms, gs, 1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, gs, gs, 1 - beta2)
        steps = [self.state[n]["step"] for n in names]
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, [math.sqrt(1 - beta2**t) for t in steps])
        torch._foreach_add_(denom, group["eps"])
        ratio = torch._foreach_div(ms, denom)
        torch._foreach_mul_(ratio, [lr / (1 - beta1**t) for lr, t in zip(lrs, steps)])
        torch._foreach_sub_(ps, ratio)

    def _sgd(self, names: list[str], ps: list, gs: list, lrs: list, group: dict[str, Any]) -> None:
        mu = group["momentum"]
        if mu != 0.0:
            bufs = []
            for n, g in zip(names, gs):
                st = self.state.setdefault(n, {})
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = g.detach().clone()
                else:
                    st["momentum_buffer"].mul_(mu).add_(g)
                bufs.append(st["momentum_buffer"])
            gs = torch._foreach_add(gs, bufs, alpha=mu) if group["nesterov"] else bufs
        torch._foreach_sub_(ps, torch._foreach_mul(gs, lrs))

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "state": {n: dict(st) for n, st in self.state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"a packed {state.get('kind')!r} optimizer state cannot load into a {self.kind!r} one")
        self.state = {n: dict(st) for n, st in state["state"].items()}


# --- the loop ------------------------------------------------------------------------------------------


def _check_pack(configs: Sequence[RunConfig]) -> list[RunConfig]:
    configs = [c if isinstance(c, RunConfig) else RunConfig.from_dict(dict(c)) for c in configs]
    if not configs:
        raise ValueError("configs must hold at least one configuration")
    for c in configs:
        reason = why_not_packed(c)
        if reason is not None:
            raise ValueError(f"configuration {c.key()} cannot be packed: {reason}")
    sig = signature(configs[0])
    for c in configs[1:]:
        if signature(c) != sig:
            raise ValueError(
                f"the members of a pack may differ only in {', '.join(VARYING)}; {c.key()} differs from "
                f"{configs[0].key()} in more"
            )
    keys = [c.key() for c in configs]
    if len(set(keys)) != len(keys):
        raise ValueError("the members of a pack must be different configurations (two have the same key)")
    return configs


class _Pack:
    """The members' run states, the stack, the packed optimizer and the stacked EMA of one pack."""

    def __init__(
        self, configs: list[RunConfig], ds: Any, dev: torch.device, init_states: Sequence[Any] | None = None
    ) -> None:
        self.configs, self.ds, self.dev = configs, ds, dev
        inits = list(init_states) if init_states is not None else [None] * len(configs)
        self.states = [RunState.build(c, ds, dev, init) for c, init in zip(configs, inits)]
        obstacle = model_obstacle(self.states[0].model)
        if obstacle is not None:
            raise ValueError(f"this model cannot be packed: {obstacle}")
        self.stack = _Stack([s.model for s in self.states])
        names_of = {id(p): n for n, p in self.states[0].model.named_parameters()}
        names = [[names_of[id(p)] for p in g["params"]] for g in self.states[0].optimizer.param_groups]
        self.opt = PackedOptimizer(self.stack.params, [s.optimizer for s in self.states], names)
        self.ema = (
            _Stack([s.ema_model for s in self.states]) if self.states[0].ema_model is not None else None  # type: ignore[misc]
        )
        self.feeds = [_Feed(c, ds, dev, _param_dtype(c)) for c in configs]
        self.last_loss = [math.nan] * len(configs)

    def expose(self) -> None:
        """Give each active member's own parameters their slice of the stacked gradients, and its own optimizer
        its slice of the packed optimizer's state (views), so that probes and diagnostics, written for one
        model and one optimizer, read them as in a solo run. :meth:`hide` takes them back."""
        for slot, i in enumerate(self.active):
            model, opt = self.states[i].model, self.states[i].optimizer
            for n in self.stack.param_names:
                p = model.get_parameter(n)
                grad = self.stack.params[n].grad
                p.grad = grad[slot] if grad is not None else None
                st = self.opt.state.get(n)
                if st:
                    opt.state[p] = {
                        k: v[slot] if isinstance(v, torch.Tensor) else torch.tensor(float(v)) for k, v in st.items()
                    }

    def hide(self) -> None:
        """Undo :meth:`expose` (the members' optimizers hold no state, their parameters no gradients, so a
        checkpoint stores the packed state once)."""
        for s in self.states:
            s.optimizer.state.clear()
            for p in s.model.parameters():
                p.grad = None

    @property
    def active(self) -> list[int]:
        return self.stack.active

    def drop(self, members: list[int]) -> None:
        """Take ``members`` (indices into the configurations) out of the stack; the others go on."""
        slots = [s for s, i in enumerate(self.active) if i not in members]
        for i in members:  # a member's clock stops where it left the pack
            self.states[i].wall_before, self.states[i]._clock = self.states[i].wall_time, None
        self.stack.keep(slots)
        if self.ema is not None:
            self.ema.keep(slots)
        self.opt.rebind(self.stack.params, [self.states[i].optimizer for i in self.active], slots)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The active members' batches of ``step``: one shared batch when they all draw the same, else stacked."""
        seeds = {self.feeds[i].cfg.seed + (step == self.feeds[i].cfg.perturb_step) for i in self.active}
        if len(seeds) == 1:
            return (*self.feeds[self.active[0]].batch(step), True)
        xs, ys = zip(*(self.feeds[i].batch(step) for i in self.active))
        return torch.stack(xs), torch.stack(ys), False

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": PACK_FORMAT,
            "keys": [c.key() for c in self.configs],
            "members": [s.state_dict() for s in self.states],
            "diverged": {i: s.diverged_at for i, s in enumerate(self.states) if s.diverged_at is not None},
            "last_loss": list(self.last_loss),
            "active": list(self.active),
            "optimizer": self.opt.state_dict(),
            "rng": _rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != PACK_FORMAT or state.get("keys") != [c.key() for c in self.configs]:
            raise ValueError("not a checkpoint of this pack")
        for s, sd in zip(self.states, state["members"]):
            s.load_state_dict(sd)  # writes the weights into the stack through the members' views
        for i, at in state["diverged"].items():
            self.states[int(i)].diverged_at = at
        self.last_loss = list(state["last_loss"])
        gone = [i for i in self.active if i not in state["active"]]
        if gone:
            self.drop(gone)
        self.opt.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])


def _forward_backward(pack: _Pack, step: int, autocast: Callable[[], Any]) -> list[float]:
    """Fresh stacked gradients of each active member's mean loss (over ``grad_accum`` micro-batches, as the
    solo loop takes them); returns each member's mean loss as a float (summed in float64)."""
    cfg = pack.configs[pack.active[0]]
    for p in pack.stack.params.values():
        p.grad = None
    x, y, shared = pack.batch(step)
    dim = 0 if shared else 1
    micro = x.shape[dim] // cfg.grad_accum
    total = torch.zeros(len(pack.active), dtype=torch.float64, device=x.device)
    for m in range(cfg.grad_accum):
        xb, yb = x.narrow(dim, m * micro, micro), y.narrow(dim, m * micro, micro)
        with _quiet_fallback():
            with autocast():
                losses = _member_losses(pack.stack, xb, yb, shared)
            (losses.sum() / cfg.grad_accum).backward()
        total += losses.detach().double()
    return (total / cfg.grad_accum).tolist()


@torch.no_grad()
def _clip(pack: _Pack, max_norm: float) -> None:
    """Clip each member's gradient norm to ``max_norm`` as ``torch.nn.utils.clip_grad_norm_`` does alone."""
    grads = [p.grad for p in pack.stack.params.values() if p.grad is not None]
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.ndim - 1))).to(g.dtype))


def _record(pack: _Pack, autocast: Callable[[], Any], used: list[tuple[float, float]], wall: float) -> None:
    """Append a row to each active member's history, as :func:`wdlib.train._record` would alone."""
    feed = pack.feeds[pack.active[0]]
    val = _member_eval(pack.stack, pack.stack.params, feed.eval_set("val"), autocast)
    train = _member_eval(pack.stack, pack.stack.params, feed.eval_set("train"), autocast)
    ema = None
    if pack.ema is not None:
        ema_dtype = next(iter(pack.ema.params.values())).dtype
        ema = _member_eval(pack.ema, pack.ema.params, feed.eval_set("val"), autocast, ema_dtype)
    for slot, i in enumerate(pack.active):
        s = pack.states[i]
        row: dict[str, Any] = {"step": s.step, "last_loss": pack.last_loss[i], "lr": used[slot][0]}
        row.update({"wd": used[slot][1], "wall_time": wall})
        row["val_loss"], row["val_acc"] = val[slot]
        row["train_loss"], row["train_acc"] = train[slot]
        if ema is not None:
            row["ema_val_loss"], row["ema_val_acc"] = ema[slot]
        row.update(_group_norms(s.optimizer))
        if pack.configs[i].diagnostics:
            pack.expose()
            row.update(_diagnostics(s, pack.feeds[i], list(pack.configs[i].diagnostics), autocast))
            pack.hide()
        for k, v in row.items():
            s.history.setdefault(k, []).append(v)


def _step(pack: _Pack, step: int, autocast: Callable[[], Any]) -> list[tuple[float, float]]:
    """Forward, backward, divergence, clip, optimizer step, schedules and EMA of step ``step``; returns the
    LR (first group) and largest weight decay each still active member used."""
    losses = _forward_backward(pack, step, autocast)
    gone = []
    for slot, i in enumerate(pack.active):
        s, cfg = pack.states[i], pack.configs[i]
        pack.last_loss[i] = losses[slot]
        if _diverges(losses[slot], s.running_min, cfg.divergence_factor):
            s.diverged_at = step
            gone.append(i)
        else:
            s.running_min = min(s.running_min, losses[slot])
    if gone:
        pack.drop(gone)
    if not pack.active:
        return []
    cfg = pack.configs[pack.active[0]]
    if cfg.grad_clip is not None:
        _clip(pack, cfg.grad_clip)
    probes = [p for i in pack.active for p in pack.states[i].probes.values()]
    if probes:
        pack.expose()
        for p in probes:
            p.before_step(step)
    pack.opt.step()
    if probes:
        pack.expose()  # the state the step created or replaced
        for p in probes:
            p.after_step(step)
        pack.hide()
    used = []
    for i in pack.active:
        groups = pack.states[i].optimizer.param_groups
        used.append((groups[0]["lr"], max(g["weight_decay"] for g in groups)))
        pack.states[i].scheduler.step()
    if pack.ema is not None:
        ema_p = list(pack.ema.params.values())
        with torch.no_grad():
            torch._foreach_lerp_(
                ema_p, [p.detach().to(ema_p[0].dtype) for p in pack.stack.params.values()], 1 - cfg.ema
            )
            for n, b in pack.stack.buffers.items():
                pack.ema.buffers[n].copy_(b)
    return used


def train_packed(
    configs: Sequence[RunConfig],
    *,
    device: str | torch.device = "auto",
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: bool | None = None,
    data: Any = None,
    init_states: Sequence[dict[str, torch.Tensor] | None] | None = None,
) -> list[RunResult]:
    """Train ``configs`` as one pack and return their results, in order (see the module docstring).

    They must differ only in :data:`VARYING` (ValueError otherwise, and for anything :func:`why_not_packed`
    or :func:`model_obstacle` refuses). ``checkpoint``: the pack's checkpoint file, written every
    ``checkpoint_every`` steps and (``resume``) continued from. Each result's ``info["pack"]`` says how many
    members trained together and which one it was; its ``wall_time`` is the pack's (the members shared it).
    ``init_states``: per member, the weights to start from, given exactly for those with ``init_from``
    (:func:`wdlib.runs.run_pack` loads them from the store).
    """
    configs = _check_pack(configs)
    inits = list(init_states) if init_states is not None else [None] * len(configs)
    if len(inits) != len(configs) or any((c.init_from is not None) != (s is not None) for c, s in zip(configs, inits)):
        raise ValueError("init_states must give, per member, the weights to start from exactly when init_from is set")
    dev = resolve_device(device)
    cfg0 = configs[0]
    ds = (run_data(cfg0, data) if data is not None else build_data(cfg0)).for_device(dev)
    pack = _Pack(configs, ds, dev, inits)
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if ckpt_path is not None and resume:
        saved = load_checkpoint(ckpt_path, PACK_FORMAT)
        if saved is not None and saved.get("keys") == [c.key() for c in configs]:
            pack.load_state_dict(saved)
    autocast = _autocast(cfg0, dev)
    start = min((pack.states[i].step for i in pack.active), default=cfg0.steps)
    for s in pack.states:
        s.model.train()
        s.start_clock()
    bar = progress_bar(
        total=cfg0.steps,
        initial=start,
        disable=not show_progress(progress),
        mininterval=1.0,
        desc=f"{cfg0.model} x{len(configs)} packed",
    )
    for step in range(start, cfg0.steps):
        used = _step(pack, step, autocast)
        if not pack.active:
            break
        bar.update(1)
        done = step + 1
        for i in pack.active:
            pack.states[i].step = done
        if done in cfg0.snapshots:
            for i in pack.active:
                pack.states[i].snapshots[done] = _cpu_copy(pack.states[i].model.state_dict())
        if (cfg0.eval_every and done % cfg0.eval_every == 0) or done == cfg0.steps:
            _record(pack, autocast, used, pack.states[pack.active[0]].wall_time)
        if cfg0.checkpoint_every and done % cfg0.checkpoint_every == 0 and done < cfg0.steps and ckpt_path:
            _atomic_save(pack.state_dict(), ckpt_path)
    bar.close()
    results = []
    for i, (s, c) in enumerate(zip(pack.states, configs)):
        with torch.no_grad():  # a member's own module: its weights out of the stack (views) into its own storage
            for p in s.model.parameters():
                p.data = p.data.clone()
        r = _result(s, c, ds, autocast, pack.last_loss[i], device=dev, world=1, rank=0, resumed_from=start)
        r.info["pack"] = {"members": len(configs), "index": i, "key": pack_key([c.key() for c in configs])}
        if r.info.get("attention_backend") is not None:  # what the pack ran, not what a solo run would pick
            r.info["attention_backend"] = "math (packed: the kernel vmap batches)"
        results.append(r)
    return results
