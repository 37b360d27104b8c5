"""wdlib.optim beyond AdamW: the "corrected" rule (AdamC/SGDC), cautious weight decay, and Muon.

References are hand-written loops in float64 (or the same float32 operations, where bit equality is the
claim), pytorch_optimizer's AdamC, and torch.optim.Muon.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from wdlib.optim import SGD, Adam, AdamW, Muon, decay_factor, make_optimizer, optimizer_spec

F64 = torch.float64
LR0, WD = 0.1, 0.5


def _schedule(steps: int, lr0: float = LR0) -> list[float]:
    """A cosine-like lr, set by hand on the group before each step (starts below lr0: the rule is visible)."""
    return [lr0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (t + 1) / steps))) for t in range(steps)]


def _tensors(shapes, dtype=F64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]


def _grads(steps, shapes, dtype=F64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=dtype) for s in shapes] for _ in range(steps)]


def _run(make, init, grads, lrs):
    """Step an optimizer over copies of ``init`` with the given gradients and lr per step; the final weights."""
    params = [t.clone().requires_grad_() for t in init]
    opt = make(params)
    for gs, lr in zip(grads, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params], opt


def _ref_sgd(init, grads, lrs, mu, shrink_of, cautious=False):
    """SGD with decoupled shrink ``shrink_of(lr)``: b <- mu*b + g; theta <- theta - s*theta - lr*b (masked)."""
    thetas = [t.clone() for t in init]
    bufs = [None] * len(init)
    for gs, lr in zip(grads, lrs):
        s = shrink_of(lr)
        for i, (th, g) in enumerate(zip(thetas, gs)):
            bufs[i] = g.clone() if bufs[i] is None else mu * bufs[i] + g
            step = -lr * bufs[i] if mu else -lr * g
            mask = (step * th <= 0).to(th.dtype) if cautious else torch.ones_like(th)
            thetas[i] = th + step - s * mask * th
    return thetas


def _ref_adam(init, grads, lrs, shrink_of, betas=(0.9, 0.999), eps=1e-8, cautious=False):
    """Adam (torch's arithmetic: lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)) with decoupled shrink ``shrink_of(lr)``."""
    b1, b2 = betas
    thetas = [t.clone() for t in init]
    ms = [torch.zeros_like(t) for t in init]
    vs = [torch.zeros_like(t) for t in init]
    for t, (gs, lr) in enumerate(zip(grads, lrs), start=1):
        s = shrink_of(lr)
        for i, (th, g) in enumerate(zip(thetas, gs)):
            ms[i] = b1 * ms[i] + (1 - b1) * g
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            step = -lr / (1 - b1**t) * ms[i] / (vs[i].sqrt() / math.sqrt(1 - b2**t) + eps)
            mask = (step * th <= 0).to(th.dtype) if cautious else torch.ones_like(th)
            thetas[i] = th + step - s * mask * th
    return thetas


def _close(a, b, rtol=1e-12, atol=1e-14):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


def _same(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x, y)


SHAPES = [(7, 5), (33,), (4, 3, 2)]
SGD_CASES = [
    pytest.param(0.0, "fused", id="plain-fused"),
    pytest.param(0.0, "foreach", id="plain-foreach"),
    pytest.param(0.9, "fused", id="momentum-fused"),
    pytest.param(0.9, "foreach", id="momentum-foreach"),
]


# --- "corrected": s_t = lr_t^2 * lambda / reference_lr ----------------------------------------------------


def test_corrected_decay_factor_follows_the_schedule_twice():
    opt = Adam([torch.zeros(2, requires_grad=True)], lr=LR0, weight_decay=WD, decay="corrected")
    group = opt.param_groups[0]
    assert decay_factor(group) == LR0 * WD
    group["lr"] = 0.25 * LR0
    assert decay_factor(group) == pytest.approx(0.25**2 * LR0 * WD, rel=1e-15)


@pytest.mark.parametrize("mu,impl", SGD_CASES)
def test_sgd_corrected_shrink_is_lr_squared_lambda_over_lr_max(mu, impl):
    """Float64 against b <- mu*b + g; theta <- theta*(1 - lr_t^2*lambda/lr_0) - lr_t*b, under a changing lr
    (the fused momentum case is the fold, whose lambda_t changes every step). Rounding only: rtol 1e-12."""
    steps = 12
    init, grads, lrs = _tensors(SHAPES), _grads(steps, SHAPES), _schedule(steps)
    ours, _ = _run(
        lambda p: SGD(p, lr=LR0, momentum=mu, weight_decay=WD, decay="corrected", impl=impl), init, grads, lrs
    )
    _close(ours, _ref_sgd(init, grads, lrs, mu, lambda lr: lr * lr * WD / LR0))


@pytest.mark.parametrize("impl", ["fused", "foreach"])
def test_adam_corrected_shrink_is_lr_squared_lambda_over_lr_max(impl):
    steps = 12
    init, grads, lrs = _tensors(SHAPES), _grads(steps, SHAPES), _schedule(steps)
    ours, _ = _run(lambda p: Adam(p, lr=LR0, weight_decay=WD, decay="corrected", impl=impl), init, grads, lrs)
    _close(ours, _ref_adam(init, grads, lrs, lambda lr: lr * lr * WD / LR0))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda decay: lambda p: Adam(p, lr=LR0, weight_decay=WD, decay=decay), id="adam"),
        pytest.param(lambda decay: lambda p: SGD(p, lr=LR0, momentum=0.9, weight_decay=WD, decay=decay), id="sgd-fold"),
        pytest.param(
            lambda decay: lambda p: SGD(p, lr=LR0, momentum=0.9, weight_decay=WD, decay=decay, impl="foreach"),
            id="sgd-foreach",
        ),
        pytest.param(lambda decay: lambda p: Muon(p, lr=LR0, weight_decay=WD, decay=decay), id="muon"),
    ],
)
def test_corrected_at_the_reference_lr_is_decoupled_bit_for_bit(make):
    shapes = [(6, 4), (5, 9)]
    init, grads = _tensors(shapes, torch.float32), _grads(3, shapes, torch.float32)
    corrected, _ = _run(make("corrected"), init, grads, [LR0] * 3)
    decoupled, _ = _run(make("decoupled"), init, grads, [LR0] * 3)
    _same(corrected, decoupled)


