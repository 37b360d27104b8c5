"""Chapter 1b: BatchNorm ConvNet, tied layers, the spurious dataset, quantization, Welch interval, the
named-tensor shrinkage probe and the helpers and sweeps of wdlib.experiments.practice."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy import stats as sps
from torch import nn

from wdlib.data import load, spurious
from wdlib.experiments import practice
from wdlib.measures import PROBES
from wdlib.models import ConvNet, TiedConv, TiedRNN
from wdlib.optim import Adam
from wdlib.quantize import grid_distance, grid_step, quantize, quantize_state
from wdlib.stats import welch_interval

# --------------------------------------------------------------------------------------- ConvNet(norm="batch")


def test_convnet_batchnorm_layout():
    model = ConvNet(1, 10, 40, channels=(4, 4, 4), norm="batch")
    layers = list(model.features)
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv1d)]
    assert len(convs) == 3
    for i in convs:
        assert layers[i].bias is None
        assert isinstance(layers[i + 1], nn.BatchNorm1d) and layers[i + 1].affine
        assert layers[i + 1].num_features == layers[i].out_channels
        assert isinstance(layers[i + 2], nn.ReLU)
    plain = ConvNet(1, 10, 40, channels=(4, 4, 4))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain.modules())
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv1d))
    two_d = ConvNet(3, 5, 8, channels=(2, 2), kernels=(3, 3), strides=(1, 2), dim=2, norm="batch")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in two_d.modules()) == 2
    assert two_d(torch.randn(4, 3, 8, 8)).shape == (4, 5)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_convnet_batchnorm_is_scale_invariant_in_train_mode(layer):
    torch.manual_seed(0)
    model = ConvNet(1, 10, 40, channels=(4, 4, 4), norm="batch").double().train()
    x = torch.randn(16, 40, dtype=torch.float64)
    conv = [m for m in model.modules() if isinstance(m, nn.Conv1d)][layer]
    ref = model(x)
    with torch.no_grad():
        conv.weight.mul_(7.0)
    torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-3)  # up to BatchNorm's eps
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.eps = 1e-300  # (torch refuses 0): the invariance is then exact to rounding
    exact = model(x)
    with torch.no_grad():
        conv.weight.mul_(0.05)
    torch.testing.assert_close(model(x), exact, rtol=1e-9, atol=1e-10)
    with torch.no_grad():
        conv.weight.div_(0.35)
    # so the gradient is orthogonal to the weight (Euler: w . dL/dw = 0 for a 0-homogeneous loss)
    F.cross_entropy(model(x), torch.arange(16) % 10).backward()
    radial = (conv.weight * conv.weight.grad).sum().detach()
    assert abs(float(radial)) < 1e-9 * float(conv.weight.detach().norm() * conv.weight.grad.norm())
    # the same scaling is visible without BatchNorm: the test above is not vacuous
    plain = ConvNet(1, 10, 40, channels=(4, 4, 4)).double()
    ref = plain(x)
    with torch.no_grad():
        [m for m in plain.modules() if isinstance(m, nn.Conv1d)][layer].weight.mul_(7.0)
    assert (plain(x) - ref).abs().max() > 1e-3


def test_convnet_rejects_bad_norm():
    with pytest.raises(ValueError, match="norm"):
        ConvNet(1, 10, 40, norm="bogus")


# --------------------------------------------------------------------------------------------------- TiedConv


def _head_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What ``model.head`` reads (after the ReLU and flatten)."""
    seen = []
    handle = model.head.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("in_channels,kernel", [(1, 5), (2, 3)])
