"""Command line: ``python -m wdlib {tau,run,sweep,runs}`` (also installed as ``wdlib``). ::

    wdlib tau --lr 1e-3 --weight-decay 0.1 --dataset-size 50000 --batch-size 128 [--to-dataset-size N ...] [--steps T]
    wdlib run CONFIG.yaml [--store DIR] [--no-resume] [--rerun] [--device cuda] [--set steps=500 ...]
    wdlib sweep CONFIG.yaml --grid lr=1e-3,3e-3 --grid weight_decay=0.01,0.1 [--workers 2] [--pack auto]
    wdlib runs [--store DIR] [--scale smoke] [--forget KEY | --all-stale | --reindex]

Configurations are JSON or YAML files (read with ``yaml.safe_load``: data, never code) whose fields
are those of :class:`wdlib.config.RunConfig`; ``wdlib run --help`` lists them, and
``configs/example.yaml`` is one to start from.

Errors a user can cause (a bad argument, file or field) end in one line ``wdlib: error: ...`` on
stderr and exit status 2; an internal error (a bug) prints its traceback and exits with 3.

Environment: ``WDLIB_STORE`` (the default store directory) and ``WDLIB_STALE`` (``recompute``,
``warn`` or ``reuse``: what ``run``/``sweep`` do with a stored result made by other code; see
:mod:`wdlib.runs`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sqlite3
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ._checks import check_integer, check_real, short_repr
from ._extras import require
from ._version import __version__
from .config import FIELD_HELP, SCALES, RunConfig
from .data import DataNotFoundError
from .packed import PACK_MODES
from .runs import run, sweep
from .store import Store
from .timescale import RISE_SCHEDULES, gradient_rise, tau_epoch, tau_iter, transfer_weight_decay

_ENV_HELP = """environment:
  WDLIB_STORE  the default run store directory (else results/store)
  WDLIB_STALE  what a stored result made by other code (another wdlib, torch or training code; or stored
               before code identities were recorded) is worth: recompute (default: train it again and
               replace it), warn (return it with a warning) or reuse (return it silently)
  WDLIB_PACK   whether sweeps train configurations that differ only in seed, lr and weight decay as one
               batched model (wdlib.packed): auto (default: on a GPU always, elsewhere never),
               always or never"""


def _fields_epilog() -> str:
    width = max(len(k) for k in FIELD_HELP)
    return (
        "configuration fields:\n"
        + "\n".join(f"  {k:<{width}}  {v}" for k, v in FIELD_HELP.items())
        + "\n\n"
        + _ENV_HELP
    )


class _Parser(argparse.ArgumentParser):
    """argparse, except that ``-1e-3``, ``-inf`` and ``-.5`` are values, not options: ``--lr -1e-3`` then gets the
    range error it deserves instead of "expected one argument" (argparse knows only ``-1`` and ``-1.5``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(
            r"^-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE
        )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wdlib", description="Weight Decay, Reproduced: library tools.")
    parser.add_argument("--version", action="version", version=f"wdlib {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    tau = sub.add_parser(
        "tau",
        help="EMA timescales of AdamW and the weight decay that keeps them at another size",
        description="Print tau_iter = 1/(lr*wd) in iterations and tau_epoch = B/(lr*wd*N) in epochs "
        "(Wang & Aitchison, arXiv 2405.13698); with --to-dataset-size, --to-batch-size or "
        "--to-width, the weight decay that keeps tau_epoch there.",
    )
    lo, hi = _TAU_FLOAT_RANGE
    n_lo, n_hi = _TAU_INT_RANGE
    w_lo, w_hi = _TAU_WIDTH_RANGE
    tau.add_argument("--lr", type=float, required=True, help=f"learning rate (peak), in [{lo:g}, {hi:g}]")
    tau.add_argument(
        "--weight-decay", type=float, required=True, help=f"lambda, lr-multiplied (torch AdamW), in [{lo:g}, {hi:g}]"
    )
    tau.add_argument(
        "--dataset-size",
        type=int,
        required=True,
        help=f"N, training samples (or tokens/context), an integer in [{n_lo}, {n_hi:g}]",
    )
    tau.add_argument("--batch-size", type=int, required=True, help=f"B, samples per step, in [{n_lo}, {n_hi:g}]")
    tau.add_argument("--to-dataset-size", type=int, help=f"N at the target, in [{n_lo}, {n_hi:g}]")
    tau.add_argument("--to-batch-size", type=int, help=f"B at the target, in [{n_lo}, {n_hi:g}]")
    tau.add_argument("--width", type=float, help=f"width (fan_in) of the tuned model, in [{w_lo:g}, {w_hi:g}]")
    tau.add_argument("--to-width", type=float, help="width (fan_in) at the target; needs --width")
    tau.add_argument("--mup", action="store_true", help="hidden-layer LR scales like 1/width (muP)")
    tau.add_argument(
        "--steps",
        type=int,
        help=f"steps of the run, in [{n_lo}, {n_hi:g}]: also say whether the end-of-training rise of the "
        "gradient norm (NEW-1, arXiv 2506.02285) is expected",
    )
    tau.add_argument(
        "--schedule", choices=RISE_SCHEDULES, default="cosine", help="LR schedule of the run (with --steps)"
    )
    tau.add_argument(
        "--final-lr-fraction", type=float, default=0.0, help="final LR / peak LR, in [0, 1] (with --steps)"
    )
    tau.add_argument("--json", action="store_true", help="print JSON instead of text")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", help="run store directory (default: $WDLIB_STORE or results/store)")
    runp = sub.add_parser(
        "run",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="train one configuration (or return its stored result)",
        description="Train one run and print a one-line JSON summary (final metrics, "
        "diverged_at, wall time, store key). An interrupted run continues "
        "from its last checkpoint. A stored result made by other code is "
        "trained again unless $WDLIB_STALE says otherwise.",
        epilog=_fields_epilog(),
    )
    runp.add_argument("config", help="a JSON or YAML file of configuration fields")
    runp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a field (VALUE parsed as JSON where it can be, else a string)",
    )
    runp.add_argument("--no-resume", dest="resume", action="store_false", help="ignore a checkpoint and start over")
    runp.add_argument("--resume", dest="resume", action="store_true", help="continue from a checkpoint (default)")
    runp.add_argument(
        "--rerun",
        action="store_true",
        help="train even when the store holds a current result (the new result replaces it)",
    )
    runp.add_argument("--device", default="auto", help=_DEVICES)
    runp.set_defaults(resume=True)
    sw = sub.add_parser(
        "sweep",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="train a grid of configurations and print a table",
        epilog=_fields_epilog(),
    )
    sw.add_argument("config", help="the base configuration (JSON or YAML)")
    sw.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="FIELD=V1,V2,...",
        required=True,
        help="a field and its values; repeat for a product grid",
    )
    sw.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a base field")
    sw.add_argument(
        "--workers", type=int, default=1, help=f"worker processes (single-threaded each), in [1, {_MAX_WORKERS}]"
    )
    sw.add_argument("--device", default="auto", help=_DEVICES)
    sw.add_argument(
        "--pack",
        choices=PACK_MODES,
        default=None,
        help="train runs that differ only in seed, lr and weight decay as one batched model: auto (default, "
        "or $WDLIB_PACK: on a GPU always, elsewhere never), always or never",
    )
    sw.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    ls = sub.add_parser(
        "runs",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="list the runs in the store (or forget some, or rebuild its index)",
        description="List the runs of an existing store (a path without one is an error), "
        "each marked stale when other code made it.",
        epilog=_ENV_HELP,
    )
    ls.add_argument("--scale", help="only this scale (smoke, full or test)")
    ls.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    what = ls.add_mutually_exclusive_group()
    what.add_argument("--forget", metavar="KEY", help="remove this run (its index row and result files)")
    what.add_argument("--all-stale", action="store_true", help="remove every stale run and print how many")
    what.add_argument(
        "--reindex",
        action="store_true",
        help="rebuild the index from the results/<key>.json files (checked against their hashes)",
    )
    return parser


