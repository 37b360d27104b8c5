"""One training loop for every chapter: schedules, precision, metrics, EMA, divergence, checkpoints, DDP.

:func:`train` runs a :class:`~wdlib.config.RunConfig` and returns a :class:`RunResult`. What it does
each step ``t`` (0-based):

1. set the LR and weight decay of every param group from the two schedules
   (:class:`~wdlib.schedules.HyperparameterScheduler`; groups without decay have ``wd_mult = 0``);
2. take the global batch of step ``t`` (:meth:`wdlib.data.Dataset.batch`: a pure function of the
   seed and ``t``, so the data position of a checkpoint is just ``t``), this rank's shard of it
   under DDP, split into ``grad_accum`` micro-batches;
3. forward and backward in the chosen precision, clip the gradient norm if asked, step, update the
   EMA of the weights if asked;
4. stop and record ``diverged_at = t`` if the loss is not finite or exceeds ``divergence_factor``
   times its running minimum (never an exception out of the loop);
5. every ``eval_every`` steps and at the end, record train and validation loss and accuracy, weight
   norm and RMS per param group, LR, WD, wall time and the configuration's diagnostics;
6. every ``checkpoint_every`` steps, write a checkpoint atomically (temp file, then rename): model,
   optimizer, schedules, EMA, probes, history, RNG states. :func:`train` with the same checkpoint
   path continues from it and, on CPU, ends bit-identical to an uninterrupted run.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import RunConfig, schedule_from_spec
from .diagnostics import DIAGNOSTICS, MEASURES, PROBES
from .components import build_data, build_model, build_optimizer, is_language
from .progress import progress_bar, show_progress
from .runtime import resolve_device
from .schedules import HyperparameterScheduler

__all__ = ["RunResult", "train", "build_data", "build_model", "build_optimizer", "evaluate",
           "init_distributed", "load_checkpoint"]


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
        return {"final": self.final, "diverged_at": self.diverged_at, "steps_done": self.steps_done,
                "wall_time": round(self.wall_time, 3)}


def init_distributed() -> tuple[int, int]:
    """Join the process group when launched by ``torchrun``; return ``(rank, world_size)`` ((0, 1) alone)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":  # before the process group, so its first collective lands on this rank's GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


# --- evaluation ----------------------------------------------------------------------------------------

def _loss_and_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(x).float()
    if logits.ndim == 3:  # language model: (B, T, V)
        logits, y = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
    return F.cross_entropy(logits, y, reduction="sum"), (logits.argmax(-1) == y).sum()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Any, autocast: Any = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over ``(x, y)`` batches (per token for language)."""
    was_training = model.training
    model.eval()
    total, correct, count = 0.0, 0, 0
    for x, y in batches:
        with autocast() if autocast is not None else contextlib.nullcontext():
            loss, right = _loss_and_correct(model, x, y)
        total += float(loss)
        correct += int(right)
        count += y.numel()
    model.train(was_training)
    return total / max(count, 1), correct / max(count, 1)


# --- checkpoints ---------------------------------------------------------------------------------------

def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(_flatten(random.getstate())),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _flatten(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A checkpoint written by :func:`train`, or None if it is missing or unreadable (then the run restarts).

    Loaded with ``weights_only=True``: a checkpoint is data, never code.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: start over rather than trust it
        warnings.warn(f"checkpoint {path} could not be read ({type(err).__name__}); the run starts over",
                      RuntimeWarning, stacklevel=2)
        return None
    return ckpt if isinstance(ckpt, dict) and ckpt.get("format") == "wdlib-checkpoint-1" else None


# --- the loop ------------------------------------------------------------------------------------------

def _diagnostic_value(name: str, value: Any, history: dict[str, list[Any]]) -> torch.Tensor:
    """A diagnostic's value as a float64 CPU tensor (checkpoints load with weights_only=True), same shape each time."""
    try:
        out = torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise ValueError(f"diagnostic {name!r} must return a number or a numeric array, got {type(value).__name__}") \
            from err
    before = history.get(f"diag/{name}")
    if before and tuple(before[0].shape) != tuple(out.shape):
        raise ValueError(f"diagnostic {name!r} changed shape from {tuple(before[0].shape)} to {tuple(out.shape)}")
    return out


