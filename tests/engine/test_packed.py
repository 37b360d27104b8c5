"""Packed training (wdlib.packed): members match their solo runs, diverge alone, resume bit-identically,
and what cannot be packed is trained alone with the reason recorded."""

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from wdlib import packed
from wdlib.config import RunConfig
from wdlib.optim import SGD, Adam
from wdlib.packed import PackedOptimizer, plan_packs, train_packed, why_not_packed
from wdlib.runs import Store, run_many, run_pack
from wdlib.train import train

BASE = dict(
    data="mnist1d",
    data_args={"num_samples": 600},
    model="mlp",
    model_args={"width": 16, "depth": 1},
    optimizer={"name": "adam", "decay": "decoupled"},
    lr=3e-3,
    weight_decay=0.1,
    steps=30,
    batch_size=32,
    eval_every=10,
    eval_batches=3,
    scale="test",
)


def cfg(**changes) -> RunConfig:
    return RunConfig.from_dict({**BASE, **changes})


def members(base: RunConfig) -> list[RunConfig]:
    """Three members differing in seed, lr and weight decay."""
    return [base, base.replace(seed=1, lr=base.lr * 2), base.replace(seed=2, weight_decay=base.weight_decay * 3 + 0.01)]


def close(a, b, rtol: float) -> None:
    """Same history keys, histories and final weights within ``rtol`` (relative to each array's scale)."""
    assert set(a.history) == set(b.history)
    for k in a.history:
        if k == "wall_time":
            continue
        np.testing.assert_allclose(a.history[k], b.history[k], rtol=rtol, atol=rtol, err_msg=k)
    for k, v in a.model_state.items():
        scale = float(v.abs().max()) or 1.0
        assert float((v.double() - b.model_state[k].double()).abs().max()) <= rtol * scale, k


# --- the optimizer, step by step ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,decay,options",
    [
        ("adam", "l2", {}),
        ("adam", "decoupled", {}),
        ("adam", "independent", {}),
        ("sgd", "l2", {"momentum": 0.9}),
        ("sgd", "decoupled", {"momentum": 0.9, "nesterov": True}),
        ("sgd", "independent", {}),
    ],
)
def test_packed_optimizer_is_each_members_optimizer(kind, decay, options):
    """On the same gradients (float64), M members stepped together equal M solo wdlib optimizers, each with
    its own lr and weight decay (changed midway, as schedules do), to 1e-12."""
    gen = torch.Generator().manual_seed(0)
    shapes = {"w": (5, 3), "b": (5,)}
    lrs, wds = [0.1, 0.03, 0.2], [0.0, 0.5, 0.05]
    solo_params = [{n: torch.randn(s, generator=gen, dtype=torch.float64) for n, s in shapes.items()} for _ in lrs]
    stacked = {n: torch.stack([p[n] for p in solo_params]).clone().requires_grad_(True) for n in shapes}
    cls = Adam if kind == "adam" else SGD
    opts = [
        cls([{"params": list(p.values())}], lr=lr, weight_decay=wd, decay=decay, **options)
        for p, lr, wd in zip(solo_params, lrs, wds)
    ]
    holders = [
        cls([{"params": [torch.zeros(1)]}], lr=lr, weight_decay=wd, decay=decay, **options) for lr, wd in zip(lrs, wds)
    ]
    pk = PackedOptimizer(stacked, holders, [list(shapes)])
    for t in range(12):
        if t == 6:  # a schedule changes lr and weight decay of every member
            for o in opts + holders:
                o.param_groups[0]["lr"] *= 0.5
                o.param_groups[0]["weight_decay"] *= 2
        grads = {n: torch.randn((len(lrs), *s), generator=gen, dtype=torch.float64) for n, s in shapes.items()}
        for m, p in enumerate(solo_params):
            for n in shapes:
                p[n].grad = grads[n][m].clone()
        for n in shapes:
            stacked[n].grad = grads[n].clone()
        for o in opts:
            o.step()
        pk.step()
    for m, p in enumerate(solo_params):
        for n in shapes:
            torch.testing.assert_close(stacked[n].detach()[m], p[n], rtol=1e-12, atol=1e-12)


