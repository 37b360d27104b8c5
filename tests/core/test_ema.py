"""wdlib.ema against hand-computed values, the update recorder, and the pieces chapter 2 adds to the engine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wdlib.config import RunConfig
from wdlib.ema import contribution_figure_data, no_decay_rms, predicted_rms, reconstruct, simulate_rms, update_rms
from wdlib.models import MLP
from wdlib.schedules import InverseSqrt, values
from wdlib.train import train


def test_hand_values():
    assert predicted_rms(1e-3, 0.1) == pytest.approx(math.sqrt(5e-3))  # 0.0707, Su's number
    assert update_rms(0.9) == pytest.approx(math.sqrt(0.1 / 1.9))  # 0.229
    assert update_rms(0.0) == 1.0
    assert no_decay_rms(0.1, 1e-3, 30_000) == pytest.approx(0.2)  # sqrt(0.01 + 1e-6 * 3e4)
    assert InverseSqrt(peak=2.0, rate=3.0)(1) == pytest.approx(1.0)  # 2/sqrt(4)
    with pytest.raises(ValueError, match="lr and weight_decay"):
        predicted_rms(1e-3, 0.0)
    with pytest.raises(ValueError, match="beta1"):
        update_rms(1.0)


def test_reconstruct_is_exact_on_a_simulated_recursion_and_the_bound_holds():
    rng = np.random.default_rng(1)
    steps, k = 500, 30
    lr = np.linspace(1e-2, 1e-3, steps)
    shrink = lr * 0.8
    theta0, u = rng.normal(size=k), rng.normal(size=(steps, k))
    theta = theta0.copy()
    for t in range(steps):
        theta = (1 - shrink[t]) * theta - lr[t] * u[t]
    rec = reconstruct(theta0, u, lr, shrink)
    np.testing.assert_allclose(rec["exact"], theta, rtol=1e-12, atol=1e-14)
    assert np.all(np.abs(rec["approx"] - theta) <= rec["bound"])
    assert rec["D"] == pytest.approx(np.sum(shrink**2 / (2 * (1 - shrink))))


@pytest.mark.parametrize("name", ["equal contribution", "inverse sqrt"])
def test_su_schedules_weigh_every_step_equally(name):
    w = contribution_figure_data(1e-3, 0.1, 20_000, name)["weights"]
    assert w.max() / w.min() - 1 < 1e-3
    c = contribution_figure_data(1e-3, 0.1, 20_000, "constant")["weights"]
    assert c.max() / c.min() == pytest.approx(math.exp(2.0), rel=1e-3)  # exp(eta*lambda*T) = e^2
    with pytest.raises(ValueError, match="schedule"):
        contribution_figure_data(1e-3, 0.1, 10, "step")


def test_inverse_sqrt_pair_keeps_eta_lambda_decay_rate():
    lr = values(InverseSqrt(peak=1e-3, rate=2e-4), 10)
    wd = values(InverseSqrt(peak=0.1, rate=2e-4), 10)
    np.testing.assert_allclose(lr * wd, 1e-4 / (2e-4 * np.arange(10) + 1))


def test_simulation_settles_at_the_prediction_and_update_rms():
    r = simulate_rms([1e-2], [0.1], coords=4000, steps=20_000, records=10)  # 20 timescales
    assert r["rms"][-1, 0] == pytest.approx(predicted_rms(1e-2, 0.1), rel=0.1)
    assert r["update_rms"][0] == pytest.approx(update_rms(0.9), rel=0.1)
    assert r["step"][-1] == 20_000 and r["rms"].shape == (10, 1)


def test_update_recorder_rebuilds_a_real_run_exactly():
    cfg = RunConfig(
        data="mnist1d",
        data_args={"num_samples": 600},
        model="mlp",
        model_args={"width": 16, "depth": 1},
        optimizer="adam",
        lr=3e-3,
        weight_decay=0.5,
        steps=60,
        batch_size=32,
        dtype="float64",
        lr_schedule={"name": "cosine", "warmup": 10},
        probes=[{"name": "updates", "coords": 100}],
        scale="test",
    )
    p = {k.split("/", 1)[1]: v for k, v in train(cfg).probes.items()}
    assert p["updates"].shape == (60, 100)
    rec = reconstruct(p["theta0"], p["updates"], p["lr"], p["shrink"])
    np.testing.assert_allclose(rec["exact"], p["final"], rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="decoupled or independent"):
        train(cfg.replace(optimizer={"name": "adam", "decay": "l2"}))


def test_perturb_step_changes_only_that_batch():
    base = RunConfig(
        data="mnist1d",
        data_args={"num_samples": 600},
        model="mlp",
        model_args={"width": 8, "depth": 1},
        steps=10,
        batch_size=32,
        dtype="float64",
        diagnostics=["params"],
        eval_every=1,
        scale="test",
    )
    a, b = train(base), train(base.replace(perturb_step=5))
    gap = np.abs(a.history["diag/params"] - b.history["diag/params"]).max(axis=1)
    assert np.all(gap[:5] == 0) and np.all(gap[5:] > 0)


def test_scale_invariant_mlp():
    torch.manual_seed(0)
    m = MLP(40, 32, 2, 10, scale_invariant=True).double()
    x = torch.randn(5, 40, dtype=torch.float64)
    before = m(x)
    with torch.no_grad():
        m[1].weight.mul_(7.0)
    torch.testing.assert_close(m(x), before, rtol=1e-6, atol=1e-8)
    assert m[1].bias is None
