"""Report wdlib's module graph: layers, upward imports, cycles, function-level imports, largest functions.

    python tools/module_graph.py [path/to/wdlib]

Reads the source with :mod:`ast` (nothing is imported), so it also reports on an older checkout. Every
import of a wdlib module counts, at the top of a module or inside a function. The layers are those of the
import-linter layers contract in pyproject.toml (read from there): core (torch and numpy), engine (data,
models, training, the run store, the CLI), book (claims, plots, chapters); a module it does not name counts
as engine.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYER_NAMES = ("book", "engine", "core")  # top to bottom, as the layers contract lists them
RANK = {"core": 0, "engine": 1, "book": 2}


def contract_layers(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """``{module: layer}`` from the import-linter layers contract in ``pyproject.toml`` (the one place the layers
    are written): its first line is the book, then the engine, then the core; optional ``(module)`` entries count."""
    contracts = tomllib.loads(pyproject.read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    out = {}
    for name, line in zip(LAYER_NAMES, layers):
        for module in line.split(":"):
            out[module.strip().strip("()")] = name
    return out


def layer(module: str, layers: dict[str, str]) -> str:
    """The layer of ``module``: that of the contract's entry it is (or lies inside); the package's own
    ``__init__`` is the core (``import wdlib`` loads the core only); anything unnamed counts as engine."""
    if module == "wdlib":
        return "core"
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in layers:
            return layers[".".join(parts[:n])]
    return "engine"


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(importer: str, is_package: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "wdlib"]
    if node.level == 0:
        base = node.module or ""
        if base.split(".")[0] != "wdlib":
            return []
    else:
        pkg = importer.split(".") if is_package else importer.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([node.module] if node.module else []))
    return [base] if node.module else [f"{base}.{a.name}" for a in node.names]


def main(root: Path) -> None:
    layers = contract_layers()
    modules = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    nested: list[tuple[str, int, str]] = []
    functions: list[tuple[int, str]] = []
    for mod, path in modules.items():
        tree = ast.parse(path.read_text())
        parents: dict[ast.AST, ast.AST] = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{mod}.{node.name} ({path.name}:{node.lineno})"))
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in resolve(mod, path.name == "__init__.py", node):
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != mod:
                    edges[mod].add(target)
                    p = parents.get(node)
                    while p is not None and not isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        p = parents.get(p)
                    if p is not None:
                        nested.append((mod, node.lineno, target))
    upward = sorted((a, b) for a, bs in edges.items() for b in bs if RANK[layer(b, layers)] > RANK[layer(a, layers)])
    # cycles: strongly connected components of more than one module (Tarjan)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    sccs: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in edges:
        if v not in index:
            strong(v)
    # a package imports its submodules and they import it back only through __init__: not a design cycle
    print(f"modules: {len(modules)}  imports between them: {sum(map(len, edges.values()))}")
    for name in RANK:
        print(f"  {name}: {', '.join(sorted(m for m in modules if layer(m, layers) == name))}")
    print(f"import cycles (strongly connected groups): {len(sccs)}")
    for comp in sccs:
        print("  " + " <-> ".join(comp))
    print(f"upward imports (a lower layer importing a higher one): {len(upward)}")
    for a, b in upward:
        print(f"  {a} ({layer(a, layers)}) -> {b} ({layer(b, layers)})")
    print(f"function-level imports of wdlib modules: {len(nested)}")
    for mod, line, target in nested:
        print(f"  {mod}:{line} -> {target}")
    print("largest functions (lines):")
    for n, name in sorted(functions, reverse=True)[:10]:
        print(f"  {n:4d}  {name}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "wdlib").resolve())
