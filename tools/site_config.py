"""Where the book lives, set once: the Colab install cell of every chapter, written from ``_config.yml``.

    python tools/site_config.py           rewrite the install cell (tag ``colab``) of every chapter named in _toc.yml
    python tools/site_config.py --check   exit 1, naming the chapters, if any install cell differs from what it writes

The repository's address and branch are set once, in ``_config.yml`` (``repository.url``, ``repository.branch``);
the release is ``wdlib/_version.py``'s version. From them:

- each chapter's install cell (Colab opens the committed notebook, so the cell is written into the source
  and checked by ``tests/book/test_site.py`` and by the book build): on Colab, and only there, it installs
  ``wdlib[notebooks] @ git+<url>@v<version>`` -- the tagged release, never a moving branch; Colab keeps its
  own torch (the ``notebooks`` extra does not pin torch, and torch is already installed there);
- the built book's launch buttons (Colab) and repository links point at the same tag: the build writes
  ``repository.branch: v<version>`` into its own copy of ``_config.yml`` (:func:`built_config`).

The publishing workflow (``.github/workflows/book.yml``) creates the tag ``v<version>`` when it deploys.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TAG = "colab"  # the install cell's tag; exactly one per chapter (tests/book/test_notebooks.py)
_URL = re.compile(r"https://github\.com/(?P<owner>[A-Za-z0-9][A-Za-z0-9-]*)/(?P<repo>[A-Za-z0-9_.-]+)")
_VERSION = re.compile(r'^__version__\s*=\s*"(?P<v>[0-9]+\.[0-9]+\.[0-9]+(?:[.+-][0-9A-Za-z.]+)?)"\s*$', re.M)


@dataclass(frozen=True)
class Site:
    """The book's home: a GitHub repository ``url`` (``https://github.com/<owner>/<repo>``), the ``branch`` the
    workflow builds and deploys from, and the wdlib ``version`` whose tag ``v<version>`` readers install."""

    url: str
    branch: str
    version: str

    @property
    def owner(self) -> str:
        return _URL.fullmatch(self.url).group("owner")  # type: ignore[union-attr]

    @property
    def repo(self) -> str:
        return _URL.fullmatch(self.url).group("repo")  # type: ignore[union-attr]

    @property
    def tag(self) -> str:
        return f"v{self.version}"

    def requirement(self, source: str | None = None) -> str:
        """The pip requirement of the install cell: the ``notebooks`` extra of wdlib from ``source`` (default: the
        repository at the release tag, ``git+<url>@v<version>``)."""
        return f"wdlib[notebooks] @ {source or f'git+{self.url}@{self.tag}'}"


def load_site(root: Path = ROOT) -> Site:
    """The :class:`Site` that ``root``'s ``_config.yml`` and ``wdlib/_version.py`` set.

    Raises ``ValueError`` naming the setting when ``repository.url`` is not ``https://github.com/<owner>/<repo>``
    (it is written into code cells, so nothing else is accepted) or the branch or version is malformed.
    """
    config = yaml.safe_load((root / "_config.yml").read_text()) or {}
    repo = config.get("repository") or {}
    url = str(repo.get("url", "")).rstrip("/").removesuffix(".git")
    if not _URL.fullmatch(url):
        raise ValueError(f"_config.yml repository.url must be https://github.com/<owner>/<repo>, got {url!r}")
    branch = str(repo.get("branch", "main"))
    if not re.fullmatch(r"[A-Za-z0-9._/-]+", branch) or branch.startswith(("-", "/")):
        raise ValueError(f"_config.yml repository.branch must be a git branch name, got {branch!r}")
    match = _VERSION.search((root / "wdlib" / "_version.py").read_text())
    if match is None:
        raise ValueError('wdlib/_version.py must set __version__ = "<major>.<minor>.<patch>"')
    return Site(url, branch, match.group("v"))


def install_cell(site: Site) -> str:
    """The source of every chapter's install cell for ``site`` (no trailing newline, as notebooks store it)."""
    return f"""\
# On Colab, and only there, install the wdlib release this book was built from (Colab keeps the torch it has).
# Written by tools/site_config.py from _config.yml (repository.url) and wdlib/_version.py: edit those, not this cell.
# Set KEEP_RUNS_ON_DRIVE = True to keep the run store on Google Drive, so a lost runtime loses no finished
# or checkpointed run (Colab asks for permission to mount Drive).
KEEP_RUNS_ON_DRIVE = False
WDLIB_REQUIREMENT = "{site.requirement()}"
import os
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q", WDLIB_REQUIREMENT], check=True)
    if KEEP_RUNS_ON_DRIVE:
        from google.colab import drive

        drive.mount("/content/drive")
        os.environ["WDLIB_STORE"] = "/content/drive/MyDrive/{site.repo}/store\""""


