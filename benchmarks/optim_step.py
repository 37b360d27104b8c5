"""Step time of wdlib's optimizers against torch.optim's fused kernel for the same arithmetic, in the same run.

    python benchmarks/optim_step.py [--params 1e6,12.6e6,50e6] [--dtypes float32,bfloat16]
                                    [--device cpu|cuda] [--repeats 25] [--threads N] [--json PATH]

For every size and storage dtype the parameters are a transformer-like list of tensors (blocks of a
``d x 4d``, ``4d x d`` and ``d x d`` matrix and three vectors; ``d`` grows with the size so that there
are about 30 tensors, as in a small model) with random gradients set once. Each wdlib optimizer and
decay convention is paired with torch's fused kernel doing the same amount of work:

=================================  ======================================================
wdlib                              reference (torch.optim, ``fused=True``)
=================================  ======================================================
Adam, decay "l2"                   Adam with ``weight_decay`` (coupled)
Adam, "decoupled" / "independent"  AdamW (the independent lambda converted)
SGD, "l2"                          SGD with ``weight_decay``
SGD, "decoupled" / "independent"   SGD with a coupled ``weight_decay`` (one pass; torch has
                                   no decoupled SGD, so this is the speed of a single pass)
=================================  ======================================================

with momentum 0.9 (SGD also without momentum). Where torch's fused SGD kernel does not update the dtype
(:func:`wdlib.optim.fused_sgd_works`: bfloat16 on CPU in torch 2.12-2.13) wdlib's SGD runs torch's foreach
kernels and the SGD rows compare with ``torch.optim.SGD(foreach=True)``. The two are stepped alternately,
``--repeats`` times after a warm-up (the order flips each repeat), and the ratio is the median of the per-repeat ratios
wdlib/torch: paired, so that drifts of the machine's speed cancel. Goal (issue 20): every ratio
<= 1.05 from 1M to 50M parameters. ``--json`` writes the table with the machine (CPU, threads, torch,
date, commit); the book's status page shows the latest such file (``benchmarks/results/``). Not a
test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from wdlib.optim import SGD, Adam, fused_sgd_works  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402

LR, WD = 1e-3, 0.1


def make_params(
    total: float, device: torch.device, dtype: torch.dtype, d: int | None = None, init_scale: float = 1.0
) -> list[torch.nn.Parameter]:
    """Repeating (d x 4d, 4d x d, d x d, d, d, 4d) tensors until ``total`` elements, values ``init_scale * N(0, 1)``
    and gradients ``1e-3 * N(0, 1)`` (seeded). ``d`` (a multiple of 64) defaults to about five blocks, ~30
    tensors. Also used by ``bf16_update.py``."""
    if d is None:
        d = 64 * max(1, round(math.sqrt(total / (5 * 9.25)) / 64))
    block = ((d, 4 * d), (4 * d, d), (d, d), (d,), (d,), (4 * d,))
    shapes: list[tuple[int, ...]] = []
    count = 0
    while count < total:
        shape = block[len(shapes) % len(block)]
        shapes.append(shape)
        count += int(torch.Size(shape).numel())
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter((torch.randn(shape, generator=gen) * init_scale).to(device=device, dtype=dtype))
        p.grad = (torch.randn(shape, generator=gen) * 1e-3).to(device=device, dtype=dtype)
        params.append(p)
    return params


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(opt: torch.optim.Optimizer, device: torch.device, repeats: int) -> float:
    """Median seconds per ``opt.step()`` (after 5 warm-up steps). Used by ``bf16_update.py``."""
    for _ in range(5):
        opt.step()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired_times(
    ours: torch.optim.Optimizer, ref: torch.optim.Optimizer, device: torch.device, repeats: int
) -> tuple[float, float, float]:
    """(median s/step of ours, of ref, median of the per-repeat ratios ours/ref), stepped alternately."""
    for _ in range(3):
        ours.step()
        ref.step()
    t_ours, t_ref, ratios = [], [], []
    for r in range(repeats):
        pair = {}
        for name, opt in (("ours", ours), ("ref", ref)) if r % 2 == 0 else (("ref", ref), ("ours", ours)):
            _sync(device)
            t0 = time.perf_counter()
            opt.step()
            _sync(device)
            pair[name] = time.perf_counter() - t0
        t_ours.append(pair["ours"])
        t_ref.append(pair["ref"])
        ratios.append(pair["ours"] / pair["ref"])
    return statistics.median(t_ours), statistics.median(t_ref), statistics.median(ratios)


Factory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


def cases(sgd_kernel: dict[str, bool]) -> list[tuple[str, Factory, Factory]]:
    """(name, wdlib optimizer, torch reference doing the same work). ``sgd_kernel`` is ``{"fused": True}``, or
    ``{"foreach": True}`` where torch's fused SGD kernel is broken for the dtype (:func:`wdlib.optim.fused_sgd_works`,
    pytorch#191763: it skips bf16/fp16 updates on CPU in torch 2.12-2.13, so its time would be of no work)."""
    t = torch.optim
    return [
        (
            "Adam l2",
            lambda p: Adam(p, lr=LR, weight_decay=WD, decay="l2"),
            lambda p: t.Adam(p, LR, weight_decay=WD, fused=True),
        ),  # fmt: skip
        (
            "Adam decoupled",
            lambda p: Adam(p, lr=LR, weight_decay=WD, decay="decoupled"),
            lambda p: t.AdamW(p, LR, weight_decay=WD, fused=True),
        ),  # fmt: skip
        (
            "Adam independent",
            lambda p: Adam(p, lr=LR, weight_decay=WD * LR, decay="independent"),
            lambda p: t.AdamW(p, LR, weight_decay=WD, fused=True),
        ),  # fmt: skip
        (
            "SGD l2 m0.9",
            lambda p: SGD(p, lr=LR, momentum=0.9, weight_decay=WD, decay="l2"),
            lambda p: t.SGD(p, LR, momentum=0.9, weight_decay=WD, **sgd_kernel),
        ),  # fmt: skip
        (
            "SGD decoupled m0.9",
            lambda p: SGD(p, lr=LR, momentum=0.9, weight_decay=WD, decay="decoupled"),
            lambda p: t.SGD(p, LR, momentum=0.9, weight_decay=WD, **sgd_kernel),
        ),  # fmt: skip
        (
            "SGD independent m0.9",
            lambda p: SGD(p, lr=LR, momentum=0.9, weight_decay=WD * LR, decay="independent"),
            lambda p: t.SGD(p, LR, momentum=0.9, weight_decay=WD, **sgd_kernel),
        ),  # fmt: skip
        (
            "SGD decoupled m0",
            lambda p: SGD(p, lr=LR, weight_decay=WD, decay="decoupled"),
            lambda p: t.SGD(p, LR, weight_decay=WD, **sgd_kernel),
        ),  # fmt: skip
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="1e6,12.6e6,50e6", help="comma-separated sizes")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--only", default="", help="run only the cases whose name contains this text")
    ap.add_argument("--json", type=Path, default=None, help="write the table and the machine to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = machine(device)
    print(
        f"{info['device']}, {info['threads']} threads, torch {info['torch']}; paired medians of "
        f"{args.repeats} alternating steps; ratio = wdlib / torch fused (goal <= 1.05)"
    )
    rows = []
    for size in [float(s) for s in args.params.split(",")]:
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            params = make_params(size, device, dtype)
            n = sum(p.numel() for p in params)
            print(f"\n{n / 1e6:.1f}M parameters in {len(params)} tensors, {dtype_name}")
            sgd_fused = fused_sgd_works(device.type, dtype)
            if not sgd_fused:
                print(
                    f"  (torch's fused SGD kernel skips {dtype_name} updates here: the SGD rows compare with "
                    "torch's foreach kernel)"
                )
            for name, ours, ref in cases({"fused": True} if sgd_fused else {"foreach": True}):
                if args.only and args.only not in name:
                    continue
                t_ours, t_ref, ratio = paired_times(ours(params), ref(params), device, args.repeats)
                print(f"  {name:<22s} wdlib {t_ours * 1e3:8.2f} ms   torch {t_ref * 1e3:8.2f} ms   x{ratio:5.2f}")
                rows.append(
                    {
                        "optimizer": name,
                        "params": n,
                        "tensors": len(params),
                        "dtype": dtype_name,
                        "wdlib_ms": round(t_ours * 1e3, 3),
                        "torch_ms": round(t_ref * 1e3, 3),
                        "ratio": round(ratio, 3),
                        "reference": "torch fused" if sgd_fused or not name.startswith("SGD") else "torch foreach",
                    }
                )
            del params
    worst = max(rows, key=lambda r: r["ratio"]) if rows else None
    if worst:
        print(
            f"\nworst ratio x{worst['ratio']:.2f}: {worst['optimizer']}, {worst['params'] / 1e6:.1f}M, {worst['dtype']}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/optim_step.py " + " ".join(argv or sys.argv[1:])
        payload = {"benchmark": "optim_step", "command": command, "machine": info, "rows": rows}
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
