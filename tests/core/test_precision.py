"""bfloat16 parameters: stochastic rounding, ulp, the decay really applied, and the bf16_update remedies."""

from __future__ import annotations

import io
import math
import time

import pytest
import torch

from wdlib import precision
from wdlib.optim import BF16_UPDATES, SGD, SGDW, Adam, AdamW
from wdlib.precision import applied_decay, decay_changes_fraction, stochastic_round, ulp

REMEDIES = ["master", "kahan", "stochastic"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are small (<= 10k elements): intra-op threads only add synchronisation, which on a
    busy machine costs 100x (3 s instead of 0.01 s for 200 steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# SGD with and without momentum, decoupled and L2; Adam decoupled, independent and L2
OPTIMIZERS = [
    pytest.param(SGD, dict(lr=0.05, momentum=0.0, weight_decay=0.1, decay="decoupled"), id="sgd-decoupled"),
    pytest.param(SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.1, decay="decoupled"), id="sgdm-decoupled"),
    pytest.param(SGD, dict(lr=0.05, momentum=0.0, weight_decay=0.1, decay="l2"), id="sgd-l2"),
    pytest.param(SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1, decay="l2"), id="sgdm-l2"),
    pytest.param(Adam, dict(lr=1e-2, weight_decay=0.1, decay="decoupled"), id="adam-decoupled"),
    pytest.param(Adam, dict(lr=1e-2, weight_decay=1e-3, decay="independent"), id="adam-independent"),
    pytest.param(Adam, dict(lr=1e-2, weight_decay=0.1, decay="l2"), id="adam-l2"),
]