def test_tiedconv_fully_tied_is_conv1d(in_channels, kernel):
    torch.manual_seed(0)
    L, C = 12, 3
    model = TiedConv(in_channels, 4, L, channels=C, kernel=kernel, tie=L).double()
    assert model.tied.weight.shape == (1, C, in_channels * kernel)
    conv = nn.Conv1d(in_channels, C, kernel, padding=kernel // 2).double()
    with torch.no_grad():
        conv.weight.copy_(model.tied.weight[0].reshape(C, in_channels, kernel))
        conv.bias.copy_(model.tied.bias)  # one kernel: the flat bias is its C biases
    x = torch.randn(5, in_channels, L, dtype=torch.float64)
    expected = model.head(torch.relu(conv(x)).flatten(1))
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
    if in_channels == 1:
        torch.testing.assert_close(model(x[:, 0]), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tie", [1, 3])
def test_tiedconv_kernel_g_acts_only_on_its_positions(tie):
    torch.manual_seed(1)
    L, C = 12, 2
    model = TiedConv(1, 3, L, channels=C, kernel=3, tie=tie).double()
    assert model.tied.weight.shape == (L // tie, C, 3)
    x = torch.randn(6, L, dtype=torch.float64) + 3.0  # positive inputs: the ReLU stays open
    with torch.no_grad():
        model.tied.bias.fill_(20.0)
    before = _head_input(model, x).reshape(6, C, L)
    g = 2
    with torch.no_grad():
        model.tied.weight[g] += 0.1
    after = _head_input(model, x).reshape(6, C, L)
    changed = ((after - before).abs() > 1e-12).any(dim=(0, 1))
    expected = torch.zeros(L, dtype=torch.bool)
    expected[g * tie : (g + 1) * tie] = True
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("tie", [2, 4, 12])
def test_tiedconv_tied_gradient_is_sum_of_untied_gradients(tie):
    torch.manual_seed(2)
    L, C, k = 12, 3, 3
    tied = TiedConv(2, 4, L, channels=C, kernel=k, tie=tie).double()
    untied = TiedConv(2, 4, L, channels=C, kernel=k, tie=1).double()
    with torch.no_grad():
        untied.tied.weight.copy_(tied.tied.weight.repeat_interleave(tie, dim=0))
        untied.tied.bias.copy_(tied.tied.bias.view(L // tie, C).repeat_interleave(tie, dim=0).reshape(-1))
        untied.head.load_state_dict(tied.head.state_dict())
    x, y = torch.randn(8, 2, L, dtype=torch.float64), torch.randint(0, 4, (8,))
    out_t, out_u = tied(x), untied(x)
    torch.testing.assert_close(out_t, out_u, rtol=1e-12, atol=1e-12)
    F.cross_entropy(out_t, y).backward()
    F.cross_entropy(out_u, y).backward()
    groups = L // tie
    for name in ("weight", "bias"):
        g_tied = getattr(tied.tied, name).grad
        g_untied = getattr(untied.tied, name).grad
        if name == "bias":  # stored flat: (groups*C,)
            g_tied, g_untied = g_tied.view(groups, C), g_untied.view(L, C)
        summed = g_untied.reshape(groups, tie, *g_untied.shape[1:]).sum(1)
        torch.testing.assert_close(g_tied, summed, rtol=1e-10, atol=1e-12)
        assert g_untied.abs().sum() > 0
    torch.testing.assert_close(tied.head.weight.grad, untied.head.weight.grad, rtol=1e-10, atol=1e-12)


def test_tied_layers_initialization_bounds():
    torch.manual_seed(11)
    conv = TiedConv(2, 3, 40, channels=16, kernel=5, tie=1)
    rnn = TiedRNN(40, 3, hidden=25, chunk=4, tie=1)
    for tensors, bound in (
        ((conv.tied.weight, conv.tied.bias), 1 / math.sqrt(2 * 5)),
        ((rnn.w_x, rnn.w_h, rnn.bias), 1 / math.sqrt(25)),
    ):
        w = torch.cat([t.detach().reshape(-1) for t in tensors])
        assert w.abs().max() <= bound and w.abs().max() > 0.98 * bound
        assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.05 * bound  # uniform on [-bound, bound]


def test_tiedconv_validation():
    with pytest.raises(ValueError, match=r"tie.*allowed: \[1, 2, 3, 4, 6, 12\]"):
        TiedConv(1, 2, 12, tie=5)
    with pytest.raises(ValueError, match="kernel"):
        TiedConv(1, 2, 12, kernel=4)
    with pytest.raises(ValueError, match="tie"):
        TiedConv(1, 2, 12, tie=0)
    with pytest.raises(ValueError, match="tie"):
        TiedConv(1, 2, 12, tie=True)
    with pytest.raises(ValueError, match="expects input"):
        TiedConv(1, 2, 12)(torch.zeros(3, 11))


# ---------------------------------------------------------------------------------------------------- TiedRNN


def test_tiedrnn_fully_tied_is_an_elman_rnn():
    torch.manual_seed(3)
    L, chunk, H = 12, 3, 5
    model = TiedRNN(L, 4, hidden=H, chunk=chunk, tie=L // chunk).double()
    assert model.w_x.shape == (1, H, chunk) and model.w_h.shape == (1, H, H) and model.bias.shape == (H,)
    x = torch.randn(6, L, dtype=torch.float64)
    W_x, W_h, b = model.w_x[0], model.w_h[0], model.bias
    h = torch.zeros(6, H, dtype=torch.float64)
    for t in range(L // chunk):
        h = torch.tanh(x[:, t * chunk : (t + 1) * chunk] @ W_x.T + h @ W_h.T + b)
    torch.testing.assert_close(model(x), model.head(h), rtol=1e-12, atol=1e-12)
    # the same as torch's own Elman RNN with one bias (its b_hh set to zero)
    rnn = nn.RNN(chunk, H, batch_first=True).double()
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(W_x)
        rnn.weight_hh_l0.copy_(W_h)
        rnn.bias_ih_l0.copy_(b)
        rnn.bias_hh_l0.zero_()
    _, h_n = rnn(x.reshape(6, L // chunk, chunk))
    torch.testing.assert_close(model(x), model.head(h_n[0]), rtol=1e-12, atol=1e-12)


def test_tiedrnn_step_uses_its_own_weights():
    """Step t uses group t // tie: with tie=2 the group-1 weights act at steps 2 and 3 only."""
    torch.manual_seed(4)
    model = TiedRNN(8, 3, hidden=4, chunk=2, tie=2).double()
    x = torch.randn(5, 8, dtype=torch.float64)
    h = torch.zeros(5, 4, dtype=torch.float64)
    for t in range(4):
        g = t // 2
        h = torch.tanh(x[:, 2 * t : 2 * t + 2] @ model.w_x[g].T + h @ model.w_h[g].T + model.bias.view(2, 4)[g])
    torch.testing.assert_close(model(x), model.head(h), rtol=1e-12, atol=1e-12)


def _copy_rnn(src: TiedRNN, dst: TiedRNN, reps: int) -> None:
    with torch.no_grad():
        for name in ("w_x", "w_h"):
            getattr(dst, name).copy_(getattr(src, name).repeat_interleave(reps, dim=0))
        dst.bias.copy_(src.bias.view(src.w_h.shape[0], -1).repeat_interleave(reps, dim=0).reshape(-1))
        dst.head.load_state_dict(src.head.state_dict())


@pytest.mark.parametrize("tie", [2, 6])
def test_tiedrnn_gradient_sharing(tie):
    torch.manual_seed(5)
    L, chunk, H = 12, 2, 4
    steps = L // chunk
    tied = TiedRNN(L, 3, hidden=H, chunk=chunk, tie=tie).double()
    untied = TiedRNN(L, 3, hidden=H, chunk=chunk, tie=1).double()
    _copy_rnn(tied, untied, tie)
    x, y = torch.randn(7, L, dtype=torch.float64), torch.randint(0, 3, (7,))
    out_t, out_u = tied(x), untied(x)
    torch.testing.assert_close(out_t, out_u, rtol=1e-12, atol=1e-12)  # identical per-step weights: same output
    F.cross_entropy(out_t, y).backward()
    F.cross_entropy(out_u, y).backward()
    for name in ("w_x", "w_h", "bias"):
        g_u, g_t = getattr(untied, name).grad, getattr(tied, name).grad
        if name == "bias":  # stored flat: (groups*H,)
            g_u, g_t = g_u.view(steps, H), g_t.view(steps // tie, H)
        summed = g_u.reshape(steps // tie, tie, *g_u.shape[1:]).sum(1)
        torch.testing.assert_close(g_t, summed, rtol=1e-10, atol=1e-12)
    # the step-0 hidden weights multiply h_0 = 0: no gradient; later steps get one
    assert untied.w_h.grad[0].abs().max() == 0 and untied.w_h.grad[1:].abs().sum() > 0


def test_tiedrnn_validation():
    with pytest.raises(ValueError, match="chunk"):
        TiedRNN(10, 2, chunk=4)
    with pytest.raises(ValueError, match=r"tie.*allowed: \[1, 2, 3, 6\]"):
        TiedRNN(12, 2, chunk=2, tie=4)
    with pytest.raises(ValueError, match="expects 12"):
        TiedRNN(12, 2, chunk=2)(torch.zeros(3, 10))


# -------------------------------------------------------------------------------------------------- spurious


def _agree(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(((x[:, 1] > 0) == (y == 1)).double().mean())


@pytest.mark.parametrize("agreement,test_agreement", [(0.95, 0.5), (0.7, 0.1), (0.8, None)])
def test_spurious_agreement_rates(agreement, test_agreement):
    n = 20_000
    ds = spurious(num_train=n, num_test=n, agreement=agreement, test_agreement=test_agreement, noise_dims=2)
    want_test = agreement if test_agreement is None else test_agreement
    for (x, y), p in (((ds.x_train, ds.y_train), agreement), ((ds.x_test, ds.y_test), want_test)):
        se = math.sqrt(p * (1 - p) / n)
        assert abs(_agree(x, y) - p) < 4 * se + 1e-3
        assert abs(float(y.double().mean()) - 0.5) < 4 * 0.5 / math.sqrt(n)
        # the causal feature: right with probability Phi(1) ~ 0.841 whatever the agreement
        causal = float(((x[:, 0] > 0) == (y == 1)).double().mean())
        assert abs(causal - 0.8413) < 4 * math.sqrt(0.84 * 0.16 / n)
    assert ds.x_train.shape == (n, 4) and ds.num_classes == 2


def test_spurious_splits_are_paired():
    a = spurious(num_train=300, num_test=400, test_agreement=0.5, seed=3)
    b = spurious(num_train=300, num_test=400, test_agreement=0.9, seed=3)
    c = spurious(num_train=300, num_test=400, seed=3)  # in-distribution: test agreement = agreement = 0.95
    d = spurious(num_train=300, num_test=400, test_agreement=0.95, seed=3)
    for other in (b, c):
        assert torch.equal(a.x_train, other.x_train) and torch.equal(a.y_train, other.y_train)
        assert torch.equal(a.y_test, other.y_test)
        assert torch.equal(a.x_test[:, 0], other.x_test[:, 0]) and torch.equal(a.x_test[:, 2:], other.x_test[:, 2:])
        assert not torch.equal(a.x_test[:, 1], other.x_test[:, 1])
    assert torch.equal(c.x_test, d.x_test) and torch.equal(c.y_test, d.y_test)
    assert not torch.equal(a.x_train, spurious(num_train=300, num_test=400, seed=4).x_train)
    loaded = load("spurious", num_train=300, num_test=400, test_agreement=0.5, seed=3)
    assert torch.equal(loaded.x_test, a.x_test) and torch.equal(loaded.y_train, a.y_train)


def test_spurious_noise_free_features_are_exact():
    ds = spurious(
        num_train=50, num_test=50, agreement=1.0, test_agreement=0.0, causal_noise=0.0, spurious_noise=0.0, noise_dims=0
    )
    s_train, s_test = 2.0 * ds.y_train - 1, 2.0 * ds.y_test - 1
    assert torch.equal(ds.x_train[:, 0], s_train) and torch.equal(ds.x_train[:, 1], s_train)
    assert torch.equal(ds.x_test[:, 0], s_test) and torch.equal(ds.x_test[:, 1], -s_test)


@pytest.mark.parametrize(
    "kw,name",
    [
        ({"agreement": 1.5}, "agreement"),
        ({"agreement": True}, "agreement"),
        ({"agreement": -0.1}, "agreement"),
        ({"test_agreement": 1.5}, "test_agreement"),
        ({"test_agreement": "0.5"}, "test_agreement"),
        ({"causal_noise": -1.0}, "causal_noise"),
        ({"num_train": 1}, "num_train"),
    ],
)
def test_spurious_rejects_bad_arguments(kw, name):
    with pytest.raises(ValueError, match=name):
        spurious(**kw)


# -------------------------------------------------------------------------------------------------- quantize


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_quantize_lies_on_the_grid(bits, granularity):
    torch.manual_seed(6)
    w = torch.randn(6, 5, 3, dtype=torch.float64) * torch.tensor([0.01, 0.1, 1.0, 3.0, 0.5, 2.0]).reshape(6, 1, 1)
    levels = 2 ** (bits - 1) - 1
    d = grid_step(w, bits, granularity)
    q = quantize(w, bits, granularity)
    assert q.dtype == w.dtype and q.shape == w.shape
    k = q / d
    torch.testing.assert_close(k, torch.round(k), rtol=0, atol=1e-9)
    assert k.abs().max() <= levels + 1e-9
    assert ((q - w).abs() <= d / 2 + 1e-12).all()
    if granularity == "tensor":
        assert d.ndim == 0 and math.isclose(float(d), float(w.abs().max()) / levels)
        assert torch.unique(torch.round(k)).numel() <= 2 * levels + 1
    else:
        assert d.shape == (6, 1, 1)
        torch.testing.assert_close(d.reshape(-1), w.abs().reshape(6, -1).amax(1) / levels)
        assert (d <= grid_step(w, bits, "tensor") + 1e-15).all()
        for row in torch.round(k):
            assert torch.unique(row).numel() <= 2 * levels + 1
    # the absmax weight is represented exactly, so the grid of Q(w) is the grid of w
    torch.testing.assert_close(grid_step(q, bits, granularity), d)
    assert float(grid_distance(q, bits, granularity).max()) < 1e-9


def test_quantize_float32_and_zero_tensors():
    w = torch.randn(4, 7)
    q = quantize(w, 8, "channel")
    assert q.dtype == torch.float32
    assert ((q - w).abs() <= grid_step(w, 8, "channel") / 2 + 1e-6).all()
    zero = torch.zeros(3, 4)
    for gran in ("tensor", "channel"):
        qz = quantize(zero, 4, gran)
        assert torch.equal(qz, zero) and not torch.isnan(qz).any()
        assert torch.equal(grid_distance(zero, 4, gran), torch.zeros(3, 4, dtype=torch.float64))
    mixed = torch.tensor([[0.0, 0.0], [1.0, -0.5]])
    assert torch.equal(quantize(mixed, 8, "channel")[0], torch.zeros(2))


def test_grid_distance_range_and_mean():
    gen = torch.Generator().manual_seed(7)
    w = torch.rand(200_000, generator=gen, dtype=torch.float64) * 2 - 1
    for bits in (4, 8):
        dist = grid_distance(w, bits)
        assert dist.min() >= 0 and dist.max() <= 0.5
        assert abs(float(dist.mean()) - 0.25) < 4 * (0.5 / math.sqrt(12)) / math.sqrt(w.numel()) + 1e-3
    d = float(grid_step(w, 8))
    on_grid = torch.arange(-127, 128, dtype=torch.float64) * d
    assert float(grid_distance(on_grid, 8).max()) < 1e-9
    half = (torch.arange(-10, 10, dtype=torch.float64) + 0.5) * d
    torch.testing.assert_close(
        grid_distance(torch.cat([half, on_grid]), 8)[:20], torch.full((20,), 0.5, dtype=torch.float64)
    )


def test_quantize_state_selects_matrices():
    model = ConvNet(1, 10, 40, channels=(4, 4), kernels=(3, 3), strides=(1, 2), norm="batch")
    model.train()
    model(torch.randn(8, 40))  # running statistics and num_batches_tracked move
    state = model.state_dict()
    q = quantize_state(state, 4, "channel")
    assert set(q) == set(state)
    for k, v in state.items():
        assert q[k].dtype == v.dtype and q[k].shape == v.shape
        if v.is_floating_point() and v.ndim >= 2:
            assert not torch.equal(q[k], v)
            torch.testing.assert_close(q[k], quantize(v, 4, "channel"))
        else:
            assert torch.equal(q[k], v) and q[k].data_ptr() != v.data_ptr()
    assert any(not v.is_floating_point() for v in state.values())  # num_batches_tracked is there
    model.load_state_dict(q)
    custom = quantize_state(state, 8, which=lambda name, t: name == "head.bias")
    assert not torch.equal(custom["head.bias"], state["head.bias"])
    assert torch.equal(custom["head.weight"], state["head.weight"])


@pytest.mark.parametrize(
    "bits,gran,name",
    [
        (1, "tensor", "bits"),
        (17, "tensor", "bits"),
        (8.0, "tensor", "bits"),
        (True, "tensor", "bits"),
        (8, "row", "granularity"),
    ],
)
def test_quantize_rejects_bad_arguments(bits, gran, name):
    w = torch.ones(2, 2)
    for fn in (quantize, grid_distance, grid_step):
        with pytest.raises(ValueError, match=name):
            fn(w, bits, gran)
    with pytest.raises(ValueError, match=name):
        quantize_state({"w": w}, bits, gran)


# ---------------------------------------------------------------------------------------------- welch_interval


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_welch_interval_matches_scipy(level):
    rng = np.random.default_rng(8)
    a, b = rng.normal(1.0, 1.0, 7), rng.normal(0.0, 3.0, 12)
    diff, low, high = welch_interval(a, b, level)
    ci = sps.ttest_ind(a, b, equal_var=False).confidence_interval(confidence_level=level)
    assert math.isclose(diff, a.mean() - b.mean(), rel_tol=1e-12)
    assert math.isclose(low, ci.low, rel_tol=1e-9) and math.isclose(high, ci.high, rel_tol=1e-9)
    # not the pooled-variance interval
    pooled = sps.ttest_ind(a, b, equal_var=True).confidence_interval(confidence_level=level)
    assert not math.isclose(low, pooled.low, rel_tol=1e-3)


def test_welch_interval_edge_cases():
    assert welch_interval([2.0, 2.0, 2.0], [0.5, 0.5]) == (1.5, 1.5, 1.5)
    diff, low, high = welch_interval([1.0, 1.0, 1.0], [0.0, 1.0, 2.0])  # one group constant: still an interval
    assert diff == 0.0 and low < 0 < high
    # only the second group varies: Welch's df is n_b - 1
    b = np.array([0.0, 1.0, 2.0, 4.0])
    diff, low, high = welch_interval([1.0, 1.0, 1.0], b)
    half = sps.t.ppf(0.975, b.size - 1) * b.std(ddof=1) / math.sqrt(b.size)
    assert math.isclose(high - diff, half, rel_tol=1e-12) and math.isclose(diff - low, half, rel_tol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        welch_interval([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least 2"):
        welch_interval([1.0, 2.0], [])


# ------------------------------------------------------------------------------------ shrinkage probe on names


def _probe_run(decay: str, names_list: list[list[str]], steps: int = 15, lr: float = 1e-2, wd: float = 0.1):
    torch.manual_seed(9)
    model = TiedConv(1, 3, 8, channels=2, kernel=3, tie=2).double()
    opt = Adam(model.parameters(), lr=lr, weight_decay=wd, decay=decay)
    probes = [PROBES["shrinkage"](model, opt, tensors=names, start=3) for names in names_list]
    gen = torch.Generator().manual_seed(10)
    for step in range(steps):
        x = torch.randn(16, 8, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 3, (16,), generator=gen)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        for p in probes:
            p.before_step(step)
        opt.step()
        for p in probes:
            p.after_step(step)
    return model, [p.result()["shrinkage"] / (lr * wd) for p in probes]


def test_shrinkage_probe_on_named_tensors_adamw():
    names = ["tied.weight", "head.weight", "tied.bias"]
    model, (rel,) = _probe_run("decoupled", [names])
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    assert rel.shape == (sum(sizes[n] for n in names),)
    np.testing.assert_allclose(rel, 1.0, rtol=1e-6)


def test_shrinkage_probe_on_named_tensors_l2_keeps_the_order():
    a, b = ["tied.weight"], ["head.weight"]
    _, (ab, ba, ra, rb) = _probe_run("l2", [a + b, b + a, a, b])
    np.testing.assert_array_equal(ab, np.concatenate([ra, rb]))
    np.testing.assert_array_equal(ba, np.concatenate([rb, ra]))
    assert ab.std() / abs(ab.mean()) > 0.1  # Adam+L2: the per-weight rate is not uniform
    assert np.abs(ab - 1).max() > 0.1


def test_shrinkage_probe_rejects_unknown_names():
    model = TiedConv(1, 3, 8, channels=2, kernel=3)
    opt = Adam(model.parameters(), weight_decay=0.1, decay="decoupled")
    with pytest.raises(ValueError, match="nope"):
        PROBES["shrinkage"](model, opt, tensors=["tied.weight", "nope"])
    with pytest.raises(ValueError, match="tensors"):
        PROBES["shrinkage"](model, opt, tensors=[])
    with pytest.raises(ValueError, match="tensors"):
        PROBES["shrinkage"](model, opt, tensors="weights")


# -------------------------------------------------------------------------------------------------- practice


def test_grid_values():
    s = practice.setup("test")
    vals = practice.grid_values(s, -2.0)
    assert len(vals) == s.grid_points == 3
    np.testing.assert_allclose(np.log10(vals), [-3.0, -2.0, -1.0], atol=1e-12)
    s5 = practice.setup("smoke")
    vals = practice.grid_values(s5, -1.0)
    assert len(vals) == 5
    np.testing.assert_allclose(np.diff(np.log10(vals)), 0.5, atol=1e-12)
    assert math.isclose(float(np.median(np.log10(vals))), -1.0, abs_tol=1e-12)
    with pytest.raises(ValueError, match="scale"):
        practice.setup("huge")


def _bowl(lrs, wds, centre, curvature=1.0, floor=0.1):
    """err[wd, lr] = floor + curvature * (log10 wd - centre(lr))^2."""
    lw = np.log10(wds)[:, None]
    return floor + curvature * (lw - centre(np.log10(lrs))[None, :]) ** 2


def test_valley_tilt_minus_one_when_only_the_product_matters():
    lrs = 10.0 ** np.array([-3.0, -2.6, -2.3, -1.9, -1.5])
    wds = 10.0 ** np.arange(-5.0, 1.01, 0.5)
    err = _bowl(lrs, wds, lambda llr: -4.2 - llr)  # best lambda = 10^-4.2 / lr
    v = practice.valley(lrs, wds, err)
    assert v["columns_counted"] == 5 and v["counted"].all()
    assert abs(v["tilt"] + 1) < 0.05
    np.testing.assert_allclose(v["best_wd"], 10**-4.2 / lrs, rtol=1e-9)  # parabola through an exact quadratic
    assert math.isclose(v["best_error"], err.min())


def test_valley_tilt_zero_when_lambda_does_not_depend_on_lr():
    lrs = 10.0 ** np.array([-3.0, -2.5, -2.0, -1.5])
    wds = 10.0 ** np.arange(-4.0, 0.01, 0.5)
    err = _bowl(lrs, wds, lambda llr: np.full_like(llr, -2.3)) + 0.02 * np.arange(4)[None, :]
    v = practice.valley(lrs, wds, err)
    assert v["columns_counted"] == 4 and abs(v["tilt"]) < 0.05
    np.testing.assert_allclose(v["best_wd"], 10**-2.3, rtol=1e-9)


def test_valley_parabolic_refinement_of_an_off_grid_minimum():
    wds = 10.0 ** np.arange(-4.0, 0.01, 0.5)
    lrs = np.array([1e-3, 1e-2, 1e-1])
    centres = np.array([-2.8, -2.0, -1.15])  # 0.4, 0 and 0.35 grid steps off a grid point
    err = _bowl(lrs, wds, lambda llr: centres, curvature=3.0)
    v = practice.valley(lrs, wds, err)
    np.testing.assert_allclose(np.log10(v["best_wd"]), centres, atol=1e-9)
    # a non-quadratic (V-shaped) column: the vertex of the parabola through the three points, within half a step
    lw = np.log10(wds)
    vee = 1.0 + np.abs(lw - (-2.2))[:, None] * np.ones((1, 3))
    got = np.log10(practice.valley(lrs, wds, vee)["best_wd"])
    a, b, c = 1 + abs(-2.5 + 2.2), 1 + abs(-2.0 + 2.2), 1 + abs(-1.5 + 2.2)
    expected = -2.0 + 0.5 * (a - c) / (a - 2 * b + c) * 0.5
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert np.all(np.abs(got - (-2.0)) <= 0.25 + 1e-12)


def test_valley_counts_only_interior_columns_in_the_basin():
    lrs = 10.0 ** np.array([-4.0, -3.5, -3.0, -2.5, -2.0, -1.5])
    wds = 10.0 ** np.arange(-4.0, 0.01, 0.5)
    centres = np.array([-4.5, -3.0, -2.5, -2.0, -1.5, 0.5])  # first column below the grid, last above it
    err = _bowl(lrs, wds, lambda llr: centres, curvature=0.1)  # edge columns: best error 0.125, in the basin
    err[:, 3] += 0.5  # best error 0.6 > 2 * 0.1: outside the basin
    v = practice.valley(lrs, wds, err)
    np.testing.assert_array_equal(v["interior"], [False, True, True, True, True, False])
    np.testing.assert_array_equal(v["in_basin"], [True, True, True, False, True, True])
    np.testing.assert_array_equal(v["counted"], [False, True, True, False, True, False])
    assert v["columns_counted"] == 3
    assert math.isclose(v["best_wd"][0], 1e-4) and math.isclose(v["best_wd"][-1], 1.0)  # edges: not refined
    expected = np.polyfit(np.log(lrs[[1, 2, 4]]), np.log(10.0 ** centres[[1, 2, 4]]), 1)[0]
    assert math.isclose(v["tilt"], expected, rel_tol=1e-9)
    wide = practice.valley(lrs, wds, err, basin_factor=10.0)
    assert wide["columns_counted"] == 4
    err[:, 4] += 0.5
    short = practice.valley(lrs, wds, err)
    assert short["columns_counted"] == 2 and math.isnan(short["tilt"])


def test_basin_cells_uses_the_seed_mean():
    rows = []
    for lr, wd, errs in [
        (1e-3, 1e-2, (0.10, 0.12)),
        (1e-2, 1e-2, (0.15, 0.30)),
        (1e-3, 1e-1, (0.30, 0.20)),
        (1e-2, 1e-1, (0.90, 0.10)),
    ]:
        rows += [{"seed": s, "lr": lr, "weight_decay": wd, "test_error": e} for s, e in enumerate(errs)]
    table = pd.DataFrame(rows)
    cells = practice.basin_cells(table)  # best mean 0.11: keeps means <= 0.22
    assert sorted(set(zip(cells["lr"], cells["weight_decay"]))) == [(1e-3, 1e-2)]
    assert len(cells) == 2
    cells = practice.basin_cells(table, basin_factor=2.3)  # <= 0.253: also the (1e-2, 1e-2) and (1e-3, 1e-1) cells
    assert sorted(set(zip(cells["lr"], cells["weight_decay"]))) == [(1e-3, 1e-2), (1e-3, 1e-1), (1e-2, 1e-2)]
    assert len(cells) == 6


def test_select_lambda():
    rows = []
    for decay, wd, accs in [
        ("l2", 0.0, (0.80, 0.82)),
        ("l2", 0.01, (0.90, 0.70)),
        ("l2", 0.1, (0.84, 0.83)),
        ("decoupled", 1.0, (0.905, 0.87)),
        ("decoupled", 0.1, (0.87, 0.905)),
        ("decoupled", 3.0, (0.95, 0.5)),
    ]:
        rows += [
            {"decay": decay, "weight_decay": wd, "seed": s, "id_acc": a, "ood_acc": 1 - a} for s, a in enumerate(accs)
        ]
    table = pd.DataFrame(rows)
    assert practice.select_lambda(table, "l2") == 0.1  # best mean (0.835), not the best single seed
    assert practice.select_lambda(table, "decoupled") == 0.1  # tie between 0.1 and 1.0: the smaller
    assert practice.select_lambda(table, "l2", metric="ood_acc") == 0.01  # means 0.19, 0.20, 0.165


def test_practice_end_to_end_at_test_scale(tmp_path):
    from wdlib.runs import Store

    s = practice.setup("test")
    store = Store(tmp_path / "store")
    arm = next(a for a in practice.GRID_ARMS if a.label == "AdamW (paper)")
    seeds = (5,)

    grid = practice.grid_sweeps(s, (arm,), seeds, store=store)[arm.label]
    assert len(grid) == len(seeds) * s.grid_points * s.grid_wd_points["decoupled"]
    assert set(grid["seed"]) == set(seeds)
    assert {"lr", "weight_decay", "seed", "test_error", "arm", "key"} <= set(grid.columns)
    assert (grid["arm"] == arm.label).all() and grid["test_error"].between(0, 1).all()
    np.testing.assert_allclose(sorted(set(grid["lr"])), practice.lr_values(s, arm))
    np.testing.assert_allclose(sorted(set(grid["weight_decay"])), practice.wd_values(s, arm))
    lrs, wds, err = practice.error_matrix(grid)
    assert err.shape == (s.grid_points, s.grid_points) and lrs.size == wds.size == s.grid_points
    assert np.all(np.diff(lrs) > 0) and np.all(np.diff(wds) > 0)

    quant = practice.quantization_table(s, {arm.label: grid}, store=store)
    trained = int((grid["test_error"] < 1).sum())
    assert len(quant) == trained * len(s.quant_bits) * 2
    assert set(quant["granularity"]) == {"tensor", "channel"} and set(quant["bits"]) == set(s.quant_bits)
    assert quant["quant_acc"].between(0, 1).all() and quant["float_acc"].between(0, 1).all()
    np.testing.assert_allclose(quant["acc_drop"], quant["float_acc"] - quant["quant_acc"])
    merged = quant.merge(grid, on=["lr", "weight_decay", "seed"])
    np.testing.assert_allclose(merged["float_acc"], 1 - merged["test_error"], atol=1e-6)
    assert quant["grid_distance"].between(0, 0.5).all()

    spur_seeds = (0, 1)
    spur = practice.spurious_sweep(s, spur_seeds, store=store)
    n_spur = sum(len(spur_seeds) * len(s.spur_wds[d]) for d in ("l2", "decoupled"))
    assert len(spur) == n_spur
    assert {"w_causal", "w_spurious", "spurious_ratio", "id_acc", "ood_acc", "decay"} <= set(spur.columns)
    np.testing.assert_allclose(spur["spurious_ratio"], spur["w_spurious"] / spur["w_causal"])
    np.testing.assert_allclose(spur["id_acc"], spur["val_acc"], atol=1e-6)  # the in-distribution test split
    assert spur[["id_acc", "ood_acc"]].stack().between(0, 1).all()

    share = practice.sharing_sweep(s, "tiedconv", (0,), store=store)
    assert len(share) == 2 * 1 * len(s.share_conv_ties) * 2
    c, k = s.share_conv["channels"], s.share_conv["kernel"]
    for tie in s.share_conv_ties:
        rows = share[share["tie"] == tie]
        assert set(rows[rows["group"] == "tied"]["weights"]) == {(40 // tie) * c * k}
        assert set(rows[rows["group"] == "head"]["weights"]) == {10 * c * 40}
    adamw = share[share["decay"] == "decoupled"]
    np.testing.assert_allclose(adamw["median"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(adamw["mean"], 1.0, rtol=1e-6)
    assert not np.allclose(share[share["decay"] == "l2"]["median"], 1.0, rtol=1e-2)
    with pytest.raises(ValueError, match="model"):
        practice.sharing_sweep(s, "convnet", store=store)

    # a second call trains nothing: every run comes from the store
    keys = sorted(r["key"] for r in store.list())
    assert len(keys) == len(grid) + len(spur) + len(share) // 2
    again = practice.grid_sweeps(s, (arm,), seeds, store=store)[arm.label]
    spur2 = practice.spurious_sweep(s, spur_seeds, store=store)
    share2 = practice.sharing_sweep(s, "tiedconv", (0,), store=store)
    assert sorted(r["key"] for r in store.list()) == keys
    # (wall_time is stored rounded, so it is left out of the comparison)
    pd.testing.assert_frame_equal(again.drop(columns="wall_time"), grid.drop(columns="wall_time"))
    pd.testing.assert_frame_equal(spur2.drop(columns="wall_time"), spur.drop(columns="wall_time"))
    pd.testing.assert_frame_equal(share2, share)


def test_tied_biases_are_not_decayed_with_the_vectors():
    """The tied layers' biases are flat tensors, so decay_vectors=False leaves them undecayed like any bias."""
    from wdlib.params import decay_groups

    for model in (TiedConv(1, 3, 12, channels=2, kernel=3, tie=3), TiedRNN(12, 3, hidden=4, chunk=3, tie=2)):
        groups = {g["name"]: {id(p) for p in g["params"]} for g in decay_groups(model, False)}
        named = dict(model.named_parameters())
        bias = named["tied.bias"] if "tied.bias" in named else named["bias"]
        assert id(bias) in groups["no_decay"] and id(named["head.bias"]) in groups["no_decay"]
        weight = named["tied.weight"] if "tied.weight" in named else named["w_h"]
        assert id(weight) in groups["decay"]


def test_spurious_test_draw_is_an_independent_test_split():
    a = spurious(num_train=50, num_test=400, seed=3)
    b = spurious(num_train=50, num_test=400, seed=3, test_draw=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_test, b.x_test)
    assert torch.equal(spurious(num_train=50, num_test=400, seed=3, test_draw=1).x_test, b.x_test)
    with pytest.raises(ValueError, match="test_draw"):
        spurious(test_draw=-1)


def test_sharing_sweep_rnn_groups_leave_out_the_unused_step0_weights(tmp_path):
    from wdlib.runs import Store

    s = practice.setup("test")
    share = practice.sharing_sweep(s, "tiedrnn", store=Store(tmp_path / "store"))
    h, chunk, steps = s.share_rnn["hidden"], s.share_rnn["chunk"], 40 // s.share_rnn["chunk"]
    for tie in s.share_rnn_ties:
        rows = share[share["tie"] == tie].set_index(["decay", "group"])["weights"]
        groups = steps // tie
        assert rows[("l2", "tied")] == groups * h * chunk
        assert rows[("l2", "recurrent")] == (groups - (tie == 1)) * h * h
        assert rows[("l2", "head")] == 10 * h


def test_wd_values_by_family_and_the_judged_arms():
    s = practice.setup("smoke")
    by_label = {a.label: a for a in practice.GRID_ARMS}
    assert set(by_label) == {"SGD+L2", "SGDW (paper)", "Adam+L2", "AdamW (paper)"}
    l2, dec = practice.wd_values(s, by_label["SGD+L2"]), practice.wd_values(s, by_label["SGDW (paper)"])
    assert len(l2) == s.grid_wd_points["L2"] > s.grid_points and len(dec) == s.grid_wd_points["decoupled"]
    # a tilt -1 valley across the widest lr axis fits inside the lambda axis with half a decade to spare on each side
    assert (len(l2) - 1) * s.grid_step >= (s.grid_points - 1) * s.grid_step + 2 * 0.5
    np.testing.assert_allclose(np.diff(np.log10(l2)), s.grid_step, atol=1e-12)
    assert math.isclose(float(np.median(np.log10(l2))), by_label["SGD+L2"].log_wd, abs_tol=1e-12)
    # the values of a longer axis contain those of the shorter one (same floats: runs are shared)
    assert set(practice.grid_values(s, -2.0, 7)) <= set(practice.grid_values(s, -2.0, 9))
    assert set(practice.TORCH_ARMS) <= set(by_label)
    # learning rates: the arm's own step where it has one, centred on its log_lr
    adam = by_label["Adam+L2"]
    lrs = np.log10(practice.lr_values(s, adam))
    assert lrs.size == s.grid_points
    np.testing.assert_allclose(np.diff(lrs), adam.lr_step, atol=1e-12)
    assert math.isclose(float(np.median(lrs)), adam.log_lr, abs_tol=1e-12)
    np.testing.assert_allclose(np.diff(np.log10(practice.lr_values(s, by_label["SGD+L2"]))), s.grid_step, atol=1e-12)


def _bowl_table(centre, seeds=(0, 1, 2, 3, 4), noise=0.002, lrs=None, wds=None):
    rng = np.random.default_rng(0)
    lrs = 10.0 ** np.arange(-3.0, -0.99, 0.5) if lrs is None else lrs
    wds = 10.0 ** np.arange(-6.0, -0.99, 0.5) if wds is None else wds
    rows = []
    for sd in seeds:
        err = _bowl(lrs, wds, centre, curvature=0.05) + noise * rng.standard_normal((wds.size, lrs.size))
        rows += [
            {"seed": sd, "lr": lr, "weight_decay": wd, "test_error": err[i, j]}
            for i, wd in enumerate(wds)
            for j, lr in enumerate(lrs)
        ]
    return pd.DataFrame(rows)


def test_tilt_measurement_bootstraps_over_seeds():
    diag = practice.tilt_measurement(_bowl_table(lambda llr: -5.5 - llr), resamples=200)
    assert diag.kind == "bootstrap" and diag.n == 5 and len(diag.per_seed) == 5
    assert abs(diag.value + 1) < 0.1 and 0 < diag.spread < 0.2
    assert diag.interval[0] <= diag.value <= diag.interval[1]
    assert all(abs(t + 1) < 0.3 for t in diag.per_seed)
    flat = practice.tilt_measurement(_bowl_table(lambda llr: np.full_like(llr, -3.5)), resamples=200)
    assert abs(flat.value) < 0.1
    # noisier seeds: a larger spread
    noisy = practice.tilt_measurement(_bowl_table(lambda llr: -5.5 - llr, noise=0.02), resamples=200)
    assert noisy.spread > diag.spread
    # a valley that leaves the lambda axis: undefined in the resamples, so the spread is undefined
    off = practice.tilt_measurement(_bowl_table(lambda llr: -5.5 - 3 * llr), resamples=100)
    assert math.isnan(off.value) and math.isnan(off.spread)


def test_convention_twins_at_test_scale(tmp_path):
    from wdlib.runs import Store

    s = practice.setup("test")
    store = Store(tmp_path / "store")
    arm = next(a for a in practice.GRID_ARMS if a.label == "AdamW (paper)")
    tables = practice.grid_sweeps(s, (arm,), (0,), store=store)
    twins = practice.convention_twins(s, tables, 0, cells=2, store=store)
    assert len(twins) == 2 and set(twins["arm"]) == {"AdamW (paper)"}
    np.testing.assert_allclose(twins["weight_decay_torch"] * twins["lr"], twins["weight_decay_paper"], rtol=1e-12)
    np.testing.assert_allclose(twins["difference"], twins["test_error_torch"] - twins["test_error_paper"])
    # the conversion is the same algorithm: float32 test errors agree closely
    assert twins["difference"].abs().max() <= 0.05
