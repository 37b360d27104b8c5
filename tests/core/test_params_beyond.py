"""wdlib.params beyond decay/no-decay: width rules for lambda under muP, normalized layers for the
"corrected" decay rule, and Muon's groups (with their use in wdlib.components.build_optimizer)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from wdlib import optim
from wdlib.components import build_optimizer
from wdlib.config import RunConfig
from wdlib.models import GPT, MLP
from wdlib.optim import Adam, decay_factor
from wdlib.params import (
    WIDTH_RULES,
    decay_groups,
    group_counts,
    muon_groups,
    mup_groups,
    normalized_params,
    width_weight_decay,
)
from wdlib.schedules import Constant, Cosine, HyperparameterScheduler


def _ids(tensors) -> set[int]:
    return {id(p) for p in tensors}


# --- width rules ---------------------------------------------------------------------------------------------


def test_width_rules_and_the_hidden_lambda():
    assert WIDTH_RULES == ("scaled", "constant", "sqrt", "independent")
    assert width_weight_decay("scaled", 0.1, 64, 256) == pytest.approx(0.4)
    assert width_weight_decay("constant", 0.1, 64, 256) == 0.1
    assert width_weight_decay("sqrt", 0.1, 64, 256) == pytest.approx(0.2)
    assert width_weight_decay("independent", 0.1, 64, 256) == pytest.approx(0.4)
    assert width_weight_decay("sqrt", 0.1, 64, 64) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: width_weight_decay("cube", 0.1, 64, 256), "rule"),
        (lambda: width_weight_decay("sqrt", -0.1, 64, 256), "weight_decay"),
        (lambda: width_weight_decay("sqrt", float("nan"), 64, 256), "weight_decay"),
        (lambda: width_weight_decay("sqrt", 0.1, 0, 256), "base_width"),
        (lambda: width_weight_decay("sqrt", 0.1, 64, 2.5), "width"),
        (lambda: mup_groups(MLP(8, 16, 2, 3), 4, 16, decay="cube"), "decay"),
    ],
)
def test_width_rule_errors_name_the_parameter(call, name):
    with pytest.raises(ValueError, match=name):
        call()


@pytest.mark.parametrize("width", [64, 256])
@pytest.mark.parametrize("rule", WIDTH_RULES)
def test_mup_group_multipliers_per_rule_and_width(rule, width):
    m = width / 64
    groups = {g["name"]: g for g in mup_groups(MLP(40, width, 2, 10), 64, width, decay=rule)}
    assert set(groups) == {"input", "hidden", "readout", "vectors"}
    expected = {"scaled": m, "constant": 1.0, "sqrt": math.sqrt(m), "independent": m}[rule]
    for name in ("hidden", "readout"):
        assert groups[name]["lr_mult"] == 1.0 / m
        assert groups[name]["wd_mult"] == pytest.approx(expected)
        assert groups[name]["wd_mult"] * 0.1 == pytest.approx(width_weight_decay(rule, 0.1, 64, width))
    assert groups["input"]["wd_mult"] == 1.0 and groups["input"]["lr_mult"] == 1.0
    assert groups["vectors"]["wd_mult"] == 0.0 and groups["vectors"]["weight_decay"] == 0.0
    for name in ("input", "hidden", "readout"):
        assert groups[name].get("decay") == ("independent" if rule == "independent" else None)
    assert "decay" not in groups["vectors"]


def test_scaled_and_constant_groups_are_unchanged():
    """Chapter 3 depends on them: the same keys and values as before the new rules."""
    groups = mup_groups(MLP(40, 256, 2, 10), 64, 256, decay="scaled", zero_readout=False)
    assert [sorted(k for k in g if k != "params") for g in groups] == [
        ["lr_mult", "name", "wd_mult"],
        ["lr_mult", "name", "wd_mult"],
        ["lr_mult", "name", "wd_mult"],
        ["lr_mult", "name", "wd_mult", "weight_decay"],
    ]
    assert [(g["lr_mult"], g["wd_mult"]) for g in groups] == [(1.0, 1.0), (0.25, 4.0), (0.25, 4.0), (1.0, 0.0)]
    const = mup_groups(MLP(40, 256, 2, 10), 64, 256, decay="constant", zero_readout=False)
    assert [g["wd_mult"] for g in const] == [1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("width", [64, 512])
@pytest.mark.parametrize("base_lr", [1e-3, 3e-2])
def test_independent_rule_shrinks_by_lambda_times_the_schedule_at_every_width_and_lr(width, base_lr):
    """Built as a run builds it (optimizer at the base LR, the scheduler setting lr_t and wd_t): the hidden
    group's shrink per step is lambda * s(t), whatever the width and the base LR."""
    lam, steps = 1e-3, 10
    groups = mup_groups(MLP(8, width, 2, 3), 64, width, decay="independent", zero_readout=False)
    opt = Adam(groups, lr=base_lr, weight_decay=lam, decay="decoupled")
    sched = HyperparameterScheduler(opt, lr=Cosine(peak=base_lr, steps=steps), weight_decay=Constant(lam))
    by_name = {g["name"]: g for g in opt.param_groups}
    for t in range(steps):
        s = 0.5 * (1.0 + math.cos(math.pi * t / steps))
        for name in ("input", "hidden", "readout"):
            assert decay_factor(by_name[name]) == pytest.approx(lam * s, rel=1e-12)
        assert decay_factor(by_name["vectors"]) == 0.0
        sched.step()


