"""Statistics of chapter 2's experiments (wdlib.experiments.ema_view) on hand-built histories."""

from __future__ import annotations

import numpy as np
import pytest

from wdlib.experiments import ema_view as ev
from wdlib.schedules import EqualContribution, values


def test_memory_stats_reads_rate_and_theta0_share():
    rng = np.random.default_rng(0)
    n, lr, wd = 400, 1e-3, 2.0
    init = rng.normal(size=n)
    mask = np.ones(n, bool)
    steps = np.arange(0, 1001, 50)
    # run A keeps exactly exp(-lr*wd*t) of theta_0; run B differs by a vector shrinking at twice that rate
    a = np.exp(-lr * wd * steps)[:, None] * init[None, :]
    diff = rng.normal(size=n)
    b = a + np.exp(-2 * lr * wd * steps)[:, None] * diff[None, :]
    st = ev.memory_stats(steps, a, b, init, mask, lr=lr, weight_decay=wd, perturb_step=100)
    assert st["step"][0] == 150                                   # first snapshot after the swap
    assert st["rate"] / st["eta_lambda"] == pytest.approx(2.0, rel=1e-9)
    assert st["theta0_projection"] == pytest.approx(st["theta0_predicted"], rel=1e-12)
    assert st["kappa_T"] == pytest.approx(lr * wd * 1000)
    # a pair of runs that drift apart has a negative rate: the fade test's statistic leaves [0.5, 2]
    b2 = a + np.exp(+1e-3 * steps)[:, None] * diff[None, :]
    assert ev.memory_stats(steps, a, b2, init, mask, lr=lr, weight_decay=wd, perturb_step=100)["rate"] < 0


def test_rms_fit_slope_and_prefactor():
    pred = np.array([0.01, 0.02, 0.05, 0.1])
    f = ev.rms_fit(pred, 0.75 * pred)
    assert f["slope"] == pytest.approx(1.0) and f["prefactor"] == pytest.approx(0.75)
    f = ev.rms_fit(pred, 0.3 * pred**0.5)
    assert f["slope"] == pytest.approx(0.5)


def test_drift_of_a_settled_and_a_falling_curve():
    assert ev._drift(np.ones(50)) == 0.0
    falling = np.linspace(2.0, 1.0, 50)
    assert ev._drift(falling) > 0.05


def test_term_stats_flat_coefficients_and_update_ratio():
    steps, lr, wd = 1000, 3e-3, 0.5
    eta = values(EqualContribution(peak=lr, weight_decay=wd), steps)
    updates = np.ones((steps, 4))
    updates[:100] *= 2.0                                           # Adam's update twice as large in the first tenth
    st = ev.term_stats(eta, eta * wd, updates)
    assert st["coefficient_max_over_min"] - 1 <= 0.01              # the schedule's identity (EMA-4's sanity check)
    assert st["update_norm_first_over_last"] == pytest.approx(2.0)
    assert st["first_over_last"] == pytest.approx(2.0, rel=0.02)   # terms follow the update norms
    const = ev.term_stats(np.full(steps, lr), np.full(steps, lr * wd), np.ones((steps, 4)))
    assert const["first_over_last"] < 0.3                          # exp(-kappa) weights: early steps nearly forgotten


def test_settings_take_seed_counts():
    s = ev.setup("smoke")
    assert isinstance(s.seeds, int) and s.seeds >= 5 and s.workers >= 1
    assert s.rms_steps * 1e-3 * 1.0 >= 5                           # every EMA-3 pair spans >= 5 timescales
    with pytest.raises(ValueError, match="scale"):
        ev.setup("medium")