# --- checking the arguments ----------------------------------------------------------------------------------

#: Ranges of the ``tau`` arguments: inside them every timescale and transferred value is a finite,
#: non-zero double (lr*wd*N and its transfers stay far from overflow and underflow).
_TAU_FLOAT_RANGE = (1e-50, 1e50)
_TAU_INT_RANGE = (1, 10**15)
_TAU_WIDTH_RANGE = (1, 10**15)
_DEVICES = "auto, cpu, cuda, cuda:N, mps"
_MAX_WORKERS = 1024


def _check_tau_args(args: argparse.Namespace) -> None:
    for flag, name in (("--lr", "lr"), ("--weight-decay", "weight_decay")):
        if getattr(args, name) is not None:
            check_real(flag, getattr(args, name), low=_TAU_FLOAT_RANGE[0], high=_TAU_FLOAT_RANGE[1])
    for flag, name in (
        ("--dataset-size", "dataset_size"),
        ("--batch-size", "batch_size"),
        ("--to-dataset-size", "to_dataset_size"),
        ("--to-batch-size", "to_batch_size"),
        ("--steps", "steps"),
    ):
        if getattr(args, name) is not None:
            check_integer(flag, getattr(args, name), low=_TAU_INT_RANGE[0], high=_TAU_INT_RANGE[1])
    for flag, name in (("--width", "width"), ("--to-width", "to_width")):
        if getattr(args, name) is not None:
            check_real(flag, getattr(args, name), low=_TAU_WIDTH_RANGE[0], high=_TAU_WIDTH_RANGE[1])
    if args.to_width is not None and args.width is None:
        raise ValueError("--to-width needs --width (the width the lr and weight decay were tuned at)")
    if args.width is not None and args.to_width is None:
        raise ValueError("--width needs --to-width (the width to transfer to)")
    if args.mup and args.width is None:
        raise ValueError("--mup needs --width and --to-width")
    check_real("--final-lr-fraction", args.final_lr_fraction, low=0.0, high=1.0)


