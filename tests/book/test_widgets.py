"""Chapter 2's explorer (wdlib.plotting.ema_explorer) where it runs: a widget, with its state saved in the
notebook, in a live kernel; the static figure and a note in the book's build (WDLIB_STATIC=1), with no widget.

The first two execute a one-cell notebook with papermill in a python3 kernel, as tools/build_book.py does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _execute(tmp_path, monkeypatch, static: bool):
    nbformat = pytest.importorskip("nbformat")
    pm = pytest.importorskip("papermill")
    if static:
        monkeypatch.setenv("WDLIB_STATIC", "1")
    else:
        monkeypatch.delenv("WDLIB_STATIC", raising=False)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # as the book's kernels
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from wdlib.plotting import ema_explorer\n\nema_explorer(steps=200)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    pm.execute_notebook(str(src), str(out), kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    done = nbformat.read(out, as_version=4)
    outputs = done.cells[0].outputs
    assert not [o for o in outputs if o.output_type == "error"], outputs
    return done, outputs


def test_in_a_live_kernel_the_explorer_is_a_widget_with_its_state_saved(tmp_path, monkeypatch):
    nb, outputs = _execute(tmp_path, monkeypatch, static=False)
    views = [o.data[WIDGET_VIEW]["model_id"] for o in outputs if WIDGET_VIEW in o.get("data", {})]
    assert len(views) == 1, f"one widget expected, got outputs {[list(o.get('data', {})) for o in outputs]}"
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    assert views[0] in state, "the widget's state is not saved in the notebook (nbclient's store_widget_state)"
    models = {m["model_name"] for m in state.values()}
    assert {"FloatSliderModel", "DropdownModel", "OutputModel"} <= models, models
    drawn = [
        o for m in state.values() if m["model_name"] == "OutputModel" for o in m["state"].get("outputs", [])
    ]  # the figure the sliders' starting values draw, saved inside the widget
    assert any("image/png" in o.get("data", {}) for o in drawn), "the widget's output holds no figure"
    assert not [o for o in outputs if "image/png" in o.get("data", {})], "a figure was drawn outside the widget"


def test_in_the_books_build_the_explorer_is_a_figure_and_a_note(tmp_path, monkeypatch):
    nb, outputs = _execute(tmp_path, monkeypatch, static=True)
    kinds = [k for o in outputs for k in o.get("data", {})]
    assert WIDGET_VIEW not in kinds, "a widget in a page of the book, where no kernel can drive it"
    assert not nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state")
    assert kinds.count("image/png") == 1, kinds
    notes = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert len(notes) == 1 and "interactive explorer" in notes[0] and "cosine" in notes[0], notes
    assert kinds.index("image/png") < kinds.index("text/markdown"), "the note belongs under the figure"


def test_the_books_kernels_draw_widgets_static(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    import build_book

    assert build_book.kernel_env(tmp_path / "results")["WDLIB_STATIC"] == "1"


def test_outside_a_kernel_the_explorer_draws_and_says_what_it_is(monkeypatch, capsys):
    import matplotlib.pyplot as plt

    from wdlib import plotting

    monkeypatch.delenv("WDLIB_STATIC", raising=False)
    assert not plotting.live_widgets()  # pytest is no IPython kernel
    before = set(plt.get_fignums())
    plotting.ema_explorer(steps=50)
    assert "interactive explorer" in capsys.readouterr().out
    drawn = set(plt.get_fignums()) - before
    for num in drawn:
        plt.close(num)
    assert drawn, "no figure drawn"
