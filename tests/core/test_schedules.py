"""wdlib.schedules against hand-computed values, and the EMA quantities against a simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wdlib.optim import AdamW
from wdlib.schedules import (
    Constant,
    Cosine,
    Delayed,
    EqualContribution,
    HyperparameterScheduler,
    LinearDecay,
    Warmup,
    WarmupStableDecay,
    contribution_weights,
    kappa,
    values,
)


def test_constant():
    assert Constant(0.1)(0) == 0.1 and Constant(0.1)(10**6) == 0.1


def test_cosine_hand_values():
    c = Cosine(peak=1.0, steps=10, final=0.0)
    assert c(0) == pytest.approx(1.0)
    assert c(5) == pytest.approx(0.5)
    assert c(10) == pytest.approx(0.0, abs=1e-15)
    assert c(20) == pytest.approx(0.0, abs=1e-15)  # held at final after the end
    c2 = Cosine(peak=2.0, steps=4, final=1.0)
    assert c2(1) == pytest.approx(1.0 + 0.5 * (1 + math.cos(math.pi / 4)))


def test_linear_decay_hand_values():
    s = LinearDecay(peak=1.0, steps=10, final=0.2)
    assert s(0) == 1.0
    assert s(3) == pytest.approx(1.0 - 0.8 * 0.3)
    assert s(10) == pytest.approx(0.2) and s(99) == pytest.approx(0.2)


def test_warmup_stable_decay_hand_values():
    s = WarmupStableDecay(peak=1.0, steps=100, decay_steps=20, final=0.0)
    assert s(0) == 1.0 and s(80) == 1.0
    assert s(90) == pytest.approx(0.5)
    assert s(100) == pytest.approx(0.0)


def test_equal_contribution_hand_values():
    s = EqualContribution(peak=1e-3, weight_decay=0.1)
    assert s(0) == pytest.approx(1e-3)
    assert s(10_000) == pytest.approx(5e-4)  # 1e-3 / (0.1 * 1e-3 * 1e4 + 1)


def test_warmup_composes():
    s = Warmup(Constant(1.0), steps=4)
    np.testing.assert_allclose(values(s, 6), [0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    wc = Warmup(Cosine(peak=1.0, steps=10), steps=5)
    assert wc(5) == pytest.approx(1.0)  # the cosine starts after the warmup
    assert wc(10) == pytest.approx(0.5)  # cosine step 5 of 10
    wsd = Warmup(WarmupStableDecay(peak=2.0, steps=10, decay_steps=5), steps=2)
    # 2 warmup steps, then the 10-step WSD from its own step 0 (decay over its last 5)
    np.testing.assert_allclose(values(wsd, 13), [1, 2, 2, 2, 2, 2, 2, 2, 1.6, 1.2, 0.8, 0.4, 0], atol=1e-12)


def test_delayed():
    np.testing.assert_allclose(values(Delayed(Constant(0.1), 3), 5), [0, 0, 0, 0.1, 0.1])


def test_vectorized_equals_scalar():
    s = Warmup(Cosine(peak=3e-4, steps=500, final=3e-5), steps=50)
    steps = np.arange(600)
    np.testing.assert_array_equal(s(steps), np.array([s(int(t)) for t in steps]))
    assert isinstance(s(3), float)


@pytest.mark.parametrize(
    "make,name",
    [
        (lambda: Cosine(peak=-1.0, steps=10), "peak"),
        (lambda: Cosine(peak=1.0, steps=0), "steps"),
        (lambda: WarmupStableDecay(peak=1.0, steps=10, decay_steps=20), "decay_steps"),
        (lambda: Warmup(lambda s: 1.0, steps=3), "schedule"),
        (lambda: EqualContribution(peak=0.0, weight_decay=0.1), "peak"),
    ],
)
def test_bad_schedule_arguments(make, name):
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value).startswith(name)


def test_hyperparameter_scheduler_drives_lr_and_weight_decay_independently():
    p = torch.nn.Parameter(torch.zeros(3))
    q = torch.nn.Parameter(torch.zeros(3))
    opt = AdamW([{"params": [p]}, {"params": [q], "lr_mult": 0.5, "wd_mult": 0.0}], lr=1.0, weight_decay=1.0)
    lr, wd = Cosine(peak=1e-3, steps=10), Warmup(Constant(0.1), steps=5)
    sched = HyperparameterScheduler(opt, lr=lr, weight_decay=wd)
    for t in range(8):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr(t))
        assert opt.param_groups[0]["weight_decay"] == pytest.approx(wd(t))
        assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * lr(t))
        assert opt.param_groups[1]["weight_decay"] == 0.0
        sched.step()
    state = sched.state_dict()
    other = HyperparameterScheduler(opt, lr=lr, weight_decay=wd)
    other.load_state_dict(state)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr(8))


def test_kappa_constant():
    k = kappa(np.full(100, 1e-3), 0.1)
    assert k[-1] == pytest.approx(100 * 1e-4)
    assert k[0] == pytest.approx(1e-4)


def test_contribution_weights_reconstruct_a_simulated_run():
    """theta_T = w_0*theta_0 - sum_i w_i*u_i for theta_t = (1 - eta_t*lam_t) theta_{t-1} - eta_t*u_t."""
    rng = np.random.default_rng(0)
    steps = 2000
    eta = values(Warmup(Cosine(peak=1e-2, steps=1800, final=1e-4), steps=200), steps)
    lam = values(Delayed(Constant(0.5), 200), steps)
    theta0 = rng.normal(size=50)
    u = rng.normal(size=(steps, 50))
    theta = theta0.copy()
    for t in range(steps):
        theta = (1 - eta[t] * lam[t]) * theta - eta[t] * u[t]
    w, w0 = contribution_weights(eta, lam)
    np.testing.assert_allclose(w0 * theta0 - w @ u, theta, rtol=1e-10, atol=1e-12)
    w_cont, w0_cont = contribution_weights(eta, lam, exact=False)
    # exp(-kappa) vs prod(1 - x_t), x_t = eta_t*lam_t: the log-ratio is sum(-log(1-x) - x) <= sum x^2/(2(1-x))
    x = eta * lam
    bound = float(np.sum(x**2 / (2 * (1 - x))))
    assert 0 < math.log(w0_cont / w0) <= bound + 1e-12
    assert bound < 0.01


def test_equal_contribution_schedule_weighs_steps_equally():
    lam, steps = 0.1, 20_000
    eta = values(EqualContribution(peak=1e-2, weight_decay=lam), steps)
    w, _ = contribution_weights(eta, lam)
    assert w.max() / w.min() - 1 < 0.01
    w_const, _ = contribution_weights(np.full(steps, 1e-2), lam)
    assert w_const.max() / w_const.min() > 5  # a constant LR forgets early steps