def _check_device(device: str) -> str:
    """``device`` if it names a device that exists here: one of auto, cpu, cuda, cuda:N, mps."""
    m = re.fullmatch(r"auto|cpu|mps|cuda(?::(\d+))?", device)
    if m is None:
        raise ValueError(f"--device must be one of {_DEVICES}, got {device!r}")
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available here; use auto or cpu")
        if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
            raise ValueError(
                f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s), "
                f"cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps: MPS is not available here; use auto or cpu")
    return device


# --- the commands ----------------------------------------------------------------------------------------------


def _tau(args: argparse.Namespace) -> str:
    _check_tau_args(args)
    try:
        out = {
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "tau_iter": tau_iter(args.lr, args.weight_decay),
            "tau_epoch": tau_epoch(args.lr, args.weight_decay, args.dataset_size, args.batch_size),
        }
        target = None
        if (
            args.to_dataset_size is not None
            or args.to_batch_size is not None
            or args.to_width is not None
            or args.width is not None
            or args.mup
        ):
            target = transfer_weight_decay(
                args.lr,
                args.weight_decay,
                args.dataset_size,
                args.batch_size,
                to_dataset_size=args.to_dataset_size,
                to_batch_size=args.to_batch_size,
                width=args.width,
                to_width=args.to_width,
                mup=args.mup,
            )
            out["transfer"] = target.to_dict()
        rise = None
        if args.steps is not None:
            rise = gradient_rise(args.lr, args.weight_decay, args.steps, args.schedule, args.final_lr_fraction)
            out["gradient_rise"] = rise.to_dict()
    except (ValueError, ArithmeticError) as err:  # the library's own checks (and any overflow they let through)
        raise ValueError(f"tau: {err}") from err
    if args.json:
        return json.dumps(out)
    lines = [
        f"tau_iter  = {out['tau_iter']:.6g} iterations  (1/(lr*wd))",
        f"tau_epoch = {out['tau_epoch']:.6g} epochs  (B/(lr*wd*N), N={args.dataset_size}, B={args.batch_size})",
    ]
    if target is not None:
        where = [f"N={target.dataset_size}", f"B={target.batch_size}"]
        if target.width is not None:
            where.append(f"width={target.width:g}{' (muP)' if args.mup else ''}")
        lines += [
            f"at {', '.join(where)}: lr = {target.lr:.6g}, weight_decay = {target.weight_decay:.6g}",
            f"  (tau_epoch kept at {target.tau_epoch:.6g} epochs; tau_iter = {target.tau_iter:.6g} iterations)",
        ]
    if rise is not None:
        lines += [
            f"gradient-norm rise ({rise.schedule} LR, final {rise.final_lr_fraction:g}, {rise.steps} steps): "
            f"tau_iter = {rise.tau_fraction:.3g} of the run; rise "
            f"{'expected' if rise.rise_expected else 'not expected'}"
            f" (rule of thumb: tau_iter <= steps/10 and a falling LR)",
            f"  steady ||g||/||w|| = sqrt(2*wd/lr_t) = {rise.ratio_peak:.6g} at the peak LR",
        ]
        if rise.track_step is None:
            lines.append("  tau_iter is longer than the run: the steady state is never reached")
        else:
            lines.append(
                f"  tracked until step {rise.track_step} (lr_t = {rise.track_lr_fraction:.3g} x peak): "
                f"{rise.ratio_at_track:.6g}, {rise.rise_factor:.3g} x the peak value"
            )
        track = (
            "never reached" if rise.corrected_track_step is None else f"tracked until step {rise.corrected_track_step}"
        )
        lines.append(f"  corrected decay (wd_t = wd*lr_t/lr): flat at {rise.corrected_ratio:.6g}, {track}")
    return "\n".join(lines)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _read_config(path: str) -> dict[str, Any]:
    """The mapping of fields in a JSON (``.json``) or YAML (anything else) file, or a one-line ValueError."""
    yaml = require("yaml", purpose="reading a YAML configuration")

    p = Path(path)
    if not p.exists():
        raise ValueError(f"config file {path!r} does not exist")
    if p.is_dir():
        raise ValueError(f"config file {path!r} is a directory, not a JSON or YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"config file {path!r} is not UTF-8 text (byte {err.start}): is it a JSON or YAML file?"
        ) from None
    if p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"config file {path!r}: JSON syntax error at line {err.lineno}, column {err.colno}: {err.msg}"
            ) from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = " ".join(str(err.problem or err.context or "not valid YAML").split())
            if "unhashable key" in problem:
                problem += " (keys must be field names)"
            raise ValueError(f"config file {path!r}: YAML syntax error{where}: {problem}") from None
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path!r}: YAML error: {' '.join(str(err).split())}") from None
    if data is None:
        raise ValueError(f"config file {path!r} is empty; it must hold a mapping of fields (field: value)")
    if not isinstance(data, dict):
        raise ValueError(
            f"config file {path!r} must hold a mapping of fields (field: value), got a {type(data).__name__}"
        )
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ValueError(
            f"config file {path!r}: keys must be field names, got {short_repr(bad[0])} "
            f"({type(bad[0]).__name__}); `wdlib run --help` lists the fields"
        )
    return data


