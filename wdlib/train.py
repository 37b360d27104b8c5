"""One training loop for every chapter: schedules, precision, metrics, EMA, divergence, checkpoints, DDP.

:func:`train` runs a :class:`~wdlib.config.RunConfig` and returns a :class:`RunResult`. It builds the
run's parts (:mod:`wdlib.components`) into a :class:`RunState`, continues from a checkpoint if there is
one, and then does at each step ``t`` (0-based):

1. take the global batch of step ``t`` through the dataset protocol (:meth:`wdlib.data.Dataset.batch`,
   the same call for classification and token data: a pure function of the seed and ``t``, so the data
   position of a checkpoint is just ``t``), this rank's shard of it under DDP, split into ``grad_accum``
   micro-batches (:func:`_forward_backward`);
2. forward and backward in the chosen precision on the objective (:func:`wdlib.objective.model_loss`);
3. stop and record ``diverged_at = t`` if the loss is not finite or exceeds ``divergence_factor``
   times its running minimum (never an exception out of the loop);
4. clip the gradient norm if asked, step the optimizer between the probes' hooks, advance the LR and
   weight-decay schedules (:class:`~wdlib.schedules.HyperparameterScheduler`; groups without decay have
   ``wd_mult = 0``), update the EMA of the weights if asked (:func:`_apply_update`);
5. keep the weights after the steps ``cfg.snapshots`` names; every ``eval_every`` steps and at the end,
   record train and validation loss and accuracy (:func:`wdlib.objective.evaluate` on the dataset's
   evaluation sets), weight norm and RMS per param group, LR, WD, wall time and the configuration's
   diagnostics (:func:`_record`);
6. every ``checkpoint_every`` steps, write the run state (:meth:`RunState.state_dict`: model, optimizer,
   schedules, EMA, probes, history, snapshots, RNG states) atomically (temp file, then rename). :func:`train`
   with the same checkpoint path continues from it and, on CPU, ends bit-identical to an uninterrupted run.

After the last step the configuration's measures of the final model run (:mod:`wdlib.measures`).

Precision ``"fp32"`` (parameters in ``dtype``), ``"bf16-autocast"`` (float32 master weights, matmuls
in bfloat16 under ``torch.autocast``, as in nanoGPT and the sources) or ``"bf16-pure"`` (parameters
and optimizer state stored in bfloat16).

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) the model is wrapped in DistributedDataParallel
(gloo on CPU, NCCL on GPU); every rank takes its shard of the same global batch, and rank 0 alone
evaluates and writes.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .components import build_data, build_model, build_optimizer, run_data
from .config import RunConfig, schedule_from_spec
from .measures import DIAGNOSTICS, MEASURES, PROBES
from .models import attention_backend
from .objective import evaluate, model_loss
from .progress import progress_bar, show_progress
from .runtime import resolve_device
from .schedules import HyperparameterScheduler

__all__ = [
    "RunResult",
    "RunState",
    "train",
    "build_data",
    "build_model",
    "build_optimizer",
    "init_distributed",
    "load_checkpoint",
    "CHECKPOINT_FORMAT",
]

#: The ``"format"`` entry of every checkpoint :func:`train` writes; :func:`load_checkpoint` reads no other.
CHECKPOINT_FORMAT = "wdlib-checkpoint-1"

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class RunResult:
    """What a run produced.

    ``history`` maps a metric to its values at the evaluation steps ``history["step"]``; array-valued
    diagnostics are stacked along the first axis. ``final`` holds the last evaluation's scalars.
    ``probes`` holds each probe's result arrays (``"<probe>/<array>"``). ``model_state`` is the final
    weights (CPU tensors), ``ema_state`` those of the EMA, ``snapshots`` the weights after each step
    that ``cfg.snapshots`` names. The configuration's measures are in ``final`` as ``"<measure>/<value>"``.
    """

    config: dict[str, Any]
    history: dict[str, np.ndarray]
    final: dict[str, float]
    diverged_at: int | None
    steps_done: int
    wall_time: float
    probes: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    model_state: dict[str, torch.Tensor] | None = None
    ema_state: dict[str, torch.Tensor] | None = None
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    def model(self, *, data: Any = None, ema: bool = False) -> nn.Module:
        """The trained model: built as the run built it (:func:`wdlib.components.build_model`, sized to ``data``
        or to the configuration's dataset) with the final weights (``ema``: those of the EMA), on the CPU, its
        parameters in the dtype the run trained them in (the EMA's in float32, or float64 for a float64 run)."""
        state = self.ema_state if ema else self.model_state
        if state is None:
            raise ValueError("this result holds no " + ("EMA weights (the run had no ema)" if ema else "weights"))
        cfg = RunConfig.from_dict(self.config)
        model = build_model(cfg, data if data is not None else build_data(cfg))
        model = model.to(next(iter(v for v in state.values() if v.is_floating_point())).dtype)
        model.load_state_dict({k: v.cpu() for k, v in state.items()})
        return model

    def summary(self) -> dict[str, Any]:
        """A one-line summary: final metrics, ``diverged_at``, wall time."""
        return {
            "final": self.final,
            "diverged_at": self.diverged_at,
            "steps_done": self.steps_done,
            "wall_time": round(self.wall_time, 3),
        }


def init_distributed() -> tuple[int, int]:
    """Join the process group when launched by ``torchrun``; return ``(rank, world_size)`` ((0, 1) alone)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":  # before the process group, so its first collective lands on this rank's GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


# --- checkpoints ---------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    """The global RNG states (torch, Python, numpy, CUDA) as tensors and plain values, loadable with
    ``weights_only=True``."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(_flatten(random.getstate())),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _flatten(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global RNG states that :func:`_rng_state` captured."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` to a temporary file beside ``path``, then renamed onto it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike[str], kind: str = CHECKPOINT_FORMAT) -> dict[str, Any] | None:
    """A checkpoint written by :func:`train` (or, with ``kind``, another writer's: a pack's,
    :data:`wdlib.packed.PACK_FORMAT`), or None if it is missing, unreadable or of another kind (then the
    run starts over).

    Loaded with ``weights_only=True``: a checkpoint is data, never code.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: start over rather than trust it
        warnings.warn(
            f"checkpoint {path} could not be read ({type(err).__name__}); the run starts over",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return ckpt if isinstance(ckpt, dict) and ckpt.get("format") == kind else None


# --- the run state -------------------------------------------------------------------------------------


def _param_dtype(cfg: RunConfig) -> torch.dtype:
    """The dtype the parameters are stored in: ``cfg.dtype`` under ``"fp32"``, float32 (master weights)
    under ``"bf16-autocast"``, bfloat16 under ``"bf16-pure"``."""
    return {"fp32": getattr(torch, cfg.dtype), "bf16-autocast": torch.float32, "bf16-pure": torch.bfloat16}[
        cfg.precision
    ]


def _build_probes(cfg: RunConfig, model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The probes ``cfg.probes`` names (:data:`wdlib.measures.PROBES`), each built on ``model`` and ``opt``."""
    probes = {}
    for spec in cfg.probes:
        args = {k: v for k, v in spec.items() if k != "name"}
        if spec["name"] not in PROBES:
            raise ValueError(f"probes: unknown probe {spec['name']!r}; known: {sorted(PROBES)}")
        if not 0 <= args.get("start", 0) < cfg.steps:
            raise ValueError(
                f"probes: {spec['name']} start must be in [0, steps={cfg.steps}), got {args.get('start')!r}"
            )
        probes[spec["name"]] = PROBES[spec["name"]](model, opt, **args)
    return probes


def _check_recorded(cfg: RunConfig) -> None:
    """Raise ValueError for a diagnostic or a measure that ``cfg`` names and no registry knows."""
    for name in cfg.diagnostics:
        if name not in DIAGNOSTICS:
            raise ValueError(f"diagnostics: unknown diagnostic {name!r}; known: {sorted(DIAGNOSTICS)}")
    for spec in cfg.measures:
        if spec["name"] not in MEASURES:
            raise ValueError(f"measures: unknown measure {spec['name']!r}; known: {sorted(MEASURES)}")


class RunState:
    """Everything a run carries from one step to the next, and so everything a checkpoint holds.

    The model, its optimizer, the LR and weight-decay schedules, the EMA copy of the weights (or None),
    the probes, the history of the evaluations (metric -> values), the snapshots of the weights, the
    number of steps done (``step``), the running minimum of the training loss, the wall time of earlier
    sessions, and (at :meth:`state_dict` time) the global RNG states. :meth:`state_dict` *is* the
    checkpoint (format :data:`CHECKPOINT_FORMAT`) and :meth:`load_state_dict` continues from one.
    ``diverged_at`` and ``groups`` (the parameter-group counts) belong to the session, not the checkpoint.
    """

    def __init__(
        self,
        cfg: RunConfig,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: HyperparameterScheduler,
        ema_model: nn.Module | None = None,
        probes: dict[str, Any] | None = None,
        groups: list[dict[str, Any]] | None = None,
    ) -> None:
        self.config_key = cfg.key()
        self.model, self.optimizer, self.scheduler, self.ema_model = model, optimizer, scheduler, ema_model
        self.probes: dict[str, Any] = dict(probes or {})
        self.groups: list[dict[str, Any]] = list(groups or [])
        self.history: dict[str, list[Any]] = {}
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self.step, self.running_min, self.wall_before = 0, math.inf, 0.0
        self.diverged_at: int | None = None
        self._clock: float | None = None

    @classmethod
    def build(
        cls, cfg: RunConfig, ds: Any, device: torch.device, init_state: dict[str, torch.Tensor] | None = None
    ) -> RunState:
        """The fresh state of ``cfg`` on ``ds``: the model (seeded, :func:`wdlib.components.build_model`; the
        weights of ``init_state`` if given) in the precision's parameter dtype on ``device``, its optimizer
        and schedules, the EMA copy (float32 at least, float64 for a float64 run) and the probes."""
        param_dtype = _param_dtype(cfg)
        model = build_model(cfg, ds)
        if init_state is not None:
            model.load_state_dict(init_state)
        model = model.to(device=device, dtype=param_dtype)
        opt, groups = build_optimizer(cfg, model)
        sched = HyperparameterScheduler(
            opt,
            lr=schedule_from_spec(cfg.lr_schedule, cfg.lr, cfg.steps, weight_decay=cfg.weight_decay),
            weight_decay=schedule_from_spec(cfg.wd_schedule, cfg.weight_decay, cfg.steps),
        )
        # the EMA is kept in float32 at least: in bfloat16 a lerp by 1 - ema (say 1e-3) rounds to no change
        ema_model = (
            copy.deepcopy(model).to(torch.float64 if param_dtype == torch.float64 else torch.float32)
            if cfg.ema is not None
            else None
        )
        probes = _build_probes(cfg, model, opt)
        _check_recorded(cfg)
        return cls(cfg, model, opt, sched, ema_model, probes, groups)

    def start_clock(self) -> None:
        """Start timing this session (:attr:`wall_time` adds it to the earlier sessions' time)."""
        self._clock = time.perf_counter()

    @property
    def wall_time(self) -> float:
        """Seconds the run has trained (earlier sessions' time plus this session's since :meth:`start_clock`)."""
        return self.wall_before + (time.perf_counter() - self._clock if self._clock is not None else 0.0)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: tensors and plain values only, so it loads with ``weights_only=True``."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config_key": self.config_key,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema_model.state_dict() if self.ema_model is not None else None,
            "probes": {n: p.state_dict() for n, p in self.probes.items()},
            "history": self.history,
            "snapshots": self.snapshots,
            "running_min": self.running_min,
            "wall_time": self.wall_time,
            "rng": _rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint of the same configuration: every part above, and the global RNG states."""
        if state.get("format") != CHECKPOINT_FORMAT or state.get("config_key") != self.config_key:
            raise ValueError(f"not a {CHECKPOINT_FORMAT} checkpoint of this configuration ({self.config_key})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema_model is not None and state.get("ema") is not None:
            self.ema_model.load_state_dict(state["ema"])
        for name, probe in self.probes.items():
            probe.load_state_dict(state["probes"][name])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.snapshots = dict(state.get("snapshots", {}))
        self.step, self.running_min, self.wall_before = state["step"], state["running_min"], state["wall_time"]
        _set_rng_state(state["rng"])

    def resume_from(self, path: Path) -> bool:
        """Load the checkpoint at ``path`` if there is a readable one of this configuration; whether it did."""
        ckpt = load_checkpoint(path)
        if ckpt is None or ckpt["config_key"] != self.config_key:
            return False
        self.load_state_dict(ckpt)
        return True

    def save(self, path: Path) -> None:
        """Write :meth:`state_dict` to ``path`` atomically (a temporary file, then a rename)."""
        _atomic_save(self.state_dict(), path)


# --- one step ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Feed:
    """The run's data as the loop reads it (this rank's shards, inputs cast to the parameters' dtype)."""

    cfg: RunConfig
    ds: Any
    device: torch.device
    dtype: torch.dtype
    rank: int = 0
    world: int = 1

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        """Floating inputs in the parameters' dtype; token ids as they are."""
        return x.to(self.dtype) if x.is_floating_point() else x

    def batch(self, step: int) -> Batch:
        """This rank's shard of the training batch of ``step`` (drawn with seed ``cfg.seed + 1`` at
        ``cfg.perturb_step``, else ``cfg.seed``)."""
        seed = self.cfg.seed + 1 if step == self.cfg.perturb_step else self.cfg.seed
        x, y = self.ds.batch(
            step, seed, batch_size=self.cfg.batch_size, device=self.device, rank=self.rank, world_size=self.world
        )
        return self._cast(x), y

    def eval_set(self, name: str) -> Iterator[Batch]:
        """A fresh pass over the evaluation set ``name`` ("val" or "train") of the dataset's ``eval_sets``."""
        sets = self.ds.eval_sets(batch_size=self.cfg.batch_size, count=self.cfg.eval_batches, device=self.device)
        return ((self._cast(x), y) for x, y in sets[name]())


def _autocast(cfg: RunConfig, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the context every forward pass runs in: bfloat16 autocast on ``device`` under
    ``"bf16-autocast"``, nothing otherwise."""
    if cfg.precision == "bf16-autocast":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _forward_backward(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    accum: int,
    world: int,
    autocast: Callable[[], Any],
) -> float:
    """Fresh gradients of the mean loss on ``(x, y)``, taken over ``accum`` equal micro-batches (each loss
    scaled by ``1 / accum``; under DDP the gradients are synchronized on the last one only); returns the
    mean micro-batch loss, averaged over the ranks, as a Python float (summed in float64)."""
    opt.zero_grad(set_to_none=True)
    micro = x.shape[0] // accum
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    for m in range(accum):
        xb, yb = x[m * micro : (m + 1) * micro], y[m * micro : (m + 1) * micro]
        sync = m == accum - 1 or world == 1
        with net.no_sync() if (world > 1 and not sync) else contextlib.nullcontext():
            with autocast():
                loss = model_loss(net, xb, yb)
            (loss / accum).backward()
        loss_sum += loss.detach().double()
    loss_t = loss_sum / accum
    if world > 1:
        dist.all_reduce(loss_t)
        loss_t /= world
    return float(loss_t)


def _diverges(loss: float, running_min: float, factor: float) -> bool:
    """Whether the loss of a step ends the run: not finite, or above ``factor`` times the running minimum."""
    return not math.isfinite(loss) or loss > factor * running_min


@torch.no_grad()
def _ema_update(ema_model: nn.Module, model: nn.Module, ema: float) -> None:
    """``ema_w <- ema_w + (1 - ema) (w - ema_w)`` for every parameter (in the EMA's dtype); buffers copied."""
    ema_p = list(ema_model.parameters())
    torch._foreach_lerp_(ema_p, [p.detach().to(ema_p[0].dtype) for p in model.parameters()], 1.0 - ema)
    for eb, b in zip(ema_model.buffers(), model.buffers()):
        eb.copy_(b)


def _apply_update(state: RunState, cfg: RunConfig, step: int) -> tuple[float, float]:
    """Step ``t`` on the gradients: clip, optimizer step between the probes' hooks, schedules advanced, EMA
    updated. Returns the LR (first group) and the largest weight decay the step used."""
    if cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
    for p in state.probes.values():
        p.before_step(step)
    state.optimizer.step()
    for p in state.probes.values():
        p.after_step(step)
    groups = state.optimizer.param_groups
    lr_used, wd_used = groups[0]["lr"], max(g["weight_decay"] for g in groups)
    state.scheduler.step()
    if state.ema_model is not None:
        _ema_update(state.ema_model, state.model, cfg.ema)
    return lr_used, wd_used


def _cpu_copy(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copies of a state dict's tensors."""
    return {k: v.detach().cpu().clone() for k, v in sd.items()}


# --- evaluation ----------------------------------------------------------------------------------------


def _diagnostic_value(name: str, value: Any, history: dict[str, list[Any]]) -> torch.Tensor:
    """A diagnostic's value as a float64 CPU tensor (checkpoints load with weights_only=True), same shape each time."""
    try:
        out = torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"diagnostic {name!r} must return a number or a numeric array, got {type(value).__name__}"
        ) from err
    before = history.get(f"diag/{name}")
    if before and tuple(before[0].shape) != tuple(out.shape):
        raise ValueError(f"diagnostic {name!r} changed shape from {tuple(before[0].shape)} to {tuple(out.shape)}")
    return out


def _group_norms(opt: torch.optim.Optimizer) -> dict[str, float]:
    """Frobenius norm (``weight_norm/<group>``) and RMS (``weight_rms/<group>``) of each param group's weights."""
    out = {}
    for g in opt.param_groups:
        ps = [p for p in g["params"]]
        sq = sum(float(p.detach().double().pow(2).sum()) for p in ps)
        n = sum(p.numel() for p in ps)
        name = g.get("name", "group")
        out[f"weight_norm/{name}"] = math.sqrt(sq)
        out[f"weight_rms/{name}"] = math.sqrt(sq / max(n, 1))
    return out


@torch.no_grad()
def _diagnostics(state: RunState, feed: _Feed, names: list[str], autocast: Callable[[], Any]) -> dict[str, Any]:
    """``diag/<name>`` of each diagnostic ``names`` lists (:data:`wdlib.measures.DIAGNOSTICS`), as float64
    tensors; one that ``needs_batch`` gets the first validation batch and the run's autocast."""
    out = {}
    for name in names:
        fn = DIAGNOSTICS[name]
        if getattr(fn, "needs_batch", False):
            value = fn(state.model, state.optimizer, batch=next(iter(feed.eval_set("val"))), autocast=autocast)
        else:
            value = fn(state.model, state.optimizer)
        out[f"diag/{name}"] = _diagnostic_value(name, value, state.history)
    return out


def _evaluation(state: RunState, feed: _Feed, cfg: RunConfig, autocast: Callable[[], Any]) -> dict[str, Any]:
    """Validation and training loss and accuracy, those of the EMA weights on the validation set, weight norms
    per param group, and the configuration's diagnostics."""
    row: dict[str, Any] = {}
    row["val_loss"], row["val_acc"] = evaluate(state.model, feed.eval_set("val"), autocast)
    row["train_loss"], row["train_acc"] = evaluate(state.model, feed.eval_set("train"), autocast)
    if state.ema_model is not None:
        ema_dtype = next(state.ema_model.parameters()).dtype
        row["ema_val_loss"], row["ema_val_acc"] = evaluate(
            state.ema_model,
            ((x.to(ema_dtype) if x.is_floating_point() else x, y) for x, y in feed.eval_set("val")),
            autocast,
        )
    row.update(_group_norms(state.optimizer))
    row.update(_diagnostics(state, feed, cfg.diagnostics, autocast))
    return row


def _record(
    state: RunState, feed: _Feed, cfg: RunConfig, autocast: Callable[[], Any], *, loss: float, lr: float, wd: float
) -> None:
    """Append a row to the history: step, last training loss, LR, WD, wall time and, on rank 0, the evaluation."""
    row: dict[str, Any] = {"step": state.step, "last_loss": loss, "lr": lr, "wd": wd, "wall_time": state.wall_time}
    if feed.rank == 0:
        row.update(_evaluation(state, feed, cfg, autocast))
    for k, v in row.items():
        state.history.setdefault(k, []).append(v)


def _measures(cfg: RunConfig, model: nn.Module, ds: Any, autocast: Callable[[], Any]) -> dict[str, float]:
    """``<measure>/<value>`` of each measure ``cfg.measures`` names (:data:`wdlib.measures.MEASURES`), on the
    final model; one that ``needs_run`` also gets the configuration and the run's autocast."""
    out = {}
    for spec in cfg.measures:
        args = {k: v for k, v in spec.items() if k != "name"}
        fn = MEASURES[spec["name"]]
        extra = {"run": cfg, "autocast": autocast} if getattr(fn, "needs_run", False) else {}
        for k, v in fn(model, ds, **extra, **args).items():
            out[f"{spec['name']}/{k}"] = float(v)
    return out


# --- the loop ------------------------------------------------------------------------------------------


def _check_request(cfg: RunConfig, init_state: dict[str, torch.Tensor] | None) -> None:
    """Raise ValueError for a call :func:`train` cannot run (wrong type, init_state without init_from or the
    reverse, a dtype with a bfloat16 precision)."""
    if not isinstance(cfg, RunConfig):
        raise ValueError(f"cfg must be a wdlib.config.RunConfig, got {type(cfg).__name__}")
    if (cfg.init_from is not None) != (init_state is not None):
        raise ValueError(
            "init_state must be given exactly when cfg.init_from is set; wdlib.runs.run loads it from the store"
        )
    if cfg.precision != "fp32" and cfg.dtype != "float32":
        raise ValueError(f"dtype {cfg.dtype!r} applies to precision 'fp32' only, got precision {cfg.precision!r}")


def _run_device(device: str | torch.device, world: int) -> torch.device:
    """The device to train on (:func:`wdlib.runtime.resolve_device`); under DDP on GPUs, this rank's GPU."""
    dev = resolve_device(device)
    if world > 1 and dev.type == "cuda":
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _parallel(model: nn.Module, device: torch.device, world: int) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when there are several ranks, else itself."""
    if world == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _result(
    state: RunState,
    cfg: RunConfig,
    ds: Any,
    autocast: Callable[[], Any],
    last_loss: float,
    *,
    device: torch.device,
    world: int,
    rank: int,
    resumed_from: int,
) -> RunResult:
    """The :class:`RunResult` of a finished (or diverged) run; the measures run here, on rank 0, if it finished."""
    wall = state.wall_time
    arrays = {
        k: (torch.stack(v).numpy() if v and isinstance(v[0], torch.Tensor) else np.asarray(v, dtype=np.float64))
        for k, v in state.history.items()
    }
    final = {k: float(v[-1]) for k, v in arrays.items() if v.ndim == 1 and len(v)}
    if state.diverged_at is not None:  # the evaluations before it stay in the history; the loss that tripped it here
        final["last_loss"] = last_loss
    elif rank == 0:
        final.update(_measures(cfg, state.model, ds, autocast))
    probe_arrays = {
        f"{name}/{k}": np.asarray(v)
        for name, p in state.probes.items()
        if getattr(p, "count", 1) > 0
        for k, v in p.result().items()
    }
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "world_size": world,
        "groups": state.groups,
        "precision": cfg.precision,
        "attention_backend": attention_backend(device, torch.bfloat16 if cfg.precision != "fp32" else _param_dtype(cfg))
        if cfg.model == "gpt"
        else None,
        "resumed_from": resumed_from,
    }
    return RunResult(
        config=cfg.to_dict(),
        history=arrays,
        final=final,
        diverged_at=state.diverged_at,
        steps_done=state.diverged_at if state.diverged_at is not None else cfg.steps,
        wall_time=wall,
        probes=probe_arrays,
        info=info,
        model_state=_cpu_copy(state.model.state_dict()),
        ema_state=_cpu_copy(state.ema_model.state_dict()) if state.ema_model is not None else None,
        snapshots=state.snapshots,
    )


def train(
    cfg: RunConfig,
    *,
    device: str | torch.device = "auto",
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: bool | None = None,
    data: Any = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> RunResult:
    """Train ``cfg``; with ``checkpoint``, write checkpoints there and (``resume``) continue from one.

    ``data`` may pass an already loaded dataset (it must be the one ``cfg`` names). ``progress``:
    a tqdm bar (None: only on a terminal or in a notebook with widgets, never when ``CI`` is set).
    ``init_state``: the weights to start from instead of the seed's initialization, required when
    ``cfg.init_from`` is set (:func:`wdlib.runs.run` looks them up in the store); the optimizer starts fresh.
    """
    _check_request(cfg, init_state)
    rank, world = init_distributed()
    dev = _run_device(device, world)
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ValueError(
            f"batch_size ({cfg.batch_size}) must be divisible by world size x grad_accum ({world} x {cfg.grad_accum})"
        )
    ds = (run_data(cfg, data) if data is not None else build_data(cfg)).for_device(dev)
    state = RunState.build(cfg, ds, dev, init_state)
    net = _parallel(state.model, dev, world)
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if ckpt_path is not None and resume:
        state.resume_from(ckpt_path)
    feed, autocast = _Feed(cfg, ds, dev, _param_dtype(cfg), rank, world), _autocast(cfg, dev)
    start, loss = state.step, float("nan")
    state.model.train()
    state.start_clock()
    bar = progress_bar(
        total=cfg.steps,
        initial=start,
        disable=not (show_progress(progress) and rank == 0),
        mininterval=1.0,
        desc=f"{cfg.model} {cfg.optimizer['name']}",
    )
    for step in range(start, cfg.steps):
        loss = _forward_backward(
            net, state.optimizer, *feed.batch(step), accum=cfg.grad_accum, world=world, autocast=autocast
        )
        if _diverges(loss, state.running_min, cfg.divergence_factor):
            state.diverged_at = step
            break
        state.running_min = min(state.running_min, loss)
        lr_used, wd_used = _apply_update(state, cfg, step)
        bar.update(1)
        state.step = done = step + 1
        if done in cfg.snapshots:
            state.snapshots[done] = _cpu_copy(state.model.state_dict())
        if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
            _record(state, feed, cfg, autocast, loss=loss, lr=lr_used, wd=wd_used)
        if (
            cfg.checkpoint_every
            and done % cfg.checkpoint_every == 0
            and done < cfg.steps
            and ckpt_path is not None
            and rank == 0
        ):
            state.save(ckpt_path)
    bar.close()
    return _result(state, cfg, ds, autocast, loss, device=dev, world=world, rank=rank, resumed_from=start)