def test_adam_corrected_equals_pytorch_optimizer_adamc():
    """pytorch_optimizer.AdamC (4.1): a group with ``normalized=True`` shrinks by ``1 - lambda*lr_t^2/max_lr``
    and the others by ``1 - lambda*lr_t``, before the update, as Adam(decay="corrected") and AdamW do.

    Its conventions differ in two places, both neutralised here: ``max_lr`` is the *constructor's* lr for
    every group (wdlib: each group's own ``reference_lr``; equal here), and its denominator is
    ``(sqrt(v + 1e-15) + eps) / sqrt(bc2)`` (eps inside the bias correction, plus 1e-15 under the root)
    where torch's is ``sqrt(v)/sqrt(bc2) + eps``. With ``eps=0`` in both the only difference is the 1e-15
    under the root, relative ``1e-15/(2v)``. The loss is scaled by 1e4 (Adam does not see the scale when eps is 0)
    so that ``v >= 1e-2``: then that is below 1e-13, and rtol 1e-10 holds over 20 float64 steps (a small
    LayerNorm model, hand-set cosine lr). Unscaled, ``v`` of the first layer is ~1e-10 and the runs differ
    by ~3e-7 relative.
    """
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
        ).double()

    def groups(m):
        norm = list(m[1].parameters())
        rest = [p for n, p in m.named_parameters() if not n.startswith("1.")]
        return norm, rest

    ours_m, theirs_m = model(), model()
    norm, rest = groups(ours_m)
    ours = Adam(
        [{"params": norm, "decay": "corrected"}, {"params": rest, "decay": "decoupled"}],
        lr=LR0,
        eps=0.0,
        weight_decay=WD,
    )
    norm, rest = groups(theirs_m)
    theirs = pytorch_optimizer.AdamC(
        [{"params": norm, "normalized": True}, {"params": rest}], lr=LR0, eps=0.0, weight_decay=WD, foreach=False
    )
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(32, 6, generator=gen, dtype=F64), torch.randn(32, 3, generator=gen, dtype=F64)
    for lr in _schedule(20):
        for m, opt in ((ours_m, ours), (theirs_m, theirs)):
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad()
            (1e4 * torch.nn.functional.mse_loss(m(x), y)).backward()
            opt.step()
    for a, b in zip(ours_m.parameters(), theirs_m.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert not torch.equal(ours_m[1].weight, model()[1].weight)


def test_corrected_needs_a_positive_lr_and_check_decay_lists_four_rules():
    with pytest.raises(ValueError, match="lr must be > 0 with decay='corrected'"):
        Adam([torch.zeros(2, requires_grad=True)], lr=0.0, weight_decay=0.1, decay="corrected")
    with pytest.raises(ValueError, match="'l2', 'decoupled', 'independent', 'corrected'"):
        SGD([torch.zeros(2, requires_grad=True)], decay="adamc")
    assert optimizer_spec({"name": "sgd", "decay": "corrected"})["decay"] == "corrected"


# --- cautious weight decay: decay only where u*theta >= 0 -----------------------------------------------


@pytest.mark.parametrize("decay", ["decoupled", "independent", "corrected"])
def test_adam_cautious_equals_the_formula(decay):
    """x <- x - lr*u - s_t*1[u*x >= 0]*x (x before the step) in float64 over 8 steps, lr changing."""
    steps = 8
    init, grads, lrs = _tensors(SHAPES), _grads(steps, SHAPES), _schedule(steps)
    ours, opt = _run(lambda p: Adam(p, lr=LR0, weight_decay=WD, decay=decay, cautious=True), init, grads, lrs)
    group = dict(opt.param_groups[0])

    def shrink_of(lr):
        group["lr"] = lr
        return decay_factor(group)

    _close(ours, _ref_adam(init, grads, lrs, shrink_of, cautious=True))


@pytest.mark.parametrize("mu,impl", SGD_CASES)
def test_sgd_cautious_equals_the_formula(mu, impl):
    steps = 8
    init, grads, lrs = _tensors(SHAPES), _grads(steps, SHAPES), _schedule(steps)
    make = lambda p: SGD(p, lr=LR0, momentum=mu, weight_decay=WD, decay="decoupled", impl=impl, cautious=True)  # noqa: E731
    ours, _ = _run(make, init, grads, lrs)
    _close(ours, _ref_sgd(init, grads, lrs, mu, lambda lr: lr * WD, cautious=True))


def test_cautious_mask_is_applied():
    """One Adam step: coordinates the step moves away from zero keep ``x + step``; the others are decayed too."""
    init, grads = _tensors([(400,)]), _grads(1, [(400,)])
    plain, _ = _run(lambda p: AdamW(p, lr=LR0, weight_decay=0.0), init, grads, [LR0])
    ours, _ = _run(lambda p: AdamW(p, lr=LR0, weight_decay=WD, cautious=True), init, grads, [LR0])
    away = (plain[0] - init[0]) * init[0] > 0
    assert 50 < int(away.sum()) < 350  # both kinds present
    torch.testing.assert_close(ours[0][away], plain[0][away], rtol=0, atol=1e-15)
    torch.testing.assert_close(ours[0][~away], plain[0][~away] - LR0 * WD * init[0][~away], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda c: lambda p: Adam(p, lr=LR0, weight_decay=0.0, decay="decoupled", cautious=c), id="adam"),
        pytest.param(lambda c: lambda p: SGD(p, lr=LR0, momentum=0.9, decay="decoupled", cautious=c), id="sgd"),
        pytest.param(lambda c: lambda p: Muon(p, lr=LR0, weight_decay=0.0, cautious=c), id="muon"),
    ],
)
def test_cautious_with_zero_decay_is_the_plain_step(make):
    shapes = [(6, 4), (5,)]
    init, grads = _tensors(shapes, torch.float32), _grads(4, shapes, torch.float32)
    _same(_run(make(True), init, grads, _schedule(4))[0], _run(make(False), init, grads, _schedule(4))[0])