def _bf16_neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (float32) truncated toward zero to bfloat16, and the next bfloat16 away from zero."""
    bits = x.view(torch.int32)
    down = (bits & -(1 << 16)).view(torch.float32)
    up = ((bits & -(1 << 16)) + (1 << 16)).view(torch.float32)
    return down, up


# --- stochastic_round ---------------------------------------------------------------------------------------


def test_stochastic_round_gives_one_of_the_two_neighbours():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=gen) * torch.logspace(-3, 3, 200_000)
    out = stochastic_round(x, generator=gen)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    down, up = _bf16_neighbours(x)
    o = out.float()
    assert bool(((o == down) | (o == up)).all())
    assert 0.3 < float((o == up).double().mean()) < 0.7  # both neighbours occur


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("frac", [0.3, 0.01])
def test_stochastic_round_is_unbiased(sign, frac):
    """Mean of n roundings of x = 1 + frac*ulp is x within 5 standard errors; up with probability frac."""
    n = 400_000
    u = 2.0**-7
    x = sign * (1.0 + frac * u)
    out = stochastic_round(torch.full((n,), x), generator=torch.Generator().manual_seed(1)).double()
    se = u * math.sqrt(frac * (1 - frac) / n)
    assert abs(float(out.mean()) - x) < 5 * se
    p_up = float((out.abs() > 1.0).double().mean())
    assert abs(p_up - frac) < 5 * math.sqrt(frac * (1 - frac) / n)
    # round to nearest is biased by the whole remainder: here it always gives 1
    assert float(torch.tensor(x).to(torch.bfloat16)) == sign


def test_stochastic_round_keeps_bf16_values_and_specials():
    exact = torch.randn(10_000, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    assert torch.equal(stochastic_round(exact.float()), exact)
    special = torch.tensor([math.inf, -math.inf, math.nan, 0.0, -0.0])
    out = stochastic_round(special)
    assert out[0] == math.inf and out[1] == -math.inf and math.isnan(out[2])
    assert out[3] == 0 and out[4] == 0 and math.copysign(1, float(out[4])) == -1
    nan_payload = torch.tensor([0x7F800001], dtype=torch.int32).view(torch.float32)  # a NaN with low bits only
    assert math.isnan(float(stochastic_round(nan_payload)[0]))


def test_stochastic_round_uses_the_global_rng_or_a_generator():
    x = torch.randn(1000) * 1e-2
    torch.manual_seed(5)
    a = stochastic_round(x)
    torch.manual_seed(5)
    b = stochastic_round(x)
    c = stochastic_round(x)
    assert torch.equal(a, b) and not torch.equal(b, c)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(stochastic_round(x, generator=g1), stochastic_round(x, generator=g2))
    with pytest.raises(ValueError, match="dtype"):
        stochastic_round(x, dtype=torch.float16)


# --- ulp and the half-ulp rule ---------------------------------------------------------------------------------


def test_ulp_is_the_gap_to_the_next_representable_number():
    x = torch.randn(5000, generator=torch.Generator().manual_seed(4)) * torch.logspace(-20, 20, 5000)
    assert torch.equal(ulp(x), torch.nextafter(x.abs(), torch.tensor(math.inf)) - x.abs())
    xb = x.to(torch.bfloat16)
    next_up = (xb.abs().view(torch.int16) + 1).view(torch.bfloat16)
    assert torch.equal(ulp(xb), next_up.float() - xb.abs().float())
    assert float(ulp(torch.tensor([1.0]), torch.bfloat16)) == 2.0**-7
    assert float(ulp(torch.tensor([1.99]), torch.bfloat16)) == 2.0**-7
    assert float(ulp(torch.tensor([-2.0]), torch.bfloat16)) == 2.0**-6
    assert float(ulp(torch.tensor([0.0]), torch.bfloat16)) == 2.0**-133  # smallest subnormal
    assert float(ulp(torch.tensor([1.0], dtype=torch.float16))) == 2.0**-10


def test_decay_below_a_half_ulp_changes_no_bfloat16_value():
    """x*(1 - s) rounds back to x when s*|x| < ulp/2; with |x| < 2^(e+1) that holds for every x at s < 2^-9."""
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    assert decay_changes_fraction(x, 6e-5) == 0.0  # GPT-2: lr 6e-4, lambda 0.1
    assert decay_changes_fraction(x, 1e-3) == 0.0
    assert decay_changes_fraction(x, 0.99 * 2.0**-9) == 0.0
    assert 0.0 < decay_changes_fraction(x, 3e-3) < 1.0
    assert decay_changes_fraction(x, 2.0**-7 + 1e-4) == 1.0  # above one relative ulp everything moves
    assert decay_changes_fraction(x.float(), 6e-5) > 0.99


# --- the decay really applied ---------------------------------------------------------------------------------

WEIGHTS = [
    torch.randn(100, 80, generator=torch.Generator().manual_seed(6)),
    torch.randn(2000, generator=torch.Generator().manual_seed(7)) * 0.02,
]


@pytest.mark.parametrize("optimizer,impl", [("adam", "fused"), ("adam", "foreach"), ("sgd", "auto")])
def test_nearest_applies_no_decay_below_half_an_ulp(optimizer, impl):
    r = applied_decay(WEIGHTS, lr=1e-3, weight_decay=0.1, optimizer=optimizer, impl=impl, steps=50)
    assert r["requested"] == pytest.approx(1e-4)
    assert r["changed_first_step"] == 0.0 and r["applied_first_step"] == 0.0
    assert r["applied"] == 0.0 and r["ratio"] == 0.0


@pytest.mark.parametrize("bf16_update", REMEDIES)
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_remedies_apply_the_requested_decay(optimizer, bf16_update):
    r = applied_decay(WEIGHTS, lr=1e-2, weight_decay=0.1, optimizer=optimizer, bf16_update=bf16_update, steps=200)
    assert r["requested"] == pytest.approx(1e-3)
    assert r["ratio"] == pytest.approx(1.0, abs=0.1)
    if bf16_update == "stochastic":  # moves about s*|x|/ulp of the elements at once, unbiased
        assert 0.02 < r["changed_first_step"] < 0.5
        assert r["applied_first_step"] == pytest.approx(1e-3, rel=0.5)
    else:  # the float32 copy takes the small steps, the stored value follows a whole ulp at a time
        assert r["changed_first_step"] == 0.0
        assert r["ratio"] == pytest.approx(1.0, abs=0.02)


def test_float32_weights_get_the_requested_decay_and_independent_convention():
    r = applied_decay(WEIGHTS, lr=1e-3, weight_decay=0.1, dtype=torch.float32, steps=20)
    assert r["ratio"] == pytest.approx(1.0, rel=1e-3) and r["changed_first_step"] > 0.99
    r = applied_decay(WEIGHTS, lr=1e-2, weight_decay=1e-3, decay="independent", bf16_update="kahan", steps=100)
    assert r["requested"] == pytest.approx(1e-3) and r["ratio"] == pytest.approx(1.0, abs=0.02)
    with pytest.raises(ValueError, match="optimizer"):
        applied_decay(WEIGHTS, 1e-3, 0.1, optimizer="lion")
    with pytest.raises(ValueError, match="decay"):
        applied_decay(WEIGHTS, 1e-3, 0.1, decay="l2")


def test_applied_decay_leaves_the_callers_rng_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = applied_decay(WEIGHTS, 1e-2, 0.1, bf16_update="stochastic", steps=5)
    assert torch.equal(torch.get_rng_state(), before)
    assert applied_decay(WEIGHTS, 1e-2, 0.1, bf16_update="stochastic", steps=5) == a


# --- the remedies against a float32 run -------------------------------------------------------------------------


def _run_given_grads(cls, kw, dtype, bf16_update, steps=60, seed=0):
    """Step two tensors with fixed random gradients (rounded to ``dtype``); return params and optimizer."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(torch.bfloat16).to(dtype)) for s in [(40, 30), (30,)]]
    opt = cls(params, bf16_update=bf16_update, **kw)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(torch.bfloat16).to(dtype)
        opt.step()
    return params, opt


