"""Experiments of chapter 5, "The language-model regime and bfloat16" (LLM-1 to LLM-7).

A small GPT (:class:`wdlib.models.GPT`) trained single-pass on the standard-library character corpus
(:func:`wdlib.data.stdlib_chars`, validation blocks interleaved with the training text) with AdamW,
betas (0.9, 0.95), gradient clipping at 1.0, decay on weight matrices and embeddings only, and a
warmup-stable-decay LR schedule, after the nanoGPT fork of Andriushchenko et al. (arXiv 2310.04415;
settings in ``shared/SOURCES.md``). Every run goes through :func:`wdlib.runs.run_many`; the functions
return tables and arrays and the per-seed statistics the chapter's claims are judged on (the rules and
thresholds are in ``wdlib/catalogue/05_llm_regime.yml``).

Precision (:func:`main_precision`, :func:`precision_table`): the source trains every run in bf16 autocast
with float32 master weights. Here the runs of the claims about bfloat16 (LLM-6, LLM-7) keep their bf16
arms at every scale; the other runs (LLM-1 to LLM-5) use bf16 autocast only at full scale on a device
where bfloat16 is fast (:func:`wdlib.precision.fast_bf16`, measured) and float32 otherwise, so at smoke
scale they run in float32 on every machine (a CPU without fast bfloat16 multiplies bf16 matrices some 50x
slower than float32, and a verdict must not depend on which CPU built it).

Training seeds are not fixed here: a :class:`Setup` holds seed *counts*, and :func:`plan` takes the
seeds themselves (the notebook passes ``setting.seeds(seed_count(s))``, derived from its ``seed``
parameter); each section uses the first of them. The corpus and its split are fixed (they define the
task, not a draw of it). :func:`planned_runs` lists every run the notebook trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..components import build_data
from ..config import RunConfig, schedule_from_spec
from ..precision import applied_decay, bf16_matmul_speed, fast_bf16
from ..runs import RunResult, Store, run_many
from ..runtime import resolve_device
from ._scaffold import Setting, pick_settings

__all__ = [
    "Setup",
    "SETTINGS",
    "setup",
    "seed_count",
    "base_config",
    "corpus",
    "plan",
    "run_plan",
    "finetune_configs",
    "table",
    "run_finetunes",
    "decay_start",
    "constant_phase_end",
    "value_at",
    "diverged",
    "applied_decay_table",
    "bf16_pure_weights",
    "APPLIED_ARMS",
    "NEAREST_ARMS",
    "REMEDY_ARMS",
    "accumulated_decay",
    "divergence_ratio",
    "crossing_strength",
    "consecutive_ratios",
    "BF16_PURE_PAIRS",
    "shrink_shares",
    "per_seed",
    "SMALL_DECAY",
    "BF16_CLAIMS",
    "main_precision",
    "precision_table",
    "planned_runs",
]


@dataclass(frozen=True)
class Setup(Setting):
    """Sizes of one scale (the source's own values are in the chapter)."""

    data_args: dict[str, Any]
    model_args: dict[str, Any]
    block_size: int
    batch_size: int
    steps: int  # main runs (LLM-1 to LLM-5)
    warmup: int
    decay_fraction: float  # of the steps after warmup, linear decay to final * lr
    final: float
    lr: float
    wds: tuple[float, ...]  # main runs; the first is 0
    n_seeds: int  # seeds of the main and LayerNorm runs (LLM-1 to LLM-5)
    ln_wds: tuple[float, ...]  # LLM-5: runs that also decay LayerNorm gains (and biases)
    ema: float
    eval_every: int
    eval_batches: int
    rel_every: int  # relative-update probe
    ft_from: int  # LLM-2: fine-tune from the snapshot at this step ...
    ft_steps: int  # ... for this many steps ...
    ft_lr_factor: float  # ... at this fraction of the peak LR, constant
    ladder_lrs: tuple[float, ...]  # LLM-6: the learning-rate ladder (bf16 autocast with and without decay, float32)
    ladder_wd: float
    ladder_steps: int
    ladder_n_seeds: int
    ladder_eval_every: int
    bf16_pure_lr: float  # LLM-7 runs with parameters stored in bfloat16
    bf16_pure_wd: float
    bf16_pure_steps: int
    bf16_pure_n_seeds: int  # seeds of the LLM-7 training runs
    applied_decay_grid: tuple[float, ...]  # LLM-7: lr * lambda values of the applied-decay measurement
    seen_windows: int = 1024  # LLM-1: windows of each kind in the seen/unseen measure
    ladder_block_size: int | None = None  # LLM-6 context (None: block_size)
    workers: int = 2
    notes: dict[str, str] = field(default_factory=dict)


SETTINGS: dict[str, Setup] = {
    "smoke": Setup(
        "smoke",
        data_args={"max_bytes": 4_000_000, "val_split": "interleaved"},
        model_args={"n_layer": 2, "n_head": 2, "n_embd": 128},
        block_size=64,
        batch_size=16,
        steps=1000,
        warmup=50,
        decay_fraction=0.25,
        final=0.1,
        lr=5e-3,
        wds=(0.0, 0.1, 1.0),
        n_seeds=3,
        ln_wds=(0.1, 1.0),
        ema=0.99,
        eval_every=100,
        eval_batches=8,
        rel_every=10,
        ft_from=500,
        ft_steps=150,
        ft_lr_factor=0.1,
        ladder_lrs=(1e-2, 2e-2),
        ladder_wd=0.3,
        ladder_steps=400,
        ladder_n_seeds=3,
        ladder_eval_every=25,
        bf16_pure_lr=1e-3,
        bf16_pure_wd=1.0,
        bf16_pure_steps=200,
        bf16_pure_n_seeds=3,
        applied_decay_grid=(6e-5, 3e-4, 1e-3, 2e-3, 3e-3, 1e-2),
    ),
    # GPT-2 small (124M with the GPT-2 vocabulary; 85M non-embedding here, a character vocabulary) on the
    # largest offline corpus this Python's own sources give (standard library and installed packages: 166M
    # characters where the book was built, so 6,000 steps of 16,384 tokens are about 0.6 of one pass), for one
    # GPU; context 256 for the main runs and 1024 for the bf16 runs as in the source.
    "full": Setup(
        "full",
        data_args={"max_bytes": 400_000_000, "site_packages": True, "val_split": "interleaved", "val_block": 65_536},
        model_args={"n_layer": 12, "n_head": 12, "n_embd": 768},
        block_size=256,
        batch_size=64,
        steps=6_000,
        warmup=400,
        decay_fraction=0.2,
        final=0.1,
        lr=6e-4,
        wds=(0.0, 0.1, 0.3),
        n_seeds=3,
        ln_wds=(0.1, 0.3),
        ema=0.99,
        eval_every=250,
        eval_batches=40,
        rel_every=50,
        ft_from=3_000,
        ft_steps=1_000,
        ft_lr_factor=1e-5 / 6e-4,
        ladder_lrs=(6e-4, 1e-3),
        ladder_wd=0.1,
        ladder_steps=2_000,
        ladder_n_seeds=3,
        ladder_eval_every=50,
        bf16_pure_lr=6e-4,
        bf16_pure_wd=0.1,
        bf16_pure_steps=2_000,
        bf16_pure_n_seeds=3,
        applied_decay_grid=(1e-5, 6e-5, 3e-4, 1e-3, 2e-3, 3e-3, 1e-2),
        ladder_block_size=1024,
        seen_windows=4096,
    ),
    "test": Setup(
        "test",
        data_args={"max_bytes": 200_000, "val_split": "interleaved", "val_block": 4096},
        model_args={"n_layer": 1, "n_head": 2, "n_embd": 16},
        block_size=16,
        batch_size=4,
        steps=24,
        warmup=4,
        decay_fraction=0.25,
        final=0.1,
        lr=5e-3,
        wds=(0.0, 1.0),
        n_seeds=1,
        ln_wds=(1.0,),
        ema=0.9,
        eval_every=6,
        eval_batches=2,
        rel_every=2,
        ft_from=12,
        ft_steps=6,
        ft_lr_factor=0.1,
        ladder_lrs=(2e-2,),
        ladder_wd=0.3,
        ladder_steps=12,
        ladder_n_seeds=1,
        ladder_eval_every=3,
        bf16_pure_lr=1e-3,
        bf16_pure_wd=1.0,
        bf16_pure_steps=12,
        bf16_pure_n_seeds=1,
        applied_decay_grid=(1e-4, 1e-2),
        seen_windows=16,
        workers=1,
    ),
}


def setup(scale: str, device: str = "cpu", seed: int = 0) -> Setup:
    """The settings of ``scale`` ("smoke", "full" or "test"; :func:`wdlib.experiments.pick_settings`)."""
    return pick_settings(SETTINGS, scale, device=device, seed=seed)


def seed_count(s: Setup) -> int:
    """How many training seeds :func:`plan` needs (the largest of the sections' counts)."""
    return max(s.n_seeds, s.ladder_n_seeds, s.bf16_pure_n_seeds)


def _seeds(s: Setup, seeds: Any) -> tuple[int, ...]:
    seeds = tuple(range(seed_count(s))) if seeds is None else tuple(int(x) for x in seeds)
    if len(seeds) < seed_count(s) or len(set(seeds)) != len(seeds):
        raise ValueError(f"plan needs {seed_count(s)} distinct seeds (seed_count), got {seeds}")
    return seeds


def _schedule(s: Setup, constant: bool = False) -> dict[str, Any]:
    if constant:
        return {"name": "constant", "warmup": s.warmup}
    return {"name": "wsd", "warmup": s.warmup, "decay_fraction": s.decay_fraction, "final": s.final}


#: The recipe's optimizer: AdamW (decoupled), betas (0.9, 0.95); LLM-7 also trains torch's AdamW with it.
_RECIPE_OPTIMIZER: dict[str, Any] = {"name": "adam", "decay": "decoupled", "betas": [0.9, 0.95]}


def base_config(s: Setup, **changes: Any) -> RunConfig:
    """The chapter's recipe at scale ``s``: AdamW (decoupled), betas (0.9, 0.95), clip 1.0, bf16 autocast,
    matrices and embeddings decayed (not LayerNorm gains), warmup-stable-decay LR schedule."""
    cfg = RunConfig(
        data="stdlib_chars",
        data_args=dict(s.data_args),
        model="gpt",
        model_args=dict(s.model_args),
        optimizer=dict(_RECIPE_OPTIMIZER),
        lr=s.lr,
        grad_clip=1.0,
        precision="bf16-autocast",
        steps=s.steps,
        batch_size=s.batch_size,
        block_size=s.block_size,
        lr_schedule=_schedule(s),
        eval_every=s.eval_every,
        eval_batches=s.eval_batches,
        scale=s.scale,
    )
    return cfg.replace(**changes) if changes else cfg


#: The claims about bfloat16 itself, whose runs keep their bf16 arms at every scale and on every device.
BF16_CLAIMS = ("LLM-6", "LLM-7")


def main_precision(s: Setup, device: str = "cpu") -> str:
    """The precision of the runs for the claims not about bfloat16 (LLM-1 to LLM-5: the main runs, their
    fine-tuning copies and the LayerNorm runs).

    The source's (:func:`base_config`: bf16 autocast) only at full scale on a device where bfloat16 is
    fast (:func:`wdlib.precision.fast_bf16`: measured on a CPU, ``torch.cuda.is_bf16_supported()`` on
    CUDA); ``"fp32"`` otherwise, and always below full scale (nothing is measured then), so the smoke
    verdicts are the same on every machine.
    """
    source = base_config(s).precision
    if source != "fp32" and s.scale == "full" and fast_bf16(device):
        return source
    return "fp32"


def _precision_name(precision: str) -> str:
    return {
        "fp32": "float32",
        "bf16-autocast": "bf16 autocast (float32 master weights)",
        "bf16-pure": "bfloat16 parameters",
    }.get(precision, precision)


def precision_table(s: Setup, device: str = "cpu") -> Any:
    """Which precision each claim's verdict rests on, from the policy of :func:`plan` (a pandas table: claim,
    runs, precision, why), and the measured matmul throughput behind it."""
    import pandas as pd

    dev = resolve_device(device)
    main = main_precision(s, str(dev))
    if dev.type == "cuda":
        speed = f"torch.cuda.is_bf16_supported() is {fast_bf16(dev)}"
    else:
        m = bf16_matmul_speed(dev)
        speed = (
            f"a {m['n']}x{m['n']} matmul runs at {m['bfloat16_gflops']:.1f} GFLOP/s in bfloat16 against "
            f"{m['float32_gflops']:.1f} in float32 on this {dev.type.upper()}, so bfloat16 counts as "
            f"{'fast' if m['fast'] else 'slow'} here"
        )
    if main != "fp32":
        why = f"the source's precision: full scale, and {speed}"
    elif s.scale != "full":
        why = (
            f"float32 at {s.scale} scale on every machine (the source used bf16 autocast), so the verdict does not "
            f"depend on the machine's bfloat16 speed ({speed})"
        )
    else:
        why = f"float32 instead of the source's bf16 autocast: {speed}"
    rows = [
        {
            "claim": "LLM-1 to LLM-4",
            "runs": "main runs (and LLM-2's fine-tuning copies)",
            "precision": _precision_name(main),
            "why": why,
        },
        {
            "claim": "LLM-5",
            "runs": "main runs and their twins with the LayerNorm gains decayed",
            "precision": _precision_name(main),
            "why": why,
        },
        {
            "claim": "LLM-6",
            "runs": "LR ladder: three arms",
            "precision": "bf16 autocast (with and without decay) against float32",
            "why": "the claim is about bf16 mixed precision: its arms at every scale",
        },
        {
            "claim": "LLM-7",
            "runs": "short training runs; the zero-gradient measurement on a main run's weights",
            "precision": f"bfloat16 parameters against float32 (the main run: {_precision_name(main)})",
            "why": "the claim is about parameters stored in bfloat16: its arms at every scale",
        },
    ]
    return pd.DataFrame(rows)


def corpus(s: Setup) -> Any:
    """The chapter's dataset at scale ``s`` (:func:`wdlib.data.stdlib_chars` with the setup's arguments)."""
    return build_data(base_config(s))


def plan(s: Setup, seeds: Any = None, *, device: str = "cpu") -> dict[str, dict[tuple, RunConfig]]:
    """Every run of the chapter but the fine-tuning copies, by section and arm.

    ``seeds``: at least :func:`seed_count` distinct training seeds (default ``0, 1, ...``); the main and
    LayerNorm runs use the first ``n_seeds``, LLM-6 the first ``ladder_n_seeds``, LLM-7 the first ``bf16_pure_n_seeds``.
    ``device``: where the runs will train; the main and LayerNorm runs take :func:`main_precision` on it
    (float32 below full scale), LLM-6 and LLM-7 their own arms.

    ``main`` (LLM-1 to LLM-4): ``(wd, seed)``, with EMA, the relative-update probe, the Adam effective
    LR, the seen/unseen measure and a snapshot at ``ft_from``. ``ln`` (LLM-5): ``(wd, seed)`` with
    LayerNorm gains decayed too. ``ladder`` (LLM-6): ``(lr, precision, wd, seed)``, constant LR after
    warmup, attention logits recorded. ``bf16_pure`` (LLM-7): ``(precision, optimizer, bf16_update, wd, seed)``.
    """
    seeds = _seeds(s, seeds)
    main_prec = main_precision(s, device)  # LLM-6 and LLM-7 keep their own arms
    main, ln, ladder, bf16_pure = {}, {}, {}, {}
    for wd in s.wds:
        for seed in seeds[: s.n_seeds]:
            main[(wd, seed)] = base_config(
                s,
                weight_decay=wd,
                seed=seed,
                ema=s.ema,
                precision=main_prec,
                diagnostics=["matrix_norm", "adam_elr"],
                probes=[{"name": "relative_update", "every": s.rel_every}],
                measures=[{"name": "seen_unseen", "windows": s.seen_windows}],
                snapshots=[s.ft_from],
            )
    for wd in s.ln_wds:
        for seed in seeds[: s.n_seeds]:
            ln[(wd, seed)] = base_config(s, weight_decay=wd, seed=seed, decay_vectors=True, precision=main_prec)
    for lr in s.ladder_lrs:
        for precision, wd in (("bf16-autocast", 0.0), ("bf16-autocast", s.ladder_wd), ("fp32", 0.0)):
            for seed in seeds[: s.ladder_n_seeds]:
                ladder[(lr, precision, wd, seed)] = base_config(
                    s,
                    lr=lr,
                    weight_decay=wd,
                    seed=seed,
                    precision=precision,
                    steps=s.ladder_steps,
                    block_size=s.ladder_block_size or s.block_size,
                    lr_schedule=_schedule(s, constant=True),
                    eval_every=s.ladder_eval_every,
                    eval_batches=max(2, s.eval_batches // 2),
                    diagnostics=["attn_logit_max", "matrix_norm"],
                )
    # LLM-7: float32 references, torch's own AdamW on bfloat16 parameters (its default CPU kernel shrinks
    # with a separate p.mul_(1 - lr*wd), rounded on its own), and wdlib's Adam with each bf16_update
    bf16_pure_arms = [
        ("fp32", "adam", "nearest", 0.0),
        ("fp32", "adam", "nearest", s.bf16_pure_wd),
        ("bf16-pure", "torch.adamw", "nearest", 0.0),
        ("bf16-pure", "torch.adamw", "nearest", s.bf16_pure_wd),
        ("bf16-pure", "adam", "nearest", 0.0),
    ] + [("bf16-pure", "adam", u, s.bf16_pure_wd) for u in ("nearest", "master", "kahan", "stochastic")]
    for seed in seeds[: s.bf16_pure_n_seeds]:
        for precision, optimizer, update, wd in bf16_pure_arms:
            bf16_pure[(precision, optimizer, update, wd, seed)] = base_config(
                s,
                lr=s.bf16_pure_lr,
                weight_decay=wd,
                precision=precision,
                optimizer={
                    **_RECIPE_OPTIMIZER,
                    "name": optimizer,
                    **({"bf16_update": update} if optimizer == "adam" else {}),
                },
                steps=s.bf16_pure_steps,
                seed=seed,
                diagnostics=["matrix_norm"],
            )
    return {"main": main, "ln": ln, "ladder": ladder, "bf16_pure": bf16_pure}


def run_plan(
    s: Setup, seeds: Any = None, *, store: Store | None = None, device: str = "cpu"
) -> dict[str, dict[tuple, RunResult]]:
    """Train (or fetch from the store) every run of :func:`plan`, in ``s.workers`` parallel workers (one
    progress bar over the runs when someone is watching: :func:`wdlib.runs.run_many`)."""
    runs = plan(s, seeds, device=device)
    flat = [(section, arm, cfg) for section, arms in runs.items() for arm, cfg in arms.items()]
    results = run_many(
        [cfg for _, _, cfg in flat], store, workers=s.workers, device=device, desc="chapter 5 runs", progress=None
    )
    out: dict[str, dict[tuple, RunResult]] = {section: {} for section in runs}
    for (section, arm, _), r in zip(flat, results):
        out[section][arm] = r
    return out


def finetune_configs(s: Setup, main: dict[tuple, RunResult]) -> dict[tuple, RunConfig]:
    """LLM-2's probe: every main run's snapshot at ``ft_from``, trained on at a small constant LR.

    The source fine-tunes its step-10,000 checkpoints for 10,000 steps at lr 1e-5 (fresh optimizer).
    Here ``ft_steps`` steps at ``ft_lr_factor`` times the peak LR, without warmup or decay, with a
    fresh optimizer, on new batches (the copy's batch seed is the run's plus 1,000, so it does not
    replay the windows of the run's first steps; its initialization comes from the snapshot).
    """
    return {arm: _finetune_config(s, RunConfig.from_dict(r.config), r.info["key"]) for arm, r in main.items()}


def _finetune_config(s: Setup, cfg: RunConfig, key: str) -> RunConfig:
    """The fine-tuning copy of main run ``cfg`` (stored under ``key``) of :func:`finetune_configs`."""
    return cfg.replace(
        lr=cfg.lr * s.ft_lr_factor,
        lr_schedule=None,
        steps=s.ft_steps,
        seed=cfg.seed + 1000,
        init_from={"run": key, "step": s.ft_from},
        ema=None,
        probes=[],
        measures=[],
        snapshots=[],
        diagnostics=[],
        eval_every=0,
    )


def run_finetunes(
    s: Setup, main: dict[tuple, RunResult], *, store: Store | None = None, device: str = "cpu"
) -> dict[tuple, RunResult]:
    """The results of :func:`finetune_configs` (after the main runs: they start from their snapshots)."""
    cfgs = finetune_configs(s, main)
    return dict(
        zip(
            cfgs,
            run_many(
                list(cfgs.values()), store, workers=s.workers, device=device, desc="LLM-2 fine-tuning", progress=None
            ),
        )
    )


def planned_runs(s: Setup, *, store: Store | None = None) -> list[RunConfig]:
    """Every run ``notebooks/05_llm_regime.ipynb`` trains at the settings ``s`` (its seeds from ``s.seed``, its
    precision policy for ``s.device``), in the order it asks for them: every run of :func:`plan`, then LLM-2's
    fine-tuning copies of the main runs (:func:`finetune_configs`; configurations with ``init_from``, buildable
    before the main runs train). ``store`` is not needed (no configuration here depends on a result); it is
    accepted so every chapter's ``planned_runs`` is called alike."""
    runs = plan(s, s.seeds(seed_count(s)), device=str(s.device))
    configs = [cfg for arms in runs.values() for cfg in arms.values()]
    return configs + [_finetune_config(s, cfg, cfg.key()) for cfg in runs["main"].values()]


# --- reading results ------------------------------------------------------------------------------------


def decay_start(s: Setup) -> int:
    """The last step at the peak LR (the end of the constant phase); the LR decays from the next step on."""
    rest = s.steps - s.warmup
    return s.warmup + rest - max(int(round(s.decay_fraction * rest)), 1)


def constant_phase_end(s: Setup) -> int:
    """The last evaluation step inside the constant-LR phase."""
    return (decay_start(s) // s.eval_every) * s.eval_every


def value_at(r: RunResult, step: int, key: str = "val_loss") -> float:
    """The history value ``key`` at evaluation step ``step``."""
    steps = list(np.asarray(r.history["step"]).astype(int))
    if step not in steps:
        raise ValueError(f"step {step} was not evaluated; evaluated steps: {steps[:3]} ... {steps[-3:]}")
    return float(r.history[key][steps.index(step)])


def diverged(losses: Any, factor: float = 1.5, nonfinite_at: int | None = None) -> dict[str, Any]:
    """The divergence rule of CLAIMS (LLM-6) on a loss curve: the loss ends above ``factor`` x the lowest
    value it reached before (a spike that did not recover), or turns non-finite.

    ``nonfinite_at``: the step at which the training loop stopped a run for a non-finite or exploding
    loss (:attr:`wdlib.train.RunResult.diverged_at`), which counts as divergence. Returns
    ``diverged`` (bool), ``spike_at`` (index of the first value above ``factor`` x the running minimum
    before it, or None) and ``recovered`` (a spike happened and the run did not end diverged).
    """
    x = np.asarray(losses, dtype=np.float64)
    running = np.minimum.accumulate(np.where(np.isfinite(x), x, np.inf))
    above = np.zeros(len(x), dtype=bool)
    above[1:] = ~(x[1:] <= factor * running[:-1])  # NaN counts as above
    spike_at = int(np.argmax(above)) if above.any() else None
    ended_up = len(x) > 1 and not (x[-1] <= factor * running[-2])
    out = bool(nonfinite_at is not None or not np.isfinite(x).all() or ended_up)
    return {"diverged": out, "spike_at": spike_at, "recovered": spike_at is not None and not out}


def table(results: dict[tuple, RunResult], names: tuple[str, ...]) -> Any:
    """A pandas table: one row per run, the arm's fields (``names``) and its final metrics."""
    import pandas as pd

    rows = []
    for arm, r in results.items():
        row = dict(zip(names, arm))
        row.update({k: v for k, v in r.final.items() if "/" not in k or k.startswith(("seen_unseen", "weight_norm"))})
        row.update({"diverged_at": r.diverged_at, "wall_time": r.wall_time})
        rows.append(row)
    return pd.DataFrame(rows)


# --- LLM-7: decay on parameters stored in bfloat16 --------------------------------------------------------


def bf16_pure_weights(r: RunResult) -> list[torch.Tensor]:
    """The decayed weight matrices (>= 2 dims) of a run's final model, float32, for the applied-decay test."""
    return [v.float() for k, v in r.model_state.items() if v.ndim >= 2 and not k.endswith("lm_head.weight")]


#: The arms of the applied-decay measurement, as label -> (optimizer, parameter dtype, bf16_update, kernel).
#:
#: :meta hide-value:
APPLIED_ARMS: dict[str, tuple[str, torch.dtype, str, str]] = {
    "float32": ("adam", torch.float32, "nearest", "auto"),
    "bf16, torch AdamW (default kernel)": ("torch.adamw", torch.bfloat16, "nearest", "auto"),
    "bf16, nearest (fused kernel)": ("adam", torch.bfloat16, "nearest", "fused"),
    "bf16, nearest (foreach kernel)": ("adam", torch.bfloat16, "nearest", "foreach"),
    "bf16, float32 master": ("adam", torch.bfloat16, "master", "auto"),
    "bf16, Kahan": ("adam", torch.bfloat16, "kahan", "auto"),
    "bf16, stochastic rounding": ("adam", torch.bfloat16, "stochastic", "auto"),
}
#: The zero-gradient measurement asks the round-to-nearest kernels to lose the decay at eta*lambda up to this
#: (GPT-2's recipe is 6e-5; a bf16 ulp is 2^-8 to 2^-7 of a number, so half an ulp is 2e-3 to 4e-3).
SMALL_DECAY = 1e-3
#: The round-to-nearest arms (no remedy) and the remedies, among :data:`APPLIED_ARMS`.
NEAREST_ARMS = ("bf16, torch AdamW (default kernel)", "bf16, nearest (fused kernel)", "bf16, nearest (foreach kernel)")
REMEDY_ARMS = ("bf16, float32 master", "bf16, Kahan", "bf16, stochastic rounding")


def applied_decay_table(
    weights: list[torch.Tensor], grid: tuple[float, ...], steps: int = 100, lr: float = 1e-3
) -> Any:
    """For each ``lr * lambda`` of ``grid`` and each arm of :data:`APPLIED_ARMS`: the decay AdamW applies
    per step against the one requested (:func:`wdlib.precision.applied_decay`: zero gradients, so the
    decay is the only change). Returns a pandas table with ``arm``, ``lr_x_wd``, ``requested``,
    ``applied``, ``ratio``, ``changed_first_step``."""
    import pandas as pd

    rows = []
    for arm, (optimizer, dtype, update, impl) in APPLIED_ARMS.items():
        for shrink in grid:
            res = applied_decay(
                weights,
                lr=lr,
                weight_decay=shrink / lr,
                optimizer=optimizer,
                bf16_update=update,
                dtype=dtype,
                impl=impl,
                steps=steps,
            )
            rows.append(
                {
                    "arm": arm,
                    "lr_x_wd": shrink,
                    **{k: float(res[k]) for k in ("requested", "applied", "ratio", "changed_first_step")},
                }
            )
    return pd.DataFrame(rows)


def accumulated_decay(cfg: RunConfig) -> float:
    """``sum_t eta_t * lambda`` over a run: the number of decay timescales it spans (decoupled convention)."""
    sched = schedule_from_spec(cfg.lr_schedule, cfg.lr, cfg.steps)
    return float(sum(sched(t) for t in range(cfg.steps)) * cfg.weight_decay)


# --- per-seed statistics the claims are judged on -------------------------------------------------------


def divergence_ratio(losses: Any, nonfinite_at: int | None = None, cap: float = 10.0) -> float:
    """The statistic of the divergence rule (:func:`diverged`): the last loss over the lowest loss before it.

    A run diverges by the rule when this exceeds the spike factor (1.5). A loss that turned non-finite,
    or a run the training loop stopped (``nonfinite_at``), counts as ``cap`` (a diverged run; a finite
    cap keeps the seed mean and spread defined). Values above ``cap`` are capped too.
    """
    x = np.asarray(losses, dtype=np.float64)
    if nonfinite_at is not None or len(x) < 2 or not np.isfinite(x).all():
        return float(cap)
    return float(min(x[-1] / x[:-1].min(), cap))


def crossing_strength(units: list[dict[float, tuple[float, float]]]) -> float:
    """How far the seed-mean curves of some decayed run cross the no-decay run's (LLM-2).

    ``units``: one dict per seed, ``{wd: (before, after)}`` with the paired differences (run with decay
    minus run without) before the LR decay (or the snapshot) and after it (or after fine-tuning). For each
    ``wd`` the crossing is ``min(mean before, -mean after)``: positive only when the run with decay is
    above before and below after, and as large as the smaller of the two gaps. Returns the largest over
    ``wd`` ("for some lambda > 0").
    """
    wds = list(units[0])
    best = -np.inf
    for wd in wds:
        before = float(np.mean([u[wd][0] for u in units]))
        after = float(np.mean([u[wd][1] for u in units]))
        best = max(best, min(before, -after))
    return float(best)


def per_seed(t: Any, statistic: Any, by: str = "wd") -> list[float]:
    """``statistic(rows of one seed, sorted by ``by``)`` for each seed of table ``t`` (in seed order)."""
    return [
        float(statistic(t[t["seed"] == sd].sort_values(by).reset_index(drop=True))) for sd in sorted(set(t["seed"]))
    ]


def consecutive_ratios(values: Any) -> np.ndarray:
    """``values[i + 1] / values[i]`` along the lambda grid (values ordered by lambda)."""
    v = np.asarray(values, dtype=np.float64)
    return v[1:] / v[:-1]


#: LLM-7 training pairs: label -> (arm with decay, its no-decay twin), arms as in :func:`plan` without the
#: seed. The remedies are paired with wdlib's round-to-nearest run without decay (no decay: nothing to remedy).
def _bf16_pure_pairs() -> dict[str, tuple[tuple, tuple]]:
    pairs = {
        "float32": (("fp32", "adam", "nearest", "wd"), ("fp32", "adam", "nearest", 0.0)),
        "bf16, torch AdamW": (
            ("bf16-pure", "torch.adamw", "nearest", "wd"),
            ("bf16-pure", "torch.adamw", "nearest", 0.0),
        ),
        "bf16, wdlib AdamW, nearest": (("bf16-pure", "adam", "nearest", "wd"), ("bf16-pure", "adam", "nearest", 0.0)),
    }
    pairs.update(
        {
            f"bf16, wdlib AdamW, {u}": (("bf16-pure", "adam", u, "wd"), ("bf16-pure", "adam", "nearest", 0.0))
            for u in ("master", "kahan", "stochastic")
        }
    )
    return pairs


BF16_PURE_PAIRS = _bf16_pure_pairs()


def shrink_shares(s: Setup, bf16_pure: dict[tuple, RunResult]) -> Any:
    """LLM-7 in training, one row per arm and seed: the shrink decay causes (``1 -`` final weight norm over
    that of the no-decay twin of the same seed), its share of float32's shrink in that seed, the final
    weight norm and validation loss, and the validation loss minus float32's (same seed)."""
    import pandas as pd

    seeds = sorted({k[-1] for k in bf16_pure})

    def key(arm: tuple, seed: int) -> tuple:
        return tuple(s.bf16_pure_wd if x == "wd" else x for x in arm) + (seed,)

    def norm(r: RunResult) -> float:
        return float(r.final["weight_norm/decay"])

    rows = []
    for seed in seeds:
        shrink = {
            name: 1 - norm(bf16_pure[key(w, seed)]) / norm(bf16_pure[key(w0, seed)])
            for name, (w, w0) in BF16_PURE_PAIRS.items()
        }
        fp_loss = float(bf16_pure[key(BF16_PURE_PAIRS["float32"][0], seed)].final["val_loss"])
        for name, (w, _) in BF16_PURE_PAIRS.items():
            r = bf16_pure[key(w, seed)]
            rows.append(
                {
                    "arm": name,
                    "seed": seed,
                    "shrink": shrink[name],
                    "shrink_vs_float32": shrink[name] / shrink["float32"],
                    "weight_norm": norm(r),
                    "val_loss": float(r.final["val_loss"]),
                    "val_minus_float32": float(r.final["val_loss"]) - fp_loss,
                }
            )
    return pd.DataFrame(rows)