def test_packed_optimizer_refuses_other_optimizers():
    with pytest.raises(ValueError, match="Adam and SGD"):
        PackedOptimizer({}, [torch.optim.AdamW([torch.zeros(1, requires_grad=True)])], [[]])


# --- members against their solo runs --------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"optimizer": {"name": "adam", "decay": "l2"}},
        {"optimizer": {"name": "sgd", "decay": "decoupled", "momentum": 0.9}, "lr": 0.05},
        {"optimizer": {"name": "sgd", "decay": "independent", "nesterov": True, "momentum": 0.9}, "lr": 0.05},
        {
            "lr_schedule": {"name": "cosine", "warmup": 5},
            "wd_schedule": {"name": "linear"},
            "grad_clip": 0.5,
            "grad_accum": 2,
            "ema": 0.9,
        },
        {"model": "convnet", "model_args": {"channels": [4, 4, 4], "norm": "batch"}, "snapshots": (10, 20)},
        {"mup": {"base_width": 8}, "model_args": {"width": 16, "depth": 2}, "decay_vectors": True},
        {"label_noise": 0.2, "measures": ({"name": "noise_fit"}, {"name": "hessian_trace", "probes": 4})},
    ],
    ids=[
        "adamw",
        "adam-l2",
        "sgdw-momentum",
        "sgd-independent-nesterov",
        "schedule-clip-accum-ema",
        "bn-convnet",
        "mup",
        "noise-measures",
    ],
)
def test_member_matches_solo_run_in_float64(changes):
    """In float64 a member's whole history, final weights, EMA and snapshots match its solo run to 1e-6: the
    only differences are float rounding (batched matmuls, _foreach instead of fused arithmetic) of the loss,
    which the training step computes in float32 even for float64 parameters (wdlib.objective.model_loss)."""
    configs = members(cfg(dtype="float64", **changes))
    solo = [train(c, device="cpu") for c in configs]
    pk = train_packed(configs, device="cpu")
    for a, b in zip(solo, pk):
        close(a, b, 1e-6)
        assert b.info["pack"]["members"] == 3 and a.config == b.config
        assert a.final.keys() == b.final.keys()
        for k in set(a.final) - {"wall_time"}:
            assert b.final[k] == pytest.approx(a.final[k], rel=1e-6, abs=1e-9), k
        if a.ema_state is not None:
            for k in a.ema_state:
                torch.testing.assert_close(a.ema_state[k], b.ema_state[k], rtol=1e-6, atol=1e-6)
        assert sorted(a.snapshots) == sorted(b.snapshots)


def test_member_matches_solo_run_in_float32_within_parity_rtol():
    """In float32 (the chapters' dtype) final losses agree within PARITY_RTOL and every history value within it."""
    configs = members(cfg(steps=60))
    solo = [train(c, device="cpu") for c in configs]
    pk = train_packed(configs, device="cpu")
    for a, b in zip(solo, pk):
        assert abs(a.final["train_loss"] - b.final["train_loss"]) <= packed.PARITY_RTOL * abs(a.final["train_loss"])
        close(a, b, packed.PARITY_RTOL)


def test_a_diverged_member_stops_and_the_others_go_on():
    """A member with a huge LR diverges at the step its solo run does, keeps the weights it had then, and the
    other members still match their solo runs."""
    base = cfg(dtype="float64", optimizer={"name": "sgd", "decay": "decoupled"}, lr=0.05, divergence_factor=3.0)
    configs = [base, base.replace(lr=500.0), base.replace(seed=1)]
    solo = [train(c, device="cpu") for c in configs]
    pk = train_packed(configs, device="cpu")
    assert solo[1].diverged_at is not None and pk[1].diverged_at == solo[1].diverged_at
    assert pk[1].steps_done == solo[1].steps_done
    close(solo[1], pk[1], 1e-6)
    for i in (0, 2):
        assert pk[i].diverged_at is None
        close(solo[i], pk[i], 1e-6)


