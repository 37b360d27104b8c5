"""Offline data, models, the training loop and the per-weight shrinkage probe."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from wdlib.data import batches, mnist1d
from wdlib.diagnostics import ShrinkageProbe
from wdlib.models import MLP
from wdlib.optim import Adam


def test_mnist1d_is_generated_offline_and_deterministic():
    a = mnist1d(200, seed=3)
    b = mnist1d(200, seed=3)
    assert a.x_train.shape == (160, 40) and a.x_test.shape == (40, 40)
    assert a.input_dim == 40 and a.num_classes == 10
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, mnist1d(200, seed=4).x_train)


def test_mnist1d_leaves_global_rngs_alone():
    random.seed(0)
    np.random.seed(0)
    mnist1d(120, seed=11)
    assert random.random() == random.Random(0).random()
    assert np.random.rand() == np.random.RandomState(0).rand()


def test_mnist1d_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_samples"):
        mnist1d(5)


def test_batches_cover_each_epoch_once():
    x = torch.arange(10.0)[:, None]
    y = torch.arange(10)
    seen = torch.cat([yb for _, yb in batches(x, y, 5, 2, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(x, y, 11, 1, torch.Generator()))


def test_mlp_shape_and_bad_width():
    assert MLP(40, 16, 2, 10)(torch.zeros(3, 40)).shape == (3, 10)
    with pytest.raises(ValueError, match="width"):
        MLP(40, 0, 2, 10)


@pytest.mark.parametrize("decay", ["decoupled", "l2"])
def test_shrinkage_probe(decay):
    """AdamW: every weight shrinks by exactly lr*lambda per step; Adam+L2: by less where v_hat is large."""
    from wdlib.config import RunConfig
    from wdlib.stats import spearman
    from wdlib.train import train

    lr, lam = 1e-3, 0.05
    cfg = RunConfig(data="mnist1d", data_args={"num_samples": 1000}, model="mlp", model_args={"width": 32, "depth": 1},
                    optimizer="adam", decay=decay, lr=lr, weight_decay=lam, decay_vectors=True, dtype="float64",
                    steps=120, batch_size=50, probes=[{"name": "shrinkage", "start": 20}], scale="test")
    res = train(cfg).probes
    assert res["shrinkage/shrinkage"].shape == res["shrinkage/v_hat"].shape == (32 * 40 + 10 * 32,)
    if decay == "decoupled":
        np.testing.assert_allclose(res["shrinkage/shrinkage"], lr * lam, rtol=1e-6)
    else:
        assert spearman(res["shrinkage/shrinkage"], res["shrinkage/v_hat"]) < -0.5


def test_probe_rejects_foreign_params():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = Adam([p])
    with pytest.raises(ValueError, match="not in the optimizer"):
        ShrinkageProbe(opt, [torch.nn.Parameter(torch.zeros(2))])
