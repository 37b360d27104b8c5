"""wdlib.timescale: timescales against hand-computed values and the lambda transfer."""

from __future__ import annotations

import json
import math

import pytest

from wdlib.cli import main
from wdlib.schedules import Cosine
from wdlib.timescale import gradient_rise, tau_epoch, tau_iter, transfer_weight_decay, weight_decay_for


def test_tau_iter_and_epoch_hand_values():
    assert tau_iter(1e-3, 0.1) == pytest.approx(1e4)
    assert tau_epoch(1e-3, 0.1, 50_000, 128) == pytest.approx(128 / (1e-4 * 50_000))  # 25.6 epochs
    assert weight_decay_for(25.6, 1e-3, 50_000, 128) == pytest.approx(0.1)


def test_transfer_to_larger_dataset_keeps_tau_epoch():
    t = transfer_weight_decay(1e-3, 0.1, 50_000, 128, to_dataset_size=200_000)
    assert t.weight_decay == pytest.approx(0.025)
    assert t.lr == 1e-3
    assert tau_epoch(t.lr, t.weight_decay, 200_000, 128) == pytest.approx(25.6)


def test_transfer_across_width_with_mup():
    t = transfer_weight_decay(1e-3, 0.1, 50_000, 128, to_dataset_size=200_000, width=256, to_width=1024, mup=True)
    assert t.lr == pytest.approx(2.5e-4)
    assert t.weight_decay == pytest.approx(0.1)  # x4 for width, /4 for data
    plain = transfer_weight_decay(1e-3, 0.1, 50_000, 128, width=256, to_width=1024)
    assert plain.lr == 1e-3 and plain.weight_decay == pytest.approx(0.1)


def test_transfer_with_batch_size():
    t = transfer_weight_decay(1e-3, 0.1, 50_000, 128, to_batch_size=512)
    assert t.weight_decay == pytest.approx(0.4)


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: tau_iter(0.0, 0.1), "lr"),
        (lambda: tau_epoch(1e-3, -0.1, 10, 1), "weight_decay"),
        (lambda: tau_epoch(1e-3, 0.1, 0, 1), "dataset_size"),
        (lambda: transfer_weight_decay(1e-3, 0.1, 10, 1, width=4), "width"),
        (lambda: transfer_weight_decay(1e-3, 0.1, 10, 1, mup=True), "mup"),
    ],
)
def test_bad_inputs(call, name):
    with pytest.raises(ValueError) as err:
        call()
    assert str(err.value).startswith(name)


def test_gradient_rise_constant_lr_is_flat():
    r = gradient_rise(0.1, 5e-3, 50_000, schedule="constant")
    assert r.tau_iter == pytest.approx(2000) and r.tau_fraction == pytest.approx(0.04)
    assert r.ratio_peak == pytest.approx(math.sqrt(2 * 5e-3 / 0.1))
    assert r.rise_factor == 1.0 and r.ratio_at_track == pytest.approx(r.ratio_peak)
    assert r.track_step == 48_000  # tau_iter = steps - t
    assert not r.rise_expected  # no falling LR, no rise
    assert r.corrected_ratio == pytest.approx(r.ratio_peak)


def test_gradient_rise_cosine_to_zero_rises_and_tracks_until_tau_reaches_the_time_left():
    r = gradient_rise(0.1, 5e-3, 50_000)
    assert r.rise_expected and r.rise_factor > 2
    t = r.track_step
    eta = Cosine(peak=0.1, steps=50_000)
    assert 1 / (float(eta(t)) * 5e-3) <= 50_000 - t < 1 / (float(eta(t + 1)) * 5e-3)  # the last tracked step
    assert r.track_lr_fraction == pytest.approx(float(eta(t)) / 0.1)
    assert r.ratio_at_track == pytest.approx(math.sqrt(2 * 5e-3 / float(eta(t))))
    assert r.corrected_ratio == pytest.approx(r.ratio_peak)  # flat under the corrected rule
    assert r.corrected_track_step < r.track_step  # lr/(eta_t^2*lambda) grows faster
    with_floor = gradient_rise(0.1, 5e-3, 50_000, final_lr_fraction=0.1)
    assert 1 < with_floor.rise_factor < r.rise_factor
    assert gradient_rise(0.1, 5e-3, 50_000, schedule="linear").rise_factor > 1
    assert gradient_rise(0.1, 5e-3, 50_000, final_lr_fraction=1.0).rise_factor == 1.0
    assert set(r.to_dict()) >= {"tau_iter", "ratio_peak", "rise_factor", "rise_expected", "corrected_ratio"}


def test_rise_expected_flips_with_lambda():
    assert not gradient_rise(0.1, 5e-4, 50_000).rise_expected  # tau_iter 40% of the run
    assert gradient_rise(0.1, 2e-3, 50_000).rise_expected  # 10%: the rule of thumb's edge
    assert not gradient_rise(0.1, 1.9e-3, 50_000).rise_expected
    never = gradient_rise(0.1, 1e-6, 1000)  # tau_iter longer than the run
    assert never.track_step is None and never.rise_factor is None and not never.rise_expected


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"lr": 0.0}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"steps": 0}, "steps"),
        ({"steps": 10.5}, "steps"),
        ({"schedule": "wsd"}, "schedule"),
        ({"final_lr_fraction": 1.5}, "final_lr_fraction"),
        ({"final_lr_fraction": float("nan")}, "final_lr_fraction"),
    ],
)
def test_gradient_rise_bad_inputs_name_the_parameter(kwargs, name):
    args = {"lr": 0.1, "weight_decay": 1e-3, "steps": 100, **kwargs}
    with pytest.raises(ValueError) as err:
        gradient_rise(**args)
    assert str(err.value).startswith(name)


def test_cli_tau_prints_the_gradient_rise_with_steps(capsys):
    base = ["tau", "--lr", "0.1", "--weight-decay", "5e-3", "--dataset-size", "50000", "--batch-size", "128"]
    main(base)
    plain = capsys.readouterr().out
    assert "gradient-norm rise" not in plain  # the existing output, unchanged without --steps
    main([*base, "--steps", "50000"])
    out = capsys.readouterr().out
    assert out.startswith(plain.rstrip("\n")) and "rise expected" in out and "corrected decay" in out
    main([*base, "--steps", "50000", "--schedule", "constant", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["gradient_rise"]["rise_factor"] == 1.0 and not data["gradient_rise"]["rise_expected"]
    with pytest.raises(SystemExit):
        main([*base, "--steps", "100", "--final-lr-fraction", "2"])
    assert "--final-lr-fraction must be" in capsys.readouterr().err
