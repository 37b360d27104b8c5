"""wdlib.hessian against exact answers: quadratics, least squares, a tiny MLP's full Hessian, CNNs."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wdlib.hessian import (
    ESTIMATORS,
    EigenEstimate,
    TraceEstimate,
    hessian_trace,
    hutchinson_trace,
    hvp,
    loss_fn,
    scale_aware_trace,
    top_eigenvalue,
)
from wdlib.models import CNN, MLP

# torch's own forward-AD decompositions call torch.jit.script on first use (torch 2.13 deprecates it)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def within(estimate: float, exact: float, stderr: float, tol: float = 1e-9) -> bool:
    """|estimate - exact| <= 4 stderr + tol * max(1, |exact|)."""
    return abs(estimate - exact) <= 4 * stderr + tol * max(1.0, abs(exact))


def identity_loss(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return output


class Quadratic(nn.Module):
    """forward(x) = 0.5 w^T A w, so the Hessian in w is A whatever x is."""

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("A", A)
        self.w = nn.Parameter(torch.randn(A.shape[0], dtype=A.dtype, generator=torch.Generator().manual_seed(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.w @ self.A @ self.w


def symmetric_with_spectrum(eigs: list[float], seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(len(eigs), len(eigs), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    )
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


DUMMY_X, DUMMY_Y = torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1)


def flat_params(model: nn.Module) -> tuple[list[str], list[torch.Size], torch.Tensor]:
    names, shapes = zip(*[(n, p.shape) for n, p in model.named_parameters()])
    return list(names), list(shapes), torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def unflatten(flat: torch.Tensor, names: list[str], shapes: list[torch.Size]) -> dict[str, torch.Tensor]:
    sizes = [math.prod(s) for s in shapes]
    return {n: c.view(s) for n, c, s in zip(names, torch.split(flat, sizes), shapes)}


def exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss=F.cross_entropy) -> torch.Tensor:
    names, shapes, flat = flat_params(model)
    f = loss_fn(model, x, y, loss)
    return torch.autograd.functional.hessian(lambda w: f(unflatten(w, names, shapes)), flat)


def block_traces(model: nn.Module, H: torch.Tensor) -> dict[str, float]:
    out, i = {}, 0
    for n, p in model.named_parameters():
        out[n] = float(torch.diagonal(H)[i : i + p.numel()].sum())
        i += p.numel()
    return out


def reference_probes(model: nn.Module, probes: int, seed: int) -> list[list[torch.Tensor]]:
    """The documented probe rule, written out independently of wdlib.hessian."""
    params = [p for p in model.parameters() if p.requires_grad]
    sizes = [p.numel() for p in params]
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(probes):
        r = torch.randint(0, 2, (sum(sizes),), generator=g, dtype=torch.int8)
        out.append([(2 * c.to(p.dtype) - 1).view(p.shape) for c, p in zip(torch.split(r, sizes), params)])
    return out


def reference_vhv(model: nn.Module, x: torch.Tensor, y: torch.Tensor, probes: int, seed: int) -> np.ndarray:
    """PyHessian's per-probe v^T H v: gradient with create_graph, one reverse pass per probe (eval mode)."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
    vals = []
    for v in reference_probes(model, probes, seed):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        vals.append(float(sum((a * b).sum() for a, b in zip(hv, v))))
    return np.array(vals)


