"""Command line: ``python -m wdlib tau ...`` (also installed as ``wdlib``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import __version__
from .timescale import tau_epoch, tau_iter, transfer_weight_decay


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "tau":
            if args.to_width is not None and args.width is None:
                parser.error("--to-width needs --width")
            print(_tau(args))
    except ValueError as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