def test_a_killed_pack_resumes_bit_identically(tmp_path, monkeypatch):
    """Killed after its checkpoint at step 20, the pack continues from it and ends bit-identical to an
    uninterrupted pack (CPU), a diverged member included."""
    base = cfg(checkpoint_every=10, divergence_factor=3.0, optimizer={"name": "sgd", "decay": "decoupled"}, lr=0.05)
    configs = [base, base.replace(lr=200.0), base.replace(seed=1)]
    whole = train_packed(configs, device="cpu")
    real_step, calls = packed._step, {"n": 0}

    def dying(pack, step, autocast):
        if step == 25:
            raise KeyboardInterrupt
        return real_step(pack, step, autocast)

    ckpt = tmp_path / "pack.pt"
    monkeypatch.setattr(packed, "_step", dying)
    with pytest.raises(KeyboardInterrupt):
        train_packed(configs, device="cpu", checkpoint=ckpt)
    monkeypatch.setattr(packed, "_step", real_step)
    assert torch.load(ckpt, weights_only=True)["members"][0]["step"] == 20
    resumed = train_packed(configs, device="cpu", checkpoint=ckpt)
    for a, b in zip(whole, resumed):
        assert a.diverged_at == b.diverged_at
        for k in a.history:
            if k != "wall_time":
                assert np.array_equal(a.history[k], b.history[k]), k
        assert all(torch.equal(a.model_state[k], b.model_state[k]) for k in a.model_state)
        assert b.info["resumed_from"] == 20
    del calls


def test_train_packed_refuses_what_it_cannot_pack():
    with pytest.raises(ValueError, match="may differ only in"):
        train_packed([cfg(), cfg(batch_size=16)], device="cpu")
    with pytest.raises(ValueError, match="bf16-pure"):
        train_packed([cfg(precision="bf16-pure"), cfg(seed=1, precision="bf16-pure")], device="cpu")
    with pytest.raises(ValueError, match="init_states"):
        train_packed([cfg(), cfg(seed=1)], device="cpu", init_states=[None, {}])
    with pytest.raises(ValueError, match="same key"):
        train_packed([cfg(), cfg()], device="cpu")
    with pytest.raises(ValueError, match="dropout"):
        gpt = dict(data="stdlib_chars", model="gpt", block_size=8, data_args={"max_bytes": 20000})
        args = {"n_layer": 1, "n_head": 1, "n_embd": 8, "dropout": 0.1}
        train_packed([cfg(**gpt, model_args=args), cfg(**gpt, model_args=args, seed=1)], device="cpu")


# --- planning and run_many --------------------------------------------------------------------------------


def test_plan_packs_groups_by_signature_and_gives_reasons():
    a = [cfg(seed=s) for s in range(3)]
    b = [cfg(batch_size=16, seed=s) for s in range(2)]
    lone = [cfg(precision="bf16-pure"), cfg(steps=7)]
    configs = a + b + lone + [a[0]]
    packs, reasons = plan_packs(configs, "cpu", "always")
    assert sorted(map(sorted, packs)) == [[0, 1, 2], [3, 4], [5], [6]]
    assert "bf16-pure" in reasons[5] and "alone" in reasons[6]
    packs, reasons = plan_packs(configs, "cpu", "never")
    assert all(len(p) == 1 for p in packs) and len(packs) == 7
    packs, _ = plan_packs(a, "cpu", "always", split=2)
    assert sorted(len(p) for p in packs) == [1, 2]
    with pytest.raises(ValueError, match="pack must be one of"):
        plan_packs(a, "cpu", "sometimes")
    with pytest.raises(ValueError, match="split"):
        plan_packs(a, "cpu", split=0)


