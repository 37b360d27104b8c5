"""Command line: ``python -m wdlib {tau,run,sweep,runs}`` (also installed as ``wdlib``).

    wdlib tau --lr 1e-3 --weight-decay 0.1 --dataset-size 50000 --batch-size 128 [--to-dataset-size N ...]
    wdlib run CONFIG.yaml [--store DIR] [--no-resume] [--device cuda] [--set steps=500 ...]
    wdlib sweep CONFIG.yaml --grid lr=1e-3,3e-3 --grid weight_decay=0.01,0.1 [--workers 2]
    wdlib runs [--store DIR] [--scale smoke]

Configurations are JSON or YAML files (read with ``yaml.safe_load``: data, never code) whose fields
are those of :class:`wdlib.config.RunConfig`; ``wdlib run --help`` lists them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import FIELD_HELP
from .timescale import tau_epoch, tau_iter, transfer_weight_decay


def _fields_epilog() -> str:
    width = max(len(k) for k in FIELD_HELP)
    return "configuration fields:\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in FIELD_HELP.items())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wdlib", description="Weight Decay, Reproduced: library tools.")
    parser.add_argument("--version", action="version", version=f"wdlib {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    tau = sub.add_parser(
        "tau", help="EMA timescales of AdamW and the weight decay that keeps them at another size",
        description="Print tau_iter = 1/(lr*wd) in iterations and tau_epoch = B/(lr*wd*N) in epochs "
                    "(Wang & Aitchison, arXiv 2405.13698); with --to-dataset-size, --to-batch-size or "
                    "--to-width, the weight decay that keeps tau_epoch there.")
    tau.add_argument("--lr", type=float, required=True, help="learning rate (peak)")
    tau.add_argument("--weight-decay", type=float, required=True, help="lambda, lr-multiplied (torch AdamW)")
    tau.add_argument("--dataset-size", type=int, required=True, help="N, training samples (or tokens/context)")
    tau.add_argument("--batch-size", type=int, required=True, help="B, samples per step")
    tau.add_argument("--to-dataset-size", type=int, help="N at the target")
    tau.add_argument("--to-batch-size", type=int, help="B at the target")
    tau.add_argument("--width", type=float, help="width (fan_in) of the tuned model")
    tau.add_argument("--to-width", type=float, help="width (fan_in) at the target; needs --width")
    tau.add_argument("--mup", action="store_true", help="hidden-layer LR scales like 1/width (muP)")
    tau.add_argument("--json", action="store_true", help="print JSON instead of text")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", help="run store directory (default: $WDLIB_STORE or results/store)")
    runp = sub.add_parser("run", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                          help="train one configuration (or return its stored result)",
                          description="Train one run and print a one-line JSON summary (final metrics, "
                                      "diverged_at, wall time, store key). An interrupted run continues "
                                      "from its last checkpoint.", epilog=_fields_epilog())
    runp.add_argument("config", help="a JSON or YAML file of configuration fields")
    runp.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="override a field (VALUE parsed as JSON where it can be, else a string)")
    runp.add_argument("--no-resume", dest="resume", action="store_false",
                      help="ignore a checkpoint and start over")
    runp.add_argument("--resume", dest="resume", action="store_true", help="continue from a checkpoint (default)")
    runp.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    runp.set_defaults(resume=True)
    sw = sub.add_parser("sweep", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                        help="train a grid of configurations and print a table", epilog=_fields_epilog())
    sw.add_argument("config", help="the base configuration (JSON or YAML)")
    sw.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...", required=True,
                    help="a field and its values; repeat for a product grid")
    sw.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a base field")
    sw.add_argument("--workers", type=int, default=1, help="worker processes (single-threaded each)")
    sw.add_argument("--device", default="auto")
    sw.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    ls = sub.add_parser("runs", parents=[common], help="list the runs in the store")
    ls.add_argument("--scale", help="only this scale")
    ls.add_argument("--json", action="store_true")
    return parser


def _tau(args: argparse.Namespace) -> str:
    out = {"lr": args.lr, "weight_decay": args.weight_decay,
           "tau_iter": tau_iter(args.lr, args.weight_decay),
           "tau_epoch": tau_epoch(args.lr, args.weight_decay, args.dataset_size, args.batch_size)}
    target = None
    if args.to_dataset_size is not None or args.to_batch_size is not None or args.to_width is not None \
            or args.width is not None or args.mup:
        target = transfer_weight_decay(args.lr, args.weight_decay, args.dataset_size, args.batch_size,
                                       to_dataset_size=args.to_dataset_size, to_batch_size=args.to_batch_size,
                                       width=args.width, to_width=args.to_width, mup=args.mup)
        out["transfer"] = target.to_dict()
    if args.json:
        return json.dumps(out)
    lines = [f"tau_iter  = {out['tau_iter']:.6g} iterations  (1/(lr*wd))",
             f"tau_epoch = {out['tau_epoch']:.6g} epochs  (B/(lr*wd*N), N={args.dataset_size}, B={args.batch_size})"]
    if target is not None:
        where = [f"N={target.dataset_size}", f"B={target.batch_size}"]
        if target.width is not None:
            where.append(f"width={target.width:g}{' (muP)' if args.mup else ''}")
        lines += [f"at {', '.join(where)}: lr = {target.lr:.6g}, weight_decay = {target.weight_decay:.6g}",
                  f"  (tau_epoch kept at {target.tau_epoch:.6g} epochs; tau_iter = {target.tau_iter:.6g} iterations)"]
    return "\n".join(lines)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _load_config(path: str, overrides: list[str]) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.exists():
        raise ValueError(f"config file {path!r} does not exist")
    text = p.read_text()
    data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of fields")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        name, value = item.split("=", 1)
        data[name.strip()] = _value(value)
    return data


def _grid(items: list[str]) -> dict[str, list[Any]]:
    grid = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--grid expects FIELD=V1,V2,..., got {item!r}")
        name, values = item.split("=", 1)
        grid[name.strip()] = [_value(v) for v in values.split(",") if v != ""]
    return grid


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "tau":
            if args.to_width is not None and args.width is None:
                parser.error("--to-width needs --width")
            print(_tau(args))
        elif args.command == "run":
            from .config import RunConfig
            from .runs import Store, run

            cfg = RunConfig.from_dict(_load_config(args.config, args.set))
            result = run(cfg, Store(args.store), resume=args.resume, device=args.device)
            print(json.dumps({"key": result.info["key"], "cached": result.info.get("cached", False),
                              **result.summary()}))
        elif args.command == "sweep":
            from .config import RunConfig
            from .runs import Store, sweep

            base = RunConfig.from_dict(_load_config(args.config, args.set))
            table = sweep(base, _grid(args.grid), Store(args.store), workers=args.workers, device=args.device)
            print(table.to_json(orient="records") if args.json else table.to_string(index=False))
        elif args.command == "runs":
            from .runs import Store

            rows = Store(args.store).list(args.scale)
            if args.json:
                print(json.dumps(rows))
            else:
                for r in rows:
                    c, s = r["config"], r["summary"]
                    loss = s["final"].get("val_loss")
                    print(f"{r['key']}  {r['scale']:<5s}  {r['status']:<8s}  {c['data']}/{c['model']}/{c['optimizer']}"
                          f"({c['decay']}) lr={c['lr']:g} wd={c['weight_decay']:g} steps={c['steps']}  "
                          f"val_loss={'n/a' if loss is None else f'{loss:.4g}'}  {s['wall_time']:.1f}s")
                print(f"{len(rows)} run(s) in {Store(args.store).root}")
    except ValueError as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