@pytest.fixture(scope="module")
def tiny_mlp():
    """A 5-6-3 ReLU MLP in float64 with 20 points, and its exact 57 x 57 cross-entropy Hessian."""
    torch.manual_seed(0)
    model = MLP(in_dim=5, width=6, depth=1, out_dim=3).double()
    x = torch.randn(20, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    return model, x, y, exact_hessian(model, x, y)


# ---------------------------------------------------------------- quadratic


def test_quadratic_diagonal_is_exact_with_rademacher_probes():
    A = torch.diag(torch.tensor([3.0, -1.0, 0.5, 2.0], dtype=torch.float64))
    est = hutchinson_trace(Quadratic(A), DUMMY_X, DUMMY_Y, probes=5, loss=identity_loss)
    # v^T A v = sum_i A_ii v_i^2 = Tr(A) for every +-1 vector: no variance at all
    assert np.all(est.samples_per_probe == 4.5)
    assert est.value == 4.5 and est.stderr == 0.0


def test_quadratic_trace_hvp_and_top_eigenvalue():
    A = symmetric_with_spectrum([5.0, -3.0, 2.0, 1.0, 0.5, -0.25])
    model = Quadratic(A)
    v = {"w": torch.randn(6, dtype=torch.float64)}
    torch.testing.assert_close(hvp(model, DUMMY_X, DUMMY_Y, v, loss=identity_loss)["w"], A @ v["w"], rtol=0, atol=1e-12)
    est = hutchinson_trace(model, DUMMY_X, DUMMY_Y, probes=200, loss=identity_loss)
    assert est.stderr > 0 and within(est.value, float(torch.trace(A)), est.stderr)
    top = top_eigenvalue(model, DUMMY_X, DUMMY_Y, loss=identity_loss, iters=500, tol=1e-12)
    assert isinstance(top, EigenEstimate) and top.mode == "eval"
    assert top.value == pytest.approx(5.0, rel=1e-8) and top.residual < 1e-4
    # the eigenvalue of largest magnitude, not the most positive one
    neg = top_eigenvalue(
        Quadratic(symmetric_with_spectrum([-6.0, 3.0, 1.0])), DUMMY_X, DUMMY_Y, loss=identity_loss, iters=500, tol=1e-12
    )
    assert neg.value == pytest.approx(-6.0, rel=1e-8)
    vec = torch.cat([t.reshape(-1) for t in neg.vector.values()])
    assert float(vec.norm()) == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------- least squares


def test_linear_least_squares_closed_form():
    N, d, o = 40, 4, 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, d, dtype=torch.float64, generator=g) * torch.tensor([3.0, 1.0, 0.5, 0.2], dtype=torch.float64)
    y = torch.randn(N, o, dtype=torch.float64, generator=g)
    model = nn.Linear(d, o).double()

    def sse(out, target):  # sum over outputs, mean over points: H = (2/N) X~^T X~ for each output
        return ((out - target) ** 2).sum(dim=1).mean()

    xt = torch.cat([x, torch.ones(N, 1, dtype=torch.float64)], dim=1)
    G = 2.0 / N * xt.T @ xt
    est = hutchinson_trace(model, x, y, probes=300, loss=sse, seed=3)
    assert within(est.value, o * float(torch.trace(G)), est.stderr)
    assert within(est.per_param["weight"][0], o * 2.0 / N * float((x**2).sum()), est.per_param["weight"][1])
    assert within(est.per_param["bias"][0], 2.0 * o, est.per_param["bias"][1])
    top = top_eigenvalue(model, x, y, loss=sse, iters=500, tol=1e-12)
    assert top.value == pytest.approx(float(torch.linalg.eigvalsh(G).max()), rel=1e-8)
    # hvp: (H v)_W = V_W X^T X (2/N) + ..., checked against the closed form for one vector
    v = {"weight": torch.randn(o, d, dtype=torch.float64), "bias": torch.randn(o, dtype=torch.float64)}
    hv = hvp(model, x, y, v, loss=sse)
    full = torch.cat([v["weight"], v["bias"][:, None]], dim=1) @ G
    torch.testing.assert_close(hv["weight"], full[:, :d], rtol=0, atol=1e-12)
    torch.testing.assert_close(hv["bias"], full[:, d], rtol=0, atol=1e-12)


# ---------------------------------------------------------------- tiny MLP, exact Hessian


def test_mlp_hvp_equals_exact_hessian(tiny_mlp):
    model, x, y, H = tiny_mlp
    names, shapes, _ = flat_params(model)
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        flat_v = torch.randn(H.shape[0], dtype=torch.float64, generator=g)
        hv = hvp(model, x, y, unflatten(flat_v, names, shapes))
        got = torch.cat([hv[n].reshape(-1) for n in names])
        assert float((got - H @ flat_v).abs().max()) < 1e-10