@pytest.mark.parametrize("cls,kw", OPTIMIZERS)
def test_master_is_the_float32_run_exactly(cls, kw):
    """Given the same (bf16-valued) gradients, the master copy is bit for bit the float32 run."""
    ref, _ = _run_given_grads(cls, kw, torch.float32, "nearest")
    params, opt = _run_given_grads(cls, kw, torch.bfloat16, "master")
    for p, r in zip(params, ref):
        state = opt.state[p]
        assert p.dtype == torch.bfloat16 and state["master"].dtype == torch.float32
        assert torch.equal(state["master"], r)
        assert torch.equal(p, r.to(torch.bfloat16))
        for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
            if key in state:
                assert state[key].dtype == torch.float32


@pytest.mark.parametrize("cls,kw", OPTIMIZERS)
def test_kahan_and_stochastic_track_the_float32_run(cls, kw):
    """Errors in units of the bf16 ulp at the tensor's largest magnitude (an element that passes near zero
    has a tiny ulp of its own but carries the rounding errors of its larger past)."""
    ref, _ = _run_given_grads(cls, kw, torch.float32, "nearest")
    params, opt = _run_given_grads(cls, kw, torch.bfloat16, "kahan")
    for param, r in zip(params, ref):
        p, r = param.detach(), r.detach()
        scale = ulp(r.abs().max(), torch.bfloat16)
        comp = opt.state[param]["kahan_comp"]
        assert comp.dtype == torch.bfloat16
        # p + comp carries float32-like precision: far inside one bf16 ulp of the float32 run
        assert float((p.float() + comp.float() - r).abs().max() / scale) < 0.05
        # and p is that sum rounded to nearest
        assert bool(((p.float() - r).abs() <= ulp(r, torch.bfloat16) / 2 + 0.05 * scale).all())
    params, _ = _run_given_grads(cls, kw, torch.bfloat16, "stochastic")
    for p, r in zip(params, ref):
        p, r = p.detach(), r.detach()
        err = (p.float() - r) / ulp(r.abs().max(), torch.bfloat16)
        assert float(err.abs().max()) < 15  # a random walk of sub-ulp steps ...
        assert abs(float(err.mean())) < 4 * float(err.std()) / math.sqrt(err.numel())  # ... without drift


@pytest.mark.parametrize("bf16_update", REMEDIES)
@pytest.mark.parametrize("cls,kw", OPTIMIZERS)
def test_float32_parameters_ignore_bf16_update(cls, kw, bf16_update):
    ref, ref_opt = _run_given_grads(cls, kw, torch.float32, "nearest", steps=20)
    params, opt = _run_given_grads(cls, kw, torch.float32, bf16_update, steps=20)
    for p, r in zip(params, ref):
        assert torch.equal(p, r)
        assert set(opt.state[p]) == set(ref_opt.state[r])  # no master, no compensation


