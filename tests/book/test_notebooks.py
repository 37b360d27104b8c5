"""The chapters as committed (no outputs, a papermill parameters cell) and the book's generated pages."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import yaml
from papermill.translators import PythonTranslator

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from build_book import fill_intro, ledger_page, status_page, toc_files  # noqa: E402

from wdlib.claims import Ledger, Measurement  # noqa: E402
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
    # papermill reads the same three (a comment it cannot parse, such as one holding "=", hides a parameter
    # from `papermill --help-notebook` and makes it warn "unknown parameter" when the book passes it)
    assert [p.name for p in PythonTranslator.inspect(params[0])] == ["scale", "device", "seed"]
    # the Colab install cell installs the notebooks extra (the book layer's imports), from a release tag
    assert any('"wdlib[notebooks] @ git+' in c.source for c in code)
    # next: the Colab install cell (tagged "colab", a no-op elsewhere), then the cell that validates
    rest = [c for c in code[1:] if "colab" not in c.metadata.get("tags", [])]
    assert "check_parameters(" in rest[0].source, "the first cell after the parameters must validate them"
    colab = [c for c in code if "colab" in c.metadata.get("tags", [])]
    assert len(colab) == 1 and "google.colab" in colab[0].source and code.index(colab[0]) == 1


TOY = {
    "chapter": "01_x",
    "claims": [
        {
            "id": "X-1",
            "sources": ["su2025"],
            "statement": "a | b",
            "measure": "m",
            "rule": {"text": "t", "tests": [{"name": "g", "label": "gap", "op": ">=", "threshold": 0.0}]},
            "revisions": [{"date": "2026-11-30", "change": "rewritten", "why": "issue 15", "after_data": True}],
        },
        {
            "id": "X-2",
            "sources": ["su2025"],
            "statement": "never run",
            "measure": "m",
            "rule": {"text": "t", "untested": "identity only."},
        },
    ],
}


def test_ledger_intro_and_status_pages(tmp_path):
    cat = tmp_path / "cat"
    cat.mkdir()
    (cat / "01_x.yml").write_text(yaml.safe_dump(TOY))
    results = tmp_path / "results"
    Ledger("01_x", "smoke", directory=results, seed=0, catalogue_dir=cat).judge(
        "X-1", measured={"g": Measurement.from_seeds([1.0, 1.2, 0.9, 1.1, 1.0])}, key_number="k"
    )
    page = ledger_page(results, cat)
    assert "| [X-1](#x-1) | [01_x](../notebooks/01_x.ipynb) (smoke, 0) | **reproduced** | +9.12 | 5 | a \\| b |" in page
    assert "| [X-2](#x-2) | [01_x](../notebooks/01_x.ipynb) | **not run** |" in page  # catalogued, not recorded
    assert "Totals: 1 not run, 1 reproduced (2 claims)." in page
    assert "| 2026-11-30 | rewritten | issue 15 | yes |" in page and "[su2025](references.md#su2025)" in page
    empty = ledger_page(tmp_path / "empty", cat)
    assert empty.count("| **not run** |") == 2
    intro = fill_intro("<!-- claims-table -->\n<!-- revisions -->", cat)
    assert "| [X-1](ledger.md#x-1) |" in intro and "| none: identity only |" in intro
    assert "| 2026-11-30 | [X-1](ledger.md#x-1) | rewritten | issue 15 |" in intro
    with pytest.raises(ValueError, match="marker"):
        fill_intro("no markers", cat)
    status = status_page(
        [{"chapter": "notebooks/01_x", "seconds": 12.3, "scale": "smoke", "seed": 0, "error": None}], "smoke", results
    )
    assert "12.3 s" in status and "torch" in status and "| - |" in status  # no run log: no run count
    (results / "01_x.runs.txt").write_text("a" * 24 + "\n" + "b" * 24 + "\n" + "a" * 24 + "\n")
    stored = tmp_path / "store" / "results"
    stored.mkdir(parents=True)
    (stored / ("a" * 24 + ".json")).write_text(json.dumps({"summary": {"info": {"pack": {"members": 3, "key": "p"}}}}))
    (stored / ("b" * 24 + ".json")).write_text(json.dumps({"summary": {"info": {"pack": {"members": 1}}}}))
    status = status_page(
        [{"chapter": "notebooks/01_x", "seconds": 12.3, "scale": "smoke", "seed": 0, "error": None}], "smoke", results
    )
    assert "| 2 (1 packed, in 1 packs) |" in status


def test_the_book_intro_has_the_generated_sections():
    text = (ROOT / "book" / "intro.md").read_text()
    filled = fill_intro(text)
    for cid in ("DEC-1", "EMA-5", "SCALE-3", "OVER-4", "LLM-7"):
        assert f"[{cid}](ledger.md#{cid.lower()})" in filled


@pytest.mark.parametrize("nb_path", NOTEBOOKS)
def test_chapters_pass_measurements_to_the_catalogue(nb_path):
    """Every catalogued claim of a chapter is judged by it through ``ledger.judge``; no chapter writes its own
    checks or rule (the catalogue holds them)."""
    from wdlib.claims import catalogue

    nb = nbformat.read(ROOT / f"{nb_path}.ipynb", as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "ledger.record(" not in code and "checks=" not in code and "rule=" not in code
    name = Path(nb_path).name
    for cid, c in catalogue().items():
        if c.chapter == name:
            assert re.search(rf"judge\(\s*[\"']{cid}[\"']", code), f"{nb_path} never judges {cid}"


def test_stats_hand_values():
    np.testing.assert_array_equal(rankdata([3.0, 1.0, 2.0, 2.0]), [4.0, 1.0, 2.5, 2.5])
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    x = np.array([1.0, 10.0, 100.0])
    assert loglog_slope(x, 3 * x**-0.5) == pytest.approx(-0.5)
