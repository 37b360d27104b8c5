"""Chapter 1's experiment functions (wdlib.experiments.decoupling) at the "test" scale: seconds on one core."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wdlib.experiments import decoupling as dec
from wdlib.runs import Store

TINY = dec.setup("test")


def test_settings_of_each_scale():
    assert (TINY.scale, TINY.num_samples, TINY.width, TINY.depth, TINY.batch_size, TINY.steps) == (
        "test",
        300,
        8,
        1,
        20,
        30,
    )
    smoke = dec.setup("smoke")
    assert (smoke.num_samples, smoke.width, smoke.depth, smoke.batch_size, smoke.steps) == (4000, 128, 2, 100, 1000)
    assert dec.setup("smoke", seed=2).seeds(2) == (2000, 2001)
    with pytest.raises(ValueError, match="scale must be one of 'smoke', 'full', 'test'"):
        dec.setup("small")


def test_base_config_and_dataset_follow_the_settings():
    cfg = dec.base_config(TINY, 7, lr=0.5)
    assert (cfg.data_args, cfg.model_args, cfg.steps, cfg.batch_size, cfg.seed, cfg.scale, cfg.lr) == (
        {"num_samples": 300},
        {"width": 8, "depth": 1},
        30,
        20,
        7,
        "test",
        0.5,
    )
    assert cfg.decay_vectors  # every parameter decayed
    data = dec.dataset(TINY)
    assert len(data.y_train) + len(data.y_test) == TINY.num_samples


def test_one_step_gap_from_a_trained_run_is_rounding(tmp_path):
    store = Store(tmp_path / "store")
    steps, gap, result = dec.trajectory_gap(
        TINY, lr=0.1, weight_decay=5e-3, momentum=0.0, seed=1, snapshots=5, store=store
    )
    assert len(steps) == len(gap) == 5 and steps[-1] == TINY.steps
    assert next(result.model().parameters()).dtype == torch.float64  # the float64 L2 run
    one = dec.one_step_gap(TINY, result, lr=0.1, weight_decay=5e-3, seed=1, batches=2)
    assert 0 <= one < 1e-14  # the same algebra, to float64 rounding
    # a larger lambda*lr does not make the algebra differ either
    assert dec.one_step_gap(TINY, result, lr=0.5, weight_decay=0.5, seed=1, batches=1) < 1e-14


def test_log_gap_reads_gaps_under_the_floor_as_the_floor():
    assert dec.log_gap(np.zeros(5)) == math.log10(dec.GAP_FLOOR)
    assert dec.log_gap([0.0, 1e-3, 1e-5]) == pytest.approx(-3.0)
    assert dec.log_gap([1e-20]) == math.log10(dec.GAP_FLOOR)


def test_trajectory_gaps_many_matches_the_single_seed_function(tmp_path):
    store = Store(tmp_path / "store")
    seeds = (3, 4)
    gaps = dec.trajectory_gaps_many(TINY, lr=0.1, weight_decay=5e-3, seeds=seeds, snapshots=5, store=store)
    assert set(gaps) == {(0.0, "float64"), (0.9, "float64")}
    for case, per_seed in gaps.items():
        assert sorted(per_seed) == list(seeds)
        for sd, (steps, gap, _state) in per_seed.items():
            s1, g1, _ = dec.trajectory_gap(
                TINY, lr=0.1, weight_decay=5e-3, momentum=case[0], dtype=case[1], seed=sd, snapshots=5, store=store
            )
            np.testing.assert_array_equal(gap, g1)
            np.testing.assert_array_equal(steps, s1)
    # without momentum the two rules agree to rounding; with momentum they part
    for sd in seeds:
        assert dec.log_gap(gaps[(0.0, "float64")][sd][1]) < -10
        assert dec.log_gap(gaps[(0.9, "float64")][sd][1]) > dec.log_gap(gaps[(0.0, "float64")][sd][1]) + 3
    # the seeds are different runs
    assert not np.array_equal(gaps[(0.9, "float64")][3][1], gaps[(0.9, "float64")][4][1])
    # a second call trains nothing
    n = len(store.list())
    dec.trajectory_gaps_many(TINY, lr=0.1, weight_decay=5e-3, seeds=seeds, snapshots=5, store=store)
    assert len(store.list()) == n == 2 * 2 * len(seeds)


def test_shrinkage_and_warmup_many_one_result_per_seed(tmp_path):
    store = Store(tmp_path / "store")
    sh = dec.shrinkage_many(TINY, decay="l2", lr=1e-3, weight_decay=0.05, seeds=(0, 1), store=store)
    assert sorted(sh) == [0, 1]
    assert all(np.isfinite(r["spearman"]) and -1 <= r["spearman"] <= 1 for r in sh.values())
    one = dec.shrinkage_vs_second_moment(TINY, decay="l2", lr=1e-3, weight_decay=0.05, seed=1, store=store)
    assert one["spearman"] == sh[1]["spearman"]
    w = dec.warmup_delay_many(TINY, peak_lr=3e-3, weight_decay=0.1, warmup_steps=3, seeds=(0, 1), store=store)
    assert sorted(w) == [0, 1]
    for r in w.values():
        assert set(r) == {"decay from step 0", "decay after warmup"}
        assert r["decay from step 0"]["weight_rms"] != r["decay after warmup"]["weight_rms"]


def test_quadratic_fixed_point_on_a_random_quadratic():
    rows = dec.quadratic_fixed_points(lrs=(0.1,), steps=3000, seed=7)
    assert {r["decay"] for r in rows} == {"decoupled", "independent"}
    for r in rows:
        assert r["error_predicted"] < 1e-8 and r["error_other"] > 1e-2
    a, b = (dec.quadratic_fixed_points(lrs=(0.1,), steps=5, seed=sd) for sd in (7, 8))
    assert a[0]["error_other"] != b[0]["error_other"]  # another seed draws other targets


def test_quadratic_fixed_points_read_off_the_predicted_alpha():
    rows = dec.quadratic_fixed_points(
        dim=5, lrs=(0.05, 0.2), weight_decay={"decoupled": 0.4, "independent": 0.01}, momentum=0.5, steps=4000, seed=1
    )
    for r in rows:
        lam = r["weight_decay"] * (1 - r["momentum"])
        assert r["alpha_predicted"] == pytest.approx(lam if r["decay"] == "decoupled" else lam / r["lr"])
        assert r["alpha_measured"] == pytest.approx(r["alpha_predicted"], rel=1e-6)
        assert r["alpha_measured_spread"] < 1e-6  # one alpha for every coordinate


def test_convention_and_warmup_delay_runs(tmp_path):
    store = Store(tmp_path / "store")
    c = dec.convention_runs(TINY, peak_lr=1e-2, weight_decay=0.1, seed=0, store=store)
    assert c["weight_decay_paper"] == pytest.approx(0.1 * 1e-2)
    diff = c["max_abs_diff"]
    assert diff["torch AdamW"] == 0.0
    # the same algorithm in three spellings agrees to rounding; the unconverted lambda does not
    assert max(diff["wdlib decoupled"], diff["wdlib independent, converted"]) < 1e-10
    assert diff["wdlib independent, unconverted"] > 1e-3
    w = dec.warmup_delay_runs(TINY, peak_lr=3e-3, weight_decay=0.1, warmup_steps=5, seed=0, store=store)
    assert set(w) == {"decay from step 0", "decay after warmup"}
    # less decay in total leaves larger weights
    assert w["decay after warmup"]["weight_rms"] > w["decay from step 0"]["weight_rms"]
