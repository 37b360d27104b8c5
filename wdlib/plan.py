"""What a chapter will train, and for how long, before anyone commits an hour of Colab to it.

Usage::

    python -m wdlib.plan NOTEBOOK --scale full|smoke|test --device cpu|cuda|auto [--probe-steps N] [--json]

``NOTEBOOK`` is a chapter (``notebooks/03_scaling_rules.ipynb`` or just ``03_scaling_rules``). The plan lists
the chapter's runs (its module's ``planned_runs``: every configuration the notebook trains at that scale), how
many are already in the run store (``$WDLIB_STORE``, or ``--store``; those count as done and are listed
apart), the optimizer steps left, the runs grouped by model with each model's parameter count, and an
estimate of the time left on this machine's device. The estimate is measured, not modelled: for each group
of runs that share model, data, batch, precision and final measures, one representative trains a few steps
(:func:`wdlib.train.train`, or :func:`wdlib.packed.train_packed` for a pack of runs trained together as
:func:`wdlib.runs.run_many` would), and its time per step after a warm-up, one evaluation and the run's fixed
costs are scaled to the group's steps and evaluations. A group whose probe would outrun ``--probe-budget``
is probed at a smaller batch (for a language model at last also a shorter context) and scaled up by the
samples or tokens per step (said so in the output): on a CPU a step's time grows about in proportion to them,
on a GPU it grows less, so that estimate errs long; a group whose smallest step alone is over the budget is
estimated from that one step, its evaluations left out. The packs are those
:func:`wdlib.packed.plan_packs` forms over the runs left (``--pack``, default ``$WDLIB_PACK`` or ``auto``, as
:func:`wdlib.runs.run_many`); the plan prints how many packs and lone runs there are.

Data loading is not in the estimate (once per process: the datasets are cached in memory), nor are the
chapter's analyses between runs; the runs are timed one after another in one process, while the notebook may
train them in several worker processes (``workers`` in the plan). On a CPU the probes run in ``--threads``
torch threads (default 1, as those workers do: a small model gains nothing from more, and threads that wait
for a busy core slow every operation down many times).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from .components import build_data, build_model
from .config import SCALES, TOKEN_DATA, RunConfig
from .experiments import beyond, decoupling, ema_view, llm, overparam, practice, scaling
from .packed import PACK_MODES, plan_packs, train_packed
from .runs import pack_mode
from .runtime import resolve_device
from .store import Store
from .train import train

__all__ = [
    "CHAPTERS",
    "DEVICES",
    "chapter_name",
    "evaluations",
    "probe_config",
    "make_plan",
    "render",
    "main",
]

#: The chapters, by notebook name, and the module whose ``planned_runs`` lists each one's runs.
#:
#: :meta hide-value:
CHAPTERS: dict[str, ModuleType] = {
    "01_l2_vs_decoupled": decoupling,
    "01b_decoupling_in_practice": practice,
    "02_ema_view": ema_view,
    "03_scaling_rules": scaling,
    "04_overparameterized": overparam,
    "05_llm_regime": llm,
    "06_beyond_sources": beyond,
}
#: The devices a plan is made for ("auto" means CUDA when there is one).
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: Steps each probe trains before the timed ones (its first steps pay for allocation and kernel selection).
WARMUP_STEPS = 1
#: Evaluation batches a probe of token data evaluates (scaled up to the runs' ``eval_batches``): a language
#: model's evaluation at full scale costs as much as dozens of its steps.
EVAL_PROBE_BATCHES = 2


def chapter_name(notebook: str) -> str:
    """The chapter a notebook argument names: ``notebooks/03_scaling_rules.ipynb``, ``03_scaling_rules.ipynb``
    and ``03_scaling_rules`` all name ``"03_scaling_rules"``. ValueError lists the chapters otherwise."""
    name = Path(str(notebook)).name.removesuffix(".ipynb")
    if name not in CHAPTERS:
        raise ValueError(f"notebook must be one of {', '.join(CHAPTERS)} (or its .ipynb path), got {notebook!r}")
    return name


def evaluations(cfg: RunConfig) -> int:
    """How many evaluations a run of ``cfg`` makes: every ``eval_every`` steps and always after its last."""
    if not cfg.eval_every:
        return 1
    return cfg.steps // cfg.eval_every + (1 if cfg.steps % cfg.eval_every else 0)


def probe_config(
    cfg: RunConfig,
    steps: int,
    *,
    batch_size: int | None = None,
    block_size: int | None = None,
    eval_batches: int | None = None,
    measures: bool = True,
    seed: int | None = None,
) -> RunConfig:
    """``cfg`` cut down to a timing probe of ``steps`` steps: no evaluations but the last, no checkpoints,
    snapshots, schedules, replaced batch or start from another run (none changes a step's cost); probes
    recording from step 0 (the probe is their window); ``batch_size``, ``block_size``, ``eval_batches`` and
    ``seed`` if given
    (the members of a probed pack take seeds 0, 1, ...: without their schedules two of them could be the same
    run); without measures unless ``measures``."""
    probes = [{**p, "start": 0} if "start" in p else p for p in cfg.probes]
    return cfg.replace(
        steps=steps,
        eval_every=0,
        checkpoint_every=0,
        snapshots=[],
        init_from=None,
        perturb_step=None,
        lr_schedule=None,
        wd_schedule=None,
        probes=probes,
        measures=list(cfg.measures) if measures else [],
        batch_size=batch_size or cfg.batch_size,
        block_size=block_size or cfg.block_size,
        eval_batches=eval_batches or cfg.eval_batches,
        seed=cfg.seed if seed is None else seed,
    )


# --- the runs ------------------------------------------------------------------------------------------


def _data_key(cfg: RunConfig) -> str:
    fields = ("data", "data_args", "subset", "data_seed", "label_noise", "block_size")
    return json.dumps({k: cfg.value(k) for k in fields}, sort_keys=True)


def _model_key(cfg: RunConfig) -> str:
    return f"{cfg.model} {json.dumps(cfg.model_args, sort_keys=True)}"


def _group_key(cfg: RunConfig) -> str:
    """What a probe's time stands for: model, data, batch, precision and the run's final measures."""
    measures = sorted(m["name"] for m in cfg.measures)
    return "|".join(
        [_model_key(cfg), _data_key(cfg), f"batch {cfg.batch_size}", cfg.precision, cfg.dtype, ",".join(measures)]
    )


def _group_label(cfg: RunConfig) -> str:
    """The group of :func:`_group_key` in words: model, batch (x context), precision, dtype and measures."""
    batch = f"batch {cfg.batch_size}" + (f"x{cfg.block_size}" if cfg.data in TOKEN_DATA else "")
    if cfg.subset is not None:
        batch = f"{cfg.subset:,} samples, {batch}"
    dtype = f" {cfg.dtype}" if cfg.precision == "fp32" and cfg.dtype != "float32" else ""
    measures = ", ".join(m["name"] for m in cfg.measures)
    return f"{_model_key(cfg)}, {batch}, {cfg.precision}{dtype}" + (f", measures {measures}" if measures else "")


class _Data:
    """Each dataset the plan needs, built once."""

    def __init__(self) -> None:
        self.built: dict[str, Any] = {}

    def __call__(self, cfg: RunConfig) -> Any:
        key = _data_key(cfg)
        if key not in self.built:
            self.built[key] = build_data(cfg)
        return self.built[key]


def _parameters(cfg: RunConfig, data: _Data) -> int:
    """The parameter count of ``cfg``'s model, built on the meta device (no memory, no random draw)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_model(cfg, data(cfg))
    return sum(p.numel() for p in model.parameters())


def _open_store(root: str | None) -> Store | None:
    """The run store at ``root`` (None: ``$WDLIB_STORE`` or results/store), or None where there is none yet."""
    try:
        return Store(root, create=False)
    except ValueError:
        return None


# --- the probes ----------------------------------------------------------------------------------------


@dataclass
class Probe:
    """What one probe measured, in seconds: ``step`` per optimizer step at ``batch`` x ``block`` (the runs' own,
    or smaller: then ``scale`` times it, their ratio of samples or tokens per step, is the runs' step),
    ``evaluation`` per evaluation of the runs (scaled likewise, and for token data from ``EVAL_PROBE_BATCHES``
    of their ``eval_batches``), ``fixed`` per run (building model and optimizer, the final measures);
    ``members`` runs trained together (1: alone)."""

    group: str
    label: str
    key: str
    members: int
    batch: int
    block: int
    scale: float
    step: float
    evaluation: float | None
    fixed: float
    note: str = ""


def _probe_configs(configs: list[RunConfig], steps: int, **changes: Any) -> list[RunConfig]:
    """:func:`probe_config` of one run, or of each member of a pack (seeds 0, 1, ...)."""
    if len(configs) == 1:
        return [probe_config(configs[0], steps, **changes)]
    return [probe_config(c, steps, seed=i, **changes) for i, c in enumerate(configs)]


def _timed_train(configs: list[RunConfig], device: torch.device, ds: Any) -> tuple[float, float, float]:
    """Train ``configs`` (one run, or a pack): seconds of training before the last evaluation, seconds the
    run counted (with that evaluation), seconds of the whole call."""
    start = time.perf_counter()
    if len(configs) == 1:
        results = [train(configs[0], device=device, progress=False, data=ds)]
    else:
        results = train_packed(configs, device=device, progress=False, data=ds)
    total = time.perf_counter() - start
    return float(results[0].history["wall_time"][-1]), float(results[0].wall_time), total


def _shapes(cfg: RunConfig) -> list[tuple[int, int]]:
    """The (batch, block) a probe may run at, largest first: the runs' own, then halved batches down to the
    smallest (a divisor of the batch up to 8 that the gradient accumulation divides, so BatchNorm sees more than
    one sample; for token data the accumulation alone), then for token data that batch on a context of 64."""
    token = cfg.data in TOKEN_DATA
    top = 1 if token else min(cfg.batch_size, 8)
    small = max(d for d in range(1, top + 1) if cfg.batch_size % d == 0 and d % cfg.grad_accum == 0)
    shapes, batch = [(cfg.batch_size, cfg.block_size)], cfg.batch_size
    while batch > small and batch % (2 * small) == 0:
        batch //= 2
        shapes.append((batch, cfg.block_size))
    if shapes[-1][0] != small:
        shapes.append((small, cfg.block_size))
    if token and cfg.block_size > 64:
        shapes.append((small, 64))
    return shapes


def _work(cfg: RunConfig, shape: tuple[int, int]) -> int:
    """Samples (or tokens, for token data) per step at ``shape``."""
    return shape[0] * (shape[1] if cfg.data in TOKEN_DATA else 1)


def _probe_shape(
    configs: list[RunConfig], device: torch.device, ds: Any, steps: int, budget: float
) -> tuple[tuple[int, int], float, bool]:
    """The (batch, block) to probe at: the largest of :func:`_shapes` whose ``steps`` steps fit in ``budget``
    seconds, judged from one step at the smallest, the faster of two (they are also the probe's warm-up; an
    overestimate still, as its fixed costs are scaled too). Returns it, that one step's time and whether even
    the smallest is over budget."""
    cfg, shapes = configs[0], _shapes(configs[0])
    tiny = shapes[-1]
    one = _probe_configs(configs, 1, batch_size=tiny[0], block_size=tiny[1], measures=False)
    one_step = min(_timed_train(one, device, ds)[0] for _ in range(2))  # the first also pays the process's warm-up
    for shape in shapes:
        if one_step * _work(cfg, shape) / _work(cfg, tiny) * steps <= budget:
            return shape, one_step, False
    return tiny, one_step, True


def _probe(configs: list[RunConfig], device: torch.device, data: _Data, probe_steps: int, budget: float) -> Probe:
    """Time ``configs`` (one run, or the members of a pack): a warm-up, then ``WARMUP_STEPS`` steps without
    measures (``a``) and ``WARMUP_STEPS + probe_steps`` steps with them (``b``). The step time is the difference
    of their training times over ``probe_steps``; one evaluation is ``a``'s last; the fixed cost per run is
    ``b``'s time outside training and that evaluation. ``b`` runs the final measures only at the runs' own batch:
    where a step had to be probed smaller, a measure (whose size does not follow the batch) could outrun the
    budget many times, and it is left out (said in the note)."""
    cfg, ds = configs[0], data(configs[0])
    token = cfg.data in TOKEN_DATA
    eval_batches = min(cfg.eval_batches, EVAL_PROBE_BATCHES) if token else cfg.eval_batches
    steps = 2 * WARMUP_STEPS + probe_steps + (2 * eval_batches if token else 0)  # + the forward passes of evals
    shape, one_step, over = _probe_shape(configs, device, ds, steps, budget)
    own = (cfg.batch_size, cfg.block_size)
    scale = _work(cfg, own) / _work(cfg, shape)
    base = dict(group=_group_key(cfg), label=_group_label(cfg), key=cfg.key(), members=len(configs))
    base.update(batch=shape[0], block=shape[1], scale=scale)
    at = f"batch {shape[0]}" + (f"x{shape[1]}" if cfg.data in TOKEN_DATA else "")
    if over:
        note = f"over the probe budget: one step at {at} timed and scaled {scale:g}x; evaluations not measured"
        return Probe(**base, step=one_step, evaluation=None, fixed=0.0, note=note)
    changes = dict(batch_size=shape[0], block_size=shape[1], eval_batches=eval_batches)
    timed = shape == own  # final measures (whose cost a smaller batch does not shrink) only where steps were cheap
    a = _timed_train(_probe_configs(configs, WARMUP_STEPS, measures=False, **changes), device, ds)
    b = _timed_train(_probe_configs(configs, WARMUP_STEPS + probe_steps, measures=timed, **changes), device, ds)
    step = (b[0] - a[0]) / probe_steps
    if step <= 0:  # timer noise on a step of microseconds: the mean over b's steps instead
        step = b[0] / (WARMUP_STEPS + probe_steps)
    fixed = max(b[2] - b[0] - (a[1] - a[0]), 0.0)
    evaluation = (a[1] - a[0]) * (scale * cfg.eval_batches / eval_batches if token else 1.0)
    untimed = "; final measures not timed" if cfg.measures and not timed else ""
    note = f"probed at {at}, scaled {scale:g}x{untimed}" if shape != own else ""
    return Probe(**base, step=step, evaluation=evaluation, fixed=fixed, note=note)


def _seconds(cfgs: list[RunConfig], probe: Probe) -> tuple[float, float]:
    """Estimated (training, evaluation) seconds of ``cfgs``, trained together when the probe was a pack."""
    cfg = cfgs[0]
    train_s = cfg.steps * probe.step * probe.scale + probe.fixed * (1 if probe.members > 1 else len(cfgs))
    if probe.evaluation is None:
        return train_s, math.nan
    return train_s, evaluations(cfg) * probe.evaluation * (1 if probe.members > 1 else len(cfgs))


# --- the plan ------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """A chapter's plan: its runs, what is done, the models, the packs and the measured estimate."""

    chapter: str
    scale: str
    device: str
    seed: int
    store: str | None
    workers: int
    threads: int | None
    planned: int
    distinct: int
    done: list[str]
    todo: list[str]
    steps_todo: int
    steps_done: int
    models: list[dict[str, Any]]
    packs: dict[str, int]
    groups: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = math.nan
    eval_unmeasured: int = 0  # runs whose probe was over budget: their evaluations are not in eval_seconds
    probe_seconds: float = 0.0

    @property
    def total_seconds(self) -> float:
        """Training and the measured evaluations (NaN before any probe)."""
        return self.train_seconds + self.eval_seconds

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as None), with ``total_seconds``."""
        d = {**asdict(self), "total_seconds": self.total_seconds}
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}


def _models(todo: list[RunConfig], data: _Data) -> list[dict[str, Any]]:
    """The runs to train, grouped by model (name and arguments): parameter count, runs and steps."""
    by_model: dict[str, list[RunConfig]] = {}
    for c in todo:
        by_model.setdefault(_model_key(c), []).append(c)
    return [
        {
            "model": key,
            "parameters": _parameters(cs[0], data),
            "runs": len(cs),
            "steps": sum(c.steps for c in cs),
        }
        for key, cs in by_model.items()
    ]


def _units(todo: list[RunConfig], device: torch.device, pack: str, workers: int, data: _Data) -> list[list[int]]:
    """The units :func:`wdlib.runs.run_many` would train ``todo`` in with ``pack``: packs of runs trained together
    and runs alone (:func:`wdlib.packed.plan_packs`). (run_many packs within one call, a plan across the chapter:
    where a chapter asks for runs of one pack in several calls, its real packs are smaller.)"""
    if not todo:
        return []
    return plan_packs(todo, device, pack, split=workers, data=data)[0]


def _estimate(plan: Plan, todo: list[RunConfig], units: list[list[int]], device: torch.device, args: Any) -> None:
    """Probe one representative unit per group (and pack size) and add up the estimate into ``plan``."""
    probes: dict[tuple[str, int], Probe] = {}
    data, start = _Data(), time.perf_counter()
    totals: dict[tuple[str, int], dict[str, Any]] = {}
    for unit in units:
        cfgs = [todo[i] for i in unit]
        key = (_group_key(cfgs[0]), len(cfgs))
        if key not in probes:
            probes[key] = _probe(cfgs, device, data, args.probe_steps, args.probe_budget)
        tr, ev = _seconds(cfgs, probes[key])
        t = totals.setdefault(key, {"runs": 0, "units": 0, "steps": 0, "train_seconds": 0.0, "eval_seconds": 0.0})
        t["runs"] += len(cfgs)
        t["units"] += 1
        t["steps"] += cfgs[0].steps * len(cfgs)
        t["train_seconds"] += tr
        t["eval_seconds"] += ev
    plan.eval_seconds = 0.0
    for key, t in totals.items():
        plan.groups.append({**t, **asdict(probes[key])})
        plan.train_seconds += t["train_seconds"]
        if math.isnan(t["eval_seconds"]):
            plan.eval_unmeasured += t["runs"]
        else:
            plan.eval_seconds += t["eval_seconds"]
    plan.probe_seconds = time.perf_counter() - start


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan of ``args.notebook`` at ``args.scale`` on ``args.device`` (see :func:`main` for the arguments)."""
    name = chapter_name(args.notebook)
    module = CHAPTERS[name]
    device = resolve_device(args.device)
    threads = (args.threads or 1) if device.type == "cpu" else None
    if threads is not None:
        torch.set_num_threads(threads)
    s = module.setup(args.scale, device=device, seed=args.seed)
    store = _open_store(args.store)
    planned = module.planned_runs(s, store=store)
    configs = list({c.key(): c for c in planned}.values())
    done = [c for c in configs if store is not None and store.get(c) is not None]
    done_keys = {c.key() for c in done}
    todo = [c for c in configs if c.key() not in done_keys]
    data = _Data()
    workers = int(getattr(s, "workers", 1))
    pack = pack_mode(args.pack)
    units = _units(todo, device, pack, workers, data)
    packs = [u for u in units if len(u) > 1]
    plan = Plan(
        chapter=name,
        scale=args.scale,
        device=str(device),
        seed=args.seed,
        store=str(store.root) if store is not None else None,
        workers=workers,
        threads=threads,
        planned=len(planned),
        distinct=len(configs),
        done=[c.key() for c in done],
        todo=[c.key() for c in todo],
        steps_todo=sum(c.steps for c in todo),
        steps_done=sum(c.steps for c in done),
        models=_models(todo, data),
        packs={
            "mode": pack,
            "packs": len(packs),
            "packed_runs": sum(map(len, packs)),
            "alone": len(units) - len(packs),
        },
    )
    if not args.no_probe:
        _estimate(plan, todo, units, device, args)
    return plan