def toc_entries(toc_path: Path, key: str = "file") -> list[str]:
    """Every ``key:`` entry (``file`` or ``glob``) of a Jupyter Book ``_toc.yml``, in order."""
    toc = yaml.safe_load(toc_path.read_text())
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if key in node:
                found.append(str(node[key]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in toc.items() if k != "root"})
    return found


def toc_files(toc_path: Path) -> list[str]:
    """Every ``file:`` entry of a Jupyter Book ``_toc.yml``, the root first, in order."""
    return [str(yaml.safe_load(toc_path.read_text())["root"]), *toc_entries(toc_path, "file")]


def chapters(root: Path = ROOT) -> list[Path]:
    """The chapter notebooks ``_toc.yml`` names, in order."""
    files = [f.removesuffix(".ipynb") for f in toc_files(root / "_toc.yml")]
    return [root / f"{f}.ipynb" for f in files if (root / f"{f}.ipynb").exists()]


def _install_cells(nb: dict, path: Path) -> list[dict]:
    cells = [c for c in nb["cells"] if TAG in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path.name}: expected exactly one cell tagged {TAG!r}, found {len(cells)}")
    return cells


def _split(source: str) -> list[str]:
    return source.splitlines(keepends=True)


def with_install_cell(nb: dict, site: Site, path: Path, source: str | None = None) -> dict:
    """``nb`` with its install cell written for ``site`` (``source``: another place to install wdlib from, as
    the Colab rehearsal does; the cell's text otherwise the same)."""
    (cell,) = _install_cells(nb, path)
    text = install_cell(site)
    if source is not None:
        text = text.replace(site.requirement(), site.requirement(source))
    cell["source"] = _split(text)
    return nb


def _dump(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"  # nbformat's own layout


def stale(root: Path = ROOT, site: Site | None = None) -> list[str]:
    """The chapters whose install cell differs from :func:`install_cell` (their file names)."""
    site = site or load_site(root)
    out = []
    for path in chapters(root):
        nb = json.loads(path.read_text())
        (cell,) = _install_cells(nb, path)
        if "".join(cell["source"]) != install_cell(site):
            out.append(path.name)
    return out


def sync(root: Path = ROOT) -> list[str]:
    """Rewrite the install cell of every chapter that is stale; return their file names."""
    site = load_site(root)
    changed = stale(root, site)
    for path in chapters(root):
        if path.name in changed:
            nb = with_install_cell(json.loads(path.read_text()), site, path)
            path.write_text(_dump(nb))
    return changed


def built_config(text: str, site: Site) -> str:
    """``_config.yml``'s text for the built book: ``repository.branch`` set to the release tag, so that the Colab
    launch buttons open the notebooks of the release the install cell installs."""
    config = yaml.safe_load(text)
    config.setdefault("repository", {})["branch"] = site.tag
    header = "# Written by tools/build_book.py from _config.yml: repository.branch is the release tag.\n"
    return header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if an install cell is stale")
    args = parser.parse_args(argv)
    site = load_site()
    if args.check:
        bad = stale(site=site)
        if bad:
            print(f"install cells out of date in {', '.join(bad)}: run `python tools/site_config.py`", file=sys.stderr)
            return 1
        print(f"every install cell installs {site.requirement()}")
        return 0
    changed = sync()
    print(
        f"rewrote {len(changed)} install cell(s) to install {site.requirement()}" + (f": {changed}" if changed else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
