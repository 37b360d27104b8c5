"""The maintainer's tools: comparing two builds' claims records, and reporting the module graph."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import compare_claims  # noqa: E402

RECORD = {
    "chapter": "01_x",
    "scale": "smoke",
    "seed": 0,
    "environment": {"date": "2026-12-01"},
    "claims": [
        {
            "claim": "X-1",
            "verdict": "reproduced",
            "key_number": "slope 0.50",
            "tests": [
                {
                    "name": "slope",
                    "margin": 2.5,
                    "measurement": {"value": 0.5, "spread": 0.1, "per_seed": [0.4, 0.5, 0.6]},
                }
            ],
        }
    ],
}


def _write(d: Path, record: dict) -> Path:
    d.mkdir()
    (d / "01_x.claims.json").write_text(json.dumps(record))
    return d


def test_compare_claims_tells_identical_float_level_and_moved_numbers(tmp_path):
    old = _write(tmp_path / "old", RECORD)
    same = copy.deepcopy(RECORD)
    same["environment"]["date"] = "2027-01-01"  # the environment is not evidence
    assert compare_claims.compare(old, _write(tmp_path / "same", same)) == []
    tiny = copy.deepcopy(RECORD)
    tiny["claims"][0]["tests"][0]["measurement"]["per_seed"][1] = 0.5 * (1 + 1e-13)
    diffs = compare_claims.compare(old, _write(tmp_path / "tiny", tiny))
    assert [d[0] for d in diffs] == ["float-level"] and "per_seed[1]" in diffs[0][1]
    moved = copy.deepcopy(RECORD)
    moved["claims"][0]["tests"][0]["margin"] = 0.9
    moved["claims"][0]["verdict"] = "inconclusive"
    diffs = compare_claims.compare(old, _write(tmp_path / "moved", moved))
    assert sorted(d[1] for d in diffs if d[0] == "different") == ["01_x.X-1.tests[0].margin", "01_x.X-1.verdict"]
    assert compare_claims.main([str(old), str(tmp_path / "moved")]) == 1
    assert compare_claims.main([str(old), str(tmp_path / "same")]) == 0


def test_module_graph_reports_cycles_and_upward_imports(tmp_path):
    pkg = tmp_path / "wdlib"
    (pkg / "experiments").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "experiments" / "__init__.py").write_text("")
    (pkg / "optim.py").write_text("def f():\n    from .train import g\n")  # core -> engine, inside a function
    (pkg / "train.py").write_text("from .optim import f\n\ndef g():\n    return 1\n")
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "module_graph.py"), str(pkg)], capture_output=True, text=True, check=True
    ).stdout
    assert "import cycles (strongly connected groups): 1" in out and "wdlib.optim <-> wdlib.train" in out
    assert "wdlib.optim (core) -> wdlib.train (engine)" in out
    assert "function-level imports of wdlib modules: 1" in out