@pytest.mark.parametrize("impl", ["fused", "foreach"])
@pytest.mark.parametrize("decay", ["decoupled", "l2"])
def test_nearest_on_bf16_is_torchs_own_kernel(impl, decay):
    """ "nearest" is the behaviour before bf16_update existed: torch.optim's Adam/AdamW on bf16, bit for bit."""
    flag = {"fused": True} if impl == "fused" else {"foreach": True}
    a = [torch.nn.Parameter(p.detach().to(torch.bfloat16)) for p in WEIGHTS]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours = Adam(a, lr=1e-2, weight_decay=0.1, decay=decay, impl=impl)
    ref = (torch.optim.AdamW if decay == "decoupled" else torch.optim.Adam)(b, lr=1e-2, weight_decay=0.1, **flag)
    gen = torch.Generator().manual_seed(8)
    for _ in range(30):
        for x, y in zip(a, b):
            x.grad = torch.randn(x.shape, generator=gen).to(torch.bfloat16)
            y.grad = x.grad.clone()
        ours.step()
        ref.step()
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_nearest_sgdw_on_bf16_is_shrink_then_torch_sgd(momentum):
    """On this CPU (torch's fused SGD skips bf16 updates, see the next test) "nearest" bf16 SGD runs the foreach
    kernels: decoupled is ``_foreach_mul_`` then torch's SGD."""
    a = [torch.nn.Parameter(p.detach().to(torch.bfloat16)) for p in WEIGHTS]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours = SGDW(a, lr=0.05, momentum=momentum, weight_decay=0.5)
    ref = torch.optim.SGD(b, lr=0.05, momentum=momentum, foreach=True)
    gen = torch.Generator().manual_seed(9)
    for _ in range(30):
        for x, y in zip(a, b):
            x.grad = torch.randn(x.shape, generator=gen).to(torch.bfloat16)
            y.grad = x.grad.clone()
        with torch.no_grad():  # _foreach_mul_, not mul_: on CPU it rounds the factor to bf16 (0.975 -> 0.9766)
            torch._foreach_mul_(b, 1 - 0.05 * 0.5)
        ours.step()
        ref.step()
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "kw",
    [
        dict(momentum=0.0, decay="l2"),
        dict(momentum=0.9, decay="l2"),
        dict(momentum=0.9, nesterov=True, decay="decoupled"),
        dict(momentum=0.9, decay="decoupled"),
        dict(momentum=0.0, decay="independent"),
    ],
)
def test_sgd_on_low_precision_parameters_really_steps(dtype, kw):
    """torch 2.12.1/2.13.0's CPU fused SGD leaves bf16/fp16 tensors of >= 16 elements unchanged
    (pytorch/pytorch#191763); SGD must not take it there. 50 steps of least squares in low precision
    follow the float64 run to within a few percent of the distance travelled."""
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(256, 64, generator=gen)
    y = x @ torch.randn(64, generator=gen)
    w0 = torch.randn(64, generator=gen)

    def run(d: torch.dtype) -> torch.Tensor:
        w = torch.nn.Parameter(w0.to(d))
        opt = SGD([w], lr=0.05, weight_decay=0.01, **kw)
        for _ in range(50):
            opt.zero_grad()
            ((x @ w.float() - y) ** 2).mean().backward()
            opt.step()
        return w.detach().double()

    exact, low = run(torch.float64), run(dtype)
    travelled = float((exact - w0.double()).norm())
    assert travelled > 1.0  # the run moves the weights, so a kernel that skips the update fails below
    assert float((low - exact).norm()) < 0.05 * travelled
    assert SGD._fused_takes(torch.zeros(1, dtype=dtype)) == precision_fused_sgd_ok(dtype)


def precision_fused_sgd_ok(dtype: torch.dtype) -> bool:
    """Whether torch's CPU fused SGD kernel steps a 64-element ``dtype`` tensor: the probe, written out again."""
    p, g = torch.ones(64, dtype=dtype), torch.ones(64, dtype=dtype)
    torch._fused_sgd_([p], [g], [], weight_decay=0.0, momentum=0.0, lr=0.25, dampening=0.0,
                      nesterov=False, maximize=False, is_first_step=False)  # fmt: skip
    return bool((p == 0.75).all())


def _linear_regression(dtype, bf16_update, cls, kw, steps=200):
    """Least squares, 256 x 16, loss computed in float32 from the stored weights; returns them as float32."""
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(256, 16, generator=gen)
    y = x @ torch.randn(16, generator=gen)
    w = torch.nn.Parameter(torch.randn(16, generator=gen).to(dtype))
    opt = cls([w], bf16_update=bf16_update, **kw)
    for _ in range(steps):
        opt.zero_grad()
        ((x @ w.float() - y) ** 2).mean().backward()
        opt.step()
    return w.detach().float()


