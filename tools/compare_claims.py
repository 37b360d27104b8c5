"""Compare two builds' claims records number by number: which evidence is identical, which moved, and by how much.

    python tools/compare_claims.py OLD_DIR NEW_DIR [--rel 1e-9]

Each directory holds ``<chapter>.claims.json`` files (``_build/results`` after ``make book``). Every number
under ``claims`` (verdicts, key numbers, test measurements with their per-seed values, spreads and margins,
sanity values, evidence) is compared; the environment (date, machine, versions) is not. A number counts as
float-level when it differs by at most ``--rel`` relative to its size. Exit status 0 when everything is
identical or float-level, 1 otherwise. Used to check that a refactoring left the chapters' results alone.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def _walk(a: Any, b: Any, path: str, out: list[tuple[str, str, Any, Any]], rel: float) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(("different", f"{path}.{k}", a.get(k, "<absent>"), b.get(k, "<absent>")))
            else:
                _walk(a[k], b[k], f"{path}.{k}", out, rel)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(("different", f"{path}[len]", len(a), len(b)))
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, f"{path}[{i}]", out, rel)
    elif (
        isinstance(a, (int, float))
        and isinstance(b, (int, float))
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        if a == b or (math.isnan(a) and math.isnan(b)):
            return
        kind = "float-level" if abs(a - b) <= rel * max(abs(a), abs(b)) else "different"
        out.append((kind, path, a, b))
    elif a != b:
        out.append(("different", path, a, b))


def compare(old: Path, new: Path, rel: float = 1e-9) -> list[tuple[str, str, Any, Any]]:
    """Every difference between the claims of the two directories' chapter records."""
    out: list[tuple[str, str, Any, Any]] = []
    names = sorted({p.name for p in old.glob("*.claims.json")} | {p.name for p in new.glob("*.claims.json")})
    for name in names:
        if not (old / name).exists() or not (new / name).exists():
            out.append(("different", name, (old / name).exists(), (new / name).exists()))
            continue
        a, b = (json.loads((d / name).read_text()) for d in (old, new))
        chapter = name.removesuffix(".claims.json")
        for field in ("scale", "seed"):
            _walk(a.get(field), b.get(field), f"{chapter}.{field}", out, rel)
        ca = {c["claim"]: c for c in a.get("claims", [])}
        cb = {c["claim"]: c for c in b.get("claims", [])}
        _walk(ca, cb, chapter, out, rel)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--rel", type=float, default=1e-9, help="relative difference that counts as float-level")
    args = p.parse_args(argv)
    diffs = compare(args.old, args.new, args.rel)
    for kind, path, a, b in diffs:
        print(f"{kind:12s} {path}: {a!r} -> {b!r}")
    n_files = len(list(args.old.glob("*.claims.json")))
    different = sum(kind == "different" for kind, *_ in diffs)
    print(f"{n_files} chapters compared: {len(diffs) - different} float-level differences, {different} different")
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