def test_sqrt_and_constant_shrinks_follow_the_table():
    lam, base_lr, m = 0.1, 1e-3, 4
    for rule, shrink in (
        ("scaled", base_lr * lam),
        ("constant", base_lr * lam / m),
        ("sqrt", base_lr * lam / math.sqrt(m)),
    ):
        opt = Adam(
            mup_groups(MLP(8, 64 * m, 2, 3), 64, 64 * m, decay=rule), lr=base_lr, weight_decay=lam, decay="decoupled"
        )
        HyperparameterScheduler(opt, lr=Constant(base_lr), weight_decay=Constant(lam))
        hidden = next(g for g in opt.param_groups if g["name"] == "hidden")
        assert decay_factor(hidden) == pytest.approx(shrink, rel=1e-12), rule


# --- normalized layers and the corrected rule ----------------------------------------------------------------


def test_normalized_params_of_a_scale_invariant_mlp():
    model = MLP(40, 32, 3, 10, scale_invariant=True)
    linears = [mod for mod in model if isinstance(mod, nn.Linear)]
    assert _ids(normalized_params(model)) == _ids(mod.weight for mod in linears[:-1])
    assert [id(p) for p in normalized_params(model)] == [id(mod.weight) for mod in linears[:-1]]  # in order


def test_normalized_params_of_a_model_without_normalization_is_empty():
    assert normalized_params(MLP(40, 32, 3, 10)) == []
    with pytest.raises(ValueError, match="normalized layer"):
        decay_groups(MLP(40, 32, 3, 10), corrected=True)


def test_normalized_params_conv_then_batchnorm_recursively():
    inner = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
    model = nn.Sequential(inner, nn.Flatten(), nn.Linear(4, 8), nn.GroupNorm(2, 8), nn.Linear(8, 2))
    assert _ids(normalized_params(model)) == {id(inner[0].weight), id(model[2].weight)}
    ids = _ids(normalized_params(nn.Sequential(nn.Conv1d(2, 2, 1), nn.Dropout(), nn.BatchNorm1d(2))))
    assert not ids  # not immediately followed by the normalization


def test_corrected_groups_split_the_decayed_tensors():
    model = MLP(40, 32, 2, 10, scale_invariant=True)
    groups = decay_groups(model, corrected=True)
    by_name = {g["name"]: g for g in groups}
    assert [g["name"] for g in groups] == ["normalized", "decay", "no_decay"]
    assert by_name["normalized"]["decay"] == "corrected" and by_name["decay"]["decay"] == "decoupled"
    assert _ids(by_name["normalized"]["params"]) == _ids(normalized_params(model))
    assert _ids(by_name["decay"]["params"]) == {id(model[-1].weight)}
    assert _ids(by_name["no_decay"]["params"]) == {id(model[-1].bias)}
    assert "decay" not in by_name["no_decay"]
    assert len(group_counts(groups)) == 3
    plain = decay_groups(model)  # unchanged without corrected
    assert [g["name"] for g in plain] == ["decay", "no_decay"] and "decay" not in plain[0]
    with pytest.raises(ValueError, match="corrected"):
        decay_groups(model, corrected="yes")


def _cfg(**kw) -> RunConfig:
    return RunConfig(data_args={"num_samples": 600}, lr=0.01, weight_decay=0.1, **kw)


