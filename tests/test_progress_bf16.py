"""Progress bars over sweeps (one per sweep, off in the book build and CI) and the bfloat16 speed check behind
chapter 5's precision policy."""

from __future__ import annotations

import inspect
import json
import re
import sys
import time
from pathlib import Path

import pytest

from wdlib import precision
from wdlib.config import RunConfig
from wdlib.runs import Store, run_many, sweep
from wdlib.progress import show_progress

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(data="mnist1d", data_args={"num_samples": 600}, model="mlp", model_args={"width": 8, "depth": 1},
            optimizer="adam", lr=3e-3, weight_decay=0.1, steps=2, batch_size=32, eval_every=0, scale="test")


def tiny(**changes) -> RunConfig:
    return RunConfig.from_dict({**TINY, **changes})


# --- progress --------------------------------------------------------------------------------------------

def _bar_lines(err: str, desc: str) -> list[str]:
    return [part for part in err.replace("\r", "\n").splitlines() if desc in part]


def test_run_many_draws_one_bar_over_the_configurations(tmp_path, capsys):
    configs = [tiny(seed=i) for i in range(3)]
    results = run_many(configs, Store(tmp_path), device="cpu", progress=True, desc="tiny sweep")
    assert [r.config["seed"] for r in results] == [0, 1, 2]
    err = capsys.readouterr().err
    lines = _bar_lines(err, "tiny sweep")
    assert lines and "3/3" in lines[-1] and all("/3" in line for line in lines)
    assert "mlp adam" not in err  # no per-run step bars inside a sweep (train's bar is labelled "<model> <optimizer>")
    # stored results count at once: a second call starts the bar at 3/3
    run_many(configs + configs[:1], Store(tmp_path), device="cpu", progress=True, desc="again")
    lines = _bar_lines(capsys.readouterr().err, "again")
    assert lines and all("4/4" in line for line in lines)
    run_many(configs, Store(tmp_path), device="cpu", progress=False, desc="quiet")
    assert capsys.readouterr().err == ""


def test_run_many_bar_advances_with_parallel_workers(tmp_path, capsys):
    store = Store(tmp_path)
    run_many([tiny(seed=0)], store, device="cpu", progress=False)
    results = run_many([tiny(seed=i) for i in range(3)], store, workers=2, device="cpu", progress=True, desc="pool")
    assert [r.info["cached"] for r in results] == [True, True, True]  # trained in the workers, read back
    lines = _bar_lines(capsys.readouterr().err, "pool")
    assert lines and "1/3" in lines[0] and "3/3" in lines[-1]  # the stored run counted before the workers ran


def test_sweep_labels_its_bar_with_the_grid(tmp_path, capsys):
    sweep(tiny(), {"seed": [0, 1]}, Store(tmp_path), device="cpu", progress=True)
    lines = _bar_lines(capsys.readouterr().err, "sweep over seed")
    assert lines and "2/2" in lines[-1]


def test_show_progress_is_off_in_the_book_build_and_in_ci(monkeypatch):
    class Tty:
        def isatty(self) -> bool:
            return True

        def write(self, s: str) -> int:
            return len(s)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stderr", Tty())
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("WDLIB_PROGRESS", raising=False)
    assert show_progress(None) is True  # a terminal: someone is watching
    assert show_progress(False) is False and show_progress(True) is True
    monkeypatch.setenv("WDLIB_PROGRESS", "0")
    assert show_progress(None) is False
    assert show_progress(True) is True  # an explicit request still wins
    monkeypatch.delenv("WDLIB_PROGRESS")
    monkeypatch.setenv("CI", "true")
    assert show_progress(None) is False
    monkeypatch.setenv("WDLIB_PROGRESS", "1")
    assert show_progress(None) is True
    monkeypatch.delenv("WDLIB_PROGRESS")
    monkeypatch.setenv("CI", "false")
    assert show_progress(None) is True


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


