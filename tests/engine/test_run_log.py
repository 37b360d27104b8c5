"""``WDLIB_RUN_LOG``: :func:`wdlib.runs.run_many` appends the key of every configuration it is asked for (the
book build sets it per chapter, to check each chapter's ``planned_runs``)."""

from __future__ import annotations

from wdlib.config import RunConfig
from wdlib.runs import run_many


def test_run_many_logs_every_requested_key(tmp_path, monkeypatch):
    log = tmp_path / "runs.txt"
    log.write_text("earlier\n")
    monkeypatch.setenv("WDLIB_RUN_LOG", str(log))
    cfg = RunConfig(data_args={"num_samples": 200}, model_args={"width": 4, "depth": 1}, steps=3, batch_size=10)
    run_many([cfg, cfg.to_dict()], tmp_path / "store", device="cpu", progress=False)
    assert log.read_text().split() == ["earlier", cfg.key(), cfg.key()]  # appended, one line per request
    monkeypatch.delenv("WDLIB_RUN_LOG")
    run_many([cfg], tmp_path / "store", device="cpu", progress=False)
    assert log.read_text().split() == ["earlier", cfg.key(), cfg.key()]
