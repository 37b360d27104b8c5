"""A run's configuration: plain, serializable values, checked field by field.

A :class:`RunConfig` names everything a training run depends on (data, model, optimizer and its
decay convention, schedules, steps, batch size, precision, seed) and nothing it does not (device,
where it is stored). Its :meth:`~RunConfig.key` is the hash that the run store (:mod:`wdlib.runs`)
files results under, so the same configuration is trained once. Used by every chapter's runs.

Schedules are small dicts, ``{"name": "cosine", "final": 0.1, "warmup": 100, "delay": 0}``:

``name``
    ``"constant"``, ``"cosine"``, ``"linear"``, ``"wsd"`` (warmup-stable-decay; ``decay_fraction``
    of the steps after warmup decays linearly), ``"step"`` (one drop to ``final`` for the last
    ``decay_fraction`` of the steps after warmup) or ``"equal_contribution"`` (``eta_s =
    eta/(lambda*eta*s + 1)``, Su's schedule, seed 000).
``final``
    The value at the end as a fraction of the peak (cosine, linear, wsd, step; default 0).
``warmup``
    Linear warmup steps before the schedule (default 0).
``delay``
    Steps at 0 before the value switches on (for weight decay after warmup; default 0).

The peak is the config's ``lr`` (for ``lr_schedule``) or ``weight_decay`` (for ``wd_schedule``).
A schedule's ``warmup + delay`` must be shorter than the run (``steps``).

Every field is checked when the configuration is built, so a bad value fails at once with a
ValueError naming the field and its allowed values, never after minutes of training or silently:
numbers must be finite (no ``inf``/``nan``), integers lie in the range the training loop can use
(seeds and steps below 2**32, as :mod:`wdlib.data` draws its batches from them), ``model: gpt``
needs a token dataset and the other models a classification dataset. NumPy scalars and 0-d torch
tensors count as the numbers they hold (converted to plain ``int``/``float`` so the key is that of
the plain-number configuration; a float32 scalar is read as the shortest decimal it rounds from,
``np.float32(1e-3)`` as ``0.001``). ``RunConfig()`` itself is runnable: MNIST-1D, a 128x2 MLP.

The optimizer is a spec, ``{"name": "adam", "decay": "l2", "betas": [0.9, 0.999], "eps": 1e-8}`` or
``{"name": "sgd", "decay": "decoupled", "momentum": 0.9, "nesterov": true}`` (a bare name, ``"adam"``,
is short for ``{"name": "adam"}``), checked and completed with its defaults by the optimizer registry
(:func:`wdlib.optim.optimizer_spec`; ``cfg.optimizer`` is always the full dict). ``lr`` and
``weight_decay`` stay fields of their own: schedules and sweeps set them. Configurations written before
the spec existed kept the optimizer's settings in fields of their own (``optimizer: sgd``, ``decay``,
``momentum``, ``nesterov``, ``betas``, ``eps``, ``bf16_update``); :meth:`RunConfig.from_dict` (files, the
run store, :meth:`RunConfig.replace`) still reads them into the spec, and :meth:`RunConfig.key` hashes
that old flat form, so a stored run keeps its key. A field written ``optimizer.<option>`` (``--set
optimizer.decay=l2``) sets that option of the spec.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ._checks import plain, short_repr
from .data import DATASETS
from .models import MODELS
from .optim import BF16_UPDATES, optimizer_spec
from .optim import OPTIMIZERS as _REGISTRY
from .params import WIDTH_RULES
from .schedules import (
    Constant,
    Cosine,
    Delayed,
    EqualContribution,
    LinearDecay,
    Schedule,
    StepDrop,
    Warmup,
    WarmupStableDecay,
)

__all__ = [
    "RunConfig",
    "OPTIMIZERS",
    "PRECISIONS",
    "BF16_UPDATES",
    "SCHEDULES",
    "DTYPES",
    "schedule_from_spec",
    "FIELD_HELP",
]

#: Names of the registered optimizers (:data:`wdlib.optim.OPTIMIZERS`, which holds their options and rules).
OPTIMIZERS: tuple[str, ...] = tuple(_REGISTRY)
PRECISIONS: tuple[str, ...] = ("fp32", "bf16-autocast", "bf16-pure")
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "linear", "wsd", "step", "equal_contribution")
DTYPES: tuple[str, ...] = ("float32", "float64")
SCALES: tuple[str, ...] = ("smoke", "full", "test")  # a run's (and a chapter's) sizes; "test": the unit tests'
#: Datasets of token sequences (:class:`wdlib.data.TokenDataset`) and the models that read them; every other
#: (registered) dataset is a classification dataset, read by every other model.
TOKEN_DATA: tuple[str, ...] = ("stdlib_chars", "openwebtext")
TOKEN_MODELS: tuple[str, ...] = ("gpt",)
#: Model arguments with a default here (the model has none), so that ``RunConfig()`` is runnable as it stands.
_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {"mlp": {"width": 128, "depth": 2}}
_MAX_SEED = 2**32 - 2  # wdlib.data draws batches from seeds and steps below 2**32; perturb_step uses seed + 1
_MAX_STEPS = 2**32 - 1
_MAX_SIZE = 2**31 - 1  # batch, block and subset sizes (torch indexes with int64, but nothing useful is larger)

FIELD_HELP: dict[str, str] = {
    "data": "dataset name (wdlib.data.load): mnist1d, digits, stdlib_chars, cifar10, openwebtext",
    "data_args": 'keyword arguments of the dataset (e.g. {"num_samples": 4000})',
    "subset": "number of training samples to keep (a nested subset fixed by data_seed); null keeps all",
    "data_seed": "seed of the subset and of the label noise (default 0)",
    "label_noise": "fraction of training labels replaced by a wrong class drawn at random (test labels stay clean)",
    "model": "model name (wdlib.models.build): mlp, cnn, convnet, resnet18, gpt, tiedconv, tiedrnn; gpt reads "
    "token data (stdlib_chars, openwebtext), the others classification data",
    "model_args": "keyword arguments of the model; in_dim/in_channels/num_classes/vocab_size are filled in "
    "(and the mlp's width and depth default to 128 and 2)",
    "optimizer": "the optimizer spec {name, decay, ...options} (or just its name): name adam or sgd (wdlib, any "
    "decay rule), torch.adam, torch.adamw or torch.sgd (torch.optim's, their own rule only)",
    "optimizer.decay": "l2 (torch.optim.Adam/SGD), decoupled (lr-multiplied, torch AdamW; the default of adam "
    "and sgd, so adam is AdamW unless decay is l2) or independent (the AdamW paper's)",
    "optimizer.momentum": "SGD momentum in [0, 1) (sgd, torch.sgd; default 0)",
    "optimizer.nesterov": "SGD Nesterov momentum (sgd, torch.sgd; default false; needs momentum > 0)",
    "optimizer.betas": "Adam betas (adam, torch.adam, torch.adamw; default [0.9, 0.999])",
    "optimizer.eps": "Adam epsilon (adam, torch.adam, torch.adamw; default 1e-8)",
    "optimizer.bf16_update": "how bf16-pure parameters take their step (adam, sgd; precision bf16-pure only): "
    "nearest (plain rounding, the default), master (float32 master weights), kahan "
    "(compensated) or stochastic (stochastic rounding); wdlib.optim",
    "optimizer.impl": "the kernel (adam, sgd): auto (fused where it fits, the default), fused or foreach; only the "
    "rounding differs (decoupled SGD on foreach shrinks, then steps)",
    "lr": "peak learning rate",
    "weight_decay": "lambda (peak), in the rule named by `optimizer.decay`",
    "decay_vectors": "also decay 1-D parameters (biases, norms); default false",
    "mup": "muP groups (wdlib.params.mup_groups): {base_width, decay: scaled|constant|sqrt|independent, zero_readout}; "
    "null: off",
    "lr_schedule": "schedule of the LR: {name, final, warmup, delay} (default constant); warmup + delay < steps",
    "wd_schedule": "schedule of the weight decay, same form (default constant)",
    "steps": "optimizer steps (an integer in [1, 2**32 - 1])",
    "batch_size": "global batch size (samples or sequences per step)",
    "block_size": "sequence length for language data",
    "grad_accum": "micro-batches per step (the batch is split; default 1)",
    "grad_clip": "clip the global gradient norm to this value (null: off)",
    "precision": "fp32, bf16-autocast (float32 weights) or bf16-pure (weights and state in bfloat16)",
    "dtype": "float32 or float64 parameters for fp32 precision (float64 for exactness tests)",
    "seed": "seed of the initialization and of the batch order (an integer in [0, 2**32 - 2])",
    "eval_every": "evaluate every this many steps (0: only at the end)",
    "eval_batches": "evaluation batches for language data (default 20)",
    "ema": "decay of an EMA of the weights evaluated alongside (null: off)",
    "checkpoint_every": "write a checkpoint every this many steps (0: none; an interrupted run then starts over)",
    "divergence_factor": "a loss above this multiple of its running minimum counts as divergence",
    "perturb_step": "replace the batch of this step by one from another seed (memory experiments); null: off",
    "diagnostics": "names of diagnostics recorded at each evaluation (wdlib.measures.DIAGNOSTICS)",
    "probes": "hooks that watch every step, as {name, ...args} (wdlib.measures.PROBES)",
    "measures": "measurements of the final model on the data, as {name, ...args} (wdlib.measures.MEASURES)",
    "snapshots": "steps after which the weights are kept in the result (for runs that start from them)",
    "init_from": "start from a snapshot of a stored run: {run: <key>, step: <step>} (wdlib.runs.run resolves it)",
    "scale": "smoke, full or test: results of different scales never mix",
}


def is_run_key(value: Any) -> bool:
    """Whether ``value`` has the form of a run key (:meth:`RunConfig.key`): 24 lowercase hex digits."""
    return isinstance(value, str) and len(value) == 24 and set(value) <= _HEX


_HEX = frozenset("0123456789abcdef")


def _plain(value: Any) -> Any:
    """NumPy scalars, 0-d arrays and 0-d torch tensors as the plain Python number (or bool) they hold.

    Containers (dict, list, tuple) are converted element by element. A float32 or float16 value becomes
    the shortest decimal that rounds to it (``np.float32(1e-3)`` -> ``0.001``): the number the user wrote,
    so its key is that of the plain-number configuration (:func:`wdlib._checks.plain`).
    """
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return plain(value, shortest=True)


def _check_schedule_spec(name: str, spec: Any) -> dict[str, Any] | None:
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ValueError(f'{name} must be a dict like {{"name": "cosine", "warmup": 100}} or null, got {spec!r}')
    allowed = {"name", "final", "warmup", "delay", "decay_fraction"}
    spec = _plain(spec)
    unknown = sorted(repr(k) if not isinstance(k, str) else k for k in set(spec) - allowed)
    if unknown:
        raise ValueError(f"{name} has unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    if not isinstance(spec.get("name", "constant"), str) or spec.get("name", "constant") not in SCHEDULES:
        raise ValueError(
            f"{name}.name must be one of {', '.join(repr(s) for s in SCHEDULES)}, got {spec.get('name')!r}"
        )
    for key in ("warmup", "delay"):
        v = spec.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _MAX_STEPS:
            raise ValueError(f"{name}.{key} must be an integer in [0, {_MAX_STEPS}], got {short_repr(v)}")
    spec = dict(spec)
    for key in ("final", "decay_fraction"):
        v = spec.get(key, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ValueError(f"{name}.{key} must be a number in [0, 1], got {short_repr(v)}")
        if key in spec:
            spec[key] = float(v)
    return spec


def schedule_from_spec(
    spec: dict[str, Any] | None, peak: float, steps: int, weight_decay: float | None = None
) -> Schedule:
    """The :class:`~wdlib.schedules.Schedule` a spec describes, peaking at ``peak`` over ``steps`` steps.

    ``weight_decay`` is the lambda the equal-contribution LR schedule is built for.
    """
    spec = _check_schedule_spec("schedule", spec) or {"name": "constant"}
    name = spec.get("name", "constant")
    warm, delay = spec.get("warmup", 0), spec.get("delay", 0)
    final = spec.get("final", 0.0) * peak
    rest = max(steps - warm, 1)
    if name == "constant":
        sched: Schedule = Constant(peak)
    elif name == "cosine":
        sched = Cosine(peak=peak, steps=rest, final=final)
    elif name == "linear":
        sched = LinearDecay(peak=peak, steps=rest, final=final)
    elif name == "wsd":
        decay_steps = max(int(round(spec.get("decay_fraction", 0.2) * rest)), 1)
        sched = WarmupStableDecay(peak=peak, steps=rest, decay_steps=decay_steps, final=final)
    elif name == "step":
        drop_at = rest - int(round(spec.get("decay_fraction", 0.5) * rest))
        sched = StepDrop(peak=peak, drop_at=drop_at, final=final)
    else:
        if weight_decay is None:
            raise ValueError("the equal_contribution schedule needs the weight decay it is built for")
        sched = EqualContribution(peak=peak, weight_decay=weight_decay)
    if warm:
        sched = Warmup(sched, steps=warm)
    if delay:
        sched = Delayed(sched, steps=delay)
    return sched


#: Fields added after the first stored runs, with their (JSON) defaults: left out of the key at these values.
_LATER_FIELDS: dict[str, Any] = {
    "label_noise": 0.0,
    "measures": [],
    "snapshots": [],
    "init_from": None,
    "bf16_update": "nearest",
    "impl": "auto",
    "cautious": False,
    "adjust_lr": "match_rms_adamw",
    "ns_steps": 5,
}
#: Options of the spec added after it that enter the key (only when not their default, see _LATER_FIELDS).
_KEYED_OPTIONS: dict[str, Any] = {"impl": "auto", "cautious": False, "adjust_lr": "match_rms_adamw", "ns_steps": 5}
#: The optimizer's settings as configurations held them before the spec (fields of their own), with their
#: (JSON) defaults: read into the spec by :meth:`RunConfig.from_dict`, and the form :meth:`RunConfig.key` hashes.
_FLAT_OPTIMIZER: dict[str, Any] = {
    "decay": "decoupled",
    "momentum": 0.0,
    "nesterov": False,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "bf16_update": "nearest",
}


def _same_setting(value: Any, default: Any) -> bool:
    """Whether an old flat optimizer field holds its default (``0`` for ``0.0``, ``"1e-8"`` as YAML 1.1 reads it)."""
    value = _plain(value)
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(default, float) and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return False
    return value == default


def _migrate_optimizer(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with the optimizer's settings in its spec: old flat fields (``decay``, ``momentum``, ...) and
    ``optimizer.<option>`` fields moved into ``optimizer`` (a name or a spec), where they override it.

    An old field that the named optimizer does not take was ignored by the old code; it is dropped when it
    holds its old default (``decay: decoupled`` beside ``optimizer: torch.adam``, ``momentum: 0`` beside
    ``adam``) and raises ValueError otherwise (``decay: l2`` beside ``torch.adamw`` asked for a rule that
    was never applied). ``d`` without such fields comes back as it is.
    """
    flat = [k for k in _FLAT_OPTIMIZER if k in d]
    dotted = [k for k in d if k.startswith("optimizer.")]
    if not flat and not dotted:
        return d
    out = {k: v for k, v in d.items() if k not in flat and k not in dotted}
    spec = out.get("optimizer", "adam")
    spec = {"name": spec} if isinstance(spec, str) else dict(spec) if isinstance(spec, dict) else spec
    entry = _REGISTRY.get(spec.get("name")) if isinstance(spec, dict) and isinstance(spec.get("name"), str) else None
    if entry is None:
        optimizer_spec(spec)  # raises: not a spec, or no (known) name
        raise AssertionError("unreachable")
    name = entry.name
    for key in flat:
        value = d[key]
        if key in entry.options or (key == "decay" and len(entry.decays) > 1):
            spec[key] = value
        elif _same_setting(value, _FLAT_OPTIMIZER[key]):
            continue  # the old default, which the old code ignored for this optimizer
        elif key == "decay":
            spec[key] = value  # torch's own rule is fine; any other raises in optimizer_spec
        else:
            raise ValueError(
                f"{key} {short_repr(value)} does not apply to optimizer {name!r} (its options: "
                f"{', '.join(['decay', *entry.options])}); {key} is now optimizer.{key}, an option "
                f"of {', '.join(repr(n) for n, e in _REGISTRY.items() if key in e.options)}"
            )
    for key in dotted:
        spec[key.removeprefix("optimizer.")] = d[key]
    out["optimizer"] = spec
    return out


