"""The experiment engine: training loop, checkpoints and resume, the run store, sweeps, DDP, the CLI."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from wdlib.config import RunConfig
from wdlib.runs import Store, expand_grid, run, sweep
from wdlib.train import train

TINY = dict(
    data="mnist1d",
    data_args={"num_samples": 600},
    model="mlp",
    model_args={"width": 16, "depth": 1},
    optimizer="adam",
    lr=3e-3,
    weight_decay=0.1,
    steps=40,
    batch_size=32,
    eval_every=10,
    scale="test",
)


def tiny(**changes) -> RunConfig:
    return RunConfig.from_dict({**TINY, **changes})


def same_history(a, b, skip=("wall_time",)) -> bool:
    keys = set(a.history) - set(skip)
    return keys == set(b.history) - set(skip) and all(np.array_equal(a.history[k], b.history[k]) for k in keys)


def same_weights(a, b) -> bool:
    return all(torch.equal(a.model_state[k], b.model_state[k]) for k in a.model_state)


# --- the loop ------------------------------------------------------------------------------------------------


def test_same_seed_same_metrics_on_cpu():
    cfg = tiny(ema=0.9, lr_schedule={"name": "cosine", "warmup": 5}, wd_schedule={"name": "constant", "delay": 5})
    a, b = train(cfg), train(cfg)
    assert same_history(a, b) and same_weights(a, b)
    assert list(a.history["step"]) == [10, 20, 30, 40]
    assert {
        "val_loss",
        "val_acc",
        "train_loss",
        "train_acc",
        "lr",
        "wd",
        "ema_val_loss",
        "weight_rms/decay",
        "weight_norm/no_decay",
    } <= set(a.history)
    assert a.history["wd"][0] == pytest.approx(0.1)
    assert not same_weights(a, train(cfg.replace(seed=1)))


def test_divergence_is_recorded_not_raised():
    r = train(tiny(optimizer="sgd", lr=1e4, steps=50))
    assert r.diverged and 0 <= r.diverged_at < 50 and r.steps_done == r.diverged_at


def test_grad_accum_and_clipping_in_float64():
    base = tiny(dtype="float64", steps=20)
    one, two = train(base), train(base.replace(grad_accum=2))
    for k in one.model_state:
        torch.testing.assert_close(one.model_state[k], two.model_state[k], rtol=1e-10, atol=1e-12)
    clipped = train(base.replace(grad_clip=1e-3))
    assert not same_weights(one, clipped)


@pytest.mark.parametrize("precision", ["bf16-autocast", "bf16-pure"])
def test_bf16_precisions_train(precision):
    r = train(tiny(precision=precision, steps=60))
    state_dtype = {t.dtype for t in r.model_state.values()}
    assert state_dtype == ({torch.bfloat16} if precision == "bf16-pure" else {torch.float32})
    assert r.history["val_loss"][-1] < r.history["val_loss"][0] or r.final["val_acc"] > 0.15


def test_probe_and_diagnostics_are_recorded():
    cfg = tiny(
        dtype="float64",
        decay_vectors=True,
        diagnostics=["params", "matrix_rms"],
        probes=[{"name": "shrinkage", "start": 10}],
    )
    r = train(cfg)
    n = sum(v.numel() for v in r.model_state.values())
    assert r.history["diag/params"].shape == (4, n)
    assert r.history["diag/matrix_rms"].shape == (4, 2)
    np.testing.assert_allclose(r.probes["shrinkage/shrinkage"], 3e-3 * 0.1, rtol=1e-6)  # AdamW: lr*lambda


def test_a_chapter_can_register_its_own_diagnostic():
    from wdlib.measures import DIAGNOSTICS, register_diagnostic

    register_diagnostic("test_first_weight_mean", lambda model, opt: float(next(model.parameters()).mean()))
    try:
        r = train(tiny(diagnostics=["test_first_weight_mean"]))
        assert r.history["diag/test_first_weight_mean"].shape == (4,)
    finally:
        DIAGNOSTICS.pop("test_first_weight_mean")
    with pytest.raises(ValueError, match="unknown diagnostic"):
        train(tiny(diagnostics=["nope"]))


def test_language_model_run():
    cfg = RunConfig(
        data="stdlib_chars",
        data_args={"max_bytes": 100_000},
        model="gpt",
        model_args={"n_layer": 1, "n_head": 2, "n_embd": 16},
        block_size=16,
        batch_size=8,
        steps=10,
        eval_batches=2,
        scale="test",
    )
    r = train(cfg)
    assert np.isfinite(r.final["val_loss"]) and r.info["attention_backend"]


# --- the store -------------------------------------------------------------------------------------------------


def test_store_reuses_a_finished_run_and_separates_changed_configs(tmp_path):
    first = run(tiny(), tmp_path)
    again = run(tiny(), tmp_path)
    assert not first.info["cached"] and again.info["cached"]
    assert same_history(first, again, skip=()) and same_weights(first, again)
    changed = run(tiny(weight_decay=0.2), tmp_path)
    assert not changed.info["cached"] and changed.info["key"] != first.info["key"]
    prov = Store(tmp_path).list()[0]["provenance"]
    assert {"wdlib", "git_commit", "torch", "device_name", "wall_time", "date"} <= set(prov)


def test_scales_never_mix(tmp_path):
    smoke = run(tiny(scale="smoke"), tmp_path)
    full = run(tiny(scale="full"), tmp_path)
    assert smoke.info["key"] != full.info["key"] and not full.info["cached"]
    assert [r["scale"] for r in Store(tmp_path).list("smoke")] == ["smoke"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_damaged_entry_is_detected_and_rerun(tmp_path, damage):
    first = run(tiny(), tmp_path)
    npz = tmp_path / "results" / f"{first.info['key']}.npz"
    if damage == "truncate":
        npz.write_bytes(npz.read_bytes()[:50])
    elif damage == "garbage":
        npz.write_bytes(b"not an npz")
    else:
        npz.unlink()
    again = run(tiny(), tmp_path)
    assert not again.info["cached"] and same_history(first, again)


# --- code identity, staleness, recovery of the index ------------------------------------------------------


def quick(**changes) -> RunConfig:
    """A 5-step run (about a second): enough to fill a store."""
    return tiny(steps=5, eval_every=5, **changes)


def _other_code(monkeypatch) -> None:
    """Pretend the training code changed since the store was filled (its results become stale)."""
    import wdlib.store as runs_mod

    real = runs_mod.code_identity()
    monkeypatch.setattr(runs_mod, "code_identity", lambda: {**real, "code": "0" * 64})


def test_each_result_describes_itself_with_its_code_identity(tmp_path):
    from wdlib.store import CODE_FILES, code_identity

    r = run(quick(), tmp_path)
    key = r.info["key"]
    rec = json.loads((tmp_path / "results" / f"{key}.json").read_text())
    assert rec["key"] == key and rec["config"] == quick().to_dict() and rec["scale"] == "test"
    assert rec["provenance"]["identity"] == code_identity()
    assert set(code_identity()) == {"wdlib", "torch", "code"} and len(code_identity()["code"]) == 64
    assert {"config.py", "train.py", "optim.py", "data.py", "models.py"} <= set(CODE_FILES)
    row = Store(tmp_path).list()[0]
    assert row["stale"] is False and row["provenance"]["identity"] == code_identity()
    assert run(quick(), tmp_path).info["stale"] is False


def test_stale_results_follow_wdlib_stale(tmp_path, monkeypatch):
    import warnings

    from wdlib.store import StaleResultWarning

    first = run(quick(), tmp_path)
    key = first.info["key"]
    _other_code(monkeypatch)
    assert Store(tmp_path).list()[0]["stale"] is True
    monkeypatch.setenv("WDLIB_STALE", "warn")
    with pytest.warns(StaleResultWarning, match=f"{key}.*training code"):
        r = run(quick(), tmp_path)
    assert r.info["cached"] and r.info["stale"]
    monkeypatch.setenv("WDLIB_STALE", "reuse")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run(quick(), tmp_path).info["cached"]
    monkeypatch.setenv("WDLIB_STALE", "sometimes")
    with pytest.raises(ValueError, match="WDLIB_STALE must be one of recompute, warn, reuse"):
        run(quick(), tmp_path)
    monkeypatch.delenv("WDLIB_STALE")  # default: recompute, and the new result replaces the stale one
    again = run(quick(), tmp_path)
    assert not again.info["cached"] and same_history(first, again, skip=("wall_time",))
    rows = Store(tmp_path).list()
    assert len(rows) == 1 and rows[0]["stale"] is False
    assert run(quick(), tmp_path).info["cached"]


def test_results_without_identity_are_stale_and_can_be_forgotten(tmp_path):
    import sqlite3

    keep = run(quick(), tmp_path).info["key"]
    old = run(quick(seed=1), tmp_path).info["key"]
    db = sqlite3.connect(tmp_path / "index.sqlite")  # a row as stored before identities existed
    prov = json.loads(db.execute("SELECT provenance FROM runs WHERE key = ?", (old,)).fetchone()[0])
    prov.pop("identity")
    db.execute("UPDATE runs SET provenance = ? WHERE key = ?", (json.dumps(prov), old))
    db.commit()
    db.close()
    (tmp_path / "results" / f"{old}.json").unlink()
    store = Store(tmp_path)
    assert {r["key"]: r["stale"] for r in store.list()} == {keep: False, old: True}
    assert store.forget_stale() == 1
    assert [r["key"] for r in store.list()] == [keep]
    assert not list((tmp_path / "results").glob(f"{old}.*"))


def test_rerun_trains_a_current_result_again(tmp_path):
    assert not run(quick(), tmp_path).info["cached"]
    assert not run(quick(), tmp_path, rerun=True).info["cached"]
    assert run(quick(), tmp_path).info["cached"] and len(Store(tmp_path).list()) == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_index_is_moved_aside_and_rebuilt(tmp_path, damage):
    from wdlib.store import StoreRecoveryWarning

    first = [run(quick(seed=s), tmp_path) for s in range(3)]
    index = tmp_path / "index.sqlite"
    index.write_bytes(os.urandom(6000) if damage == "garbage" else index.read_bytes()[:4096])
    with pytest.warns(StoreRecoveryWarning, match="3 run\\(s\\) recovered"):
        store = Store(tmp_path)
    assert len(list(tmp_path.glob("index.sqlite.damaged-*"))) == 1
    assert len(store.list()) == 3
    again = run(quick(seed=1), store)
    assert again.info["cached"] and same_history(first[1], again, skip=())


def test_an_emptied_or_deleted_index_heals_and_old_results_are_counted(tmp_path):
    import sqlite3

    from wdlib.store import StoreRecoveryWarning

    a = run(quick(), tmp_path)
    b = run(quick(seed=1), tmp_path)
    db = sqlite3.connect(tmp_path / "index.sqlite")
    db.execute("DELETE FROM runs")
    db.commit()
    db.close()
    assert run(quick(), tmp_path).info["cached"]  # healed on lookup from results/<key>.json
    assert len(Store(tmp_path).list()) == 2  # and list() puts back the rest
    (tmp_path / "index.sqlite").unlink()
    with pytest.warns(StoreRecoveryWarning, match="had no index.sqlite"):
        assert len(Store(tmp_path).list()) == 2
    # a result without its .json (stored before they existed) cannot come back from a lost index: said, not hidden
    (tmp_path / "results" / f"{b.info['key']}.json").unlink()
    (tmp_path / "index.sqlite").write_bytes(b"\0" * 8192)
    with pytest.warns(StoreRecoveryWarning, match="1 result\\(s\\) stored before results/<key>.json existed"):
        rows = Store(tmp_path).list()
    assert [r["key"] for r in rows] == [a.info["key"]]
    assert (tmp_path / "results" / f"{b.info['key']}.npz").exists()  # never deleted


def test_reindex_checks_hashes_and_deletes_nothing(tmp_path):
    from wdlib.store import StoreRecoveryWarning

    good = run(quick(), tmp_path).info["key"]
    bad = run(quick(seed=1), tmp_path).info["key"]
    (tmp_path / "results" / f"{bad}.npz").write_bytes(b"not an npz")
    (tmp_path / "results" / f"{'f' * 24}.json").write_text("{not json")
    store = Store(tmp_path)
    with pytest.warns(StoreRecoveryWarning, match="2 result file\\(s\\) skipped"):
        assert store.reindex() == 1
    assert (tmp_path / "results" / f"{bad}.npz").exists() and (tmp_path / "results" / f"{'f' * 24}.json").exists()
    assert run(quick(), store).info["cached"] and run(quick(), store).info["key"] == good


def test_opening_a_store_that_is_not_there(tmp_path):
    with pytest.raises(ValueError, match="no run store at .*nowhere \\(it has no index.sqlite or results/\\)"):
        Store(tmp_path / "nowhere", create=False)
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        Store(tmp_path / "file")


def test_cli_runs_forget_all_stale_and_reindex(tmp_path, capsys, monkeypatch):
    from wdlib.cli import main

    a = run(quick(), tmp_path).info["key"]
    b = run(quick(seed=1), tmp_path).info["key"]
    assert main(["runs", "--store", str(tmp_path)]) == 0
    assert "2 run(s)" in capsys.readouterr().out
    assert main(["runs", "--store", str(tmp_path), "--forget", a]) == 0
    assert f"forgot run {a}" in capsys.readouterr().out and not (tmp_path / "results" / f"{a}.npz").exists()
    for bad, message in ((a, f"no run {a} in the store"), ("../../etc", "a run key is 24 hex digits")):
        with pytest.raises(SystemExit) as err:
            main(["runs", "--store", str(tmp_path), "--forget", bad])
        lines = capsys.readouterr().err.strip().splitlines()
        assert err.value.code == 2 and len(lines) == 1 and lines[0].startswith(f"wdlib: error: {message}")
    assert main(["runs", "--store", str(tmp_path), "--reindex"]) == 0
    assert "reindexed 1 run(s)" in capsys.readouterr().out
    _other_code(monkeypatch)
    assert main(["runs", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{b}" in out and "stale" in out and "1 stale" in out
    assert main(["runs", "--store", str(tmp_path), "--all-stale"]) == 0
    assert "forgot 1 stale run(s)" in capsys.readouterr().out and Store(tmp_path).list() == []
    with pytest.raises(SystemExit) as err:
        main(["runs", "--store", str(tmp_path / "nowhere")])
    assert err.value.code == 2 and "no run store at" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_cli_internal_error_prints_its_traceback_and_exits_3(monkeypatch, capsys):
    import wdlib.cli

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(wdlib.cli, "_tau", broken)
    with pytest.raises(SystemExit) as err:
        wdlib.cli.main(["tau", "--lr", "1e-3", "--weight-decay", "0.1", "--dataset-size", "10", "--batch-size", "1"])
    stderr = capsys.readouterr().err
    assert err.value.code == 3 and "Traceback" in stderr and "KeyError: 'a bug'" in stderr
    assert stderr.strip().splitlines()[-1] == "wdlib: internal error (a bug): please report it with the traceback above"


def test_cli_run_rerun(tmp_path, capsys):
    from wdlib.cli import main

    cfg = _write_config(tmp_path / "c.json", steps=5, eval_every=5)
    store = str(tmp_path / "s")
    cached = []
    for extra in ([], [], ["--rerun"]):
        assert main(["run", str(cfg), "--store", store, *extra]) == 0
        cached.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["cached"])
    assert cached == [False, True, False]


# --- the example configuration and the defaults ----------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "example.yaml"


def test_example_config_validates_as_shipped():
    import yaml

    fields = yaml.safe_load(EXAMPLE.read_text())
    cfg = RunConfig.from_dict(fields)
    assert cfg.steps == fields["steps"] == 200
    assert cfg.optimizer["name"] == "adam" and cfg.optimizer["decay"] == "decoupled"
    assert cfg.lr_schedule["name"] == "cosine" and cfg.lr_schedule["warmup"] > 0 and cfg.eval_every > 0


def test_example_config_runs_through_the_cli(tmp_path, capsys):
    from wdlib.cli import main

    assert (
        main(
            [
                "run",
                str(EXAMPLE),
                "--store",
                str(tmp_path),
                "--set",
                "steps=25",
                "--set",
                "eval_every=25",
                "--set",
                'data_args={"num_samples": 600}',
            ]
        )
        == 0
    )
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["cached"] is False and line["steps_done"] == 25 and np.isfinite(line["final"]["val_loss"])


def test_default_configuration_is_runnable():
    r = train(RunConfig(steps=2, data_args={"num_samples": 600}))
    assert r.steps_done == 2 and np.isfinite(r.final["val_loss"])
    assert RunConfig().model_args == {"width": 128, "depth": 2}


def test_numpy_and_tensor_scalars_are_plain_numbers():
    plain = tiny(lr=1e-3, steps=100, weight_decay=0.1, optimizer={"name": "adam", "betas": [0.9, 0.95]}, seed=3)
    odd = tiny(
        lr=np.float32(1e-3),
        steps=np.int64(100),
        weight_decay=torch.tensor(0.1),
        optimizer={"name": "adam", "betas": [np.float64(0.9), np.float32(0.95)]},
        seed=torch.tensor(3),
    )
    assert odd.key() == plain.key() and odd.to_dict() == plain.to_dict()
    assert type(odd.steps) is int and type(odd.lr) is float and type(odd.seed) is int
    with pytest.raises(ValueError, match="steps must be an integer"):
        tiny(steps=np.float64(100.0))


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"model": "gpt"}, "model 'gpt' needs a token dataset (stdlib_chars, openwebtext), got data 'mnist1d'"),
        ({"data": "stdlib_chars", "data_args": {}}, "model 'mlp' needs a classification dataset"),
        (
            {"lr_schedule": {"name": "cosine", "warmup": 40}},
            "lr_schedule: warmup (40) + delay (0) must be less than steps",
        ),
        ({"wd_schedule": {"name": "constant", "delay": 50}}, "wd_schedule: warmup (0) + delay (50)"),
        ({"lr": float("inf")}, "lr must be a finite number"),
        ({"optimizer": {"name": "adam", "eps": float("nan")}}, "optimizer.eps must be a finite number"),
        ({"seed": 1e26}, "seed must be an integer in [0, "),
        ({"seed": 2**63}, "seed must be an integer in [0, "),
        ({"seed": 3.0}, "seed must be an integer"),
        ({"steps": 10**300}, "steps must be an integer in [1, "),
        ({"perturb_step": 40}, "perturb_step must be an integer in [0, 39]"),
        ({"diagnostics": 5}, "diagnostics must be a list"),
        ({"model_args": {1: 2}}, "model_args keys must be"),
    ],
)
def test_bad_values_fail_when_the_configuration_is_built(changes, message):
    with pytest.raises(ValueError) as err:
        tiny(**changes)
    assert message in str(err.value)
    with pytest.raises(ValueError, match="keys must be field names"):
        RunConfig.from_dict({1: 2, "lr": 1e-3})


def _worker(root: str, wd: float) -> None:
    torch.set_num_threads(1)
    run(tiny(weight_decay=wd), Store(root), progress=False)


def test_parallel_writers(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), wd)) for wd in (0.0, 0.1, 0.2, 0.2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
        assert p.exitcode == 0
    rows = Store(tmp_path).list()
    assert sorted(r["config"]["weight_decay"] for r in rows) == [0.0, 0.1, 0.2]
    assert all(run(tiny(weight_decay=wd), tmp_path).info["cached"] for wd in (0.0, 0.1, 0.2))


def test_sweep_table_with_two_workers(tmp_path):
    base = tiny(lr_schedule={"name": "cosine"})  # the last scheduled LR must not overwrite the grid's lr column
    table = sweep(base, {"lr": [1e-3, 3e-3], "weight_decay": [0.0, 0.1]}, tmp_path, workers=2)
    assert len(table) == 4 and {"lr", "weight_decay", "key", "val_loss", "diverged_at", "final_lr"} <= set(
        table.columns
    )
    assert sorted(set(table["lr"])) == [1e-3, 3e-3]
    assert len(Store(tmp_path).list()) == 4
    with pytest.raises(ValueError, match="grid"):
        expand_grid(tiny(), {"lr": []})


# --- bad configurations ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"stpes": 10}, "stpes"),
        ({"model": "vgg"}, "model"),
        ({"data": "mnist"}, "data"),
        ({"steps": -1}, "steps"),
        ({"precision": "fp16"}, "precision"),
        ({"optimizer": {"name": "adam", "decay": "adamw"}}, "optimizer.decay"),
        ({"lr_schedule": {"name": "exp"}}, "lr_schedule"),
        ({"batch_size": 10, "grad_accum": 3}, "batch_size"),
        ({"optimizer": {"name": "adam", "betas": [0.9, 1.0]}}, "optimizer.betas"),
        ({"grad_clip": 0}, "grad_clip"),
        ({"wd_schedule": {"name": "equal_contribution"}}, "wd_schedule"),
        ({"lr": "fast"}, "lr"),
    ],
)
def test_bad_configuration_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        tiny(**changes)


def test_equal_values_give_equal_keys():
    assert tiny(weight_decay=0).key() == tiny(weight_decay=0.0).key()
    assert tiny(lr="1e-3").key() == tiny(lr=0.001).key()  # YAML 1.1 reads 1e-3 as a string
    assert (
        tiny(lr_schedule={"name": "cosine", "final": 0}).key()
        == tiny(lr_schedule={"name": "cosine", "final": 0.0}).key()
    )


def test_late_failures_are_caught_before_training():
    with pytest.raises(ValueError, match="start"):
        train(tiny(probes=[{"name": "shrinkage", "start": 40}]))
    with pytest.raises(ValueError, match="Adam-type"):
        train(tiny(optimizer="sgd", probes=[{"name": "shrinkage"}]))


def test_a_diagnostic_of_the_wrong_kind_fails_at_the_first_evaluation():
    from wdlib.measures import DIAGNOSTICS, register_diagnostic

    calls = []
    register_diagnostic("test_ragged", lambda model, opt: calls.append(1) or np.zeros(len(calls)))
    try:
        with pytest.raises(ValueError, match="changed shape"):
            train(tiny(diagnostics=["test_ragged"]))
        assert len(calls) == 2
    finally:
        DIAGNOSTICS.pop("test_ragged")


def test_ema_is_kept_in_float32_under_bf16_pure():
    r = train(tiny(precision="bf16-pure", ema=0.9, steps=30))
    assert {t.dtype for t in r.ema_state.values()} == {torch.float32}
    w = next(k for k in r.ema_state if k.endswith("weight"))
    assert not torch.equal(r.ema_state[w], r.model_state[w].float())
    assert np.isfinite(r.final["ema_val_loss"])


def test_params_snapshot_strides_stay_in_range():
    from wdlib.diagnostics import PARAMS_SNAPSHOT_MAX, _params_snapshot

    model = torch.nn.Linear(300, 200)  # 60,200 parameters > 32,768
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double().numpy()
    snap = _params_snapshot(model, None)
    assert snap.shape == (PARAMS_SNAPSHOT_MAX,) and snap[0] == flat[0] and snap[-1] == flat[-1]


def test_bad_model_arguments_name_the_argument():
    with pytest.raises(ValueError, match="widht"):
        train(tiny(model_args={"widht": 3, "depth": 1}))


# --- the command line: run, kill, resume -------------------------------------------------------------------


def _cli(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "wdlib", *args], capture_output=True, text=True, timeout=300, env=env, **kw
    )


def _write_config(path: Path, **changes) -> Path:
    path.write_text(json.dumps({**TINY, **changes}))
    return path


def test_cli_run_runs_and_help(tmp_path):
    cfg = _write_config(tmp_path / "c.json")
    out = _cli("run", str(cfg), "--store", str(tmp_path / "s"), "--set", "steps=20")
    assert out.returncode == 0, out.stderr
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["cached"] is False and line["diverged_at"] is None and "val_loss" in line["final"]
    assert "1 run(s)" in _cli("runs", "--store", str(tmp_path / "s")).stdout
    helptext = _cli("run", "--help").stdout
    assert all(name in helptext for name in RunConfig.__dataclass_fields__)
    bad = _cli("run", str(_write_config(tmp_path / "b.json", optimizer="adagrad")), "--store", str(tmp_path / "s"))
    assert bad.returncode == 2 and "optimizer.name must be one of" in bad.stderr
    yaml_cfg = tmp_path / "c.yaml"
    yaml_cfg.write_text(
        "data: mnist1d\ndata_args: {num_samples: 600}\nmodel: mlp\nmodel_args: {width: 8, depth: 1}\n"
        "steps: 5\nbatch_size: 32\nscale: test\n"
    )
    assert _cli("run", str(yaml_cfg), "--store", str(tmp_path / "s")).returncode == 0


def test_kill_and_resume_is_bit_identical(tmp_path):
    """SIGKILL a CLI run twice at checkpoints, resume it each time, compare with an uninterrupted run."""
    changes = dict(
        steps=2500,
        checkpoint_every=100,
        eval_every=250,
        model_args={"width": 48, "depth": 2},
        ema=0.99,
        grad_accum=2,
        lr_schedule={"name": "cosine", "warmup": 100},
        diagnostics=["matrix_rms"],
        probes=[{"name": "shrinkage", "start": 1000}],
    )
    cfg_file = _write_config(tmp_path / "c.json", **changes)
    whole = _cli("run", str(cfg_file), "--store", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    store = tmp_path / "killed"
    key = tiny(**changes).key()
    ckpt = Store(store).checkpoint_path(key)  # named by key and code identity
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kills = []
    for _ in range(2):
        before = ckpt.stat().st_mtime_ns if ckpt.exists() else None
        proc = subprocess.Popen(
            [sys.executable, "-m", "wdlib", "run", str(cfg_file), "--store", str(store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if ckpt.exists() and ckpt.stat().st_mtime_ns != before:
                break
            time.sleep(0.02)
        time.sleep(0.1)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills.append(True)
        proc.wait()
    assert kills, "the run finished before it could be interrupted: make it longer"
    done = _cli("run", str(cfg_file), "--store", str(store))
    assert done.returncode == 0, done.stderr
    a = run(tiny(**changes), tmp_path / "whole")
    b = run(tiny(**changes), store)
    assert a.info["cached"] and b.info["cached"]
    assert b.info["provenance"]["resumed_from"] > 0, "the last process did not resume from a checkpoint"
    assert same_history(a, b) and same_weights(a, b)
    assert all(torch.equal(a.ema_state[k], b.ema_state[k]) for k in a.ema_state)
    assert all(np.array_equal(a.probes[k], b.probes[k]) for k in a.probes) and a.probes


# --- DDP -------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, root: str) -> None:
    """What torchrun sets up, by hand: the env variables, then the same code as a single process."""
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
        }
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    run(tiny(dtype="float64", steps=30, checkpoint_every=10), Store(root), device="cpu", progress=False)
    again = run(tiny(dtype="float64", steps=30, checkpoint_every=10), Store(root), device="cpu", progress=False)
    assert again.info["cached"]
    dist.destroy_process_group()


def test_ddp_two_gloo_processes_equal_one_process(tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rows = Store(tmp_path).list()
    assert len(rows) == 1 and rows[0]["summary"]["info"]["world_size"] == 2  # rank 0 alone wrote
    ddp = run(tiny(dtype="float64", steps=30, checkpoint_every=10), tmp_path).model_state
    single = train(tiny(dtype="float64", steps=30)).model_state
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-9, atol=1e-11)


def test_mup_groups_multipliers_and_zero_readout():
    from wdlib.models import MLP
    from wdlib.params import mup_groups

    torch.manual_seed(0)
    model = MLP(40, 256, 2, 10)
    groups = {g["name"]: g for g in mup_groups(model, base_width=64, width=256, decay="scaled")}
    assert set(groups) == {"input", "hidden", "readout", "vectors"}
    assert groups["hidden"]["lr_mult"] == 0.25 and groups["hidden"]["wd_mult"] == 4.0
    assert groups["readout"]["lr_mult"] == 0.25 and groups["vectors"]["wd_mult"] == 0.0
    assert len(groups["hidden"]["params"]) == 1 and torch.count_nonzero(model[-1].weight) == 0
    const = {g["name"]: g for g in mup_groups(MLP(40, 256, 2, 10), 64, 256, decay="constant", zero_readout=False)}
    assert const["hidden"]["wd_mult"] == 1.0
    with pytest.raises(ValueError, match="decay"):
        mup_groups(model, 64, 256, decay="both")


def test_mup_run_applies_the_multipliers():
    cfg = tiny(model_args={"width": 32, "depth": 2}, mup={"base_width": 16, "decay": "scaled"}, steps=5)
    r = train(cfg)
    groups = {g["name"]: g for g in r.info["groups"]}
    assert set(groups) == {"input", "hidden", "readout", "vectors"}
    with pytest.raises(ValueError, match="mup"):
        tiny(mup={"decay": "scaled"})
    with pytest.raises(ValueError, match="independent"):
        tiny(
            model_args={"width": 32, "depth": 2},
            mup={"base_width": 16},
            optimizer={"name": "adam", "decay": "independent"},
        )


def test_a_checkpoint_of_other_code_is_not_resumed(tmp_path, monkeypatch):
    """The checkpoint's name carries the code identity: other code starts over and leaves it on disk."""
    import wdlib.store as runs_mod

    store = Store(tmp_path / "s")
    key = tiny().key()
    mine = store.checkpoint_path(key)
    real = runs_mod.code_identity()
    monkeypatch.setattr(runs_mod, "code_identity", lambda: {**real, "code": "0" * 64})
    other = store.checkpoint_path(key)
    assert other != mine and other.parent == mine.parent and key in other.name


def test_run_many_keeps_its_worker_processes_between_calls(monkeypatch):
    import os

    from wdlib import runs

    monkeypatch.setattr(runs, "_POOLS", {})
    pool = runs._pool(2)
    pids = {f.result() for f in [pool.submit(os.getpid) for _ in range(4)]}
    assert runs._pool(2) is pool  # the next call reuses the workers (no new spawn, datasets stay cached)
    assert {f.result() for f in [pool.submit(os.getpid) for _ in range(4)]} <= pids
    monkeypatch.setenv("WDLIB_PACK", "never")  # workers read WDLIB_* when they start: a new environment, new pool
    fresh = runs._pool(2)
    assert fresh is not pool and list(runs._POOLS.values()) == [fresh]
    fresh.shutdown()