def test_cautious_needs_a_decoupled_rule():
    p = [torch.zeros(2, requires_grad=True)]
    for cls in (Adam, SGD):
        with pytest.raises(ValueError, match="cautious=True needs a decoupled decay"):
            cls(p, decay="l2", cautious=True)
    with pytest.raises(ValueError, match="cautious must be True or False"):
        Adam(p, decay="decoupled", cautious=1)
    with pytest.raises(ValueError, match="optimizer.cautious true needs a decoupled decay"):
        optimizer_spec({"name": "adam", "decay": "l2", "cautious": True})
    assert optimizer_spec("adam")["cautious"] is False and optimizer_spec("sgd")["cautious"] is False


@pytest.mark.parametrize("cls,kw", [(Adam, {}), (SGD, {"momentum": 0.9}), (Muon, {})], ids=["adam", "sgd", "muon"])
def test_cautious_on_master_copies_equals_float32(cls, kw):
    """bf16_update="master": the cautious step runs on the float32 masters, bit for bit the float32 run."""
    shapes = [(8, 4), (6, 10)]
    init = [t.bfloat16().float() for t in _tensors(shapes, torch.float32)]
    grads = [[g.bfloat16() for g in gs] for gs in _grads(4, shapes, torch.float32)]

    def make(bf16):
        return lambda p: cls(p, lr=LR0, weight_decay=WD, decay="decoupled", cautious=True, bf16_update=bf16, **kw)

    _, low = _run(make("master"), [t.bfloat16() for t in init], grads, _schedule(4))
    full, _ = _run(make("nearest"), init, [[g.float() for g in gs] for gs in grads], _schedule(4))
    masters = [low.state[p]["master"] for group in low.param_groups for p in group["params"]]
    _same(masters, full)