def _flat_optimizer(spec: dict[str, Any]) -> dict[str, Any]:
    """The (full) optimizer spec as the old flat fields: ``optimizer`` (its name), ``decay``, ``momentum``,
    ``nesterov``, ``betas``, ``eps``, ``bf16_update``, each at its old default where the optimizer has no such
    option. torch's optimizers ignored ``decay`` and kept the default ("decoupled") whatever their rule."""
    flat = {"optimizer": spec["name"], **{k: spec.get(k, default) for k, default in _FLAT_OPTIMIZER.items()}}
    flat.update({k: spec.get(k, default) for k, default in _KEYED_OPTIONS.items()})
    if len(_REGISTRY[spec["name"]].decays) == 1:
        flat["decay"] = _FLAT_OPTIMIZER["decay"]
    return flat


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run depends on. See :data:`FIELD_HELP` (and ``python -m wdlib run --help``)."""

    data: str = "mnist1d"
    data_args: dict[str, Any] = field(default_factory=dict)
    subset: int | None = None
    data_seed: int = 0
    label_noise: float = 0.0
    model: str = "mlp"
    model_args: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=lambda: {"name": "adam"})  # or a name; stored in full
    lr: float = 1e-3
    weight_decay: float = 0.0
    decay_vectors: bool = False
    mup: dict[str, Any] | None = None
    lr_schedule: dict[str, Any] | None = None
    wd_schedule: dict[str, Any] | None = None
    steps: int = 100
    batch_size: int = 64
    block_size: int = 64
    grad_accum: int = 1
    grad_clip: float | None = None
    precision: str = "fp32"
    dtype: str = "float32"
    seed: int = 0
    eval_every: int = 0
    eval_batches: int = 20
    ema: float | None = None
    checkpoint_every: int = 0
    divergence_factor: float = 100.0
    perturb_step: int | None = None
    diagnostics: tuple[str, ...] = ()
    probes: tuple[dict[str, Any], ...] = ()
    measures: tuple[dict[str, Any], ...] = ()
    snapshots: tuple[int, ...] = ()
    init_from: dict[str, Any] | None = None
    scale: str = "smoke"

    def __post_init__(self) -> None:
        # NumPy scalars and 0-d tensors are the numbers they hold (plain values: to_dict and key work on them)
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _plain(getattr(self, f.name)))
        # one key per value: 0 and 0.0 (JSON), "1e-3" (YAML 1.1 reads a float without a dot as a string)
        for name in ("lr", "weight_decay", "grad_clip", "ema", "divergence_factor", "label_noise"):
            v = getattr(self, name)
            if isinstance(v, str):
                try:
                    v = float(v)
                except ValueError:
                    raise ValueError(f"{name} must be a number, got {short_repr(v)}") from None
            if isinstance(v, int) and not isinstance(v, bool):
                try:
                    v = float(v)
                except OverflowError:
                    raise ValueError(
                        f"{name} must be a finite number, got an integer of {len(str(v))} digits"
                    ) from None
            object.__setattr__(self, name, v)

        def positive_int(name: str, minimum: int = 1, maximum: int = _MAX_STEPS, optional: bool = False) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, int) or not minimum <= v <= maximum:
                raise ValueError(
                    f"{name} must be an integer in [{minimum}, {maximum}]{' or null' if optional else ''}, "
                    f"got {short_repr(v)}"
                )

        def number(
            name: str, low: float = 0.0, high: float | None = None, open_high: bool = False, optional: bool = False
        ) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < low
            if not bad and high is not None:
                bad = v >= high if open_high else v > high
            if bad:
                rng = f">= {low}" if high is None else f"in [{low}, {high}{')' if open_high else ']'}"
                raise ValueError(
                    f"{name} must be a finite number {rng}{' or null' if optional else ''}, got {short_repr(v)}"
                )

        def choice(name: str, allowed: tuple[str, ...]) -> None:
            v = getattr(self, name)
            if not isinstance(v, str) or v not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}, got {short_repr(v)}")

        for name in ("data", "model"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a name (string), got {short_repr(getattr(self, name))}")
        choice("data", tuple(DATASETS))
        choice("model", tuple(MODELS))
        for name in ("data_args", "model_args"):
            v = getattr(self, name)
            if not isinstance(v, dict):
                raise ValueError(f"{name} must be a dict of keyword arguments, got {short_repr(v)}")
            bad_keys = [k for k in v if not isinstance(k, str) or not k.isidentifier()]
            if bad_keys:
                raise ValueError(f"{name} keys must be argument names (strings), got {short_repr(bad_keys[0])}")
        if self.model in TOKEN_MODELS and self.data not in TOKEN_DATA:
            raise ValueError(
                f"model {self.model!r} needs a token dataset ({', '.join(TOKEN_DATA)}), got data {self.data!r}"
            )
        if self.model not in TOKEN_MODELS and self.data in TOKEN_DATA:
            others = ", ".join(d for d in DATASETS if d not in TOKEN_DATA)
            raise ValueError(
                f"model {self.model!r} needs a classification dataset ({others}), got data "
                f"{self.data!r}; token data takes model {', '.join(repr(m) for m in TOKEN_MODELS)}"
            )
        if self.data in TOKEN_DATA:
            for name, active in (
                ("subset", self.subset is not None),
                ("label_noise", self.label_noise not in (0, 0.0)),
            ):
                if active:
                    raise ValueError(f"{name} applies to classification data, not to {self.data!r}; leave it unset")
        if self.model in _MODEL_DEFAULTS:
            filled = {**_MODEL_DEFAULTS[self.model], **self.model_args}
            if filled != self.model_args:
                object.__setattr__(self, "model_args", filled)
        object.__setattr__(self, "optimizer", optimizer_spec(self.optimizer))  # the registry checks it
        choice("precision", PRECISIONS)
        choice("dtype", DTYPES)
        bf16_update = self.optimizer.get("bf16_update", "nearest")
        if bf16_update != "nearest" and self.precision != "bf16-pure":
            raise ValueError(
                f"optimizer.bf16_update {bf16_update!r} applies to precision 'bf16-pure', got precision "
                f"{self.precision!r}; leave it at 'nearest' or set precision bf16-pure"
            )
        choice("scale", SCALES)
        positive_int("steps")
        for name in ("batch_size", "block_size", "grad_accum", "eval_batches"):
            positive_int(name, 1, _MAX_SIZE)
        positive_int("seed", 0, _MAX_SEED)
        positive_int("data_seed", 0, _MAX_STEPS)
        for name in ("eval_every", "checkpoint_every"):
            positive_int(name, 0)
        positive_int("subset", 1, _MAX_SIZE, optional=True)
        positive_int("perturb_step", 0, self.steps - 1, optional=True)
        number("lr")
        number("weight_decay")
        number("grad_clip", optional=True)
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be a number > 0 or null, got {self.grad_clip!r}")
        number("ema", 0.0, 1.0, open_high=True, optional=True)
        number("divergence_factor", 1.0)
        number("label_noise", 0.0, 1.0, open_high=True)
        if self.mup is not None:
            allowed = {"base_width", "decay", "zero_readout"}
            if not isinstance(self.mup, dict) or not set(self.mup) <= allowed or "base_width" not in self.mup:
                raise ValueError(
                    f"mup must be null or a dict with base_width and optionally decay, zero_readout; got {self.mup!r}"
                )
            base = self.mup["base_width"]
            if isinstance(base, bool) or not isinstance(base, int) or not 1 <= base <= _MAX_SIZE:
                raise ValueError(f"mup.base_width must be an integer in [1, {_MAX_SIZE}], got {short_repr(base)}")
            if self.mup.get("decay", "scaled") not in WIDTH_RULES:
                raise ValueError(
                    f"mup.decay must be one of {', '.join(repr(r) for r in WIDTH_RULES)}, got {self.mup.get('decay')!r}"
                )
            if self.optimizer["decay"] == "independent":
                raise ValueError(
                    "mup with optimizer.decay 'independent' is not supported: its lr multipliers "
                    "would scale the decay too; use 'decoupled' or 'l2'"
                )
            if "width" not in self.model_args:
                raise ValueError("mup needs model_args.width (the width that base_width is compared with)")
        if not isinstance(self.decay_vectors, bool):
            raise ValueError(f"decay_vectors must be true or false, got {short_repr(self.decay_vectors)}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})")
        object.__setattr__(self, "lr_schedule", _check_schedule_spec("lr_schedule", self.lr_schedule))
        object.__setattr__(self, "wd_schedule", _check_schedule_spec("wd_schedule", self.wd_schedule))
        for name in ("lr_schedule", "wd_schedule"):
            spec = getattr(self, name) or {}
            warm, delay = spec.get("warmup", 0), spec.get("delay", 0)
            if warm + delay and warm + delay >= self.steps:
                raise ValueError(
                    f"{name}: warmup ({warm}) + delay ({delay}) must be less than steps ({self.steps}); "
                    f"the schedule would never reach its peak"
                )
        if (self.wd_schedule or {}).get("name") == "equal_contribution":
            raise ValueError("wd_schedule.name 'equal_contribution' is an LR schedule; use it in lr_schedule")
        if not isinstance(self.diagnostics, (list, tuple)) or not all(isinstance(d, str) for d in self.diagnostics):
            raise ValueError(f"diagnostics must be a list of names, got {self.diagnostics!r}")
        object.__setattr__(self, "diagnostics", tuple(self.diagnostics))
        if not isinstance(self.probes, (list, tuple)) or not all(
            isinstance(p, dict) and isinstance(p.get("name"), str) for p in self.probes
        ):
            raise ValueError(f'probes must be a list of {{"name": ..., ...}} dicts, got {self.probes!r}')
        object.__setattr__(self, "probes", tuple(dict(p) for p in self.probes))
        if not isinstance(self.measures, (list, tuple)) or not all(
            isinstance(m, dict) and isinstance(m.get("name"), str) for m in self.measures
        ):
            raise ValueError(f'measures must be a list of {{"name": ..., ...}} dicts, got {self.measures!r}')
        object.__setattr__(self, "measures", tuple(dict(m) for m in self.measures))
        if not isinstance(self.snapshots, (list, tuple)) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= self.steps for s in self.snapshots
        ):
            raise ValueError(f"snapshots must be a list of steps in [1, steps={self.steps}], got {self.snapshots!r}")
        object.__setattr__(self, "snapshots", tuple(sorted(set(self.snapshots))))
        if self.init_from is not None:
            f = self.init_from
            ok = (
                isinstance(f, dict)
                and set(f) == {"run", "step"}
                and is_run_key(f["run"])
                and isinstance(f["step"], int)
                and not isinstance(f["step"], bool)
                and f["step"] >= 1
            )
            if not ok:
                raise ValueError(
                    f'init_from must be null or {{"run": <24-hex run key>, "step": <step >= 1>}}, '
                    f"got {self.init_from!r}"
                )
            object.__setattr__(self, "init_from", dict(f))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Build from a plain dict (a parsed JSON or YAML file); an unknown field raises ValueError naming it.

        Also reads the forms configurations had before the optimizer spec: the old flat fields (``optimizer:
        sgd``, ``decay``, ``momentum``, ``nesterov``, ``betas``, ``eps``, ``bf16_update``) go into the spec, as
        do ``optimizer.<option>`` fields (``{"optimizer.decay": "l2"}``); either overrides the spec's option.
        """
        if not isinstance(d, dict):
            raise ValueError(f"a run configuration must be a mapping of fields, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        not_names = [k for k in d if not isinstance(k, str)]
        if not_names:
            raise ValueError(
                f"configuration keys must be field names (strings), got {short_repr(not_names[0])} "
                f"({type(not_names[0]).__name__}); known fields: {sorted(names)}"
            )
        unknown = sorted(k for k in set(d) - names - set(_FLAT_OPTIMIZER) if not k.startswith("optimizer."))
        if unknown:
            raise ValueError(f"unknown configuration field(s) {unknown}; known fields: {sorted(names)}")
        return cls(**_migrate_optimizer(d))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples as lists); the optimizer as its full spec."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (checked again).

        ``optimizer=`` replaces the whole spec (options left out take their defaults); to change one option
        keep the rest, ``cfg.replace(optimizer={**cfg.optimizer, "decay": "l2"})``, or name it as a field,
        ``cfg.replace(**{"optimizer.decay": "l2"})``. The old flat fields work too (see :meth:`from_dict`).
        """
        return RunConfig.from_dict({**self.to_dict(), **changes})

    def value(self, name: str) -> Any:
        """The value of field ``name``; ``optimizer.<option>`` reads an option of the optimizer spec (the form
        ``--set`` and ``--grid`` take), ``optimizer`` alone its name, an old flat field (``decay``) its option.
        ValueError for an unknown field. (:func:`wdlib.runs.results_table` reads a sweep's fields with it.)"""
        if name == "optimizer":
            return self.optimizer["name"]
        if name.startswith("optimizer."):
            option = name.removeprefix("optimizer.")
            if option not in self.optimizer:
                raise ValueError(
                    f"{name}: optimizer {self.optimizer['name']!r} has no option {option!r}; its "
                    f"options: {', '.join(self.optimizer)}"
                )
            return self.optimizer[option]
        if name in _FLAT_OPTIMIZER:  # an old flat field (``--grid decay=l2,decoupled``): the spec's option
            return self.optimizer.get(name, _FLAT_OPTIMIZER[name])
        if name not in {f.name for f in dataclasses.fields(self)}:
            raise ValueError(f"unknown configuration field {name!r}")
        return getattr(self, name)

    def key(self) -> str:
        """A stable hash of the configuration: the run store's key (24 hex digits of SHA-256).

        Fields added after the store format was fixed (:data:`_LATER_FIELDS`) enter the hash only when
        they differ from their default, so runs stored before they existed keep their keys. The optimizer
        enters as the flat fields configurations had before its spec (:data:`_FLAT_OPTIMIZER`), so a run
        keeps its key across that change too (tests/test_optimizer_spec.py holds keys computed before it).
        """
        d = {**self.to_dict(), **_flat_optimizer(self.optimizer)}
        for name, default in _LATER_FIELDS.items():
            if d.get(name) == default:
                d.pop(name)
        canonical = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:24]
