"""Chapter 1's experiment functions (wdlib.experiments.decoupling) at a tiny size: seconds on one core."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wdlib.experiments import decoupling as dec
from wdlib.runs import Store

TINY = dec.Setup(scale="smoke", num_samples=300, width=8, depth=1, batch_size=20, steps=30)


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
        for sd, (steps, gap, state) in per_seed.items():
            s1, g1, _ = dec.trajectory_gap(TINY, lr=0.1, weight_decay=5e-3, momentum=case[0], dtype=case[1], seed=sd,
                                           snapshots=5, store=store)
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