# No third-party cautious weight decay to compare with: pytorch_optimizer 4.1's BaseOptimizer has
# ``apply_cautious(update, grad)`` (timm's Cautious optimizers, arXiv 2411.16085: it masks the *update* where it
# disagrees with the gradient), not the decay mask of arXiv 2510.12402; the formula tests above are the reference.


# --- Muon ----------------------------------------------------------------------------------------------

MUON_SHAPES = [(24, 8), (8, 20), (12, 12)]  # tall, wide, square


def _ns_torch(x):
    from torch.optim._muon import _zeropower_via_newtonschulz

    return _zeropower_via_newtonschulz(x, (3.4445, -4.7750, 2.0315), 5, 1e-7)


def _ref_muon(init, grads, lrs, *, mu, wd, decay, adjust, nesterov=True):
    """Liu et al.'s Muon step with torch's Newton-Schulz, the same float32 operations in the same order."""
    thetas = [t.clone() for t in init]
    bufs = [torch.zeros_like(t) for t in init]
    for gs, lr in zip(grads, lrs):
        s = {"decoupled": lr * wd, "independent": lr / LR0 * wd, "corrected": lr * (wd * (lr / LR0))}.get(decay, 0.0)
        for i, (th, g) in enumerate(zip(thetas, gs)):
            if decay == "l2":
                g = g + wd * th
            bufs[i].mul_(mu).add_(g)
            d = g.add(bufs[i], alpha=mu) if nesterov else bufs[i]
            rows, cols = th.shape
            scale = (
                0.2 * math.sqrt(max(rows, cols)) if adjust == "match_rms_adamw" else math.sqrt(max(1.0, rows / cols))
            )
            if s:
                th.mul_(1.0 - s)
            th.add_(_ns_torch(d), alpha=-lr * scale)
    return thetas


@pytest.mark.parametrize("decay", ["decoupled", "independent", "corrected", "l2"])
@pytest.mark.parametrize("adjust", ["match_rms_adamw", "original"])
def test_muon_equals_the_hand_written_step_bit_for_bit(decay, adjust):
    steps = 6
    init, grads, lrs = _tensors(MUON_SHAPES, torch.float32), _grads(steps, MUON_SHAPES, torch.float32), _schedule(steps)
    ours, _ = _run(lambda p: Muon(p, lr=LR0, weight_decay=WD, decay=decay, adjust_lr=adjust), init, grads, lrs)
    _same(ours, _ref_muon(init, grads, lrs, mu=0.95, wd=WD, decay=decay, adjust=adjust))


def test_newton_schulz_is_torch_muons_bit_for_bit():
    from wdlib.optim import _newton_schulz5

    for x in _tensors(MUON_SHAPES, torch.float32, seed=5):
        assert torch.equal(_newton_schulz5(x, 5), _ns_torch(x))


