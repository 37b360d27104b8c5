"""Where the book lives is set once (``_config.yml``): every chapter's Colab install cell and the built book's
Colab buttons follow from it (``tools/site_config.py``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import site_config  # noqa: E402


def _install_cell(path: Path) -> str:
    nb = json.loads(path.read_text())
    (cell,) = [c for c in nb["cells"] if "colab" in c.get("metadata", {}).get("tags", [])]
    return "".join(cell["source"])


def test_every_install_cell_is_the_one_the_config_writes():
    site = site_config.load_site(ROOT)
    assert site_config.stale(ROOT, site) == [], "run `python tools/site_config.py` and commit the notebooks"
    chapters = site_config.chapters(ROOT)
    assert len(chapters) >= 6
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    for path in chapters:
        cell = _install_cell(path)
        assert f'"wdlib[notebooks] @ git+{config["repository"]["url"]}@v{site.version}"' in cell, path.name
        assert "@main" not in cell and "wdlib[book]" not in cell, path.name


def test_the_install_cell_installs_only_on_colab():
    site = site_config.load_site(ROOT)
    code = compile(site_config.install_cell(site), "<install cell>", "exec")
    with mock.patch("subprocess.run") as run:
        exec(code, {})  # not on Colab: nothing happens
        assert run.call_count == 0
        with mock.patch.dict(sys.modules, {"google.colab": types.ModuleType("google.colab")}):
            exec(code, {})
        assert run.call_count == 1
        (cmd,), kwargs = run.call_args
        assert cmd[1:5] == ["-m", "pip", "install", "-q"] and cmd[-1] == site.requirement()
        assert cmd[-1].endswith(f"@v{site.version}") and kwargs == {"check": True}
        assert "torch" not in cmd[-1]  # Colab keeps the torch it has


@pytest.mark.parametrize(
    "url",
    [
        "https://gitlab.com/a/b",
        'https://github.com/a/b"; import os; os.system("x")  #',
        "http://github.com/a/b",
        "https://github.com/a",
        "",
    ],
)
def test_a_bad_repository_url_is_refused_naming_the_setting(tmp_path, url):
    (tmp_path / "wdlib").mkdir()
    shutil.copy2(ROOT / "wdlib" / "_version.py", tmp_path / "wdlib" / "_version.py")
    (tmp_path / "_config.yml").write_text(yaml.safe_dump({"repository": {"url": url, "branch": "main"}}))
    with pytest.raises(ValueError, match=r"repository\.url"):
        site_config.load_site(tmp_path)


def _copy_of_the_book(tmp_path: Path) -> Path:
    root = tmp_path / "book"
    (root / "wdlib").mkdir(parents=True)
    shutil.copy2(ROOT / "wdlib" / "_version.py", root / "wdlib" / "_version.py")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, root / name)
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    shutil.copytree(ROOT / "tools", root / "tools")
    return root


def test_a_fork_changes_the_url_once_and_every_chapter_follows(tmp_path):
    root = _copy_of_the_book(tmp_path)
    config = (root / "_config.yml").read_text()
    old = site_config.load_site(root).url
    (root / "_config.yml").write_text(config.replace(old, "https://github.com/someone/wd-fork"))
    chapters = [p.name for p in site_config.chapters(root)]
    assert site_config.stale(root) == chapters  # every chapter still installs from the old home
    check = [sys.executable, str(root / "tools" / "site_config.py"), "--check"]
    done = subprocess.run(check, cwd=root, capture_output=True, text=True)  # the script reads its own root
    assert done.returncode == 1 and chapters[0] in done.stderr
    assert site_config.sync(root) == chapters
    assert site_config.stale(root) == []
    for p in site_config.chapters(root):
        assert "git+https://github.com/someone/wd-fork@v" in _install_cell(p)
        before = json.loads((ROOT / "notebooks" / p.name).read_text())
        after = json.loads(p.read_text())  # nothing but the install cell changed
        assert [c for c in before["cells"] if "colab" not in c["metadata"].get("tags", [])] == [
            c for c in after["cells"] if "colab" not in c["metadata"].get("tags", [])
        ]


def test_the_built_book_points_colab_at_the_release_tag():
    site = site_config.load_site(ROOT)
    built = yaml.safe_load(site_config.built_config((ROOT / "_config.yml").read_text(), site))
    source = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert built["repository"] == {**source["repository"], "branch": f"v{site.version}"}
    assert {k: v for k, v in built.items() if k != "repository"} == {
        k: v for k, v in source.items() if k != "repository"
    }


def test_the_readme_installs_the_current_release():
    site = site_config.load_site(ROOT)
    readme = (ROOT / "README.md").read_text()
    assert f'pip install "wdlib[engine] @ git+{site.url}@{site.tag}"' in readme