def test_auto_packs_on_a_gpu_only():
    """pack='auto' off a GPU trains every run alone, with the reason; 'always' packs the same runs."""
    small = [cfg(seed=s) for s in range(2)]
    packs, reasons = plan_packs(small, "cpu", "auto")
    assert packs == [[0], [1]] and reasons[0] == reasons[1] == packed.CPU_REASON
    assert plan_packs(small, "cpu", "always")[0] == [[0, 1]]
    assert why_not_packed(cfg(precision="bf16-pure")) is not None
    assert why_not_packed(cfg(optimizer="torch.adamw")) is not None


def test_run_many_packs_and_files_each_member_under_its_key(tmp_path):
    store = Store(tmp_path / "s")
    configs = members(cfg()) + [cfg(optimizer="torch.adamw")]
    results = run_many(configs, store, device="cpu", pack="always")
    assert [r.info["pack"]["members"] for r in results] == [3, 3, 3, 1]
    assert "torch.adamw" in results[3].info["pack"]["reason"]
    assert [r.info["key"] for r in results] == [c.key() for c in configs]
    again = run_many(configs, store, device="cpu", pack="always")
    assert all(r.info["cached"] for r in again)
    for a, b in zip(results, again):
        assert all(torch.equal(a.model_state[k], b.model_state[k]) for k in a.model_state)
    assert not list((tmp_path / "s" / "checkpoints").glob("*.pt"))
    with pytest.raises(ValueError, match="pack must be one of"):
        run_many(configs, store, pack="maybe")


def test_run_pack_trains_only_the_missing_members(tmp_path):
    store = Store(tmp_path / "s")
    configs = members(cfg())
    first = run_pack(configs[:1], store, device="cpu")[0]
    assert first.info["pack"] == {"members": 1, "reason": "alone"}
    results = run_pack(configs, store, device="cpu")
    assert results[0].info["cached"] and results[1].info["pack"]["members"] == 2


def test_run_many_with_workers_packs_in_each_worker(tmp_path):
    configs = [cfg(seed=s) for s in range(4)]
    results = run_many(configs, Store(tmp_path / "s"), workers=2, device="cpu", pack="always")
    assert sorted(r.info["pack"]["members"] for r in results) == [2, 2, 2, 2]
    solo = copy.deepcopy(results)
    assert all(r.diverged_at is None for r in solo)


def test_probes_and_diagnostics_run_per_member():
    """Every probe and diagnostic of the registries, run on a packed member, gives what it gives on the solo
    run (float64, 1e-6): they see the member's own weights, gradients and optimizer state."""
    adam = cfg(
        dtype="float64",
        diagnostics=("params", "matrix_rms", "matrix_norm", "adam_elr"),
        probes=({"name": "updates", "coords": 16}, {"name": "shrinkage", "start": 5}, {"name": "relative_update"}),
    )
    sgd = cfg(
        dtype="float64",
        optimizer={"name": "sgd", "decay": "decoupled", "momentum": 0.9},
        lr=0.05,
        diagnostics=("matrix_rms",),
        probes=({"name": "angular"},),
    )
    for base in (adam, sgd):
        configs = members(base)
        solo = [train(c, device="cpu") for c in configs]
        pk = train_packed(configs, device="cpu")
        for a, b in zip(solo, pk):
            close(a, b, 1e-6)
            assert set(a.probes) == set(b.probes) and a.probes
            for k in a.probes:
                np.testing.assert_allclose(a.probes[k], b.probes[k], rtol=1e-6, atol=1e-9, err_msg=k)


