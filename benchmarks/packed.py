"""Packed training against solo runs, per chapter model, on the current device, in the same run.

    python benchmarks/packed.py [--device cpu|cuda] [--scale smoke|full|test] [--members 8] [--steps 30]
                                [--threads N] [--chapters decoupling,practice,...]

For each chapter (its ``planned_runs`` at ``--scale``), the runs that :func:`wdlib.packed.plan_packs` would
pack together (``pack="always"``: every group of configurations differing only in seed, lr and weight decay)
are grouped; for each distinct model of a chapter the first ``--members`` configurations of its largest
group are trained for ``--steps`` steps, evaluation off (``eval_every=0``, one evaluation batch at the end),
once one by one (:func:`wdlib.train.train`) and once as a pack (:func:`wdlib.packed.train_packed`) after a
warm-up of each. Printed per model: parameters, batch size, seconds per member-step solo and packed, their
ratio (> 1: packing is faster), what ``pack="auto"`` decides on this device, and the largest relative
difference of the members' final training losses (a parity check, not a test). Runs that cannot be packed
(probes, diagnostics, dropout, bf16-pure) are counted and skipped.

Not a test: numbers depend on the machine and its load. On a 2-core CPU, one thread, 8 members, 30 steps,
batch 128 the author measured MLP-128x2 1.3x, MLP-256x2 1.0x, MLP-512x2 0.65x and 1-D ConvNets of 3k-10k
parameters 0.8-1.1x; the chapters' smoke build ran slower packed, so ``pack="auto"`` packs on a GPU only
(:data:`wdlib.packed.CPU_REASON`).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wdlib import packed  # noqa: E402
from wdlib.config import RunConfig  # noqa: E402
from wdlib.experiments import decoupling, ema_view, llm, overparam, practice, scaling  # noqa: E402
from wdlib.runtime import resolve_device  # noqa: E402
from wdlib.train import train  # noqa: E402

CHAPTERS = {
    "decoupling": decoupling,
    "practice": practice,
    "ema_view": ema_view,
    "scaling": scaling,
    "overparam": overparam,
    "llm": llm,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, arg, device: torch.device) -> tuple[float, list]:
    """Seconds ``fn(arg)`` takes (synchronized on a GPU) and what it returned."""
    _sync(device)
    t = time.perf_counter()
    out = fn(arg)
    _sync(device)
    return time.perf_counter() - t, out


def _short(c: RunConfig, steps: int) -> RunConfig:
    """``c`` cut to ``steps`` steps for timing: evaluation once at the end on one batch, no snapshots, measures,
    checkpoints, schedules or starting snapshot (their settings may not fit a short run); probes from step 0."""
    probes = tuple({k: v for k, v in p.items() if k != "start"} for p in c.probes)
    return c.replace(
        steps=steps,
        eval_every=0,
        eval_batches=1,
        snapshots=(),
        measures=(),
        checkpoint_every=0,
        lr_schedule=None,
        wd_schedule=None,
        init_from=None,
        perturb_step=None,
        probes=probes,
    )


def groups_of(configs: list[RunConfig], members: int) -> dict[str, list[RunConfig]]:
    """Per model (name and arguments) the first ``members`` configurations of its largest packable group."""
    packs, _ = packed.plan_packs(configs, "cpu", "always", max_members=10**6)
    best: dict[str, list[RunConfig]] = {}
    for p in packs:
        if len(p) < 2:
            continue
        c = configs[p[0]]
        label = f"{c.model} {c.model_args}"
        if len(p) > len(best.get(label, [])):
            best[label] = [configs[i] for i in p]
    return {k: v[:members] for k, v in best.items()}


def bench(chapter: str, scale: str, device: torch.device, members: int, steps: int) -> None:
    mod = CHAPTERS[chapter]
    configs = mod.planned_runs(mod.setup(scale, device=str(device)))
    lone = sum(packed.why_not_packed(c) is not None for c in configs)
    print(f"\n{chapter} ({scale}): {len(configs)} runs, {lone} cannot be packed (probes, diagnostics, ...)")
    for label, group in groups_of(configs, members).items():
        short = list({c.key(): c for c in (_short(c, steps) for c in group)}.values())
        if len(short) < 2:
            continue
        train(_short(short[0], 2), device=device)  # warm-up
        packed.train_packed([_short(c, 2) for c in short[:2]], device=device)
        t_solo, solo = _timed(lambda cs: [train(c, device=device) for c in cs], short, device)
        t_pack, pk = _timed(lambda cs: packed.train_packed(cs, device=device), short, device)
        n = sum(v.numel() for v in solo[0].model_state.values() if v.is_floating_point())
        diff = max(
            abs(a.final["train_loss"] - b.final["train_loss"]) / max(abs(a.final["train_loss"]), 1e-12)
            for a, b in zip(solo, pk)
        )
        _, reasons = packed.plan_packs(group[:2], device, "auto")
        auto = "alone: " + reasons[0] if 0 in reasons else "packed"
        per = len(short) * steps
        print(
            f"  {label[:60]:60s} params {n:9d} batch {group[0].batch_size:4d} x{len(short)}: "
            f"solo {1e3 * t_solo / per:8.3f} ms/member-step, packed {1e3 * t_pack / per:8.3f}, "
            f"ratio {t_solo / t_pack:5.2f}  |loss diff| {diff:.1e}  auto: {auto[:70]}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--scale", default="smoke", choices=("smoke", "full", "test"))
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chapters", default=",".join(CHAPTERS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    for chapter in args.chapters.split(","):
        if chapter not in CHAPTERS:
            raise SystemExit(f"--chapters: unknown chapter {chapter!r}; known: {', '.join(CHAPTERS)}")
        bench(chapter, args.scale, device, args.members, args.steps)


if __name__ == "__main__":
    main()
