"""``python -m wdlib.plan``: a chapter's runs, steps and measured time estimate, and every chapter's
``planned_runs`` (their completeness against what a built book trained: tests/book/test_planned_runs.py)."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wdlib import plan
from wdlib.config import RunConfig
from wdlib.runs import Store, run

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import build_book  # noqa: E402


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, WDLIB_STORE=str(tmp_path / "store"), WDLIB_PROGRESS="0", OMP_NUM_THREADS="1")


def test_plan_of_a_chapter_prints_runs_steps_and_an_estimate(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "wdlib.plan", "notebooks/01_l2_vs_decoupled.ipynb", "--scale", "test"]
        + ["--device", "cpu", "--probe-steps", "2"],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "01_l2_vs_decoupled at scale test on cpu" in out
    assert "runs: 42 (0 done in the store, 42 to train)" in out
    assert "optimizer steps to train: 1,260" in out  # 42 runs of 30 steps
    assert "mlp" in out and "parameters" in out and "ms/step" in out and "estimated time:" in out
    assert not (tmp_path / "store").exists()  # a plan never creates a store


def test_plan_json_counts_done_runs_apart(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WDLIB_STORE", str(tmp_path / "store"))
    s = plan.CHAPTERS["03_scaling_rules"].setup("test")
    first = plan.CHAPTERS["03_scaling_rules"].planned_runs(s)[0]
    run(first, Store(tmp_path / "store"), device="cpu", progress=False)
    assert plan.main(["03_scaling_rules", "--scale", "test", "--device", "cpu", "--probe-steps", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["chapter"] == "03_scaling_rules" and out["distinct"] == 36
    assert out["done"] == [first.key()] and len(out["todo"]) == 35 and first.key() not in out["todo"]
    assert out["steps_done"] == first.steps and out["steps_todo"] > 0
    assert out["models"] and all(m["parameters"] > 0 for m in out["models"])
    assert out["total_seconds"] > 0 and out["groups"] and all(g["step"] > 0 for g in out["groups"])
    assert sum(g["runs"] for g in out["groups"]) == 35


@pytest.mark.parametrize(
    "argv, words",
    [
        (["01_l2_vs_decoupled", "--scale", "huge"], ["--scale", "'smoke'", "'full'", "'test'"]),
        (["07_missing"], ["notebook must be one of", "01_l2_vs_decoupled", "05_llm_regime"]),
        (["01_l2_vs_decoupled", "--device", "tpu"], ["--device", "'auto'", "'cpu'", "'cuda'"]),
        (["01_l2_vs_decoupled", "--probe-steps", "0"], ["--probe-steps must be an integer >= 1"]),
    ],
)
def test_bad_arguments_exit_2_naming_the_allowed_values(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        plan.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


def test_chapter_name_takes_a_path_or_a_stem():
    assert plan.chapter_name("notebooks/03_scaling_rules.ipynb") == "03_scaling_rules"
    assert plan.chapter_name("03_scaling_rules") == "03_scaling_rules"
    with pytest.raises(ValueError, match="notebook must be one of"):
        plan.chapter_name("03_scaling")


@pytest.mark.parametrize("name", list(plan.CHAPTERS))
def test_every_chapter_plans_its_runs_at_test_scale(name):
    module = plan.CHAPTERS[name]
    configs = module.planned_runs(module.setup("test"))
    assert configs and all(isinstance(c, RunConfig) and c.scale == "test" for c in configs)
    assert len({c.key() for c in configs}) == len(configs)  # each run listed once
    other = module.planned_runs(module.setup("test", seed=1))  # the seeds come from the base seed
    assert not {c.key() for c in configs} & {c.key() for c in other}


def test_evaluations_and_probe_config():
    cfg = RunConfig(steps=100, eval_every=30, snapshots=[50], lr_schedule={"name": "cosine", "warmup": 10})
    assert plan.evaluations(cfg) == 4 and plan.evaluations(cfg.replace(eval_every=0)) == 1
    assert plan.evaluations(cfg.replace(eval_every=25)) == 4
    p = plan.probe_config(cfg.replace(probes=[{"name": "shrinkage", "start": 80}]), 3, batch_size=8)
    assert (p.steps, p.batch_size, p.eval_every, p.snapshots, p.lr_schedule) == (3, 8, 0, (), None)
    assert p.probes[0]["start"] == 0


def test_the_book_build_gives_each_chapter_its_own_empty_run_log(tmp_path):
    env = build_book.run_log_env(tmp_path / "results", "notebooks/03_scaling_rules")
    log = Path(env["WDLIB_RUN_LOG"])
    assert log == tmp_path / "results" / "03_scaling_rules.runs.txt" and log.read_text() == ""
    log.write_text("abc\n")
    assert build_book.run_log_env(tmp_path / "results", "notebooks/03_scaling_rules") == env
    assert log.read_text() == ""  # emptied for the next build
    assert "**run_log_env(results, nb)" in inspect.getsource(build_book._execute_one)  # each chapter's kernel