# --- output --------------------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """``seconds`` as ``"2 h 05 min"``, ``"4 min 10 s"`` or ``"3.2 s"``."""
    if math.isnan(seconds):
        return "not measured"
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds:.1f} s"


def _span(seconds: list[float], per: str = "") -> str:
    """``"1.20 ms"`` (``"2.5 s"`` from a second on), or a range ``"1.20-3.40 ms"`` over several probes."""
    scale, unit = (1e3, "ms") if max(seconds) < 1 else (1.0, "s")
    lo, hi = (f"{x * scale:.2f}" if scale > 1 else f"{x:,.1f}" for x in (min(seconds), max(seconds)))
    return f"{lo} {unit}{per}" if lo == hi else f"{lo}-{hi} {unit}{per}"


def _group_line(groups: list[dict[str, Any]]) -> str:
    """Probed groups that read alike (same model, batch, precision and pack size; other data, say): their runs,
    measured times (a range over the probes) and estimate."""
    g = groups[0]
    what = f"packs of {g['members']}" if g["members"] > 1 else "alone"
    per = " per pack" if g["members"] > 1 else ""
    step = _span([x["step"] * x["scale"] for x in groups], "/step") + per
    measured = [x["evaluation"] for x in groups if x["evaluation"] is not None]
    evaluation = _span(measured) if measured else "not measured"
    seconds = sum(x["train_seconds"] + (x["eval_seconds"] if x["evaluation"] is not None else 0.0) for x in groups)
    notes = sorted({x["note"] for x in groups if x["note"]})
    note = f" ({'; '.join(notes)})" if notes else ""
    probes = f", {len(groups)} probes" if len(groups) > 1 else ""
    return (
        f"    {sum(x['runs'] for x in groups)} runs ({what}{probes}) {g['label']}: {step}, evaluation {evaluation}: "
        f"{duration(seconds)}{note}"
    )