@pytest.mark.parametrize("adjust", ["match_rms_adamw", "original"])
def test_muon_matches_torch_optim_muon(adjust):
    """torch.optim.Muon (2.13), weight decay and Nesterov on, 10 steps, lr 0.02. Its buffer is an average,
    ``b <- mu*b + (1-mu)*g``, so its direction is (1-mu) times ours; Newton-Schulz divides by the norm first, so
    the steps agree up to the bfloat16 rounding of the direction and of the iteration (ulp 2^-8 relative). Each
    step's update is compared: relative Frobenius error < 5e-2 (measured at most 2.6e-2 over the 10 steps and
    3 shapes: a bfloat16 ulp, 2^-8 = 3.9e-3, grown by five Newton-Schulz steps), from the same weights."""
    steps, lr = 10, 0.02
    init, grads = _tensors(MUON_SHAPES, torch.float32), _grads(steps, MUON_SHAPES, torch.float32)
    ours_p = [t.clone().requires_grad_() for t in init]
    torch_p = [t.clone().requires_grad_() for t in init]
    ours = Muon(ours_p, lr=lr, weight_decay=0.1, momentum=0.95, nesterov=True, adjust_lr=adjust)
    ref = torch.optim.Muon(torch_p, lr=lr, weight_decay=0.1, momentum=0.95, nesterov=True, adjust_lr_fn=adjust)
    worst = 0.0
    for gs in grads:
        before = [p.detach().clone() for p in torch_p]
        for a, b, g in zip(ours_p, torch_p, gs):
            a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        for a, b, x in zip(ours_p, torch_p, before):
            du, dt = a.detach() - x, b.detach() - x  # ours stepped from (nearly) the same weights
            err = ((du - dt).norm() / dt.norm()).item()
            worst = max(worst, err)
            assert err < 5e-2
            a.data.copy_(b.detach())  # keep both on the same weights, so only one step's rounding is compared
    assert worst > 0.0  # not the same arithmetic: the comparison has a tolerance to justify
    for b, x in zip(torch_p, init):
        assert (b.detach() - x).norm() > 0


@pytest.mark.parametrize("shape", [(256, 64), (64, 256)], ids=["tall", "wide"])
def test_muon_match_rms_adamw_update_rms_is_0_2_lr(shape):
    """Liu et al.: with scale 0.2*sqrt(max(A, B)) the update's RMS is ~0.2*lr: an orthogonal A x B matrix (the
    polar factor U V^T, from the SVD) has RMS 1/sqrt(max(A, B)), so 0.2*lr to rounding (checked, rtol 1e-5).
    Five quintic Newton-Schulz steps leave the singular values of a random Gaussian matrix below 1 on
    average (Keller Jordan's coefficients aim at ~Uniform(0.5, 1.5), not 1): the step's RMS is 0.853 of
    0.2*lr for both shapes (measured, torch 2.13 CPU), so the test allows 20% rather than 10%, and
    checks it is below the polar factor's."""
    lr = 0.01
    (w,) = _tensors([shape], torch.float32)
    p = w.clone().requires_grad_()
    opt = Muon([p], lr=lr, weight_decay=0.0)
    p.grad = _grads(1, [shape], torch.float32)[0][0]
    opt.step()
    rms = (p.detach() - w).pow(2).mean().sqrt().item()
    assert rms == pytest.approx(0.2 * lr, rel=0.2) and rms < 0.2 * lr
    u, _, vh = torch.linalg.svd(p.grad.double(), full_matrices=False)
    polar_rms = (lr * 0.2 * math.sqrt(max(shape)) * (u @ vh)).pow(2).mean().sqrt().item()
    assert polar_rms == pytest.approx(0.2 * lr, rel=1e-5)


@pytest.mark.parametrize("decay", ["decoupled", "independent", "corrected"])
def test_muon_shrink_is_decay_factor(decay):
    """With a zero gradient the Muon step is 0 (Newton-Schulz of 0 is 0) and only the shrink remains."""
    (w,) = _tensors([(6, 5)], torch.float32)
    p = w.clone().requires_grad_()
    opt = Muon([p], lr=LR0, weight_decay=WD, decay=decay)
    opt.param_groups[0]["lr"] = 0.3 * LR0
    p.grad = torch.zeros_like(p)
    opt.step()
    s = decay_factor(opt.param_groups[0])
    assert s == pytest.approx(
        {"decoupled": 0.3 * LR0 * WD, "independent": 0.3 * WD, "corrected": 0.09 * LR0 * WD}[decay]
    )
    assert torch.equal(p.detach(), w * (1.0 - s))


