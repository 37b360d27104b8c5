"""Helpers of chapter 3 against hand-built sweep tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wdlib.experiments import scaling as sc
from wdlib.runs import Store


def _table():
    rows = []
    # size 100: best lambda index 1 for both seeds; size 200: seed 0 -> index 0, seed 1 -> index 2, mean -> index 0
    losses = {
        (100, 0): [2.0, 1.0, 3.0],
        (100, 1): [2.1, 1.1, 3.1],
        (200, 0): [0.5, 1.0, 2.0],
        (200, 1): [1.0, 0.9, 0.8],
    }
    for (size, seed), ls in losses.items():
        for lam, loss in zip((0.5, 1.0, 2.0), ls):
            rows.append({"size": size, "seed": seed, "weight_decay": lam, "val_loss": loss, "diverged_at": None})
    return pd.DataFrame(rows)


def test_best_index_by_mean_and_per_seed():
    best = sc.best_index(_table(), "size", "weight_decay", (0.5, 1.0, 2.0))
    assert best[100]["best"] == 1 and best[100]["per_seed"] == [1, 1]
    assert best[200]["best"] == 0 and best[200]["per_seed"] == [0, 2]
    np.testing.assert_allclose(best[200]["mean_loss"], [0.75, 0.95, 1.4])


def test_diverged_runs_count_as_worst():
    t = _table()
    t.loc[(t["size"] == 100) & (t["weight_decay"] == 1.0), "diverged_at"] = 3
    assert sc.best_index(t, "size", "weight_decay", (0.5, 1.0, 2.0))[100]["best"] == 0


def test_tau_epoch_star_and_settings():
    s = sc.setup("smoke")
    assert sc.tau_epoch_star(s, 2000, 2.0) == pytest.approx(128 / (1e-3 * 2.0 * 2000))  # 32 epochs
    assert s.sizes[-1] / s.sizes[0] >= 4 and all(b / a == 2 for a, b in zip(s.lams, s.lams[1:]))
    with pytest.raises(ValueError, match="scale"):
        sc.setup("medium")


def test_refined_index_vertex_edges_and_divergence():
    assert sc.refined_index([3.0, 1.0, 3.0]) == pytest.approx(1.0)
    # parabola (x - 1.3)^2 sampled at 0..3: vertex 1.3
    assert sc.refined_index([(x - 1.3) ** 2 for x in range(4)]) == pytest.approx(1.3)
    assert np.isnan(sc.refined_index([0.5, 1.0, 2.0]))  # best at the edge: undefined
    assert sc.refined_index([2.0, 1.0, np.inf]) == 1.0  # a diverged neighbour: the grid point
    off = sc.refined_index([1.0, 1.0, 5.0, 6.0])
    assert np.isnan(off) or 0 <= off <= 0.5


def _units(exponent, sizes=(1000, 2000, 4000), lams=tuple(0.25 * 2**i for i in range(7)), seeds=3):
    """Per-seed loss grids with the best lambda at lam0 * (N/N0)^exponent, plus a little seed noise."""
    rng = np.random.default_rng(1)
    out = []
    for _ in range(seeds):
        g = np.array(
            [[(np.log2(lam) - (np.log2(2.0) + exponent * np.log2(n / sizes[0]))) ** 2 for lam in lams] for n in sizes]
        )
        out.append(g + 1e-3 * rng.normal(size=g.shape))
    return out, sizes, lams


def test_tau_spread_and_exponent():
    s = sc.setup("smoke")
    units, sizes, lams = _units(-1.0)
    s2 = sc.Setup(**{**s.__dict__, "lams": lams})
    assert sc.tau_log2_spread(s2, units, sizes) == pytest.approx(0.0, abs=0.05)  # lambda ~ 1/N: tau constant
    assert sc.lambda_exponent(s2, units, sizes) == pytest.approx(-1.0, abs=0.05)
    units, _, _ = _units(-0.5)
    assert sc.tau_log2_spread(s2, units, sizes) == pytest.approx(1.0, abs=0.05)  # 1/sqrt(N): half a step per 2x
    assert sc.lambda_exponent(s2, units, sizes) == pytest.approx(-0.5, abs=0.05)
    # tau_epoch / epochs: lambda* = 2 at N = 1000 gives tau = 128/(1e-3*2*1000) = 64 epochs, log2(64/40)
    assert sc.tau_log2_over_epochs(s2, units, sizes)[0] == pytest.approx(np.log2(64 / s.epochs), abs=0.05)


def test_loss_grid_and_lr_drift():
    t = _table()
    t.loc[(t["size"] == 100) & (t["weight_decay"] == 2.0) & (t["seed"] == 0), "diverged_at"] = 5
    grids = sc.loss_grid(t, "size", "weight_decay", (100, 200), (0.5, 1.0, 2.0))
    assert len(grids) == 2 and grids[0].shape == (2, 3) and np.isinf(grids[0][0, 2])
    # best base LR at index 1 for one width, 3 for the other: drift 2 steps; the same for both: 0
    rows = np.array([[(i - 1.0) ** 2 for i in range(5)], [(i - 3.0) ** 2 for i in range(5)]])
    assert sc.lr_drift([rows, rows], (1.0, 2.0, 4.0, 8.0, 16.0)) == pytest.approx(2.0)
    assert sc.lr_drift([rows[[0, 0]]], (1.0, 2.0, 4.0, 8.0, 16.0)) == pytest.approx(0.0)


def test_settings_name_what_they_hold():
    s = sc.setup("smoke")
    assert (s.size_seeds, s.mup_size, s.mup_epochs, s.mup_lambda, s.mup_seeds) == (3, 4000, 60, 1.0, 3)
    t = sc.setup("test")
    assert t.scale == "test" and t.workers == 1 and t.mup_size <= t.pool * 0.8 and max(t.sizes) <= t.pool * 0.8


def test_sweeps_at_the_test_scale(tmp_path):
    s, store = sc.setup("test"), Store(tmp_path / "store")
    t = sc.data_size_sweep(s, s.sizes[:1], (0, 1), store=store)
    assert len(t) == len(s.lams) * 2 and set(t["size"]) == {s.sizes[0]}
    assert (t["steps"] == s.epochs * s.sizes[0] // s.batch_size).all() and t["val_loss"].notna().all()
    assert set(sc.best_index(t, "size", "weight_decay", s.lams)) == {s.sizes[0]}
    w = sc.width_sweep(s, "scaled", (0,), store=store)
    assert len(w) == len(s.widths) * len(s.base_lrs) and set(w["decay"]) == {"scaled"}
    assert len(sc.loss_grid(w, "width", "lr", s.widths, s.base_lrs)) == 1
