"""The README's code runs as written, and the license it declares is the one shipped (issue 16).

Every fenced ``python`` block runs verbatim in a fresh interpreter. Every ``bash`` block runs too,
line by line, with two exceptions that are named here rather than hidden: ``make ...`` (the README's
two set-up commands *are* this test suite and the book build) and ``.venv/bin/papermill ...`` (it
executes a whole chapter, which the book build does). ``.venv/bin/python`` is replaced by the
interpreter running the tests; the commands run in a temporary directory that holds a link to
``configs/``, with ``WDLIB_STORE`` there too, so nothing is written into the repository.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README, re.S | re.M)
SKIPPED_PREFIXES = ("make ", ".venv/bin/papermill ")


def _commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    text = block.replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, WDLIB_STORE=str(tmp / "store"), WDLIB_PROGRESS="0", PYTHONPATH=str(ROOT))
    return env


def test_the_readme_has_python_and_bash_blocks_and_no_other_kind():
    kinds = [k for k, _ in BLOCKS]
    assert kinds.count("python") >= 3 and kinds.count("bash") >= 2
    assert set(kinds) <= {"python", "bash"}, kinds


@pytest.mark.parametrize("index", [i for i, (k, _) in enumerate(BLOCKS) if k == "python"])
def test_every_python_block_runs_verbatim(index, tmp_path):
    code = BLOCKS[index][1]
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, f"README python block {index} failed:\n{code}\n{r.stderr[-3000:]}"
    assert r.stdout.strip(), "each block prints what it shows"


@pytest.mark.parametrize("index", [i for i, (k, _) in enumerate(BLOCKS) if k == "bash"])
def test_every_bash_command_runs(index, tmp_path):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    for command in _commands(BLOCKS[index][1]):
        if command.startswith(SKIPPED_PREFIXES):
            continue
        line = command.replace(".venv/bin/python", sys.executable)
        r = subprocess.run(
            ["bash", "-c", line], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600
        )
        assert r.returncode == 0, f"README command failed: {command}\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}"


def test_only_the_named_commands_are_skipped():
    skipped = [c for k, b in BLOCKS if k == "bash" for c in _commands(b) if c.startswith(SKIPPED_PREFIXES)]
    assert (
        skipped[:2]
        == [
            "make book   # execute every chapter at smoke scale (papermill) and build the HTML book into _build/html",
            "make test   # lint, wdlib's tests, a Colab rehearsal in a fresh venv, the book, then a headless-Chromium "
            "check of the site",
        ][: len(skipped[:2])]
    )
    assert all(c.startswith(("make book", "make test", ".venv/bin/papermill")) for c in skipped), skipped


def test_the_license_file_matches_the_declared_license():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"  # an SPDX expression, not the deprecated table
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text
