"""Engine pieces of chapter 4: the step schedule, label noise, snapshots and runs that start from them,
measures of the final model, the effective learning rates, the angular probe and the ConvNet."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wdlib import data as wd_data
from wdlib.components import build_data
from wdlib.config import RunConfig, schedule_from_spec
from wdlib.diagnostics import AngularProbe, adam_effective_lr, effective_lr, update_to_weight_ratio
from wdlib.experiments import overparam as op
from wdlib.models import ConvNet, build
from wdlib.optim import SGD, Adam
from wdlib.runs import Store, run, run_many
from wdlib.schedules import StepDrop
from wdlib.train import train


def _tiny(**changes):
    fields = dict(
        data="mnist1d",
        data_args={"num_samples": 400},
        subset=256,
        model="convnet",
        model_args={"channels": [4, 4, 4]},
        optimizer={"name": "sgd", "decay": "l2"},
        lr=0.05,
        weight_decay=1e-3,
        batch_size=32,
        steps=24,
        scale="test",
        divergence_factor=1e6,
    )
    fields.update(changes)
    return RunConfig(**fields)


# --- schedule ------------------------------------------------------------------------------------------


def test_step_drop_schedule():
    s = StepDrop(peak=0.3, drop_at=5, final=0.03)
    assert s(0) == 0.3 and s(4) == 0.3 and s(5) == 0.03 and s(100) == 0.03
    np.testing.assert_allclose(s(np.arange(7)), [0.3] * 5 + [0.03] * 2)
    spec = schedule_from_spec({"name": "step", "final": 0.1, "decay_fraction": 0.5}, 0.2, 100)
    assert spec(49) == pytest.approx(0.2) and spec(50) == pytest.approx(0.02)
    with pytest.raises(ValueError, match="drop_at"):
        StepDrop(peak=0.1, drop_at=-1)


# --- label noise ---------------------------------------------------------------------------------------


def test_label_noise_exact_fraction_wrong_and_seeded():
    ds = wd_data.mnist1d(num_samples=500)
    noisy = wd_data.with_label_noise(ds, 0.3, seed=7)
    wrong = noisy.y_train != ds.y_train
    assert int(wrong.sum()) == round(0.3 * ds.y_train.numel())  # every chosen label is wrong
    assert torch.equal(wrong, noisy.noisy)
    assert torch.equal(noisy.y_test, ds.y_test)  # the test split stays clean
    assert int(noisy.y_train.min()) >= 0 and int(noisy.y_train.max()) < ds.num_classes
    again = wd_data.with_label_noise(ds, 0.3, seed=7)
    assert torch.equal(again.y_train, noisy.y_train)
    other = wd_data.with_label_noise(ds, 0.3, seed=8)
    assert not torch.equal(other.noisy, noisy.noisy)
    with pytest.raises(ValueError, match="fraction"):
        wd_data.with_label_noise(ds, 1.0, seed=0)
    with pytest.raises(ValueError, match="already has label noise"):
        wd_data.with_label_noise(noisy, 0.1, seed=0)


def test_new_fields_at_default_keep_old_keys():
    cfg = RunConfig()
    import hashlib
    import json

    d = cfg.to_dict()
    for name in ("label_noise", "measures", "snapshots", "init_from"):  # fields added later
        d.pop(name)
    # the optimizer as the flat fields it had before its spec (tests/test_optimizer_spec.py: more keys)
    d.update(optimizer="adam", decay="decoupled", momentum=0.0, nesterov=False, betas=[0.9, 0.999], eps=1e-8)
    old = hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:24]
    assert cfg.key() == old == "467ae49157fed20d473f2cf7"  # stored runs keep their keys
    assert RunConfig(label_noise=0.1).key() != cfg.key()


def test_build_data_applies_label_noise_after_subset():
    cfg = _tiny(label_noise=0.25)
    ds = build_data(cfg)
    assert ds.x_train.shape[0] == 256 and int(ds.noisy.sum()) == 64
    with pytest.raises(ValueError, match="label_noise"):
        _tiny(label_noise=1.5)


# --- model ---------------------------------------------------------------------------------------------


def test_convnet_shapes_and_parameter_count():
    net = ConvNet(in_channels=1, num_classes=10, input_size=40)
    assert sum(p.numel() for p in net.parameters()) == 9610  # the chapter's 1-D CNN
    assert net(torch.randn(3, 40)).shape == (3, 10)
    two = build(
        "convnet", in_channels=1, num_classes=4, input_size=8, channels=[4, 4], kernels=[3, 3], strides=[1, 2], dim=2
    )
    assert two(torch.randn(2, 1, 8, 8)).shape == (2, 4)
    with pytest.raises(ValueError, match="same length"):
        ConvNet(1, 10, 40, channels=(4,), kernels=(3, 3), strides=(1, 1))


# --- snapshots, init_from, measures ------------------------------------------------------------------


def test_snapshot_equals_a_shorter_run(tmp_path):
    store = Store(tmp_path)
    long = run(_tiny(snapshots=[8, 16]), store)
    short = run(_tiny(steps=16), store)
    assert sorted(long.snapshots) == [8, 16]
    for k, v in short.model_state.items():
        torch.testing.assert_close(long.snapshots[16][k], v, rtol=0, atol=0)
    again = store.get(_tiny(snapshots=[8, 16]))  # read back from the store
    torch.testing.assert_close(again.snapshots[8], long.snapshots[8], rtol=0, atol=0)


def test_init_from_starts_at_the_snapshot(tmp_path):
    store = Store(tmp_path)
    parent_cfg = _tiny(snapshots=[8])
    parent = run(parent_cfg, store)
    child_cfg = _tiny(steps=1, lr=0.0, weight_decay=0.0, init_from={"run": parent_cfg.key(), "step": 8})
    child = run(child_cfg, store)  # lr 0: the weights stay where they started
    for k, v in parent.snapshots[8].items():
        torch.testing.assert_close(child.model_state[k], v, rtol=0, atol=0)
    # the last step is always available, a step never kept is a clear error
    run(_tiny(steps=1, init_from={"run": parent_cfg.key(), "step": 24}), store)
    with pytest.raises(ValueError, match="no snapshot at step 5"):
        run(_tiny(steps=1, init_from={"run": parent_cfg.key(), "step": 5}), store)
    with pytest.raises(ValueError, match="not in the store"):
        run(_tiny(steps=1, init_from={"run": "0" * 24, "step": 5}), store)
    with pytest.raises(ValueError, match="init_state"):
        train(child_cfg)


def test_interrupted_run_keeps_its_snapshots(tmp_path):
    cfg = _tiny(snapshots=[4, 20], checkpoint_every=8)
    ck = tmp_path / "ck.pt"
    full = train(cfg, checkpoint=ck)  # leaves its step-16 checkpoint behind (run() would delete it)
    resumed = train(cfg, checkpoint=ck)  # so this one continues from step 16, as after a crash there
    assert resumed.info["resumed_from"] == 16
    assert sorted(resumed.snapshots) == [4, 20]
    for step in (4, 20):
        for k in full.snapshots[step]:
            torch.testing.assert_close(resumed.snapshots[step][k], full.snapshots[step][k], rtol=0, atol=0)


def test_noise_fit_measure(tmp_path):
    r = run(_tiny(label_noise=0.3, measures=[{"name": "noise_fit"}]), Store(tmp_path))
    assert 0 <= r.final["noise_fit/noisy_fit"] <= 1 and 0 <= r.final["noise_fit/clean_fit"] <= 1
    with pytest.raises(ValueError, match="unknown measure"):
        train(_tiny(measures=[{"name": "nope"}]))
    with pytest.raises(ValueError, match="label noise"):
        train(_tiny(measures=[{"name": "noise_fit"}]))


def test_run_many_dedupes_and_keeps_order(tmp_path):
    store = Store(tmp_path)
    a, b = _tiny(seed=1), _tiny(seed=2)
    out = run_many([a, b, a], store)
    assert [r.info["key"] for r in out] == [a.key(), b.key(), a.key()]
    with pytest.raises(ValueError, match="workers"):
        run_many([a], store, workers=0)


# --- effective learning rates ----------------------------------------------------------------------------


def test_effective_lr_formulas():
    assert effective_lr(0.1, 2.0, "sgd") == pytest.approx(0.025)
    assert effective_lr(0.1, 2.0, "adam") == pytest.approx(0.05)
    np.testing.assert_allclose(effective_lr(np.array([0.1, 0.2]), np.array([1.0, 2.0])), [0.1, 0.05])
    with pytest.raises(ValueError, match="rule"):
        effective_lr(0.1, 1.0, "lion")


def test_scale_invariance_gives_the_effective_lr_exponents():
    """Gradient ~ 1/c, SGD angle ~ 1/c^2 and Adam angle ~ 1/c for a Linear followed by LayerNorm."""
    from wdlib.stats import loglog_slope

    torch.manual_seed(0)
    net = build("mlp", in_dim=8, width=16, depth=1, out_dim=3, scale_invariant=True, bias=False).double()
    x, y = torch.randn(64, 8, dtype=torch.float64), torch.randint(0, 3, (64,))
    w = net[1].weight
    base = w.detach().clone()
    cs, gn, sgd_angle, adam_angle = (0.5, 1.0, 2.0, 4.0), [], [], []
    for c in cs:
        with torch.no_grad():
            w.copy_(c * base)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        (g,) = torch.autograd.grad(loss, [w])
        gn.append(float(g.norm()))
        sgd_angle.append(0.1 * float(g.norm()) / float(w.detach().norm()))  # one SGD step moves w by lr*||g||
        before = w.detach().clone()
        w.grad = g
        Adam([w], lr=1e-3, decay="decoupled").step()  # one step from a fresh state
        adam_angle.append(update_to_weight_ratio([before], [w.detach()])[0])
    assert loglog_slope(cs, gn) == pytest.approx(-1.0, abs=0.02)
    assert loglog_slope(cs, sgd_angle) == pytest.approx(-2.0, abs=0.02)
    assert loglog_slope(cs, adam_angle) == pytest.approx(-1.0, abs=0.02)


def test_adam_effective_lr_is_lr_over_sqrt_vhat():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = Adam([p], lr=0.1, betas=(0.9, 0.99), eps=1e-8, decay="decoupled")
    assert math.isnan(adam_effective_lr(opt))
    p.grad = torch.tensor([0.5, 4.0], dtype=torch.float64)
    opt.step()
    # after one step v_hat = g^2
    assert adam_effective_lr(opt) == pytest.approx(np.mean([0.1 / (0.5 + 1e-8), 0.1 / (4.0 + 1e-8)]))
    with pytest.raises(ValueError, match="Adam-type"):
        adam_effective_lr(SGD([p], lr=0.1))


def test_angular_probe_matches_the_sgd_step():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    opt = SGD([w], lr=0.1)
    probe = AngularProbe(opt, [w], every=2)
    for step in range(4):
        w.grad = torch.randn(4, 3, dtype=torch.float64)
        g = w.grad.clone()
        w0 = w.detach().clone()
        probe.before_step(step)
        opt.step()
        probe.after_step(step)
        if step % 2 == 0:
            row = len(probe.rows["step"]) - 1
            assert probe.rows["norm"][row][0] == pytest.approx(float(w0.norm()))
            assert probe.rows["grad_norm"][row][0] == pytest.approx(float(g.norm()))
            assert probe.rows["update_norm"][row][0] == pytest.approx(0.1 * float(g.norm()))
            cos = float((w0 * w.detach()).sum() / (w0.norm() * w.detach().norm()))
            assert probe.rows["angle"][row][0] == pytest.approx(math.acos(min(cos, 1.0)), abs=1e-9)
    out = probe.result()
    assert out["step"].tolist() == [0, 2] and out["angle"].shape == (2, 1)


def test_angular_probe_per_row_records_each_neurons_angle():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(2, 5, dtype=torch.float64))
    opt = SGD([a, b], lr=0.1)
    probe = AngularProbe(opt, [a, b], per_row=True)
    before = [a.detach().clone(), b.detach().clone()]
    a.grad, b.grad = torch.randn(4, 3, dtype=torch.float64), torch.zeros(2, 5, dtype=torch.float64)
    a.grad[1] = 0.0  # row 1 of a does not move
    probe.before_step(0)
    opt.step()
    probe.after_step(0)
    rows = probe.rows["row_angle"][0]
    assert len(rows) == 6  # the rows of a, then those of b
    for i in range(4):
        w0, w1 = before[0][i], a.detach()[i]
        cos = float(w0 @ w1 / (w0.norm() * w1.norm()))
        assert rows[i] == pytest.approx(math.acos(min(cos, 1.0)), abs=1e-7)
    assert rows[1] == pytest.approx(0.0, abs=1e-7) and rows[4:] == pytest.approx([0.0, 0.0], abs=1e-7)
    assert rows[0] > 1e-3
    with pytest.raises(ValueError, match="per_row"):
        AngularProbe(opt, [a], per_row="yes")


# --- the chapter's experiment functions at test scale ------------------------------------------------------


def test_overparam_pipeline_at_test_scale(tmp_path):
    s = op.setup("test")
    store = Store(tmp_path)
    seeds1, seeds4, seeds5 = (tuple(range(7, 7 + n)) for n in (s.grid_seeds, s.plateau_seeds, s.angular_seeds))
    g = op.grid_runs(s, seeds1, store=store)
    assert len(g) == 2 * 2 * s.grid_seeds and g["noisy_fit"].between(0, 1).all()
    assert set(g["seed"]) == set(seeds1)  # the runs take the seeds they are given
    mean, se, d = op.paired_gain(g, s.grid_lrs[1])
    assert list(d.index) == list(seeds1) and math.isfinite(mean)
    with pytest.raises(ValueError, match="distinct seeds"):
        op.grid_runs(s, (0,) * s.grid_seeds, store=store)
    with pytest.raises(ValueError, match="distinct seeds"):
        op.grid_runs(s, tuple(range(s.grid_seeds + 1)), store=store)
    table, hist = op.plateau_runs(s, seeds4, store=store)
    assert set(table["key"]) == set(hist)
    assert len(table) == len(op.recipes(s)) * s.plateau_seeds and set(table["seed"]) == set(seeds4)
    assert math.isfinite(op.plateau_level(hist[table["key"].iloc[0]]))
    copies = op.flow_copies(s, seeds4, store=store)
    per_run = len(range(s.snapshot_every, s.plateau_epochs + 1, s.snapshot_every))
    nowd = len(range(s.snapshot_every * s.nowd_copy_every, s.plateau_epochs + 1, s.snapshot_every * s.nowd_copy_every))
    assert (copies["role"] == "trajectory").sum() == s.plateau_seeds * (per_run + nowd)
    finals = copies[copies["role"] == "final"]
    assert len(finals) == s.plateau_seeds * (len(op.recipes(s)) - 2)
    assert set(finals["epoch"]) == {s.plateau_epochs}
    traj = copies[copies["role"] == "trajectory"]
    assert (traj["trace_se"] > 0).all() and traj["trace"].notna().all()
    copies["spoiled"] = False
    c = op.trace_correlations(copies, seeds4[0], s.plateau_wd)
    assert c["trace_fall"] == pytest.approx(1 - c["trace_last"] / c["trace_first"]) and c["max_rel_se"] > 0
    assert (traj["trace_hvps"] <= s.trace_probes).all() and (traj["trace_hvps"] > 0).all()
    spread = op.estimator_spread(s, seeds4, store, draws=3)
    assert spread["hvps"] == s.trace_probes and spread["epoch"] == s.plateau_epochs
    last = traj[(traj["seed"] == seeds4[0]) & (traj["weight_decay"] == s.plateau_wd)].sort_values("epoch").iloc[-1]
    assert spread[f"first_{s.trace_estimator}"] == pytest.approx(last["trace"], rel=1e-5)  # the copy, its own draw
    assert spread["std_hutchinson"] > 0 and spread[f"std_{s.trace_estimator}"] >= 0
    ang = op.angular_runs(s, seeds5, store=store)
    assert set(ang) == {(r, w, sd) for r in ("sgd", "adam") for w in (True, False) for sd in seeds5}
    chk = op.rescaling_check(ang[("sgd", False, seeds5[0])], s, samples=64)
    assert chk["slope_grad"] == pytest.approx(-1.0, abs=0.05)
    assert chk["slope_sgd"] == pytest.approx(-2.0, abs=0.05)
    assert chk["slope_adam"] == pytest.approx(-1.0, abs=0.05)
    with pytest.raises(ValueError, match="scale must be one of"):
        op.setup("huge")


def test_plateau_statistics_per_seed():
    import pandas as pd

    rows = []
    for seed, k in ((0, 1.0), (1, 2.0)):
        for lr, wd, level, slope in (
            (0.1, 0.0, 1e-3, -1.0),
            (0.2, 0.0, 2e-3, -1.0),
            (0.1, 2.5e-3, 0.05, -0.5),
            (0.1, 5e-3, 0.1, -0.1),
            (0.1, 1e-2, 0.3, 0.0),
            (0.2, 5e-3, 0.12, 0.0),
            (0.2, 1e-2, 0.24, 0.0),
        ):
            rows.append(
                {"seed": seed, "lr": lr, "weight_decay": wd, "level": level * (k if wd else 1.0), "late_slope": slope}
            )
    st = op.plateau_statistics(pd.DataFrame(rows))
    assert list(st.index) == [0, 1]
    assert st.loc[0, "ratio"] == pytest.approx(math.log10(0.05 / 1e-3))  # the smallest ratio, same LR
    assert st.loc[1, "ratio"] == pytest.approx(math.log10(0.1 / 1e-3))
    assert st.loc[0, "settle"] == -0.5  # runs with decay only
    assert st.loc[0, "lambda_rise"] == pytest.approx(1.0)  # 0.05 -> 0.1 per doubling
    assert st.loc[0, "lr_effect"] == pytest.approx(np.mean([np.log(1.2), np.log(0.8)]))
    # a level that falls with lambda gives a negative rise
    bad = pd.DataFrame(rows).assign(
        level=lambda t: np.where((t["lr"] == 0.1) & (t["weight_decay"] == 1e-2), 0.01, t["level"])
    )
    assert op.plateau_statistics(bad).loc[0, "lambda_rise"] < 0


def test_pair_excess_z_is_bonferroni_in_z_units():
    from scipy import stats as sps

    assert math.isnan(op.pair_excess_z([]))
    one = [(None, None, 0.05, 0.05)]
    assert op.pair_excess_z(one) == pytest.approx(0.0, abs=1e-12)  # p at the level: on the line
    four = [(None, None, 0.0, p) for p in (0.5, 0.2, 0.001, 0.3)]
    expected = sps.norm.isf(0.001 / 2) - sps.norm.isf(0.05 / 8)
    assert op.pair_excess_z(four) == pytest.approx(expected) and expected > 0
    assert op.pair_excess_z([(None, None, 0.0, 0.2)] * 3) < 0


def test_angle_statistics():
    off = np.array([1.0, 0.5, 0.3, 0.2, 0.1])
    on = np.array([1.0, 0.9, 0.8, 0.8, 0.88])
    st = op.angle_statistics({True: on, False: off}, held_windows=3)
    assert st["fall"] == pytest.approx(0.1)
    assert st["ratio"] == pytest.approx(8.8)
    assert st["held"] == pytest.approx(0.88 / np.mean([0.8, 0.8, 0.88]) - 1)


def test_spoiled_rule():
    # early copies have a higher loss and are kept; a spike (above twice the best earlier copy) is dropped
    assert op.spoiled([0.3, 0.1, 0.12, 0.5, 0.09]).tolist() == [False, False, False, True, False]
    # near zero loss, doubling within the 0.01 margin is noise, not a spike
    assert not op.spoiled([2e-3, 8e-4, 5e-4, 1.2e-3, 4e-4, 9e-4]).any()


def test_window_means_and_stats_helpers():
    from wdlib.stats import t_interval, two_proportion_p

    np.testing.assert_allclose(op.window_means(np.arange(10.0), 5), [0.5, 2.5, 4.5, 6.5, 8.5])
    m, lo, hi = t_interval([1.0, 2.0, 3.0])
    assert m == 2.0 and hi - m == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)  # t_{0.975, 2} = 4.30
    assert two_proportion_p(0.1, 0.1, 1000) == 1.0
    assert two_proportion_p(0.05, 0.10, 1000) < 1e-4 < two_proportion_p(0.08, 0.09, 1000)
    with pytest.raises(ValueError):
        t_interval([1.0])