def _calls(text: str, name: str) -> list[str]:
    """The argument text of every call ``name(...)`` in ``text`` (balanced parentheses; not ``other_name(``)."""
    out = []
    for match in re.finditer(rf"(?<![\w.]){name}\(", text):
        depth = 0
        for j in range(match.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            if depth == 0:
                out.append(text[match.end() - 1:j + 1])
                break
    return out


def test_experiments_pass_a_label_and_let_run_many_decide():
    n = 0
    for path in sorted((ROOT / "wdlib" / "experiments").glob("*.py")):
        text = path.read_text()
        for call in _calls(text, "run_many") + _calls(text, "sweep"):
            assert "desc=" in call and "progress=None" in call, (path.name, call)
            n += 1
    assert n >= 20


# --- bfloat16 speed ---------------------------------------------------------------------------------------

def test_bf16_matmul_speed_is_measured_once_and_quickly():
    precision._matmul_speed.cache_clear()
    start = time.perf_counter()
    m = precision.bf16_matmul_speed("cpu", n=256)
    took = time.perf_counter() - start
    assert took < 2.0  # about 0.5 s at most by design; slack for a busy machine
    assert m["device"] == "cpu" and m["n"] == 256
    assert m["float32_gflops"] > 0 and m["bfloat16_gflops"] > 0
    assert m["ratio"] == pytest.approx(m["bfloat16_gflops"] / m["float32_gflops"])
    assert m["fast"] == (m["ratio"] >= precision.FAST_BF16_RATIO)
    assert precision.bf16_matmul_speed("cpu", n=256) == m  # cached per process
    with pytest.raises(ValueError, match="n must be"):
        precision.bf16_matmul_speed("cpu", n=0)


def test_fast_bf16_follows_the_measurement(monkeypatch):
    monkeypatch.setattr(precision, "_matmul_speed", lambda device, n: (65.0, 1.3))  # AVX2 without AVX-512 BF16
    assert precision.bf16_matmul_speed("cpu")["fast"] is False and precision.fast_bf16("cpu") is False
    monkeypatch.setattr(precision, "_matmul_speed", lambda device, n: (65.0, 90.0))
    assert precision.fast_bf16("cpu") is True


def test_status_page_reports_the_bf16_speed():
    sys.path.insert(0, str(ROOT / "tools"))
    import build_book

    row = build_book.bf16_speed_row()
    assert row.startswith("| bfloat16 |") and "GFLOP/s in float32" in row and "counted as" in row


# --- chapter 5's precision policy -------------------------------------------------------------------------

def test_llm_precision_policy(monkeypatch):
    from wdlib.experiments import llm

    def no_measuring(device):
        raise AssertionError("below full scale nothing is measured")

    monkeypatch.setattr(llm, "fast_bf16", no_measuring)
    smoke = llm.setup("smoke")
    assert llm.main_precision(smoke, "cpu") == "fp32"
    p = llm.plan(smoke)
    assert {c.precision for c in p["main"].values()} == {c.precision for c in p["ln"].values()} == {"fp32"}
    # the claims about bfloat16 keep their arms, and everything else of their runs is as before
    assert {k[1] for k in p["o6"]} == {"bf16-autocast", "fp32"}
    assert {c.precision for c in p["o6"].values()} == {"bf16-autocast", "fp32"}
    assert {c.precision for c in p["o7"].values()} == {"bf16-pure", "fp32"}
    cfg = p["main"][(smoke.wds[1], 0)]
    assert cfg.replace(precision="bf16-autocast").to_dict() == llm.base_config(
        smoke, weight_decay=smoke.wds[1], seed=0, ema=smoke.ema, diagnostics=["matrix_norm", "adam_elr"],
        probes=[{"name": "relative_update", "every": smoke.rel_every}],
        measures=[{"name": "seen_unseen", "windows": smoke.seen_windows}], snapshots=[smoke.ft_from]).to_dict()

    full = llm.setup("full")
    monkeypatch.setattr(llm, "fast_bf16", lambda device: True)
    assert llm.main_precision(full, "cpu") == "bf16-autocast"
    assert {c.precision for c in llm.plan(full)["main"].values()} == {"bf16-autocast"}
    monkeypatch.setattr(llm, "fast_bf16", lambda device: False)
    assert llm.main_precision(full, "cpu") == "fp32"


def test_llm_precision_table_names_each_claim(monkeypatch):
    from wdlib.experiments import llm

    monkeypatch.setattr(llm, "bf16_matmul_speed", lambda device: {"n": 512, "float32_gflops": 65.0,
                                                                   "bfloat16_gflops": 1.3, "fast": False})
    t = llm.precision_table(llm.setup("smoke"), "cpu")
    assert list(t["claim"]) == ["LLM-1 to LLM-4", "LLM-5", "LLM-6", "LLM-7"]
    row = t.set_index("claim").loc["LLM-5"]
    assert row["precision"] == "float32" and "1.3 GFLOP/s" in row["why"] and "slow" in row["why"]
    assert "bf16 autocast" in t.set_index("claim").loc["LLM-6", "precision"]
    monkeypatch.setattr(llm, "fast_bf16", lambda device: False)
    t = llm.precision_table(llm.setup("full"), "cpu")
    assert t.set_index("claim").loc["LLM-5", "precision"] == "float32"
    assert "instead of the source's bf16 autocast" in t.set_index("claim").loc["LLM-5", "why"]