def _alike(groups: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """``groups`` gathered by label and pack size, in order of first appearance."""
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for g in groups:
        out.setdefault((g["label"], g["members"]), []).append(g)
    return list(out.values())


def render(plan: Plan) -> str:
    """The plan as text."""
    lines = [
        f"{plan.chapter} at scale {plan.scale} on {plan.device} (base seed {plan.seed}; run store "
        f"{plan.store or 'none yet'})",
        f"  runs: {plan.distinct} ({len(plan.done)} done in the store, {len(plan.todo)} to train)",
        f"  optimizer steps to train: {plan.steps_todo:,} (done: {plan.steps_done:,})",
        f"  packing ({plan.packs['mode']}): {plan.packs['packs']} pack(s) of runs trained together "
        f"({plan.packs['packed_runs']} runs), "
        f"{plan.packs['alone']} run(s) alone; the notebook trains in {plan.workers} worker process(es)",
        "  models to train:",
    ]
    for m in plan.models:
        lines.append(f"    {m['model']}: {m['parameters']:,} parameters, {m['runs']} runs, {m['steps']:,} steps")
    if plan.groups:
        threads = f", {plan.threads} thread(s)" if plan.threads else ""
        lines.append(
            f"  estimate on {plan.device}{threads}, measured per group ({plan.probe_seconds:.0f} s of probes):"
        )
        lines += [_group_line(gs) for gs in _alike(plan.groups)]
        unmeasured = f"; the evaluations of {plan.eval_unmeasured} runs excluded" if plan.eval_unmeasured else ""
        lines.append(
            f"  estimated time: {duration(plan.total_seconds)} (training {duration(plan.train_seconds)}, "
            f"evaluations {duration(plan.eval_seconds)}{unmeasured}), runs one after another in one process; "
            "data loading excluded"
        )
        if plan.threads and plan.workers > 1:
            lines.append(
                f"  in the notebook's {plan.workers} single-thread worker processes: about "
                f"{duration(plan.total_seconds / plan.workers)} where {plan.workers} cores are free"
            )
    elif plan.todo:
        lines.append("  estimated time: not measured (--no-probe)")
    if plan.done:
        shown = ", ".join(plan.done[:8]) + (", ..." if len(plan.done) > 8 else "")
        lines.append(f"  done (in the store, not counted above): {len(plan.done)} runs: {shown}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m wdlib.plan", description=__doc__.splitlines()[0])
    p.add_argument("notebook", help=f"the chapter: {', '.join(CHAPTERS)} (or its notebooks/<name>.ipynb path)")
    p.add_argument("--scale", default="smoke", choices=SCALES, help="the chapter's scale (default smoke)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="where the runs would train (default auto)")
    p.add_argument("--seed", type=int, default=0, help="the notebook's base seed (default 0)")
    p.add_argument("--probe-steps", type=int, default=20, help="timed steps per probe after the warm-up (default 20)")
    p.add_argument(
        "--probe-budget",
        type=float,
        default=60.0,
        help="seconds one probe may take before it is run at a smaller batch and scaled (default 60)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the probes on a CPU (default 1, as run_many's worker processes train)",
    )
    p.add_argument(
        "--pack", default=None, choices=PACK_MODES, help="packing, as run_many's (default $WDLIB_PACK or auto)"
    )
    p.add_argument("--store", default=None, help="the run store (default $WDLIB_STORE or results/store)")
    p.add_argument("--no-probe", action="store_true", help="list the runs and steps only, no time estimate")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 with argparse's usage line for a value the choices do not already check."""
    try:
        chapter_name(args.notebook)
    except ValueError as err:
        p.error(str(err))
    if args.probe_steps < 1:
        p.error(f"--probe-steps must be an integer >= 1, got {args.probe_steps}")
    if not args.probe_budget > 0:
        p.error(f"--probe-budget must be a number of seconds > 0, got {args.probe_budget}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be an integer >= 1, got {args.threads}")
    if args.seed < 0:
        p.error(f"--seed must be an integer >= 0, got {args.seed}")
    try:
        pack_mode(args.pack)
    except ValueError as err:
        p.error(str(err))
    try:
        resolve_device(args.device)
    except ValueError as err:
        p.error(str(err))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m wdlib.plan``: print the plan (text, or ``--json``); exit 2 on a bad argument."""
    p = _parser()
    args = p.parse_args(argv)
    _check_args(p, args)
    plan = make_plan(args)
    print(json.dumps(plan.to_dict(), indent=1) if args.json else render(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
