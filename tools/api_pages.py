"""The book's API reference: one page per public wdlib module, generated from the package itself.

    python tools/api_pages.py DEST      # write the pages into DEST (tools/build_book.py: _build/src/book/api)

The module list has one source, the package: :func:`modules` walks ``wdlib`` (``pkgutil.walk_packages``)
and keeps every module whose dotted name has no part starting with an underscore, so a new module gets a
page without anyone listing it. Each page is MyST holding an ``{eval-rst}`` block with ``.. automodule::``
(Sphinx autodoc reads the docstrings; napoleon reads their ``Args:``/``Returns:`` sections). A name that a
module re-exports from another documented module is linked there, not documented twice. ``_toc.yml``
lists ``book/api/index`` with the pages as its sections by a glob; the committed ``book/api/index.md``
holds the prose and the marker where :func:`write_pages` puts the table of modules, grouped by layer (the
import-linter layers of ``pyproject.toml``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- modules -->"
LAYERS = (
    ("Core", "`pip install wdlib`"),
    ("Engine", '`pip install "wdlib[engine]"`'),
    ("Book", '`pip install "wdlib[notebooks]"`'),
)


@functools.cache
def modules() -> tuple[str, ...]:
    """Every public module of wdlib, the package itself first, then in dotted-name order."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import wdlib

    found = [
        m.name
        for m in pkgutil.walk_packages(wdlib.__path__, "wdlib.")
        if not any(part.startswith("_") for part in m.name.split("."))
    ]
    return ("wdlib", *sorted(found))


def layer_of(module: str, pyproject: Path = ROOT / "pyproject.toml") -> int:
    """The index of ``module``'s layer in :data:`LAYERS` (0 core, 1 engine, 2 book), from the import-linter
    layers contract; a module not named there takes its package's layer (``wdlib.experiments.llm``), and
    the package ``wdlib`` itself, which re-exports the core, counts as core."""
    names = _layers(pyproject)
    if module == "wdlib":
        return 0
    parts = module.split(".")
    for k in range(len(parts), 1, -1):
        prefix = ".".join(parts[:k])
        for i, layer in enumerate(names):
            if prefix in layer:
                return i
    raise ValueError(f"{module} is in none of pyproject.toml's import-linter layers")


@functools.cache
def _layers(pyproject: Path) -> list[list[str]]:
    """The modules of each import-linter layer, core first (``pyproject.toml`` lists the top layer first)."""
    config = tomllib.loads(pyproject.read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in config if c.get("type") == "layers")
    return [[n.strip(" ()") for n in layer.split(":")] for layer in reversed(layers)]


def _summary(doc: str | None) -> str:
    """A docstring's first paragraph as MyST for the index's table: reST roles as MyST roles, double
    backquotes as single ones, pipes escaped."""
    lines = inspect.cleandoc(doc or "").split("\n\n")[0].split("\n")
    text = " ".join(line.strip() for line in lines).removesuffix(" ::")  # a literal block follows
    text = re.sub(r":(?:py:)?(\w+):`", r"{py:\1}`", text).replace("``", "`")
    return text.replace("|", "\\|")


def _reexports(name: str) -> list[tuple[str, str, str]]:
    """``(name, home module, role)`` for each name in the module's ``__all__`` that another documented module
    defines (or is a documented module): those are linked, not documented twice."""
    mod = importlib.import_module(name)
    public = set(modules())
    out = []
    for attr in getattr(mod, "__all__", []):
        obj = getattr(mod, attr)
        if inspect.ismodule(obj):
            if obj.__name__ in public:
                out.append((attr, obj.__name__, "mod"))
            continue
        home = getattr(obj, "__module__", None)
        if home != name and home in public and getattr(obj, "__qualname__", None) == attr:
            out.append((attr, home, "class" if inspect.isclass(obj) else "func"))
    return out


def page(name: str) -> str:
    """The MyST page of one module: its name as the title, then autodoc's rendering of the module."""
    again = _reexports(name)
    options = [":members:"]
    if again:
        options.append(":exclude-members: " + ", ".join(a for a, _, _ in again))
    lines = [f"# `{name}`", "", "```{eval-rst}", f".. automodule:: {name}", *(f"   {o}" for o in options)]
    if again:
        lines += ["", "Also available here, documented where they are defined:", ""]
        lines += [
            f"- :py:{role}:`{attr} <{home}>`" if role == "mod" else f"- :py:{role}:`{attr} <{home}.{attr}>`"
            for attr, home, role in again
        ]
    lines += ["```", ""]
    return "\n".join(lines)


def index_table() -> str:
    """The index's table of modules, by layer: module (linked to its page), and its docstring's summary."""
    by_layer: dict[int, list[str]] = {}
    for name in modules():
        by_layer.setdefault(layer_of(name), []).append(name)
    lines: list[str] = []
    for i, (layer, install) in enumerate(LAYERS):
        lines += [f"**{layer}** ({install})", "", "| module | what it holds |", "|---|---|"]
        for name in by_layer.get(i, []):
            summary = _summary(importlib.import_module(name).__doc__)
            lines.append(f"| [`{name}`]({name}.md) | {summary} |")
        lines.append("")
    return "\n".join(lines)


def write_pages(dest: Path) -> list[Path]:
    """Write one page per module into ``dest`` (``<module>.md``) and fill the table of modules into
    ``dest/index.md`` (a copy of ``book/api/index.md``, with its marker). Returns the module pages."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    index = dest / "index.md"
    text = index.read_text() if index.exists() else (ROOT / "book" / "api" / "index.md").read_text()
    if MARKER not in text:
        raise ValueError(f"{index} lacks the marker {MARKER}")
    index.write_text(text.replace(MARKER, index_table()))
    written = []
    for name in modules():
        path = dest / f"{name}.md"
        path.write_text(page(name))
        written.append(path)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.splitlines()[2].strip())
    for p in write_pages(Path(sys.argv[1])):
        print(p)