def _load_config(path: str, overrides: list[str]) -> dict[str, Any]:
    data = _read_config(path)
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        data[name.strip()] = _value(value)
    return data


def _grid(items: list[str]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--grid expects FIELD=V1,V2,..., got {item!r}")
        if name in grid:
            raise ValueError(f"--grid {name} is given twice; list all its values once, as {name}=V1,V2,...")
        grid[name] = [_value(v) for v in values.split(",") if v.strip() != ""]
        if not grid[name]:
            raise ValueError(f"--grid {name}= has no values; it expects FIELD=V1,V2,...")
    return grid


def _optimizer_label(config: dict[str, Any]) -> str:
    """``name(rule)`` of a stored configuration's optimizer, whether stored as a spec or in the old flat fields."""
    spec = config.get("optimizer")
    if not isinstance(spec, dict):
        try:
            spec = RunConfig.from_dict(config).optimizer
        except ValueError:  # a row this code cannot rebuild: show what it says
            spec = {"name": spec, "decay": config.get("decay")}
    return f"{spec.get('name')}({spec.get('decay')})"


def _list_runs(args: argparse.Namespace) -> None:
    if args.scale is not None and args.scale not in SCALES:
        raise ValueError(f"--scale must be one of {', '.join(SCALES)}, got {args.scale!r}")
    store = Store(args.store, create=False)
    if args.forget is not None:
        store.forget(args.forget)
        print(f"forgot run {args.forget} in {store.root}")
        return
    if args.all_stale:
        print(f"forgot {store.forget_stale()} stale run(s) in {store.root}")
        return
    if args.reindex:
        print(f"reindexed {store.reindex()} run(s) from {store.root / 'results'}")
        return
    rows = store.list(args.scale)
    if args.json:
        print(json.dumps(rows))
        return
    for r in rows:
        c, s = r["config"], r["summary"]
        loss = s["final"].get("val_loss")
        print(
            f"{r['key']}  {r['scale']:<5s}  {r['status']:<8s}  {c['data']}/{c['model']}/{_optimizer_label(c)}"
            f" lr={c['lr']:g} wd={c['weight_decay']:g} steps={c['steps']}  "
            f"val_loss={'n/a' if loss is None else f'{loss:.4g}'}  {s['wall_time']:.1f}s"
            f"{'  stale' if r['stale'] else ''}"
        )
    stale = sum(r["stale"] for r in rows)
    note = f" ({stale} stale: made by other code; `wdlib runs --all-stale` removes them)" if stale else ""
    print(f"{len(rows)} run(s) in {store.root}{note}")


def _dispatch(args: argparse.Namespace) -> None:
    if args.command == "tau":
        print(_tau(args))
    elif args.command == "run":
        device = _check_device(args.device)
        cfg = RunConfig.from_dict(_load_config(args.config, args.set))
        result = run(cfg, Store(args.store), resume=args.resume, device=device, rerun=args.rerun)
        print(json.dumps({"key": result.info["key"], "cached": result.info.get("cached", False), **result.summary()}))
    elif args.command == "sweep":
        if not 1 <= args.workers <= _MAX_WORKERS:
            raise ValueError(f"--workers must be an integer in [1, {_MAX_WORKERS}], got {short_repr(args.workers)}")
        device = _check_device(args.device)
        grid = _grid(args.grid)
        base = RunConfig.from_dict(_load_config(args.config, args.set))
        table = sweep(base, grid, Store(args.store), workers=args.workers, device=device, pack=args.pack)
        print(table.to_json(orient="records") if args.json else table.to_string(index=False))
    elif args.command == "runs":
        _list_runs(args)


def _error(message: str, code: int) -> NoReturn:
    """Print ``wdlib: error: MESSAGE`` (one line) on stderr and exit with ``code``."""
    print(f"wdlib: error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(code)


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Show warnings as ``wdlib: warning: ...`` lines (not Python's two-line source excerpt)."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        print(f"wdlib: warning: {' '.join(str(message).split())}", file=sys.stderr)

    saved = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = saved


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; 0 on success.

    Every error a user can cause (a bad argument, configuration file or field, a missing dataset, a
    store that is not there) ends in one line ``wdlib: error: ...`` on stderr and ``SystemExit(2)``
    (``1`` for a failing file system or store index, 130 on Ctrl-C). Anything else is a bug: its
    traceback, then ``wdlib: internal error (a bug): ...``, and ``SystemExit(3)``.
    """
    parser = _parser()
    args = parser.parse_args(argv)  # argparse's own errors: usage, then one "error:" line, exit 2
    try:
        with _warnings_as_lines():
            _dispatch(args)
    except KeyboardInterrupt:
        _error("interrupted", 130)
    except (ValueError, OverflowError, DataNotFoundError) as err:
        _error(str(err), 2)
    except sqlite3.Error as err:
        _error(f"run store index: {err}", 1)
    except OSError as err:
        _error(str(err), 1)
    except Exception:
        traceback.print_exc()
        print("wdlib: internal error (a bug): please report it with the traceback above", file=sys.stderr)
        raise SystemExit(3) from None
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