def test_mlp_trace_per_param_and_top_eigenvalue(tiny_mlp):
    model, x, y, H = tiny_mlp
    est = hutchinson_trace(model, x, y, probes=300, seed=1)
    assert isinstance(est, TraceEstimate)
    assert (est.probes, est.samples, est.mode) == (300, 20, "eval")
    assert est.samples_per_probe.dtype == np.float64 and est.samples_per_probe.shape == (300,)
    assert est.value == pytest.approx(float(est.samples_per_probe.mean()), rel=1e-15)
    assert est.stderr == pytest.approx(float(est.samples_per_probe.std(ddof=1) / math.sqrt(300)), rel=1e-12)
    assert within(est.value, float(torch.trace(H)), est.stderr)
    # per-tensor traces: same probes, so they add up to the total; each within its error of the exact block
    assert list(est.per_param) == [n for n, _ in model.named_parameters()]
    assert sum(v for v, _ in est.per_param.values()) == pytest.approx(est.value, rel=1e-12)
    for name, exact in block_traces(model, H).items():
        assert within(est.per_param[name][0], exact, est.per_param[name][1]), name
    eigs = torch.linalg.eigvalsh(H)
    largest = float(eigs[eigs.abs().argmax()])
    top = top_eigenvalue(model, x, y, iters=1000, tol=1e-10)
    assert top.value == pytest.approx(largest, rel=1e-3)
    assert top.residual >= 0 and top.iterations <= 1000


def test_mlp_params_subset(tiny_mlp):
    model, x, y, H = tiny_mlp
    est = hutchinson_trace(model, x, y, probes=200, params=["1.weight"])
    assert list(est.per_param) == ["1.weight"]
    assert within(est.value, block_traces(model, H)["1.weight"], est.stderr)


# ---------------------------------------------------------------- chunks and seeds


def test_data_chunk_probe_chunk_and_seed(tiny_mlp):
    model, x, y, _ = tiny_mlp
    full = hutchinson_trace(model, x, y, probes=12, seed=4)
    chunked = hutchinson_trace(model, x, y, probes=12, seed=4, data_chunk=7)  # chunks of 7, 7, 6
    np.testing.assert_allclose(chunked.samples_per_probe, full.samples_per_probe, rtol=0, atol=1e-10)
    assert abs(chunked.value - full.value) < 1e-10
    split = hutchinson_trace(model, x, y, probes=12, seed=4, probe_chunk=5)
    np.testing.assert_allclose(split.samples_per_probe, full.samples_per_probe, rtol=1e-13, atol=0)
    again = hutchinson_trace(model, x, y, probes=12, seed=4)
    assert np.array_equal(again.samples_per_probe, full.samples_per_probe) and again.value == full.value
    other = hutchinson_trace(model, x, y, probes=12, seed=5)
    assert not np.allclose(other.samples_per_probe, full.samples_per_probe)
    # probe i does not depend on the number of probes
    fewer = hutchinson_trace(model, x, y, probes=4, seed=4)
    np.testing.assert_allclose(fewer.samples_per_probe, full.samples_per_probe[:4], rtol=1e-13, atol=0)
    top_a = top_eigenvalue(model, x, y, seed=2, data_chunk=6)
    top_b = top_eigenvalue(model, x, y, seed=2)
    assert top_a.iterations == top_b.iterations and abs(top_a.value - top_b.value) < 1e-10


def test_single_probe_has_nan_stderr(tiny_mlp):
    model, x, y, _ = tiny_mlp
    est = hutchinson_trace(model, x, y, probes=1)
    assert math.isnan(est.stderr) and math.isfinite(est.value)


# ---------------------------------------------------------------- the library's models, vmapped


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: CNN(in_channels=1, num_classes=10, channels=(4, 4), dim=1), (12, 40)),
        (lambda: CNN(in_channels=1, num_classes=10, channels=(3, 4), dim=2), (8, 1, 8, 8)),
        (lambda: MLP(in_dim=40, width=16, depth=2, out_dim=10), (12, 40)),
        (lambda: MLP(in_dim=40, width=16, depth=2, out_dim=10, scale_invariant=True), (12, 40)),
    ],
)
def test_library_models_match_pyhessian_reference(make, shape):
    """vmap over forward-over-reverse runs (no fall-back warning) and equals reverse-over-reverse probe by probe."""
    torch.manual_seed(0)
    model = make().double()
    x = torch.randn(*shape, dtype=torch.float64)
    y = torch.randint(0, 10, (shape[0],))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        est = hutchinson_trace(model, x, y, probes=6, seed=7, probe_chunk=4)
    ref = reference_vhv(model, x, y, probes=6, seed=7)
    np.testing.assert_allclose(est.samples_per_probe, ref, rtol=1e-10, atol=1e-12)


