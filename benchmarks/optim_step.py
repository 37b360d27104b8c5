"""Step time of wdlib's optimizers against torch.optim's fused and foreach kernels, in the same run.

    python benchmarks/optim_step.py [--params 12.6e6] [--device cpu|cuda] [--dtype float32|bfloat16]
                                    [--repeats 30] [--threads N]

The parameters are a transformer-like list of tensors (matrices and vectors) totalling about
``--params`` elements, with random gradients set once. Each optimizer is stepped ``--repeats`` times
after a warmup; the median step time is printed with its ratio to torch's fused kernel for the same
rule (wdlib runs on that kernel where it fits, so a ratio near 1 is the target). Not a test: numbers
depend on the machine; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wdlib.optim import SGD, Adam  # noqa: E402


def make_params(
    total: float, device: torch.device, dtype: torch.dtype, d: int = 512, init_scale: float = 1.0
) -> list[torch.nn.Parameter]:
    """Repeating (d x 4d, 4d x d, d x d, d, d, 4d) tensors until ``total`` elements, values ``init_scale * N(0, 1)``
    and gradients ``1e-3 * N(0, 1)`` (seeded). Also used by ``bf16_update.py``."""
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


def time_steps(opt: torch.optim.Optimizer, device: torch.device, repeats: int) -> float:
    """Median seconds per ``opt.step()``."""
    for _ in range(5):
        opt.step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=12.6e6)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    params = make_params(args.params, device, dtype)
    n = sum(p.numel() for p in params)
    print(
        f"{n / 1e6:.1f}M parameters in {len(params)} tensors, {dtype}, {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; median of {args.repeats} steps"
    )

    lr, wd = 1e-3, 0.1
    cases = {
        "AdamW": [
            ("torch AdamW fused", lambda: torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=True)),
            ("torch AdamW foreach", lambda: torch.optim.AdamW(params, lr=lr, weight_decay=wd, foreach=True)),
            ("wdlib Adam decoupled", lambda: Adam(params, lr=lr, weight_decay=wd, decay="decoupled")),
            ("wdlib Adam independent", lambda: Adam(params, lr=lr, weight_decay=wd * lr, decay="independent")),
            ("wdlib Adam l2", lambda: Adam(params, lr=lr, weight_decay=wd, decay="l2")),
            ("wdlib Adam foreach", lambda: Adam(params, lr=lr, weight_decay=wd, impl="foreach")),
        ],
        "SGD momentum 0.9": [
            ("torch SGD fused", lambda: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd, fused=True)),
            ("torch SGD foreach", lambda: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd, foreach=True)),
            ("wdlib SGD l2", lambda: SGD(params, lr=lr, momentum=0.9, weight_decay=wd, decay="l2")),
            ("wdlib SGD decoupled", lambda: SGD(params, lr=lr, momentum=0.9, weight_decay=wd)),
            ("wdlib SGD foreach", lambda: SGD(params, lr=lr, momentum=0.9, weight_decay=wd, impl="foreach")),
        ],
    }
    originals = [p.detach().clone() for p in params]
    for family, entries in cases.items():
        print(f"\n{family}")
        reference = None
        for name, make in entries:
            with torch.no_grad():
                for p, o in zip(params, originals):
                    p.copy_(o)
            seconds = time_steps(make(), device, args.repeats)
            reference = reference or seconds
            print(f"  {name:<26s} {seconds * 1e3:8.2f} ms   x{seconds / reference:5.2f} of torch fused")


if __name__ == "__main__":
    main()