def test_muon_group_takes_2d_parameters_only():
    with pytest.raises(ValueError, match=r"muon=True takes 2-D parameters only, got one of shape \(3,\)"):
        Muon([{"params": [torch.zeros(3, 2, requires_grad=True), torch.zeros(3, requires_grad=True)]}])
    with pytest.raises(ValueError, match="muon=True takes 2-D"):
        Muon([{"params": [torch.zeros(2, 2, 2, requires_grad=True)], "muon": True}])
    opt = Muon([torch.zeros(3, 2, requires_grad=True), torch.zeros(3, requires_grad=True)])  # plain tensors: split
    assert [(g["muon"], [tuple(p.shape) for p in g["params"]]) for g in opt.param_groups] == [
        (True, [(3, 2)]),
        (False, [(3,)]),
    ]


@pytest.mark.parametrize("decay", ["decoupled", "corrected"])
def test_muon_adamw_groups_equal_wdlib_adamw_bit_for_bit(decay):
    shapes = [(10, 4), (7,), (3, 4, 2)]  # a 2-D embedding-like weight in the AdamW group too
    init, grads, lrs = _tensors(shapes, torch.float32), _grads(5, shapes, torch.float32), _schedule(5)
    mat = torch.randn(5, 5)
    kw = dict(lr=LR0, betas=(0.8, 0.99), eps=1e-6, weight_decay=WD, decay=decay)
    muon_p, _ = _run(
        lambda p: Muon([{"params": p, "muon": False}, {"params": [mat.clone().requires_grad_()]}], **kw),
        init,
        grads,
        lrs,
    )
    adam_p, _ = _run(lambda p: Adam(p, **kw), init, grads, lrs)
    _same(muon_p, adam_p)


def test_muon_state_dict_resumes_bit_for_bit():
    shapes = [(9, 4), (4, 9), (5,)]
    init, grads, lrs = _tensors(shapes, torch.float32), _grads(6, shapes, torch.float32), _schedule(6)
    make = lambda p: Muon(p, lr=LR0, weight_decay=WD, decay="corrected", cautious=True)  # noqa: E731
    straight, _ = _run(make, init, grads, lrs)
    half, opt = _run(make, init, grads[:3], lrs[:3])
    saved = copy.deepcopy(opt.state_dict())
    params = [t.clone().requires_grad_() for t in half]
    resumed = make(params)
    resumed.load_state_dict(saved)
    for gs, lr in zip(grads[3:], lrs[3:]):
        for group in resumed.param_groups:
            group["lr"] = lr
        for p, g in zip(params, gs):
            p.grad = g.clone()
        resumed.step()
    _same([p.detach() for p in params], straight)
    with pytest.raises(ValueError, match="loads its own state dicts only"):
        make([torch.zeros(2, 2, requires_grad=True)]).load_state_dict(
            torch.optim.Muon([torch.zeros(2, 2, requires_grad=True)]).state_dict()
        )


def test_muon_spec_defaults_and_checks():
    assert optimizer_spec("muon") == {
        "name": "muon",
        "decay": "decoupled",
        "momentum": 0.95,
        "nesterov": True,
        "adjust_lr": "match_rms_adamw",
        "ns_steps": 5,
        "betas": [0.9, 0.95],
        "eps": 1e-8,
        "cautious": False,
        "bf16_update": "nearest",
        "impl": "auto",
    }
    for option, value, message in [
        ("adjust_lr", "moonlight", "optimizer.adjust_lr must be one of 'match_rms_adamw', 'original'"),
        ("ns_steps", 0, r"optimizer.ns_steps must be an integer in \[1, 100\)"),
        ("ns_steps", 2.5, "optimizer.ns_steps must be an integer"),
        ("cautious", "yes", "optimizer.cautious must be true or false"),
        ("momentum", 1.0, "optimizer.momentum"),
        ("decay", "adamc", "optimizer.decay must be one of"),
        ("dampening", 0.1, "optimizer.dampening is not an option of optimizer 'muon'"),
    ]:
        with pytest.raises(ValueError, match=message):
            optimizer_spec({"name": "muon", option: value})
    for spec_decay in ("decoupled", "l2", "independent", "corrected"):
        assert optimizer_spec({"name": "muon", "decay": spec_decay})["decay"] == spec_decay
    opt = make_optimizer({"name": "muon", "adjust_lr": "original"}, [torch.zeros(3, 2)], lr=0.02, weight_decay=0.1)
    assert isinstance(opt, Muon) and opt.param_groups[0]["adjust_lr"] == "original"
    with pytest.raises(ValueError, match="adjust_lr must be one of"):
        Muon([torch.zeros(2, 2)], adjust_lr="moonlight")