def test_float32_model_gives_float32_probes_and_close_values():
    torch.manual_seed(0)
    model = MLP(in_dim=40, width=16, depth=1, out_dim=10)
    x, y = torch.randn(16, 40), torch.randint(0, 10, (16,))
    est32 = hutchinson_trace(model, x, y, probes=5)
    est64 = hutchinson_trace(model.double(), x.double(), y, probes=5)
    np.testing.assert_allclose(est32.samples_per_probe, est64.samples_per_probe, rtol=1e-4, atol=1e-5)
    v = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    assert all(t.dtype == torch.float64 for t in hvp(model, x.double(), y, v).values())


# ---------------------------------------------------------------- modes and BatchNorm


def test_mode_is_restored_per_module(tiny_mlp):
    model, x, y, _ = tiny_mlp
    model.train()
    model[1].eval()  # a mixed state must come back as it was
    before = [m.training for m in model.modules()]
    assert hutchinson_trace(model, x, y, probes=2, mode="eval").mode == "eval"
    assert [m.training for m in model.modules()] == before
    assert hutchinson_trace(model, x, y, probes=2, mode="train").mode == "train"
    assert [m.training for m in model.modules()] == before
    top_eigenvalue(model, x, y, iters=3)
    assert [m.training for m in model.modules()] == before
    model.eval()


def test_batchnorm_running_stats_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 4, dtype=torch.float64))  # non-trivial running statistics
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ev = hutchinson_trace(model, x, y, probes=4, mode="eval")
        tr = hutchinson_trace(model, x, y, probes=4, mode="train")
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert model.training and model[1].track_running_stats
    assert ev.value != tr.value  # running vs batch statistics: different functions
    # eval mode equals the reference computed with the model in eval mode
    np.testing.assert_allclose(ev.samples_per_probe, reference_vhv(model, x, y, 4, 0), rtol=1e-10)
    model.train()
    hvp(model, x, y, {n: torch.ones_like(p) for n, p in model.named_parameters()})
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


# ---------------------------------------------------------------- fall-backs


class _CubeNoVmap(torch.autograd.Function):
    """x^3 with a backward but no vmap rule (and, unless subclassed, no forward-mode derivative)."""

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * g * x**2


class _CubeWithJvp(_CubeNoVmap):
    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * t


class _CubeModel(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))

    def forward(self, x):
        return self.fn.apply(self.w).sum()


@pytest.mark.parametrize("fn, strategy", [(_CubeWithJvp, "loop"), (_CubeNoVmap, "reverse")])
def test_fallback_strategies(fn, strategy):
    model = _CubeModel(fn)
    exact = float((6 * model.w.detach()).sum())  # d^2/dw^2 sum w^3 = diag(6 w)
    with pytest.warns(RuntimeWarning, match=f"'{strategy}' strategy"):
        est = hutchinson_trace(model, DUMMY_X, DUMMY_Y, probes=3, loss=identity_loss)
    assert est.value == pytest.approx(exact, rel=1e-12) and est.stderr == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- scale-aware trace


def test_scale_aware_trace_is_invariant_under_relu_rescaling(tiny_mlp):
    model, x, y, H = tiny_mlp

    def exact_estimate(m, Hm):
        per = {n: (t, 0.0) for n, t in block_traces(m, Hm).items()}
        total = sum(t for t, _ in per.values())
        return TraceEstimate(total, 0.0, 1, x.shape[0], per, np.array([total]), "eval")

    a = 3.0
    scaled = MLP(in_dim=5, width=6, depth=1, out_dim=3).double()
    scaled.load_state_dict(model.state_dict())
    with torch.no_grad():  # relu(a z) = a relu(z): layer 0 times a, layer 1's weight over a
        scaled[1].weight.mul_(a)
        scaled[1].bias.mul_(a)
        scaled[3].weight.div_(a)
    torch.testing.assert_close(scaled(x), model(x))
    H2 = exact_hessian(scaled, x, y)
    before, after = exact_estimate(model, H), exact_estimate(scaled, H2)
    assert abs(after.value - before.value) > 0.1 * abs(before.value)  # the raw trace moves
    assert scale_aware_trace(after, scaled) == pytest.approx(scale_aware_trace(before, model), rel=1e-9)
    est = hutchinson_trace(model, x, y, probes=4)
    manual = sum(t * float(p.detach().pow(2).sum()) for (t, _), p in zip(est.per_param.values(), model.parameters()))
    assert scale_aware_trace(est, model) == pytest.approx(manual, rel=1e-12)


