"""wdlib.diagnostics: the per-weight shrinkage probe (what decay each weight really got)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wdlib.diagnostics import ShrinkageProbe
from wdlib.optim import Adam


@pytest.mark.parametrize("decay", ["decoupled", "l2"])
def test_shrinkage_probe(decay):
    """AdamW: every weight shrinks by exactly lr*lambda per step; Adam+L2: by less where v_hat is large."""
    from wdlib.config import RunConfig
    from wdlib.stats import spearman
    from wdlib.train import train

    lr, lam = 1e-3, 0.05
    cfg = RunConfig(
        data="mnist1d",
        data_args={"num_samples": 1000},
        model="mlp",
        model_args={"width": 32, "depth": 1},
        optimizer={"name": "adam", "decay": decay},
        lr=lr,
        weight_decay=lam,
        decay_vectors=True,
        dtype="float64",
        steps=120,
        batch_size=50,
        probes=[{"name": "shrinkage", "start": 20}],
        scale="test",
    )
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
