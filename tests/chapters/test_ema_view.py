"""Chapter 2's experiments (wdlib.experiments.ema_view): statistics on hand-built histories, and runs at the
"test" scale."""

from __future__ import annotations

import numpy as np
import pytest

from wdlib.experiments import ema_view as ev
from wdlib.runs import Store
from wdlib.schedules import EqualContribution, values

TINY = ev.setup("test")


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
    assert st["step"][0] == 150  # first snapshot after the swap
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
    updates[:100] *= 2.0  # Adam's update twice as large in the first tenth
    st = ev.term_stats(eta, eta * wd, updates)
    assert st["coefficient_max_over_min"] - 1 <= 0.01  # the schedule's identity (EMA-4's sanity check)
    assert st["update_norm_first_over_last"] == pytest.approx(2.0)
    assert st["first_over_last"] == pytest.approx(2.0, rel=0.02)  # terms follow the update norms
    const = ev.term_stats(np.full(steps, lr), np.full(steps, lr * wd), np.ones((steps, 4)))
    assert const["first_over_last"] < 0.3  # exp(-kappa) weights: early steps nearly forgotten


def test_settings_take_seed_counts():
    s = ev.setup("smoke")
    assert isinstance(s.n_seeds, int) and s.n_seeds >= 5 and s.workers >= 1
    assert s.seeds(2) == (0, 1) and ev.setup("smoke", seed=3).seeds(s.rms_seeds) == (3000, 3001, 3002)
    assert s.rms_steps * 1e-3 * 1.0 >= 5  # every EMA-3 pair spans >= 5 timescales
    with pytest.raises(ValueError, match="scale"):
        ev.setup("medium")


def test_memory_stats_of_identical_runs_without_decay_of_theta0():
    n = 50
    init = np.linspace(-1, 1, n)
    steps = np.arange(0, 101, 10)
    a = np.tile(init, (len(steps), 1))  # theta never moves: all of theta_0 is kept
    b = a + np.exp(-0.01 * steps)[:, None]  # a distance fading at 0.01 per step
    mask = np.arange(n) < 30
    st = ev.memory_stats(steps, a, b, init, mask, lr=0.1, weight_decay=0.1, perturb_step=0)
    assert st["theta0_projection"] == pytest.approx(1.0)
    assert st["rate"] == pytest.approx(0.01) and st["eta_lambda"] == pytest.approx(0.01)
    assert st["ratio"][0] == 1.0 and st["step"][0] == 10
    assert st["theta0_noise"] == pytest.approx(np.linalg.norm(init[mask]) / (np.linalg.norm(init[mask]) * np.sqrt(30)))


def test_probe_reads_one_probe_by_name():
    class R:
        probes = {"updates/lr": 1, "updates/final": 2, "shrinkage/lr": 3}

    assert ev._probe(R()) == {"lr": 1, "final": 2}
    assert ev._probe(R(), "shrinkage") == {"lr": 3}


def test_reconstruction_rebuilds_the_recorded_weights(tmp_path):
    rec = ev.reconstruction(
        TINY,
        lr=1e-2,
        weight_decay=1.0,
        seed=0,
        store=Store(tmp_path / "store"),
        schedules={"constant": None, "cosine": {"name": "cosine", "warmup": 3, "final": 0.1}},
    )
    assert list(rec) == ["constant", "cosine"]
    for r in rec.values():
        assert r["max_rel_error_exact"] < 1e-10  # the unrolled recursion is exact (float64)
        assert r["within_bound"] and r["final"].shape == (min(1024, TINY.width**2),)  # a hidden matrix
        assert r["theta0_weight"] == pytest.approx(np.prod(1 - r["shrink"]))


def test_memory_groups_seeds_by_lambda(tmp_path):
    out = ev.memory(
        TINY, lr=1e-2, kappas=(0.1, 0.2), perturb_step=10, seeds=(0, 1), snapshots=4, store=Store(tmp_path / "store")
    )
    assert list(out) == pytest.approx([k / (1e-2 * TINY.memory_steps) for k in (0.1, 0.2)])
    for wd, v in out.items():
        assert len(v["per_seed"]) == 2 and v["kappa_T"] == pytest.approx(1e-2 * wd * TINY.memory_steps)
        assert v["theta0_predicted"] == pytest.approx(np.exp(-v["kappa_T"]))
        assert all(ps["step"][0] > 10 for ps in v["per_seed"])