# ---------------------------------------------------------------- arguments


def test_bad_arguments_name_the_parameter(tiny_mlp):
    model, x, y, _ = tiny_mlp
    cases = [
        (dict(probes=0), "probes"),
        (dict(probes=2.5), "probes"),
        (dict(mode="x"), "mode"),
        (dict(params=["nope"]), "params"),
        (dict(params="1.weight"), "params"),
        (dict(params=[]), "params"),
        (dict(probe_chunk=0), "probe_chunk"),
        (dict(data_chunk=0), "data_chunk"),
        (dict(seed=-1), "seed"),
        (dict(loss="mse"), "loss"),
    ]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=name):
            hutchinson_trace(model, x, y, **kwargs)
    for kwargs, name in [
        (dict(iters=0), "iters"),
        (dict(tol=-1.0), "tol"),
        (dict(mode="x"), "mode"),
        (dict(params=["nope"]), "params"),
    ]:
        with pytest.raises(ValueError, match=name):
            top_eigenvalue(model, x, y, **kwargs)
    with pytest.raises(ValueError, match="^v "):
        hvp(model, x, y, {"1.weight": torch.zeros(6, 5, dtype=torch.float64)})
    with pytest.raises(ValueError, match="y must"):
        hutchinson_trace(model, x, y[:5])


# ---------------------------------------------------------------- Hutch++ and XTrace


def _quadratic_estimates(A: torch.Tensor, estimator: str, probes: int, seeds) -> list[TraceEstimate]:
    model = Quadratic(A)
    return [
        hessian_trace(model, DUMMY_X, DUMMY_Y, probes=probes, seed=s, loss=identity_loss, estimator=estimator)
        for s in seeds
    ]


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_estimators_within_error_on_decaying_quadratic(estimator):
    A = symmetric_with_spectrum([10.0 / (i + 1) ** 1.5 for i in range(30)] + [-0.5, -0.2])
    exact = float(torch.trace(A))
    ests = _quadratic_estimates(A, estimator, 14, range(12))
    for e in ests:
        assert (e.estimator, e.probes) == (estimator, 14)
        assert e.hvps <= 14 and e.stderr > 0
        assert within(e.value, exact, e.stderr), (e.value, exact, e.stderr)
        assert sum(v for v, _ in e.per_param.values()) == pytest.approx(e.value, rel=1e-12)
    # the budget split of the docstring: Hutch++ k = 4, q = 4, r = 6; XTrace n = 7
    n_samples = {"hutchinson": 14, "hutchpp": 6, "xtrace": 7}[estimator]
    assert all(e.samples_per_probe.shape == (n_samples,) for e in ests)
    assert ests[0].hvps == {"hutchinson": 14, "hutchpp": 14, "xtrace": 14}[estimator]


def test_variance_reduction_on_decaying_spectrum():
    """Empirical spread over seeds: Hutch++ and XTrace well below Hutchinson at the same budget."""
    A = symmetric_with_spectrum([10.0 / (i + 1) ** 2 for i in range(40)])
    spread = {est: float(np.std([e.value for e in _quadratic_estimates(A, est, 12, range(20))])) for est in ESTIMATORS}
    assert spread["hutchpp"] < 0.5 * spread["hutchinson"]
    assert spread["xtrace"] < 0.5 * spread["hutchinson"]


@pytest.mark.parametrize("estimator, probes", [("hutchpp", 12), ("hutchpp", 13), ("xtrace", 9), ("xtrace", 8)])
def test_low_rank_hessian_is_exact(estimator, probes):
    # rank 3 (indefinite) in 30 dimensions: below Hutch++'s sketch (k = 4) and XTrace's n - 1 = 3
    A = symmetric_with_spectrum([5.0, -2.0, 3.0] + [0.0] * 27, seed=2)
    for e in _quadratic_estimates(A, estimator, probes, range(3)):
        assert e.value == pytest.approx(6.0, abs=1e-10)
        assert e.stderr < 1e-10
        assert e.per_param["w"][0] == pytest.approx(6.0, abs=1e-10)


def test_zero_hessian_gives_zero():
    A = torch.zeros(6, 6, dtype=torch.float64)
    for est in ("hutchpp", "xtrace"):
        e = _quadratic_estimates(A, est, 6, [0])[0]
        assert e.value == 0.0 and math.isfinite(e.stderr)


