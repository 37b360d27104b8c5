"""wdlib.progress: one progress bar per sweep, drawn when someone watches, never in the book build or CI."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from wdlib.config import RunConfig
from wdlib.progress import show_progress
from wdlib.runs import Store, run_many, sweep

ROOT = Path(__file__).resolve().parents[2]


TINY = dict(
    data="mnist1d",
    data_args={"num_samples": 600},
    model="mlp",
    model_args={"width": 8, "depth": 1},
    optimizer="adam",
    lr=3e-3,
    weight_decay=0.1,
    steps=2,
    batch_size=32,
    eval_every=0,
    scale="test",
)


def tiny(**changes) -> RunConfig:
    return RunConfig.from_dict({**TINY, **changes})


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


def _calls(text: str, name: str) -> list[str]:
    """The argument text of every call ``name(...)`` in ``text`` (balanced parentheses; not ``other_name(``)."""
    out = []
    for match in re.finditer(rf"(?<![\w.]){name}\(", text):
        depth = 0
        for j in range(match.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            if depth == 0:
                out.append(text[match.end() - 1 : j + 1])
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