@pytest.mark.skipif("corrected" not in optim.DECAYS, reason="wdlib.optim has no 'corrected' rule yet")
def test_build_optimizer_with_corrected_decay():
    cfg = _cfg(
        model_args={"width": 16, "depth": 2, "scale_invariant": True}, optimizer={"name": "adam", "decay": "corrected"}
    )
    model = MLP(40, 16, 2, 10, scale_invariant=True)
    opt, groups = build_optimizer(cfg, model)
    assert [g["name"] for g in groups] == ["normalized", "decay", "no_decay"]
    assert [g["decay"] for g in opt.param_groups] == ["corrected", "decoupled", "corrected"]
    assert decay_factor(opt.param_groups[1]) == pytest.approx(0.01 * 0.1)
    with pytest.raises(ValueError, match="normalized layer"):
        build_optimizer(cfg, MLP(40, 16, 2, 10))


# --- Muon -----------------------------------------------------------------------------------------------------


def test_muon_groups_on_gpt():
    model = GPT(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16, bias=True)
    groups = {g["name"]: g for g in muon_groups(model)}
    assert set(groups) == {"muon", "decay", "no_decay"}
    assert groups["muon"]["muon"] is True and groups["decay"]["muon"] is False and groups["no_decay"]["muon"] is False
    hidden = [mod.weight for mod in model.modules() if isinstance(mod, nn.Linear) and mod is not model.lm_head]
    assert _ids(groups["muon"]["params"]) == _ids(hidden) and len(hidden) == 2 * 4
    assert _ids(groups["decay"]["params"]) == {id(model.wte.weight), id(model.wpe.weight)}  # lm_head is wte
    assert all(p.ndim == 1 for p in groups["no_decay"]["params"])
    assert groups["no_decay"]["wd_mult"] == 0.0 and groups["no_decay"]["weight_decay"] == 0.0
    everything = [id(p) for g in groups.values() for p in g["params"]]
    assert len(everything) == len(set(everything)) == len(list(model.parameters()))
    assert set(group_counts(list(groups.values()))) == {"muon", "decay", "no_decay"}


def test_muon_groups_on_mlp():
    model = MLP(40, 32, 3, 10)
    linears = [mod for mod in model if isinstance(mod, nn.Linear)]
    groups = {g["name"]: g for g in muon_groups(model)}
    assert _ids(groups["muon"]["params"]) == _ids(mod.weight for mod in linears[:-1])
    assert _ids(groups["decay"]["params"]) == {id(linears[-1].weight)}
    assert len(groups["no_decay"]["params"]) == 4  # the biases
    with_vectors = {g["name"]: g for g in muon_groups(model, decay_vectors=True)}
    assert set(with_vectors) == {"muon", "decay"} and len(with_vectors["decay"]["params"]) == 5
    single = muon_groups(nn.Sequential(nn.Linear(3, 2, bias=False)))  # the readout only: no muon group
    assert [g["name"] for g in single] == ["decay"]
    with pytest.raises(ValueError, match="decay_vectors"):
        muon_groups(model, decay_vectors=1)


@pytest.mark.skipif("muon" not in optim.OPTIMIZERS, reason="wdlib.optim has no Muon yet")
def test_build_optimizer_with_muon():
    cfg = _cfg(model_args={"width": 16, "depth": 2}, optimizer={"name": "muon"})
    opt, groups = build_optimizer(cfg, MLP(40, 16, 2, 10))
    assert [g["name"] for g in groups] == ["muon", "decay", "no_decay"]
    assert [g["muon"] for g in opt.param_groups] == [True, False, False]


def test_build_optimizer_refuses_group_rules_a_torch_optimizer_ignores():
    cfg = _cfg(model_args={"width": 32, "depth": 2}, optimizer="torch.adamw", mup={"base_width": 16, "decay": "scaled"})
    opt, _ = build_optimizer(cfg, MLP(40, 32, 2, 10))  # scaled: no rule of its own, torch's AdamW is fine
    assert isinstance(opt, torch.optim.AdamW)
    # mup.decay "independent" puts the rule in the groups; torch.optim.AdamW would ignore it. (Set past the
    # config's own check, which may not know the rule.)
    object.__setattr__(cfg, "mup", {"base_width": 16, "decay": "independent"})
    with pytest.raises(ValueError, match="independent"):
        build_optimizer(cfg, MLP(40, 32, 2, 10))
    adam = _cfg(model_args={"width": 32, "depth": 2}, optimizer="adam", mup={"base_width": 16})
    object.__setattr__(adam, "mup", {"base_width": 16, "decay": "independent"})
    opt, groups = build_optimizer(adam, MLP(40, 32, 2, 10))
    assert [g["decay"] for g in opt.param_groups] == ["independent"] * 3 + ["decoupled"]