@pytest.mark.parametrize(
    "estimator, probes, hvps, n_samples",
    [
        ("hutchpp", 3, 3, 1),
        ("hutchpp", 10, 10, 4),
        ("hutchpp", 11, 11, 5),
        ("xtrace", 2, 2, 1),
        ("xtrace", 7, 6, 3),
        ("xtrace", 10, 10, 5),
    ],
)
def test_budget_split_and_hvp_count(tiny_mlp, estimator, probes, hvps, n_samples):
    """hvps <= probes, counted by a wrapper around the HVP engine, and the documented split."""
    from wdlib import hessian as hmod

    model, x, y, _ = tiny_mlp
    counted = []
    original = hmod._HVP.__call__

    def counting(self, V, k):
        counted.append(k)
        return original(self, V, k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hmod._HVP, "__call__", counting)
        e = hessian_trace(model, x, y, probes=probes, estimator=estimator, probe_chunk=4)
    assert sum(counted) == e.hvps == hvps <= probes
    assert max(counted) <= 4
    assert e.samples_per_probe.shape == (n_samples,)
    if n_samples == 1:
        assert math.isnan(e.stderr)


def test_budget_capped_by_parameter_count():
    A = symmetric_with_spectrum([3.0, 2.0, 1.0, 0.5])  # P = 4
    e = _quadratic_estimates(A, "xtrace", 20, [0])[0]  # n = P = 4 probes; leave-one-out spans only 3
    assert e.hvps == 8 and within(e.value, 6.5, e.stderr)
    e = _quadratic_estimates(A, "hutchpp", 18, [0])[0]  # k = 6 sketch vectors, Q has 4 columns
    assert e.hvps == 18 and e.value == pytest.approx(6.5, abs=1e-10)


@pytest.mark.parametrize("estimator", ["hutchpp", "xtrace"])
def test_estimators_on_mlp_against_exact_hessian(tiny_mlp, estimator):
    model, x, y, H = tiny_mlp
    exact = float(torch.trace(H))
    blocks = block_traces(model, H)
    for seed in range(4):
        e = hessian_trace(model, x, y, probes=30, seed=seed, estimator=estimator)
        assert within(e.value, exact, e.stderr), (seed, e.value, exact, e.stderr)
        assert list(e.per_param) == [n for n, _ in model.named_parameters()]
        assert sum(v for v, _ in e.per_param.values()) == pytest.approx(e.value, rel=1e-10)
        for name, block in blocks.items():
            value, se = e.per_param[name]
            assert within(value, block, se, tol=1e-8), (seed, name, value, block, se)
    # scale_aware_trace reads per_param, whatever the estimator
    manual = sum(t * float(p.detach().pow(2).sum()) for (t, _), p in zip(e.per_param.values(), model.parameters()))
    assert scale_aware_trace(e, model) == pytest.approx(manual, rel=1e-12)


def test_mlp_full_rank_sketch_is_exact(tiny_mlp):
    """With as many sketch vectors as parameters (57), Hutch++ and XTrace give the exact trace and blocks."""
    model, x, y, H = tiny_mlp
    blocks = block_traces(model, H)
    for estimator, probes in (("hutchpp", 3 * 57), ("xtrace", 2 * 57)):
        e = hessian_trace(model, x, y, probes=probes, seed=0, estimator=estimator)
        assert e.value == pytest.approx(float(torch.trace(H)), abs=1e-9)
        for name, block in blocks.items():
            assert e.per_param[name][0] == pytest.approx(block, abs=1e-9), (estimator, name)


@pytest.mark.parametrize("estimator", ["hutchpp", "xtrace"])
def test_estimators_deterministic_and_chunk_independent(tiny_mlp, estimator):
    model, x, y, _ = tiny_mlp
    full = hessian_trace(model, x, y, probes=11, seed=4, estimator=estimator)
    again = hessian_trace(model, x, y, probes=11, seed=4, estimator=estimator)
    assert again.value == full.value and np.array_equal(again.samples_per_probe, full.samples_per_probe)
    for kwargs in (dict(probe_chunk=2), dict(data_chunk=7), dict(probe_chunk=3, data_chunk=6)):
        other = hessian_trace(model, x, y, probes=11, seed=4, estimator=estimator, **kwargs)
        assert abs(other.value - full.value) < 1e-9, kwargs
        np.testing.assert_allclose(other.samples_per_probe, full.samples_per_probe, rtol=0, atol=1e-9)
    different = hessian_trace(model, x, y, probes=11, seed=5, estimator=estimator)
    assert different.value != full.value