@pytest.mark.parametrize(
    "cls,kw",
    [
        pytest.param(Adam, dict(lr=1e-3, weight_decay=0.1), id="adamw"),
        pytest.param(SGD, dict(lr=1e-3, momentum=0.9, weight_decay=0.1), id="sgdw"),
    ],
)
def test_master_bf16_training_tracks_float32_and_nearest_drifts(cls, kw):
    """lr 1e-3 moves |w| ~ 1 by less than half a bf16 ulp (2^-8) per step: "nearest" loses the updates."""
    ref = _linear_regression(torch.float32, "nearest", cls, kw)
    scale = float(ulp(ref.abs().max(), torch.bfloat16))

    def gap(w):
        return float((w - ref).abs().max()) / scale

    assert gap(_linear_regression(torch.bfloat16, "master", cls, kw)) <= 1.0
    assert gap(_linear_regression(torch.bfloat16, "kahan", cls, kw)) <= 1.0
    assert gap(_linear_regression(torch.bfloat16, "stochastic", cls, kw)) <= 8.0
    assert gap(_linear_regression(torch.bfloat16, "nearest", cls, kw)) > 20.0


# --- arguments --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [SGD, SGDW, Adam, AdamW])
def test_bad_bf16_update_raises_value_error_naming_it(cls):
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError) as err:
        cls(p, bf16_update="fp32")
    assert str(err.value).startswith("bf16_update")
    assert all(repr(b) in str(err.value) for b in BF16_UPDATES)
    opt = cls(p)
    assert opt.param_groups[0]["bf16_update"] == "nearest"
    with pytest.raises(ValueError, match="^bf16_update"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "bf16_update": "round"})
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "bf16_update": "kahan"})
    assert opt.param_groups[1]["bf16_update"] == "kahan"


def test_stochastic_rejects_float16_parameters():
    with pytest.raises(ValueError, match="float16"):
        Adam([torch.nn.Parameter(torch.zeros(2, dtype=torch.float16))], bf16_update="stochastic")


def test_param_groups_choose_their_own_remedy():
    a = torch.nn.Parameter(torch.ones(100, dtype=torch.bfloat16))
    b = torch.nn.Parameter(torch.ones(100, dtype=torch.bfloat16))
    opt = SGDW([{"params": [a]}, {"params": [b], "bf16_update": "kahan"}], lr=1e-3, weight_decay=0.1)
    for _ in range(200):
        a.grad, b.grad = torch.zeros_like(a), torch.zeros_like(b)
        opt.step()
    assert float(a.detach()[0]) == 1.0  # 1e-4 per step, below half an ulp: never applied
    assert float(b.detach()[0]) == pytest.approx((1 - 1e-4) ** 200, abs=2.0**-8)
    assert "kahan_comp" in opt.state[b] and not opt.state[a]


def test_float16_master_and_kahan_apply_the_decay():
    """float16 has 11 significant bits: s = 1e-4 < 2^-12 is lost to round-to-nearest there too."""
    for mode, expect in (("nearest", 0.0), ("master", 1.0), ("kahan", 1.0)):
        r = applied_decay(WEIGHTS[0], lr=1e-3, weight_decay=0.1, bf16_update=mode, dtype=torch.float16, steps=100)
        assert r["ratio"] == pytest.approx(expect, abs=0.05)


# --- state_dict round trip ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bf16_update", REMEDIES)
@pytest.mark.parametrize("cls,kw", [OPTIMIZERS[1], OPTIMIZERS[4]])
def test_state_dict_round_trip_resumes_bit_identically(cls, kw, bf16_update):
    """Save after 20 steps (optimizer and RNG state), load into a fresh optimizer, continue: same bits."""

    def run(split: bool):
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(11)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(torch.bfloat16)) for s in [(50, 20), (20,)]]
        opt = cls(params, bf16_update=bf16_update, **kw)
        for t in range(40):
            if split and t == 20:
                buf = io.BytesIO()
                torch.save({"opt": opt.state_dict(), "rng": torch.get_rng_state()}, buf)
                buf.seek(0)
                torch.manual_seed(123)  # a new process
                saved = torch.load(buf, weights_only=True)
                opt = cls(params, bf16_update=bf16_update, **kw)
                opt.load_state_dict(saved["opt"])
                torch.set_rng_state(saved["rng"])
            for p in params:
                p.grad = (torch.randn(p.shape, generator=gen) * 0.1).to(torch.bfloat16)
            opt.step()
        return params, opt

    whole, _ = run(False)
    resumed, opt = run(True)
    assert all(torch.equal(a, b) for a, b in zip(whole, resumed))
    for p in resumed:
        for key, value in opt.state[p].items():
            if key in ("master", "exp_avg", "exp_avg_sq", "momentum_buffer"):
                assert value.dtype == torch.float32, key
            if key == "kahan_comp":
                assert value.dtype == torch.bfloat16


