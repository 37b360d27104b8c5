"""The shape of the library: the core imports with torch and numpy alone, and no wdlib module imports another
inside a function (the layers and the absence of cycles are import-linter's contracts in pyproject.toml, checked
by `make lint`, part of `make test`)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "wdlib"
PYPROJECT = ROOT.parent / "pyproject.toml"
_CONTRACTS = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
#: The core's modules: those the "torch and numpy only" contract names (pyproject.toml, the one place).
CORE = tuple(m.removeprefix("wdlib.") for c in _CONTRACTS if c["type"] == "forbidden" for m in c["source_modules"])
#: Function-level imports of wdlib modules that are allowed, and why. Empty: every import is at a module's top.
ALLOWED_NESTED: dict[tuple[str, str], str] = {}


def _nested_wdlib_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if (
                in_function
                and isinstance(child, ast.ImportFrom)
                and (child.level > 0 or (child.module or "").startswith("wdlib"))
            ):
                found.append((child.lineno, "." * child.level + (child.module or "")))
            elif in_function and isinstance(child, ast.Import):
                found.extend((child.lineno, a.name) for a in child.names if a.name.split(".")[0] == "wdlib")
            visit(child, inside)

    visit(tree, False)
    return found


def test_no_function_level_imports_of_wdlib_modules():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).as_posix()
        bad += [
            f"{rel}:{line} imports {mod}"
            for line, mod in _nested_wdlib_imports(path)
            if (rel, mod) not in ALLOWED_NESTED
        ]
    assert not bad, "import wdlib modules at the top of the module:\n" + "\n".join(bad)


def test_the_detector_finds_a_nested_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "import os\nfrom . import a\n\ndef f():\n    from .b import c\n    import wdlib.optim\n    import json\n"
    )
    assert _nested_wdlib_imports(f) == [(5, ".b"), (6, "wdlib.optim")]


_CORE_ONLY = textwrap.dedent("""
    import importlib, sys
    BLOCKED = {"sklearn", "scipy", "pandas", "matplotlib", "mnist1d", "yaml", "tqdm", "ipywidgets", "IPython",
               "tiktoken", "papermill"}

    for name in BLOCKED:  # as if not installed: `import name` raises ModuleNotFoundError
        sys.modules[name] = None
    import torch
    import wdlib
    engine = sorted(m for m in sys.modules if m.startswith("wdlib.") and m.split(".")[1] not in CORE)
    assert not engine, f"import wdlib loaded engine/book modules: {engine}"
    for name in CORE:
        importlib.import_module(f"wdlib.{name}")
    model = torch.nn.Linear(4, 2)
    opt = wdlib.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    model(torch.ones(3, 4)).sum().backward()
    opt.step()
    print("core ok", wdlib.tau_iter(lr=1e-3, weight_decay=0.1))
    # the `wdlib` command is installed with the core: its timescale calculator needs nothing more
    from wdlib.cli import main
    main(["tau", "--lr", "1e-3", "--weight-decay", "0.1", "--dataset-size", "50000", "--batch-size", "128"])
""")


def test_the_core_and_the_timescale_command_work_with_torch_and_numpy_alone():
    code = f"CORE = {CORE!r}\n" + _CORE_ONLY
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "core ok" in out.stdout and "tau_epoch = 25.6 epochs" in out.stdout


def test_the_core_is_the_bottom_layer_and_every_module_has_a_layer():
    (layers,) = [c["layers"] for c in _CONTRACTS if c["type"] == "layers"]
    bottom = {m.strip().strip("()").removeprefix("wdlib.") for m in layers[-1].split(":")}
    assert set(CORE) == bottom
    named = {m.strip().strip("()") for line in layers for m in line.split(":")}
    modules = {f"wdlib.{p.stem}" for p in ROOT.glob("*.py") if p.stem != "__init__"} | {"wdlib.experiments"}
    assert modules <= named, f"modules in no layer of the contract: {sorted(modules - named)}"
