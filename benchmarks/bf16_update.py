"""Step time and state memory of each ``bf16_update`` remedy against a float32 step, in the same run.

    python benchmarks/bf16_update.py [--params 1e6] [--device cpu|cuda] [--repeats 30] [--threads N]

The parameters are a transformer-like list of matrices and vectors totalling about ``--params``
elements, stored in bfloat16, with random gradients set once. Each optimizer (wdlib's AdamW and SGD
with momentum 0.9 and decoupled decay) is stepped ``--repeats`` times after a warmup, under
``bf16_update`` = "nearest", "master", "kahan" and "stochastic"; the reference is the same optimizer
on float32 copies of the parameters ("nearest", which float32 ignores anyway). Printed: the median
step time, its ratio to the float32 step, and the optimizer state in bytes per parameter. Not a
test: numbers depend on the machine; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wdlib.optim import BF16_UPDATES, SGD, Adam  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from optim_step import make_params as _make_params  # noqa: E402  (one timing loop for both)
from optim_step import time_steps


def make_params(total: float, device: torch.device, dtype: torch.dtype) -> list[torch.nn.Parameter]:
    """``optim_step.make_params`` with d = 256 and weights of scale 0.02 (GPT-2's init), so that bf16 rounding
    of the decay is at its realistic size."""
    return _make_params(total, device, dtype, d=256, init_scale=0.02)


def state_bytes_per_param(opt: torch.optim.Optimizer, n: int) -> float:
    """Bytes of tensor state (master, compensation, moments; not the scalar step) per parameter."""
    total = sum(
        v.numel() * v.element_size()
        for s in opt.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor) and v.dim() > 0
    )
    return total / n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=1e6)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    fp32 = make_params(args.params, device, torch.float32)
    bf16 = make_params(args.params, device, torch.bfloat16)
    n = sum(p.numel() for p in bf16)
    print(
        f"{n / 1e6:.2f}M parameters in {len(bf16)} tensors, {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; median of {args.repeats} steps"
    )

    lr, wd = 6e-4, 0.1
    families = {
        "AdamW (decoupled)": lambda ps, mode: Adam(ps, lr=lr, weight_decay=wd, decay="decoupled", bf16_update=mode),
        "SGD momentum 0.9 (decoupled)": lambda ps, mode: SGD(
            ps, lr=lr, momentum=0.9, weight_decay=wd, decay="decoupled", bf16_update=mode
        ),
    }
    originals = [p.detach().clone() for p in bf16]
    for family, make in families.items():
        print(f"\n{family}")
        opt = make(fp32, "nearest")
        reference = time_steps(opt, device, args.repeats)
        print(
            f"  {'float32 nearest':<20s} {reference * 1e3:8.2f} ms   x{1.0:5.2f}   "
            f"state {state_bytes_per_param(opt, n):4.1f} B/param"
        )
        for mode in BF16_UPDATES:
            with torch.no_grad():
                for p, o in zip(bf16, originals):
                    p.copy_(o)
            opt = make(bf16, mode)
            seconds = time_steps(opt, device, args.repeats)
            print(
                f"  {'bfloat16 ' + mode:<20s} {seconds * 1e3:8.2f} ms   x{seconds / reference:5.2f}   "
                f"state {state_bytes_per_param(opt, n):4.1f} B/param"
            )


if __name__ == "__main__":
    main()
