"""The chapters as committed (no outputs, a papermill parameters cell) and the book's generated pages."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from build_book import ledger_page, status_page, toc_files  # noqa: E402

from wdlib.claims import Ledger  # noqa: E402
from wdlib.stats import loglog_slope, rankdata, spearman  # noqa: E402

FILES = toc_files(ROOT / "_toc.yml")
NOTEBOOKS = [f for f in FILES if f.startswith("notebooks/")]


def test_toc_names_existing_files():
    generated = {"book/ledger", "book/status"}
    for f in FILES:
        assert f in generated or (ROOT / f"{f}.md").exists() or (ROOT / f"{f}.ipynb").exists(), f
    assert NOTEBOOKS, "the table of contents lists no chapter"


@pytest.mark.parametrize("nb_path", NOTEBOOKS)
def test_chapter_is_committed_without_outputs(nb_path):
    nb = nbformat.read(ROOT / f"{nb_path}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{nb_path} has outputs"


@pytest.mark.parametrize("nb_path", NOTEBOOKS)
def test_first_code_cell_is_the_parameters_cell_then_validated(nb_path):
    nb = nbformat.read(ROOT / f"{nb_path}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    assert code[0] is params[0], "the first code cell must be the parameters cell"
    ns: dict = {}
    exec(params[0].source, ns)  # plain assignments only  # noqa: S102
    assert ns["scale"] == "smoke" and ns["device"] == "auto" and ns["seed"] == 0
    # next: the Colab install cell (tagged "colab", a no-op elsewhere), then the cell that validates
    rest = [c for c in code[1:] if "colab" not in c.metadata.get("tags", [])]
    assert "check_parameters(" in rest[0].source, "the first cell after the parameters must validate them"
    colab = [c for c in code if "colab" in c.metadata.get("tags", [])]
    assert len(colab) == 1 and "google.colab" in colab[0].source and code.index(colab[0]) == 1


def test_ledger_and_status_pages(tmp_path):
    Ledger("01_x", "smoke", directory=tmp_path).record(
        "DEC-1", source="002", statement="a | b", checks={"c": True}, key_number="k")
    page = ledger_page(tmp_path)
    assert "| DEC-1 | 002 | a \\| b | **reproduced** | k |" in page
    assert "Totals: 1 reproduced." in page
    assert "No chapter recorded" in ledger_page(tmp_path / "empty")
    status = status_page([{"chapter": "notebooks/01_x", "seconds": 12.3, "scale": "smoke", "error": None}], "smoke")
    assert "12.3 s" in status and "torch" in status


def test_stats_hand_values():
    np.testing.assert_array_equal(rankdata([3.0, 1.0, 2.0, 2.0]), [4.0, 1.0, 2.5, 2.5])
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    x = np.array([1.0, 10.0, 100.0])
    assert loglog_slope(x, 3 * x**-0.5) == pytest.approx(-0.5)