def test_a_pack_resumes_with_probes_bit_identically(tmp_path, monkeypatch):
    base = cfg(checkpoint_every=10, probes=({"name": "updates", "coords": 8},), diagnostics=("adam_elr",))
    configs = members(base)
    whole = train_packed(configs, device="cpu")
    real_step = packed._step

    def dying(pack, step, autocast):
        if step == 15:
            raise KeyboardInterrupt
        return real_step(pack, step, autocast)

    monkeypatch.setattr(packed, "_step", dying)
    with pytest.raises(KeyboardInterrupt):
        train_packed(configs, device="cpu", checkpoint=tmp_path / "p.pt")
    monkeypatch.setattr(packed, "_step", real_step)
    resumed = train_packed(configs, device="cpu", checkpoint=tmp_path / "p.pt")
    for a, b in zip(whole, resumed):
        assert all(np.array_equal(a.probes[k], b.probes[k]) for k in a.probes)
        assert np.array_equal(a.history["diag/adam_elr"], b.history["diag/adam_elr"])
        assert all(torch.equal(a.model_state[k], b.model_state[k]) for k in a.model_state)


def test_members_start_from_their_snapshots(tmp_path):
    """Configurations with init_from (different parents) pack, each starting from its parent's snapshot: as
    their solo runs do (run_many with pack='never')."""
    parents = [cfg(snapshots=(10,)), cfg(seed=1, snapshots=(10,))]
    children = [
        cfg(steps=20, init_from={"run": p.key(), "step": 10}, seed=7, weight_decay=wd)
        for p in parents
        for wd in (0.0, 0.3)
    ]
    packed_store, solo_store = Store(tmp_path / "a"), Store(tmp_path / "b")
    for store, mode in ((packed_store, "always"), (solo_store, "never")):
        run_many(parents, store, device="cpu", pack=mode)
    pk = run_many(children, packed_store, device="cpu", pack="always")
    solo = run_many(children, solo_store, device="cpu", pack="never")
    assert [r.info["pack"]["members"] for r in pk] == [4, 4, 4, 4]
    for a, b in zip(solo, pk):
        close(a, b, packed.PARITY_RTOL)


def test_wdlib_pack_sets_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("WDLIB_PACK", "never")
    results = run_many(members(cfg()), Store(tmp_path / "s"), device="cpu")
    assert all(r.info["pack"]["members"] == 1 for r in results)
    monkeypatch.setenv("WDLIB_PACK", "sometimes")
    with pytest.raises(ValueError, match="WDLIB_PACK must be one of"):
        run_many(members(cfg()), Store(tmp_path / "s"), device="cpu")


def test_a_gpt_packs_with_batched_math_attention():
    """The GPT packs (fp32): its members match their solo runs (solo: flash attention, packed: the math kernel
    that vmap batches) within PARITY_RTOL, and the result says which attention kernel the pack ran."""
    gpt = cfg(
        data="stdlib_chars",
        data_args={"max_bytes": 50000},
        model="gpt",
        model_args={"n_layer": 1, "n_head": 2, "n_embd": 16},
        block_size=16,
        batch_size=8,
        steps=12,
        eval_every=6,
        eval_batches=2,
    )
    configs = [gpt, gpt.replace(seed=1, lr=1e-3)]
    solo = [train(c, device="cpu") for c in configs]
    pk = train_packed(configs, device="cpu")
    for a, b in zip(solo, pk):
        close(a, b, packed.PARITY_RTOL)
        assert b.info["attention_backend"].startswith("math")


def test_cli_sweep_packs_on_request(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({**BASE, "steps": 10}))
    cmd = [sys.executable, "-m", "wdlib", "sweep", str(config), "--store", str(tmp_path / "s"), "--json"]
    out = subprocess.run([*cmd, "--grid", "seed=0,1", "--pack", "always"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(rows) == 2
    stored = [json.loads(p.read_text()) for p in (tmp_path / "s" / "results").glob("*.json")]
    assert sorted(r["summary"]["info"]["pack"]["members"] for r in stored) == [2, 2]
    bad = subprocess.run([*cmd, "--grid", "seed=0,1", "--pack", "sometimes"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--pack" in bad.stderr