def _group_norms(opt: torch.optim.Optimizer) -> dict[str, float]:
    out = {}
    for g in opt.param_groups:
        ps = [p for p in g["params"]]
        sq = sum(float(p.detach().double().pow(2).sum()) for p in ps)
        n = sum(p.numel() for p in ps)
        name = g.get("name", "group")
        out[f"weight_norm/{name}"] = math.sqrt(sq)
        out[f"weight_rms/{name}"] = math.sqrt(sq / max(n, 1))
    return out


def train(cfg: RunConfig, *, device: str | torch.device = "auto", checkpoint: str | os.PathLike[str] | None = None,
          resume: bool = True, progress: bool | None = None, data: Any = None,
          init_state: dict[str, torch.Tensor] | None = None) -> RunResult:
    """Train ``cfg``; with ``checkpoint``, write checkpoints there and (``resume``) continue from one.

    ``data`` may pass an already loaded dataset (it must be the one ``cfg`` names). ``progress``:
    a tqdm bar (None: only on a terminal or in a notebook with widgets, never when ``CI`` is set).
    ``init_state``: the weights to start from instead of the seed's initialization, required when
    ``cfg.init_from`` is set (:func:`wdlib.runs.run` looks them up in the store); the optimizer starts fresh.
    """
    if not isinstance(cfg, RunConfig):
        raise ValueError(f"cfg must be a wdlib.config.RunConfig, got {type(cfg).__name__}")
    if (cfg.init_from is not None) != (init_state is not None):
        raise ValueError("init_state must be given exactly when cfg.init_from is set; "
                         "wdlib.runs.run loads it from the store")
    rank, world = init_distributed()
    dev = resolve_device(device)
    if world > 1 and dev.type == "cuda":
        dev = torch.device("cuda", torch.cuda.current_device())
    if cfg.precision != "fp32" and cfg.dtype != "float32":
        raise ValueError(f"dtype {cfg.dtype!r} applies to precision 'fp32' only, got precision {cfg.precision!r}")
    ds = data if data is not None else build_data(cfg)
    language = is_language(ds)
    if not language and dev.type != "cpu":
        ds = ds.to(dev)

    param_dtype = {"fp32": getattr(torch, cfg.dtype), "bf16-autocast": torch.float32,
                   "bf16-pure": torch.bfloat16}[cfg.precision]
    model = build_model(cfg, ds)
    if init_state is not None:
        model.load_state_dict(init_state)
    model = model.to(device=dev, dtype=param_dtype)
    opt, groups_info = build_optimizer(cfg, model)
    total = cfg.steps
    sched = HyperparameterScheduler(
        opt, lr=schedule_from_spec(cfg.lr_schedule, cfg.lr, total, weight_decay=cfg.weight_decay),
        weight_decay=schedule_from_spec(cfg.wd_schedule, cfg.weight_decay, total))
    # the EMA is kept in float32 at least: in bfloat16 a lerp by 1 - ema (say 1e-3) rounds to no change
    ema_model = copy.deepcopy(model).to(torch.float64 if param_dtype == torch.float64 else torch.float32) \
        if cfg.ema is not None else None
    probes = {}
    for spec in cfg.probes:
        args = {k: v for k, v in spec.items() if k != "name"}
        if spec["name"] not in PROBES:
            raise ValueError(f"probes: unknown probe {spec['name']!r}; known: {sorted(PROBES)}")
        if not 0 <= args.get("start", 0) < total:
            raise ValueError(f"probes: {spec['name']} start must be in [0, steps={total}), got {args.get('start')!r}")
        probes[spec["name"]] = PROBES[spec["name"]](model, opt, **args)
    for name in cfg.diagnostics:
        if name not in DIAGNOSTICS:
            raise ValueError(f"diagnostics: unknown diagnostic {name!r}; known: {sorted(DIAGNOSTICS)}")
    for spec in cfg.measures:
        if spec["name"] not in MEASURES:
            raise ValueError(f"measures: unknown measure {spec['name']!r}; known: {sorted(MEASURES)}")

    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    def autocast():
        if cfg.precision == "bf16-autocast":
            return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def cast(x: torch.Tensor) -> torch.Tensor:
        return x.to(param_dtype) if x.is_floating_point() else x

    def batch(step: int, rank_: int, world_: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        if language:
            x, y = ds.batch(step, cfg.batch_size, cfg.block_size, seed, device=dev, rank=rank_, world_size=world_)
        else:
            x, y = ds.batch(step, cfg.batch_size, seed, device=dev, rank=rank_, world_size=world_)
        return cast(x), y

    def eval_sets() -> dict[str, Any]:
        if language:
            return {"val": lambda: ((cast(x), y) for x, y in ds.eval_batches(
                        cfg.batch_size, cfg.block_size, cfg.eval_batches, seed=0, split="val", device=dev)),
                    "train": lambda: ((cast(x), y) for x, y in ds.eval_batches(
                        cfg.batch_size, cfg.block_size, cfg.eval_batches, seed=0, split="train", device=dev))}
        return {"val": lambda: ((cast(x), y) for x, y in ds.eval_batches("test")),
                "train": lambda: ((cast(x), y) for x, y in ds.eval_batches("train", limit=4096))}

    history: dict[str, list[Any]] = {}
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    start, running_min, diverged_at, wall_before = 0, math.inf, None, 0.0
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if ckpt_path is not None and resume:
        ckpt = load_checkpoint(ckpt_path)
        if ckpt is not None and ckpt["config_key"] == cfg.key():
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            if ema_model is not None and ckpt.get("ema") is not None:
                ema_model.load_state_dict(ckpt["ema"])
            for name, probe in probes.items():
                probe.load_state_dict(ckpt["probes"][name])
            history = {k: list(v) for k, v in ckpt["history"].items()}
            snapshots = dict(ckpt.get("snapshots", {}))
            start, running_min, wall_before = ckpt["step"], ckpt["running_min"], ckpt["wall_time"]
            _set_rng_state(ckpt["rng"])

    def save_checkpoint(next_step: int, wall: float) -> None:
        if ckpt_path is None or rank != 0:
            return
        _atomic_save({"format": "wdlib-checkpoint-1", "config_key": cfg.key(), "step": next_step,
                      "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                      "ema": ema_model.state_dict() if ema_model is not None else None,
                      "probes": {n: p.state_dict() for n, p in probes.items()},
                      "history": history, "snapshots": snapshots, "running_min": running_min, "wall_time": wall,
                      "rng": _rng_state()}, ckpt_path)

    def record(step: int, train_loss: float, lr_used: float, wd_used: float, wall: float) -> None:
        row: dict[str, Any] = {"step": step, "last_loss": train_loss, "lr": lr_used, "wd": wd_used,
                               "wall_time": wall}
        if rank == 0:
            sets = eval_sets()
            row["val_loss"], row["val_acc"] = evaluate(model, sets["val"](), autocast)
            row["train_loss"], row["train_acc"] = evaluate(model, sets["train"](), autocast)
            if ema_model is not None:
                ema_dtype = next(ema_model.parameters()).dtype
                row["ema_val_loss"], row["ema_val_acc"] = evaluate(
                    ema_model, ((x.to(ema_dtype) if x.is_floating_point() else x, y) for x, y in eval_sets()["val"]()),
                    autocast)
            row.update(_group_norms(opt))
            with torch.no_grad():
                for name in cfg.diagnostics:
                    fn = DIAGNOSTICS[name]
                    if getattr(fn, "needs_batch", False):
                        value = fn(model, opt, batch=next(iter(eval_sets()["val"]())), autocast=autocast)
                    else:
                        value = fn(model, opt)
                    row[f"diag/{name}"] = _diagnostic_value(name, value, history)
        for k, v in row.items():
            history.setdefault(k, []).append(v)

    micro = cfg.batch_size // world // cfg.grad_accum
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ValueError(f"batch_size ({cfg.batch_size}) must be divisible by world size x grad_accum "
                         f"({world} x {cfg.grad_accum})")
    model.train()
    t0 = time.perf_counter()
    bar = progress_bar(total=total, initial=start, disable=not (show_progress(progress) and rank == 0),
                  mininterval=1.0, desc=f"{cfg.model} {cfg.optimizer}")
    step, loss_value = start, float("nan")
    for step in range(start, total):
        x, y = batch(step, rank, world, cfg.seed + 1 if step == cfg.perturb_step else cfg.seed)
        opt.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
        for m in range(cfg.grad_accum):
            xb, yb = x[m * micro:(m + 1) * micro], y[m * micro:(m + 1) * micro]
            sync = m == cfg.grad_accum - 1 or world == 1
            ctx = net.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
            with ctx:
                with autocast():
                    logits = net(xb).float()
                    if logits.ndim == 3:
                        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1))
                    else:
                        loss = F.cross_entropy(logits, yb)
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach().double()
        loss_t = loss_sum / cfg.grad_accum
        if world > 1:
            import torch.distributed as dist
            dist.all_reduce(loss_t)
            loss_t /= world
        loss_value = float(loss_t)
        if not math.isfinite(loss_value) or loss_value > cfg.divergence_factor * running_min:
            diverged_at = step
            break
        running_min = min(running_min, loss_value)
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        for p in probes.values():
            p.before_step(step)
        opt.step()
        for p in probes.values():
            p.after_step(step)
        lr_used, wd_used = opt.param_groups[0]["lr"], max(g["weight_decay"] for g in opt.param_groups)
        sched.step()
        if ema_model is not None:
            with torch.no_grad():
                ema_p = list(ema_model.parameters())
                torch._foreach_lerp_(ema_p, [p.detach().to(ema_p[0].dtype) for p in model.parameters()],
                                     1.0 - cfg.ema)
                for eb, b in zip(ema_model.buffers(), model.buffers()):
                    eb.copy_(b)
        bar.update(1)
        done = step + 1
        if done in cfg.snapshots:
            snapshots[done] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if (cfg.eval_every and done % cfg.eval_every == 0) or done == total:
            record(done, loss_value, lr_used, wd_used, wall_before + time.perf_counter() - t0)
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < total:
            save_checkpoint(done, wall_before + time.perf_counter() - t0)
    bar.close()
    wall = wall_before + time.perf_counter() - t0
    steps_done = diverged_at if diverged_at is not None else total
    arrays = {k: (torch.stack(v).numpy() if v and isinstance(v[0], torch.Tensor) else np.asarray(v, dtype=np.float64))
              for k, v in history.items()}
    final = {k: float(v[-1]) for k, v in arrays.items() if v.ndim == 1 and len(v)}
    if diverged_at is not None:  # the evaluations before it stay in the history; the loss that tripped it here
        final["last_loss"] = loss_value
    elif rank == 0:
        for spec in cfg.measures:
            args = {k: v for k, v in spec.items() if k != "name"}
            fn = MEASURES[spec["name"]]
            extra = {"run": cfg, "autocast": autocast} if getattr(fn, "needs_run", False) else {}
            for k, v in fn(model, ds, **extra, **args).items():
                final[f"{spec['name']}/{k}"] = float(v)
    probe_arrays: dict[str, np.ndarray] = {}
    for name, p in probes.items():
        if getattr(p, "count", 1) > 0:
            for k, v in p.result().items():
                probe_arrays[f"{name}/{k}"] = np.asarray(v)
    from .models import attention_backend

    info = {"device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "world_size": world, "groups": groups_info, "precision": cfg.precision,
            "attention_backend": attention_backend(dev, torch.bfloat16 if cfg.precision != "fp32" else param_dtype)
            if cfg.model == "gpt" else None,
            "resumed_from": start}
    to_cpu = lambda sd: {k: v.detach().cpu().clone() for k, v in sd.items()}  # noqa: E731
    return RunResult(config=cfg.to_dict(), history=arrays, final=final, diverged_at=diverged_at,
                     steps_done=steps_done, wall_time=wall, probes=probe_arrays, info=info,
                     model_state=to_cpu(model.state_dict()),
                     ema_state=to_cpu(ema_model.state_dict()) if ema_model is not None else None,
                     snapshots=snapshots)

