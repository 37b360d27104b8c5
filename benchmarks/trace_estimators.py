"""How many Hessian-vector products Hutch++ and XTrace need to match Hutchinson with 30 probes.

    python benchmarks/trace_estimators.py [--seeds 10] [--budgets 6,12,24,48] [--quad-seeds 30]
                                          [--quad-budgets 6,12,24,48,90] [--steps 300] [--lr 0.1]
                                          [--samples 1000] [--threads 1] [--json PATH]

For each model, :func:`wdlib.hessian.hessian_trace` is run with every estimator ("hutchinson", "hutchpp",
"xtrace") at each HVP budget ``m`` of a grid, once per seed (seeds ``0..S-1``). Reported per estimator and
budget: the HVPs used, the mean estimate over seeds, the *empirical* standard deviation of the estimates
over seeds (ddof=1) and the mean of the self-reported ``stderr``. Hutchinson's estimate at budget ``m`` is
the mean of the first ``m`` probes of its 30-probe run with the same seed (probe ``i`` does not depend on
the budget), so its rows cost nothing beyond the 30-probe runs.

The target is the standard error of Hutchinson with 30 probes, ``sigma / sqrt(30)``, with ``sigma`` the
standard deviation of all ``S x 30`` per-probe samples pooled (more precise than the spread of ``S``
30-probe means, which is printed too). For Hutch++ and XTrace the budget ``m*`` at which their empirical
standard deviation reaches the target is interpolated linearly in ``log m`` vs ``log std`` between the
bracketing grid points; above the target on the whole grid, ``m*`` is extrapolated from the largest budget
at the Monte Carlo rate ``std ~ m^-1/2`` (marked ``~``); below it on the whole grid, ``m*`` is reported as
``<=`` the smallest budget. The ratio ``30 / m*`` is the factor of HVPs saved (> 1: fewer HVPs than
Hutchinson; < 1: more). The column ``H-equiv`` is the number of Hutchinson probes with the same standard
error as the row's empirical spread, ``30 (target / std)^2``: the gain at other error levels than
Hutchinson-30's (``H-equiv / HVPs``).

Models:

(a) the over-parameterization chapter's model at its smoke setting (``wdlib.experiments.overparam.setup(
    "smoke")``: ``ConvNet`` on MNIST-1D), Hessian of the mean cross-entropy (:func:`wdlib.objective.loss`)
    over the first ``--samples`` training points in eval mode, at initialization and after ``--steps``
    SGD steps (lr ``--lr``, batch 128, no momentum, no decay);
(b) explicit quadratics ``0.5 w^T A w`` (``A = U diag(lambda) U^T``, random orthogonal ``U``, ``P = 1000``)
    with a flat spectrum (``lambda`` uniform in [0.5, 1.5], no gain expected), a slowly decaying one
    (``lambda_i = i^-0.5``) and a fast-decaying one (``lambda_i = i^-2``).

Not a test: the numbers depend on the seeds drawn; the printed header says what was used.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wdlib import hessian, objective  # noqa: E402
from wdlib.data import load  # noqa: E402
from wdlib.experiments import overparam  # noqa: E402
from wdlib.models import build, data_args  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine as describe_machine  # noqa: E402

TARGET_PROBES = 30


class Quadratic(nn.Module):
    """``forward(x) = 0.5 w^T A w``: the Hessian in ``w`` is ``A`` whatever ``x`` is."""

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("A", A)
        self.w = nn.Parameter(torch.zeros(A.shape[0], dtype=A.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.w @ self.A @ self.w


def identity_loss(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return output


def quadratic(eigs: np.ndarray, seed: int = 0) -> tuple[nn.Module, float]:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), dtype=torch.float64, generator=g))
    A = q @ torch.diag(torch.as_tensor(eigs, dtype=torch.float64)) @ q.T
    return Quadratic(A), float(np.sum(eigs))


def crossing(budgets: list[int], stds: list[float], target: float) -> tuple[float, str]:
    """The budget where ``std`` reaches ``target`` and how it was found.

    Bracketed by two grid points: interpolated linearly in ``log m`` vs ``log std`` (mark ""). Above the
    target at every budget: extrapolated from the largest budget with ``std ~ m^(-1/2)``, the Monte Carlo
    rate (mark "~"). Below it at every budget: the smallest budget, an upper bound on ``m*`` (mark "<=").
    """
    lm, ls = np.log(np.asarray(budgets, float)), np.log(np.asarray(stds, float))
    lt = math.log(target)
    for i in range(len(lm) - 1):
        if (ls[i] - lt) * (ls[i + 1] - lt) <= 0 and ls[i] != ls[i + 1]:
            return float(np.exp(lm[i] + (lt - ls[i]) * (lm[i + 1] - lm[i]) / (ls[i + 1] - ls[i]))), ""
    if ls[0] <= lt:
        return float(budgets[0]), "<="
    return float(budgets[-1] * (stds[-1] / target) ** 2), "~"


def measure(
    name: str, run: Any, seeds: int, budgets: list[int], exact: float | None, log: list[str]
) -> list[dict[str, Any]]:
    """Every estimator x budget x seed on one model; rows of the table (with the HVP ratio)."""
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    hutch = [run("hutchinson", TARGET_PROBES, s) for s in range(seeds)]
    pooled = np.concatenate([e.samples_per_probe for e in hutch])
    target = float(pooled.std(ddof=1) / math.sqrt(TARGET_PROBES))
    for m in sorted(set(budgets) | {TARGET_PROBES}):
        if m > TARGET_PROBES:
            continue
        vals = np.array([e.samples_per_probe[:m].mean() for e in hutch])
        ses = np.array([e.samples_per_probe[:m].std(ddof=1) / math.sqrt(m) for e in hutch])
        rows.append(dict(model=name, estimator="hutchinson", budget=m, hvps=m, values=vals, stderrs=ses))
    for est in ("hutchpp", "xtrace"):
        for m in budgets:
            results = [run(est, m, s) for s in range(seeds)]
            rows.append(
                dict(
                    model=name,
                    estimator=est,
                    budget=m,
                    hvps=results[0].hvps,
                    values=np.array([e.value for e in results]),
                    stderrs=np.array([e.stderr for e in results]),
                )
            )
    out = []
    for r in rows:
        vals, ses = r.pop("values"), r.pop("stderrs")
        out.append(
            {
                **r,
                "seeds": seeds,
                "mean": float(vals.mean()),
                "emp_std": float(vals.std(ddof=1)),
                "mean_stderr": float(np.mean(ses)),
                "exact": exact,
                "rmse": None if exact is None else float(np.sqrt(np.mean((vals - exact) ** 2))),
            }
        )
    for r in out:
        r["target"] = target
        r["hutchinson_equivalent"] = TARGET_PROBES * (target / r["emp_std"]) ** 2
    for est in ("hutchpp", "xtrace"):
        mine = [r for r in out if r["estimator"] == est]
        m_star, how = crossing([r["hvps"] for r in mine], [r["emp_std"] for r in mine], target)
        for r in mine:
            r["hvps_to_target"] = m_star
            r["how"] = how
            r["ratio"] = TARGET_PROBES / m_star
    h30 = next(r for r in out if r["estimator"] == "hutchinson" and r["budget"] == TARGET_PROBES)
    log.append(
        f"\n== {name}: target = Hutchinson-30 stderr = pooled sigma/sqrt(30) = {target:.4g} "
        f"(empirical std of the {seeds} Hutchinson-30 means: {h30['emp_std']:.4g}); "
        f"exact trace: {'n/a' if exact is None else f'{exact:.6g}'}; {time.perf_counter() - t0:.0f} s"
    )
    log.append(
        f"{'estimator':<11} {'budget':>6} {'HVPs':>5} {'mean':>11} {'emp.std':>10} {'mean se':>10} "
        f"{'se/std':>6} {'H-equiv':>8}  {'HVPs to target (ratio 30/m*)':<30}"
    )
    for r in out:
        ratio = ""
        if r["estimator"] != "hutchinson" and r is [x for x in out if x["estimator"] == r["estimator"]][0]:
            ratio = f"{r['how']}{r['hvps_to_target']:.1f} (x{'>=' if r['how'] == '<=' else ''}{r['ratio']:.2f})"
        log.append(
            f"{r['estimator']:<11} {r['budget']:>6} {r['hvps']:>5} {r['mean']:>11.5g} {r['emp_std']:>10.4g} "
            f"{r['mean_stderr']:>10.4g} {r['mean_stderr'] / r['emp_std']:>6.2f} {r['hutchinson_equivalent']:>8.1f}  "
            f"{ratio}"
        )
    print("\n".join(log[-(len(out) + 2) :]), flush=True)
    return out


def convnet_runs(args: argparse.Namespace, log: list[str]) -> list[dict[str, Any]]:
    if "init" not in args.models and "trained" not in args.models:
        return []
    s = overparam.setup("smoke")
    ds = load(s.data, **s.data_args)
    torch.manual_seed(0)
    model = build(s.model, **data_args(s.model, ds.sizes), **s.model_args)
    n_params = sum(p.numel() for p in model.parameters())
    x, y = ds.x_train[: args.samples], ds.y_train[: args.samples]
    log.append(
        f"model (a): overparam smoke '{s.model}' {s.model_args} on {s.data} {s.data_args}: {n_params} parameters; "
        f"Hessian of the mean cross-entropy over the first {x.shape[0]} training points, eval mode, "
        f"data_chunk={args.data_chunk}, probe_chunk={args.probe_chunk}"
    )
    print(log[-1], flush=True)

    def runner(m: nn.Module) -> Any:
        def run(est: str, probes: int, seed: int) -> hessian.TraceEstimate:
            return hessian.hessian_trace(
                m,
                x,
                y,
                probes=probes,
                seed=seed,
                loss=objective.loss,
                estimator=est,
                data_chunk=args.data_chunk,
                probe_chunk=args.probe_chunk,
            )

        return run

    def top_ratio(m: nn.Module, label: str) -> None:
        top = hessian.top_eigenvalue(m, x, y, iters=30, tol=1e-3, loss=objective.loss, data_chunk=args.data_chunk)
        tr = hessian.hessian_trace(m, x, y, probes=8, loss=objective.loss, data_chunk=args.data_chunk)
        log.append(
            f"{label}: largest-|lambda| {top.value:.4g} (power iteration, {top.iterations} HVPs), "
            f"Tr(H) ~ {tr.value:.4g}: top eigenvalue / trace = {top.value / tr.value:.2f}"
        )
        print(log[-1], flush=True)

    out = []
    if "init" in args.models:
        top_ratio(model, "convnet at initialization")
        out += measure("convnet-init", runner(model), args.seeds, args.budgets, None, log)
    if "trained" in args.models:
        opt = torch.optim.SGD(model.parameters(), lr=args.lr)
        model.train()
        t0 = time.perf_counter()
        for step in range(args.steps):
            xb, yb = ds.batch(step, 0, batch_size=s.batch_size)
            opt.zero_grad(set_to_none=True)
            objective.loss(model(xb), yb).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            train_loss = float(objective.loss(model(x), y))
        log.append(
            f"trained {args.steps} SGD steps (lr {args.lr}, batch {s.batch_size}) in {time.perf_counter() - t0:.0f} s; "
            f"loss on the {x.shape[0]} points {train_loss:.3f}"
        )
        print(log[-1], flush=True)
        top_ratio(model, f"convnet after {args.steps} steps")
        out += measure(f"convnet-{args.steps}steps", runner(model), args.seeds, args.budgets, None, log)
    return out


def quadratic_runs(args: argparse.Namespace, log: list[str]) -> list[dict[str, Any]]:
    P = args.quad_dim
    rng = np.random.default_rng(0)
    spectra = {
        "quad-flat": np.sort(rng.uniform(0.5, 1.5, P))[::-1].copy(),
        "quad-slow(i^-0.5)": np.arange(1, P + 1, dtype=float) ** -0.5,
        "quad-fast(i^-2)": np.arange(1, P + 1, dtype=float) ** -2.0,
    }
    out = []
    dummy = (torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1))
    for name, eigs in spectra.items():
        if name.split("(")[0] not in args.models and name not in args.models and "quad" not in args.models:
            continue
        model, exact = quadratic(eigs)

        def run(est: str, probes: int, seed: int, model: nn.Module = model) -> hessian.TraceEstimate:
            return hessian.hessian_trace(
                model, *dummy, probes=probes, seed=seed, loss=identity_loss, estimator=est, params=["w"]
            )

        log.append(f"model (b) {name}: P = {P}, top eigenvalue / trace = {eigs.max() / exact:.3f}")
        out += measure(name, run, args.quad_seeds, args.quad_budgets, exact, log)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10, help="seeds per estimator and budget on the convnet")
    ap.add_argument("--budgets", default="6,12,24,48", help="HVP budgets of Hutch++ and XTrace on the convnet")
    ap.add_argument("--quad-seeds", type=int, default=30)
    ap.add_argument("--quad-budgets", default="6,12,24,48,90")
    ap.add_argument("--quad-dim", type=int, default=1000)
    ap.add_argument("--models", default="init,trained,quad", help="any of init, trained, quad")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--data-chunk", type=int, default=250)
    ap.add_argument("--probe-chunk", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="write the table and the machine to this JSON file")
    args = ap.parse_args(argv)
    args.budgets = [int(b) for b in args.budgets.split(",")]
    args.quad_budgets = [int(b) for b in args.quad_budgets.split(",")]
    args.models = [m.strip() for m in args.models.split(",")]
    torch.set_num_threads(args.threads)
    machine = describe_machine()
    log = [
        f"{machine['device']}, {machine['cpus']} CPUs, torch {machine['torch']}, {machine['threads']} thread(s), "
        f"{machine['date']}, load average {machine['load_average']}",
        f"convnet: {args.seeds} seeds, Hutch++/XTrace budgets {args.budgets} (Hutchinson: prefixes of 30 probes); "
        f"quadratics: {args.quad_seeds} seeds, budgets {args.quad_budgets}",
    ]
    print("\n".join(log), flush=True)
    t0 = time.perf_counter()
    rows = convnet_runs(args, log) + quadratic_runs(args, log)
    log.append(f"\ntotal {time.perf_counter() - t0:.0f} s")
    print(log[-1])
    if args.json is not None:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        command = "python benchmarks/trace_estimators.py " + " ".join(argv if argv is not None else sys.argv[1:])
        payload = {
            "benchmark": "trace_estimators",
            "command": command,
            "machine": machine,
            "settings": settings,
            "table": summary_table(rows),
            "rows": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}")


def summary_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and estimator: the HVPs it needs for Hutchinson-30's standard error and the saving ``30 / m*``;
    at its largest budget, the Hutchinson probes with the same spread (``H-equiv``) and that over the HVPs
    (the status page shows this table)."""
    out = []
    for r in rows:
        if r["estimator"] == "hutchinson" or "ratio" not in r:
            continue
        if any(o["model"] == r["model"] and o["estimator"] == r["estimator"] for o in out):
            continue
        top = max((o for o in rows if o["model"] == r["model"] and o["estimator"] == r["estimator"]),
                  key=lambda o: o["hvps"])  # fmt: skip
        out.append(
            {
                "model": r["model"],
                "estimator": r["estimator"],
                "HVPs for Hutchinson-30's error": f"{r['how']}{r['hvps_to_target']:.1f}".replace("=", ""),
                "HVP saving (30 / that)": round(r["ratio"], 2),
                "largest budget": top["hvps"],
                "Hutchinson probes with its spread there": round(top["hutchinson_equivalent"], 1),
            }
        )
    return out


if __name__ == "__main__":
    main()
