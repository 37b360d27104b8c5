"""Hutchinson Tr(H) with wdlib.hessian against a PyHessian-style reference, same probes, same run.

    python benchmarks/hessian_trace.py [--probes 20] [--samples 1000] [--threads 2] [--repeats 3]
                                       [--steps 300] [--probe-chunks 1,2,4,all] [--data-chunks all,250,100]
                                       [--eig-iters 20]

A 1-D CNN (``wdlib.models.CNN(1, 10, channels=(16, 16), dim=1)``) is trained for ``--steps`` SGD steps on
MNIST-1D (generated offline by ``wdlib.data.load("mnist1d")``; nothing is downloaded), then ``Tr(H)`` of
the mean cross-entropy over the first ``--samples`` training points is measured in eval mode two ways
with the *same* Rademacher probes:

(a) PyHessian-style reference (Yao et al. 2020, arXiv 1912.07145, ``hessian.trace()`` for a single
    batch): the gradient once with ``create_graph=True``, then one
    ``torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)`` per probe in a Python loop
    (reverse-over-reverse). Its probes are drawn before the clock starts (PyHessian draws them inside its
    loop), so the reference is timed slightly in its favour. PyHessian's early stop is not used: both
    sides do exactly ``--probes`` products.
(b) ``wdlib.hessian.hutchinson_trace`` (forward-over-reverse, probes batched with ``vmap``), for every
    ``probe_chunk`` x ``data_chunk`` setting asked for; its time includes drawing the probes.

Each timing is the median of ``--repeats`` runs after one warm-up, the settings interleaved within each
repeat. The per-probe values of (a) and (b) must agree to float32 rounding. A last pair of lines times
``top_eigenvalue`` against a PyHessian-style power iteration from the same start vector. Not a test:
numbers depend on the machine and on what else runs on it (the load average is printed).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wdlib import hessian  # noqa: E402
from wdlib.check import pyhessian_trace, rademacher_probes  # noqa: E402  (the GPU check's reference, the same)
from wdlib.data import load  # noqa: E402
from wdlib.models import CNN  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402


def pyhessian_top_eigenvalue(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int, tol: float, seed: int
) -> tuple[float, int]:
    """PyHessian-style power iteration on the same start vector as ``hessian.top_eigenvalue(seed=seed)``.

    The stopping rule is wdlib's (relative change of the Rayleigh quotient <= tol), so that both sides do
    the same number of products.
    """
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    sizes = [p.numel() for p in params]
    flat = torch.randn(sum(sizes), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    v = [c.view(p.shape).to(p) for c, p in zip(torch.split(flat, sizes), params)]
    norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in v))
    v = [t / norm for t in v]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
    prev, value, it = None, 0.0, 0
    for it in range(1, iters + 1):  # noqa: B007 (the count of iterations is returned after the loop)
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        value = float(sum(torch.sum(a.double() * b.double()) for a, b in zip(hv, v)))
        if prev is not None and abs(value - prev) <= tol * max(abs(value), abs(prev)):
            break
        norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in hv))
        v = [t / norm for t in hv]
        prev = value
    return value, it


def median_times(fns: dict[str, Callable[[], object]], repeats: int) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds of each function over ``repeats`` interleaved runs after one warm-up; last results."""
    results = {name: fn() for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}, results


