"""The book build (tools/build_book.py): kernels without progress widgets, and the status page's bf16 speed row."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_book_build_turns_progress_off_in_its_kernels(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    import build_book

    env = build_book.kernel_env(tmp_path / "results")
    assert env["WDLIB_PROGRESS"] == "0"
    assert env["WDLIB_RESULTS_DIR"] == str(tmp_path / "results") and env["WDLIB_STORE"] == str(tmp_path / "store")
    assert "os.environ.update(kernel_env(" in inspect.getsource(build_book.execute)  # papermill's kernels inherit it


def test_executed_chapters_hold_no_widget_outputs():
    built = sorted((ROOT / "_build" / "src" / "notebooks").glob("*.ipynb"))
    if not built:
        pytest.skip("no executed chapters in _build (run tools/build_book.py)")
    for path in built:
        for cell in json.loads(path.read_text())["cells"]:
            for out in cell.get("outputs", []):
                assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {}), path.name


def test_status_page_reports_the_bf16_speed():
    sys.path.insert(0, str(ROOT / "tools"))
    import build_book

    row = build_book.bf16_speed_row()
    assert row.startswith("| bfloat16 |") and "GFLOP/s in float32" in row and "counted as" in row
