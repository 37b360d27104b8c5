"""wdlib.timescale: timescales against hand-computed values and the lambda transfer."""

from __future__ import annotations

import pytest

from wdlib.timescale import tau_epoch, tau_iter, transfer_weight_decay, weight_decay_for


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
