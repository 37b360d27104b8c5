"""The book build (tools/build_book.py): kernels without progress widgets, and the status page's bf16 speed row."""

from __future__ import annotations

import inspect
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_book_build_turns_progress_off_in_its_kernels(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    import build_book

    env = build_book.kernel_env(tmp_path / "results")
    assert env["WDLIB_PROGRESS"] == "0"
    assert env["OMP_WAIT_POLICY"] == os.environ.get("OMP_WAIT_POLICY", "PASSIVE")  # no spinning beside workers
    assert env["WDLIB_RESULTS_DIR"] == str(tmp_path / "results") and env["WDLIB_STORE"] == str(tmp_path / "store")
    assert "**kernel_env(results)" in inspect.getsource(build_book._execute_one)  # each chapter's kernel gets it


def _notebook(code: str) -> str:
    cell = {"cell_type": "code", "execution_count": None, "id": "c1", "metadata": {}, "outputs": [], "source": code}
    params = {
        **cell,
        "id": "p",
        "metadata": {"tags": ["parameters"]},
        "source": 'scale = "smoke"\ndevice = "auto"\nseed = 0',
    }
    return json.dumps(
        {
            "cells": [params, cell],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
    )


def test_chapters_run_in_lanes_each_with_its_own_kernel_environment(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "tools"))
    import build_book

    monkeypatch.setattr(build_book, "ROOT", tmp_path)
    (tmp_path / "notebooks").mkdir()
    probe = (
        "import os, time\n"
        "print(scale, seed, os.environ['WDLIB_STATIC'], os.path.basename(os.environ['WDLIB_RUN_LOG']))\n"
        "time.sleep(1)"
    )
    (tmp_path / "notebooks" / "a.ipynb").write_text(_notebook(probe))
    (tmp_path / "notebooks" / "b.ipynb").write_text(_notebook(probe))
    (tmp_path / "notebooks" / "c.ipynb").write_text(_notebook("raise RuntimeError('chapter c fails')"))
    src, results = tmp_path / "src", tmp_path / "results"
    records = build_book.execute(["notebooks/a", "notebooks/b", "notebooks/c"], src, results, "test", "cpu", 7, lanes=2)
    assert [r["chapter"] for r in records] == ["notebooks/a", "notebooks/b", "notebooks/c"]
    assert records[0]["error"] is None and records[1]["error"] is None
    assert (
        "papermill exited 1" in records[2]["error"] and "chapter c fails" in (results / "c.papermill.log").read_text()
    )
    for name in ("a", "b"):
        out = json.loads((src / "notebooks" / f"{name}.ipynb").read_text())
        text = "".join("".join(o.get("text", "")) for c in out["cells"] for o in c.get("outputs", []))
        assert f"test 7 1 {name}.runs.txt" in text
    assert all(r["cpu_seconds"] > 0 for r in records)  # the kernel's CPU time counts (os.wait4 of papermill)
    with pytest.raises(ValueError, match="lanes"):
        build_book.execute([], src, results, "test", "cpu", lanes=0)


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


def test_status_page_shows_the_latest_benchmark_tables(tmp_path):
    """A benchmark's ``--json`` file becomes a table on the status page, with the machine that measured it."""
    sys.path.insert(0, str(ROOT / "tools"))
    import build_book

    machine = {"device": "cpu: Test CPU", "threads": 2, "torch": "2.13.0", "date": "2026-12-01", "commit": "abc1234"}
    rows = [
        {"optimizer": "SGD decoupled m0.9", "params": 1_000_000, "dtype": "float32", "ratio": 1.02},
        {"optimizer": "SGD decoupled m0.9", "params": 1_000_000, "dtype": "bfloat16", "ratio": 0.97,
         "reference": "torch foreach"},
        {"optimizer": "Adam l2", "params": 50_000_000, "dtype": "float32", "ratio": 1.04},
    ]  # fmt: skip
    (tmp_path / "optim_step.json").write_text(
        json.dumps(
            {"benchmark": "optim_step", "command": "python benchmarks/optim_step.py", "machine": machine, "rows": rows}
        )  # fmt: skip
    )
    (tmp_path / "other.json").write_text(json.dumps({"benchmark": "other", "rows": [{"model": "cnn", "x": 0.5}]}))
    text = "\n".join(build_book.benchmark_section(tmp_path))
    assert "| optimizer, rule | 1.0M float32 | 1.0M bfloat16 | 50.0M float32 |" in text
    assert "| SGD decoupled m0.9 | x1.02 | x0.97 (foreach) |  |" in text
    assert "| Adam l2 |  |  | x1.04 |" in text
    assert "device cpu: Test CPU; threads 2; torch 2.13.0; date 2026-12-01; commit abc1234" in text
    assert "### other" in text and "| model | x |" in text and "| cnn | 0.5 |" in text
    assert build_book.benchmark_section(tmp_path / "missing") == []