def train(model: torch.nn.Module, data, steps: int, seed: int) -> tuple[float, float]:
    """``steps`` steps of SGD (lr 0.05, momentum 0.9, batch 64); returns (seconds, final train loss)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        xb, yb = data.batch(step, seed, batch_size=64)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        final = float(F.cross_entropy(model(data.x_train), data.y_train))
    return time.perf_counter() - t0, final


def parse_chunks(text: str, probes: int | None) -> list[int | None]:
    out: list[int | None] = []
    for item in text.split(","):
        value = None if item.strip() == "all" else int(item)
        if value is not None and probes is not None and value >= probes:
            value = None
        if value not in out:
            out.append(value)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probes", type=int, default=20)
    ap.add_argument("--samples", type=int, default=1000, help="training points the Hessian is averaged over")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300, help="SGD steps before measuring (0: initialization)")
    ap.add_argument("--probe-chunks", default="1,2,4,all", help="wdlib probe_chunk settings ('all' = None)")
    ap.add_argument("--data-chunks", default="all,250,100", help="wdlib data_chunk settings ('all' = None)")
    ap.add_argument("--eig-iters", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    num_samples = max(20, math.ceil(args.samples / 0.8))
    data = load("mnist1d", num_samples=num_samples)
    while data.x_train.shape[0] < args.samples:  # the 80/20 split is not exact for every size
        num_samples = math.ceil(num_samples * 1.05) + 1
        data = load("mnist1d", num_samples=num_samples)
    x, y = data.x_train[: args.samples], data.y_train[: args.samples]
    torch.manual_seed(args.seed)
    model = CNN(in_channels=1, num_classes=10, channels=(16, 16), dim=1)
    n_params = sum(p.numel() for p in model.parameters())
    train_s, train_loss = train(model, data, args.steps, args.seed)
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"CNN(1, 10, channels=(16, 16), dim=1): {n_params} parameters; MNIST-1D, Hessian over {x.shape[0]} "
        f"training points; {args.steps} SGD steps ({train_s:.1f} s, train loss {train_loss:.3f})"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}, {os.cpu_count()} CPUs, "
        f"load average {load_avg:.2f}; {args.probes} probes, median of {args.repeats} runs"
    )

    params = [p for p in model.parameters() if p.requires_grad]
    probe_list = rademacher_probes(params, args.probes, args.seed)
    fns: dict[str, Callable[[], object]] = {"reference": lambda: pyhessian_trace(model, x, y, probe_list)}
    for dc in parse_chunks(args.data_chunks, None):
        if dc is not None and dc >= x.shape[0]:
            continue
        for pc in parse_chunks(args.probe_chunks, args.probes):
            fns[f"wdlib probe_chunk={pc} data_chunk={dc}"] = lambda pc=pc, dc=dc: hessian.hutchinson_trace(
                model, x, y, probes=args.probes, seed=args.seed, probe_chunk=pc, data_chunk=dc
            )
    times, results = median_times(fns, args.repeats)

    ref = np.array(results["reference"], dtype=np.float64)
    ref_mean = float(ref.mean())
    ref_se = float(ref.std(ddof=1) / math.sqrt(len(ref))) if len(ref) > 1 else float("nan")
    t_ref = times["reference"]
    print(
        f"{'reference (PyHessian-style loop)':<44} Tr(H) = {ref_mean:.6f} +- {ref_se:.6f}   "
        f"{t_ref * 1e3:8.1f} ms  ({t_ref / args.probes * 1e3:.1f} ms/probe)"
    )
    best = None
    for name, t in times.items():
        if name == "reference":
            continue
        est = results[name]
        diff = float(np.abs(est.samples_per_probe - ref).max())
        print(
            f"{name:<44} Tr(H) = {est.value:.6f} +- {est.stderr:.6f}   {t * 1e3:8.1f} ms  "
            f"({t / args.probes * 1e3:.1f} ms/probe)  speed-up x{t_ref / t:.2f}  max|per-probe diff| {diff:.1e}"
        )
        if best is None or t < times[best]:
            best = name
    assert best is not None
    agree = np.allclose(results[best].samples_per_probe, ref, rtol=1e-4, atol=1e-5 * max(1.0, abs(ref_mean)))
    default = "wdlib probe_chunk=None data_chunk=None"
    default_text = f" (default setting x{t_ref / times[default]:.2f})" if default in times else ""
    print(
        f"fastest wdlib setting: {best}: x{t_ref / times[best]:.2f} the reference's speed{default_text}; "
        f"estimates agree probe by probe: {agree}"
    )

    top_t, top_r = median_times(
        {
            "wdlib": lambda: hessian.top_eigenvalue(model, x, y, iters=args.eig_iters, tol=1e-4, seed=args.seed),
            "reference": lambda: pyhessian_top_eigenvalue(model, x, y, args.eig_iters, 1e-4, args.seed),
        },
        args.repeats,
    )
    top, (ref_val, ref_it) = top_r["wdlib"], top_r["reference"]
    print(
        f"top_eigenvalue: {top.value:.6f} after {top.iterations} HVPs (residual {top.residual:.2e}) in "
        f"{top_t['wdlib'] * 1e3:.1f} ms ({top_t['wdlib'] / top.iterations * 1e3:.1f} ms/HVP); "
        f"PyHessian-style power iteration {ref_val:.6f} after {ref_it} in {top_t['reference'] * 1e3:.1f} ms "
        f"({top_t['reference'] / ref_it * 1e3:.1f} ms/HVP)"
    )


if __name__ == "__main__":
    main()
