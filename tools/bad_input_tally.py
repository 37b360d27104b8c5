#!/usr/bin/env python
"""Tally how the library answers the bad inputs of ``tests/engine/test_bad_inputs.py``: clear, misleading,
traceback, silent.

    .venv/bin/python tools/bad_input_tally.py [--verbose] [--json]

Runs every case of the table (``CASES``) with its ``outcome`` classifier, without pytest, and prints
the count of each class and the ids of the cases that are not ``clear`` (``--verbose``: with the
message the user saw). The wdlib imported is the one of the checkout this script sits in (its
directory's parent goes first on ``sys.path``), so that running a copy of it, and of the test file,
inside a git worktree of an older commit tallies that commit's code: the before/after of a change.
A case that crashes the harness itself counts as ``traceback``; the script never stops on one.
Exit status 0 whatever the tally (it reports, it does not judge).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_cases(root: Path = ROOT):
    """The ``tests/engine/test_bad_inputs.py`` module of ``root`` (with its ``CASES``, ``outcome`` and ``CLASSES``)."""
    sys.path.insert(0, str(root))  # this checkout's wdlib, not an installed one
    spec = importlib.util.spec_from_file_location(
        "wdlib_bad_inputs_table", root / "tests" / "engine" / "test_bad_inputs.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def tally(module) -> list[dict[str, str]]:
    """One record per case: id, kind, class, message."""
    records = []
    for case in module.CASES:
        try:
            verdict, message = module.outcome(case)
        except BaseException as exc:  # noqa: BLE001 -- the tally must finish whatever a case does
            if isinstance(exc, KeyboardInterrupt):
                raise
            verdict, message = "traceback", f"the harness failed: {type(exc).__name__}: {exc}"
        records.append({"id": case.id, "kind": case.kind, "class": verdict, "message": " ".join(str(message).split())})
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="print the message of every non-clear case")
    parser.add_argument("--json", action="store_true", help="print the records as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    module = load_cases()
    records = tally(module)
    if args.json:
        print(json.dumps(records, indent=1))
        return 0
    counts = Counter(r["class"] for r in records)
    classes = getattr(module, "CLASSES", ("clear", "misleading", "traceback", "silent"))
    import wdlib

    print(f"{len(records)} bad inputs against wdlib at {Path(wdlib.__file__).parent}")
    for name in classes:
        print(f"  {name:<10s} {counts.get(name, 0):4d}")
    by_kind = Counter((r["kind"], r["class"]) for r in records)
    for kind in sorted({r["kind"] for r in records}):
        print(f"  [{kind}] " + ", ".join(f"{name} {by_kind.get((kind, name), 0)}" for name in classes))
    for name in classes[1:]:
        ids = [r for r in records if r["class"] == name]
        if ids:
            print(f"{name}:")
            for r in ids:
                print(f"  {r['id']}" + (f": {r['message'][:300]}" if args.verbose else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