def test_xtrace_uses_hutchinsons_first_probes(tiny_mlp):
    """XTrace's leave-one-out estimates, written out with explicit QR of the other probes' H w_j."""
    model, x, y, H = tiny_mlp
    e = hessian_trace(model, x, y, probes=8, seed=2, estimator="xtrace")
    Om = torch.stack([torch.cat([t.reshape(-1) for t in v]) for v in reference_probes(model, 4, 2)], dim=1)
    Y = H @ Om
    ref = []
    for i in range(4):
        Qi = torch.linalg.qr(Y[:, [j for j in range(4) if j != i]])[0]
        u = Om[:, i] - Qi @ (Qi.T @ Om[:, i])
        ref.append(float(torch.trace(Qi.T @ H @ Qi) + u @ H @ u))
    np.testing.assert_allclose(e.samples_per_probe, ref, rtol=1e-9, atol=1e-10)


def test_hutchinson_alias_and_defaults(tiny_mlp):
    model, x, y, _ = tiny_mlp
    assert hutchinson_trace is hessian_trace
    a = hutchinson_trace(model, x, y, probes=5, seed=1)
    b = hessian_trace(model, x, y, probes=5, seed=1, estimator="hutchinson")
    assert (a.estimator, a.hvps) == ("hutchinson", 5) and np.array_equal(a.samples_per_probe, b.samples_per_probe)
    old = TraceEstimate(1.0, 0.0, 3, 2, {}, np.zeros(3), "eval")  # positional, as before the new fields
    assert (old.estimator, old.hvps) == ("hutchinson", 3)


def test_bad_estimator_and_small_budget_name_the_parameter(tiny_mlp):
    model, x, y, _ = tiny_mlp
    with pytest.raises(ValueError, match="estimator.*hutchinson.*hutchpp.*xtrace"):
        hessian_trace(model, x, y, estimator="hutch")
    with pytest.raises(ValueError, match="estimator"):
        hutchinson_trace(model, x, y, estimator=None)
    for estimator, too_few in (("hutchpp", 2), ("xtrace", 1), ("hutchinson", 0)):
        with pytest.raises(ValueError, match="probes must be an integer >= "):
            hessian_trace(model, x, y, probes=too_few, estimator=estimator)


def test_measure_trace_threads_estimator():
    from types import SimpleNamespace

    from wdlib.measures import _measure_trace

    torch.manual_seed(0)
    model = MLP(in_dim=5, width=4, depth=1, out_dim=3).double()
    ds = SimpleNamespace(x_train=torch.randn(12, 5, dtype=torch.float64), y_train=torch.randint(0, 3, (12,)))
    default = _measure_trace(model, ds, probes=6, samples=12)
    assert default["hvps"] == 6 and default["probes"] == 6
    xt = _measure_trace(model, ds, probes=7, samples=12, estimator="xtrace")
    assert xt["hvps"] == 6 and all(isinstance(v, (int, float)) for v in xt.values())
    with pytest.raises(ValueError, match="estimator"):
        _measure_trace(model, ds, estimator="nope")


def test_leave_one_out_directions_both_routes():
    from wdlib.hessian import _leave_one_out_directions

    g = torch.Generator().manual_seed(0)
    R = torch.linalg.qr(torch.randn(7, 7, dtype=torch.float64, generator=g))[1]
    S = _leave_one_out_directions(R)  # full rank: normalised columns of R^{-T}
    Rd = R.clone()
    Rd[3, 3] = 0.0  # singular: the complete-QR route
    Sd = _leave_one_out_directions(Rd)
    for M, D in ((R, S), (Rd, Sd)):
        torch.testing.assert_close(D.norm(dim=0), torch.ones(7, dtype=torch.float64))
        G = D.T @ M  # G[i, j] = s_i . R_j must vanish for j != i
        assert float((G - torch.diag(torch.diagonal(G))).abs().max()) < 1e-12
    X = torch.linalg.inv(R).T
    torch.testing.assert_close(S, X / X.norm(dim=0), rtol=0, atol=1e-12)
