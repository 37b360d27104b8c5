"""Helpers of chapter 3 against hand-built sweep tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wdlib.experiments import scaling as sc


def _table():
    rows = []
    # size 100: best lambda index 1 for both seeds; size 200: seed 0 -> index 0, seed 1 -> index 2, mean -> index 0
    losses = {(100, 0): [2.0, 1.0, 3.0], (100, 1): [2.1, 1.1, 3.1], (200, 0): [0.5, 1.0, 2.0], (200, 1): [1.0, 0.9, 0.8]}
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
    assert sc.tau_epoch_star(s, 2000, 2.0) == pytest.approx(128 / (1e-3 * 2.0 * 2000))   # 32 epochs
    assert s.sizes[-1] / s.sizes[0] >= 4 and all(b / a == 2 for a, b in zip(s.lams, s.lams[1:]))
    with pytest.raises(ValueError, match="scale"):
        sc.setup("medium")