def test_changing_the_remedy_on_load_converts_the_state():
    p = torch.nn.Parameter(torch.randn(30).to(torch.bfloat16))
    opt = AdamW([p], lr=1e-3, weight_decay=0.1, bf16_update="master")
    for _ in range(3):
        p.grad = torch.randn(30).to(torch.bfloat16)
        opt.step()
    state = opt.state_dict()
    state["param_groups"][0]["bf16_update"] = "nearest"
    opt2 = AdamW([p], lr=1e-3, weight_decay=0.1)
    opt2.load_state_dict(state)
    p.grad = torch.randn(30).to(torch.bfloat16)
    opt2.step()
    assert "master" not in opt2.state[p] and opt2.state[p]["exp_avg"].dtype == torch.bfloat16
    opt3 = AdamW([p], lr=1e-3, weight_decay=0.1, bf16_update="kahan")
    opt3.load_state_dict(
        opt2.state_dict() | {"param_groups": [dict(opt2.state_dict()["param_groups"][0], bf16_update="kahan")]}
    )
    opt3.step()
    assert opt3.state[p]["exp_avg"].dtype == torch.float32 and "kahan_comp" in opt3.state[p]


def test_applied_decay_of_torch_adamw_kernels_on_bf16():
    """torch's own AdamW: its default CPU kernel (p.mul_) and its foreach kernel (the factor rounded to bf16)."""
    w = [torch.randn(64, 64, generator=torch.Generator().manual_seed(0)) * 0.02]
    f32 = applied_decay(w, lr=1e-3, weight_decay=1.0, optimizer="torch.adamw", dtype=torch.float32, steps=20)
    assert f32["ratio"] == pytest.approx(1.0, rel=1e-3)
    lost = applied_decay(w, lr=1e-3, weight_decay=1.0, optimizer="torch.adamw", steps=20)
    assert lost["ratio"] == 0.0 and lost["changed_first_step"] == 0.0
    # foreach rounds 1 - 3e-3 to 1 - 2^-8: every element moves, by more than was asked
    over = applied_decay(w, lr=1e-3, weight_decay=3.0, optimizer="torch.adamw", impl="foreach", steps=20)
    assert over["changed_first_step"] == 1.0 and over["ratio"] > 1.2
    with pytest.raises(ValueError, match="torch.adamw"):
        applied_decay(w, lr=1e-3, weight_decay=1.0, optimizer="torch.adamw", bf16_update="kahan")


def test_bf16_matmul_speed_is_measured_once_and_quickly():
    precision._matmul_speed.cache_clear()
    start = time.perf_counter()
    m = precision.bf16_matmul_speed("cpu", n=256)
    took = time.perf_counter() - start
    assert took < 2.0  # about 0.5 s at most by design; slack for a busy machine
    assert m["device"] == "cpu" and m["n"] == 256
    assert m["float32_gflops"] > 0 and m["bfloat16_gflops"] > 0
    assert m["ratio"] == pytest.approx(m["bfloat16_gflops"] / m["float32_gflops"])
    assert m["fast"] == (m["ratio"] >= precision.FAST_BF16_RATIO)
    assert precision.bf16_matmul_speed("cpu", n=256) == m  # cached per process
    with pytest.raises(ValueError, match="n must be"):
        precision.bf16_matmul_speed("cpu", n=0)


def test_fast_bf16_follows_the_measurement(monkeypatch):
    monkeypatch.setattr(precision, "_matmul_speed", lambda device, n: (65.0, 1.3))  # AVX2 without AVX-512 BF16
    assert precision.bf16_matmul_speed("cpu")["fast"] is False and precision.fast_bf16("cpu") is False
    monkeypatch.setattr(precision, "_matmul_speed", lambda device, n: (65.0, 90.0))
    assert precision.fast_bf16("cpu") is True
