"""wdlib's optimizers as drop-in replacements of their torch.optim namesakes (issue 16).

A class named like torch's means what torch's means with the same arguments; the independent
rule's reference LR survives every torch LR scheduler; torch state dicts of the same algorithm load
(others are refused at load time); numpy scalars and 0-d tensors are numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import rel_err, train

from wdlib.optim import SGD, SGDW, Adam, AdamW, decay_factor

STEPS = 200


# --- 1. the same name means the same algorithm, with default arguments -------------------------------------


@pytest.mark.parametrize(
    "ours,theirs,kwargs",
    [
        (Adam, torch.optim.Adam, {}),
        (Adam, torch.optim.Adam, {"weight_decay": 0.1}),
        (AdamW, torch.optim.AdamW, {}),
        (AdamW, torch.optim.AdamW, {"weight_decay": 0.1}),
        (SGD, torch.optim.SGD, {}),
        (SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
    ],
    ids=["Adam", "Adam-wd", "AdamW", "AdamW-wd", "SGD", "SGD-momentum-wd"],
)
def test_default_arguments_mean_what_torch_means(data, ours, theirs, kwargs):
    """``wdlib.X(params, **kw)`` against ``torch.optim.X(params, **kw)``, float64, nothing else given."""
    a = train(data, lambda p: ours(p, **kwargs), STEPS, dtype=torch.float64)
    b = train(data, lambda p: theirs(p, **kwargs), STEPS, dtype=torch.float64)
    assert rel_err(a, b) < 1e-10


def test_adam_with_weight_decay_is_not_adamw(data):
    """The silent switch the issue reports: Adam(weight_decay=...) must not be AdamW."""
    l2 = train(data, lambda p: Adam(p, lr=1e-2, weight_decay=0.5), STEPS, dtype=torch.float64)
    decoupled = train(data, lambda p: AdamW(p, lr=1e-2, weight_decay=0.5), STEPS, dtype=torch.float64)
    assert rel_err(l2, decoupled) > 1e-3


def test_sgdw_and_adamw_are_the_decoupled_rule():
    p = torch.nn.Parameter(torch.zeros(2))
    assert SGD([p]).defaults["decay"] == "l2" and Adam([p]).defaults["decay"] == "l2"
    assert SGDW([p]).defaults["decay"] == "decoupled" and AdamW([p]).defaults["decay"] == "decoupled"


# --- 2. the independent rule's reference LR under every torch LR scheduler ----------------------------------


def _schedulers():
    S = torch.optim.lr_scheduler
    return {
        "LambdaLR": lambda o: S.LambdaLR(o, lambda t: 0.9**t),
        "MultiplicativeLR": lambda o: S.MultiplicativeLR(o, lambda t: 0.95),
        "StepLR": lambda o: S.StepLR(o, step_size=3, gamma=0.5),
        "MultiStepLR": lambda o: S.MultiStepLR(o, milestones=[2, 5], gamma=0.3),
        "ConstantLR": lambda o: S.ConstantLR(o, factor=0.5, total_iters=4),
        "LinearLR": lambda o: S.LinearLR(o, start_factor=0.1, total_iters=5),
        "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.8),
        "PolynomialLR": lambda o: S.PolynomialLR(o, total_iters=8, power=2.0),
        "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=8, eta_min=1e-5),
        "CosineAnnealingWarmRestarts": lambda o: S.CosineAnnealingWarmRestarts(o, T_0=3),
        "CyclicLR": lambda o: S.CyclicLR(o, base_lr=1e-4, max_lr=1e-2, step_size_up=3, cycle_momentum=False),
        "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=1e-2, total_steps=12),
        "SequentialLR": lambda o: S.SequentialLR(
            o, [S.LinearLR(o, start_factor=0.2, total_iters=3), S.ExponentialLR(o, gamma=0.9)], milestones=[3]
        ),
        "ChainedScheduler": lambda o: S.ChainedScheduler(
            [S.ConstantLR(o, factor=0.5, total_iters=2), S.ExponentialLR(o, gamma=0.9)]
        ),
        "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=0),
    }


@pytest.mark.parametrize("name", sorted(_schedulers()))
@pytest.mark.parametrize("cls", [Adam, SGD])
def test_independent_decay_follows_lr_over_the_constructed_lr(name, cls):
    """With a zero gradient the step is the decay alone: theta_t+1 = theta_t (1 - lr_t / lr_built * lambda).

    OneCycleLR rewrites ``initial_lr`` to max_lr / 25; the decay must still use the constructed lr.
    """
    lr_built, lam = 1e-3, 0.05
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = cls([p], lr=lr_built, weight_decay=lam, decay="independent")
    sched = _schedulers()[name](opt)
    for t in range(10):
        lr_t = opt.param_groups[0]["lr"]
        before = p.detach().clone()
        p.grad = torch.zeros_like(p)
        opt.step()
        shrink = 1.0 - float(p.detach()[0] / before[0])
        assert shrink == pytest.approx(lr_t / lr_built * lam, rel=1e-9, abs=1e-15), (name, t)
        assert decay_factor(opt.param_groups[0]) == pytest.approx(lr_t / lr_built * lam, rel=1e-12)
        sched.step(1.0) if name == "ReduceLROnPlateau" else sched.step()


def test_reference_lr_is_kept_in_the_state_dict():
    p = torch.nn.Parameter(torch.ones(3))
    opt = Adam([p], lr=2e-3, weight_decay=1e-4, decay="independent")
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=10)
    saved = opt.state_dict()
    assert saved["param_groups"][0]["reference_lr"] == 2e-3
    assert saved["param_groups"][0]["initial_lr"] != 2e-3  # what OneCycleLR did to torch's key
    fresh = Adam([p], lr=5e-3, weight_decay=1e-4, decay="independent")
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["reference_lr"] == 2e-3


def test_a_state_dict_from_before_reference_lr_falls_back_to_initial_lr():
    p = torch.nn.Parameter(torch.ones(3))
    opt = Adam([p], lr=2e-3, weight_decay=1e-4, decay="independent")
    saved = opt.state_dict()
    del saved["param_groups"][0]["reference_lr"]
    fresh = Adam([p], lr=5e-3, weight_decay=1e-4, decay="independent")
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["reference_lr"] == 2e-3


# --- 3. torch.optim state dicts ------------------------------------------------------------------------------


def _continue(data, make_first, make_second, split=40, total=80):
    """Train ``split`` steps with one optimizer, move its state dict into another, train on; flat params."""
    import torch.nn.functional as F

    from wdlib.data import batches
    from wdlib.models import MLP, flat_parameters

    torch.manual_seed(0)
    model = MLP(data.input_dim, 32, 1, data.num_classes).double()
    opt = make_first(model.parameters())
    gen = torch.Generator().manual_seed(1)
    for t, (x, y) in enumerate(batches(data.x_train.double(), data.y_train, 50, total, gen)):
        if t == split:
            state = opt.state_dict()
            opt = make_second(model.parameters())
            opt.load_state_dict(state)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return flat_parameters(model)


@pytest.mark.parametrize(
    "theirs,ours",
    [
        (lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.2), lambda p: AdamW(p, lr=1.0, weight_decay=0.0)),
        (lambda p: torch.optim.Adam(p, lr=3e-3, weight_decay=0.01), lambda p: Adam(p)),
        (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01), lambda p: SGD(p)),
        (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True), lambda p: SGDW(p, momentum=0.5)),
    ],
    ids=["AdamW", "Adam", "SGD", "SGD-nesterov-no-decay"],
)
def test_a_torch_state_dict_of_the_same_algorithm_loads_and_continues(data, theirs, ours):
    """Loading takes torch's hyperparameters and moments: the run continues as torch's own would."""
    ref = _continue(data, theirs, theirs)
    got = _continue(data, theirs, ours)
    assert rel_err(got, ref) < 1e-10


@pytest.mark.parametrize(
    "theirs,ours,words",
    [
        (lambda p: torch.optim.Adam(p, weight_decay=0.1), AdamW, ("torch.optim.Adam", "coupled L2", "wdlib.Adam")),
        (lambda p: torch.optim.AdamW(p, weight_decay=0.1), Adam, ("torch.optim.AdamW", "decoupled", "wdlib.AdamW")),
        (lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.1), SGDW, ("torch.optim.SGD", "coupled L2", "wdlib.SGD")),
        (lambda p: torch.optim.Adam(p, amsgrad=True), Adam, ("amsgrad",)),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1), SGD, ("dampening",)),
        (lambda p: torch.optim.SGD(p, lr=0.1), Adam, ("from SGD",)),
        (lambda p: torch.optim.Adam(p), SGD, ("Adam-type",)),
    ],
    ids=[
        "Adam-into-AdamW",
        "AdamW-into-Adam",
        "SGD-into-SGDW",
        "amsgrad",
        "dampening",
        "SGD-into-Adam",
        "Adam-into-SGD",
    ],
)
def test_a_torch_state_dict_of_another_algorithm_is_refused_at_load(theirs, ours, words):
    p = torch.nn.Parameter(torch.randn(3))
    src = theirs([p])
    p.grad = torch.randn(3)
    src.step()
    opt = ours([p])
    with pytest.raises(ValueError) as err:
        opt.load_state_dict(src.state_dict())
    for w in words:
        assert w in str(err.value)
    assert "decay" in opt.param_groups[0] and opt.param_groups[0]["lr"] == 1e-3  # untouched


# --- 7. numpy scalars and 0-d tensors are numbers ---------------------------------------------------------


@pytest.mark.parametrize(
    "number",
    [np.float32, np.float64, lambda x: torch.tensor(x), lambda x: np.array(x)],
    ids=["np.float32", "np.float64", "0-d tensor", "0-d array"],
)
def test_numpy_scalars_and_0d_tensors_are_numbers(number):
    p = torch.nn.Parameter(torch.ones(3))
    q = torch.nn.Parameter(torch.ones(3))
    opt = Adam(
        [p],
        lr=number(1e-3),
        weight_decay=number(0.5),
        betas=(number(0.9), number(0.99)),
        eps=number(1e-8),
        decay="decoupled",
    )
    ref = Adam(
        [q],
        lr=float(np.float32(1e-3)) if number is np.float32 else 1e-3,
        weight_decay=0.5,
        betas=(float(number(0.9)), float(number(0.99))),
        eps=float(number(1e-8)),
        decay="decoupled",
    )
    g = opt.param_groups[0]
    assert all(type(g[k]) is float for k in ("lr", "weight_decay", "eps")) and all(type(b) is float for b in g["betas"])
    for o, t in ((opt, p), (ref, q)):
        t.grad = torch.full_like(t, 0.3)
        o.step()
    assert torch.equal(p, q)
    sgd = SGD([torch.nn.Parameter(torch.ones(2))], lr=number(0.1), momentum=number(0.9), weight_decay=np.int64(0))
    assert type(sgd.param_groups[0]["momentum"]) is float and sgd.param_groups[0]["weight_decay"] == 0.0
    opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "lr": number(2e-3)})
    assert type(opt.param_groups[1]["lr"]) is float


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(lr=float("inf")), ("lr", "finite")),
        (dict(lr=torch.tensor([1e-3, 1e-3])), ("lr",)),
        (dict(lr=True), ("lr",)),
        (dict(lr="1e-3"), ("lr",)),
        (dict(weight_decay=np.array([0.1])), ("weight_decay",)),
        (dict(betas=(0.9,)), ("betas", "pair")),
        (dict(betas=torch.tensor(0.9)), ("betas", "pair")),
        (dict(eps=float("nan")), ("eps",)),
    ],
    ids=["lr-inf", "lr-1d-tensor", "lr-bool", "lr-string", "wd-1d-array", "betas-single", "betas-0d", "eps-nan"],
)
def test_non_numbers_are_refused_naming_the_argument(kwargs, words):
    with pytest.raises(ValueError) as err:
        Adam([torch.nn.Parameter(torch.zeros(2))], **kwargs)
    for w in words:
        assert w in str(err.value)


def test_a_param_group_with_bad_hyperparameters_is_refused_and_not_kept():
    opt = SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.5)
    for bad, word in (
        ({"momentum": 1.5}, "momentum"),
        ({"nesterov": "yes"}, "nesterov"),
        ({"lr": -1.0}, "lr"),
        ({"decay": "adamw"}, "decay"),
    ):
        with pytest.raises(ValueError, match=word):
            opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], **bad})
    assert len(opt.param_groups) == 1
    adam = Adam([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="betas"):
        adam.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "betas": (0.9, 1.2)})
    assert len(adam.param_groups) == 1
