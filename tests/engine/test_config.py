"""The optimizer as a registered spec (``RunConfig.optimizer``), the migration of the old flat fields, and
the run keys that must not move.

The keys below were computed by the code before the spec existed (``optimizer``, ``decay``, ``momentum``,
``nesterov``, ``betas``, ``eps`` and ``bf16_update`` as fields of their own). A run store files results by
key, so a configuration must keep its key: read from its old flat form (files, stored rows) and written in
the new nested form alike.
"""

from __future__ import annotations

import json

import pytest
import torch

from wdlib import optim
from wdlib.components import build_optimizer
from wdlib.config import FIELD_HELP, RunConfig
from wdlib.optim import OPTIMIZERS, decay_factor, decay_rule, make_optimizer, optimizer_spec

GPT = dict(
    data="stdlib_chars",
    model="gpt",
    model_args=dict(n_layer=1, n_head=2, n_embd=32),
    block_size=32,
    batch_size=8,
    eval_batches=2,
)

#: name: (old flat form, the same configuration in the new form, its key under the old code)
KEYED: dict[str, tuple[dict, dict, str]] = {
    "default": ({}, {}, "467ae49157fed20d473f2cf7"),
    "adam_l2_betas": (
        dict(optimizer="adam", decay="l2", betas=[0.9, 0.95], eps=1e-6, lr=3e-3, weight_decay=0.1),
        dict(optimizer={"name": "adam", "decay": "l2", "betas": [0.9, 0.95], "eps": 1e-6}, lr=3e-3, weight_decay=0.1),
        "7eca6c973a59a124f9242570",
    ),
    "adam_independent": (
        dict(
            optimizer="adam",
            decay="independent",
            lr=1e-3,
            weight_decay=1e-4,
            lr_schedule={"name": "cosine", "warmup": 10},
        ),
        dict(
            optimizer={"name": "adam", "decay": "independent"},
            lr=1e-3,
            weight_decay=1e-4,
            lr_schedule={"name": "cosine", "warmup": 10},
        ),
        "2363245a47e0cd8cf6578428",
    ),
    "sgd_nesterov": (
        dict(
            data="digits",
            model="cnn",
            optimizer="sgd",
            decay="l2",
            momentum=0.9,
            nesterov=True,
            lr=0.05,
            weight_decay=5e-4,
        ),
        dict(
            data="digits",
            model="cnn",
            optimizer={"name": "sgd", "decay": "l2", "momentum": 0.9, "nesterov": True},
            lr=0.05,
            weight_decay=5e-4,
        ),
        "f1bb522a22c8d56f8baf49d3",
    ),
    "sgd_decoupled_int": (
        dict(optimizer="sgd", decay="decoupled", momentum=0, lr=1, weight_decay=0),
        dict(optimizer={"name": "sgd", "momentum": 0}, lr=1, weight_decay=0),
        "fa741b305ec262907e3308a1",
    ),
    "torch_adamw": (
        dict(optimizer="torch.adamw", lr=1e-3, weight_decay=0.1),
        dict(optimizer={"name": "torch.adamw"}, lr=1e-3, weight_decay=0.1),
        "b37184e840e630c9acefe5cc",
    ),
    "torch_adamw_explicit": (
        dict(optimizer="torch.adamw", decay="decoupled", betas=[0.9, 0.95], lr=1e-3, weight_decay=0.1),
        dict(optimizer={"name": "torch.adamw", "decay": "decoupled", "betas": [0.9, 0.95]}, lr=1e-3, weight_decay=0.1),
        "d740d38b6471f22d36d85fb3",
    ),
    # torch.adam follows L2; the old flat form kept decay at its default, "decoupled", and so does the key
    "torch_adam": (
        dict(optimizer="torch.adam", betas=[0.8, 0.99], eps=1e-6, weight_decay=0.01),
        dict(optimizer={"name": "torch.adam", "decay": "l2", "betas": [0.8, 0.99], "eps": 1e-6}, weight_decay=0.01),
        "ed98f68c854e479b4024b122",
    ),
    "torch_sgd": (
        dict(optimizer="torch.sgd", momentum=0.5, nesterov=True, lr=0.05, weight_decay=0.01),
        dict(optimizer={"name": "torch.sgd", "momentum": 0.5, "nesterov": True}, lr=0.05, weight_decay=0.01),
        "7e1fc6203c9b5d2c98437c10",
    ),
    "gpt_bf16_kahan": (
        dict(
            GPT,
            optimizer="adam",
            decay="decoupled",
            betas=[0.9, 0.95],
            precision="bf16-pure",
            bf16_update="kahan",
            lr=6e-4,
            weight_decay=0.1,
        ),
        dict(
            GPT,
            optimizer={"name": "adam", "betas": [0.9, 0.95], "bf16_update": "kahan"},
            precision="bf16-pure",
            lr=6e-4,
            weight_decay=0.1,
        ),
        "63bff5e5a3950438d59ef052",
    ),
    "sgd_bf16_stochastic": (
        dict(GPT, optimizer="sgd", decay="decoupled", momentum=0.9, precision="bf16-pure", bf16_update="stochastic"),
        dict(GPT, optimizer={"name": "sgd", "momentum": 0.9, "bf16_update": "stochastic"}, precision="bf16-pure"),
        "c0874ebb7299dcffe1c85a43",
    ),
    "mup": (
        dict(
            model_args={"width": 64, "depth": 2},
            optimizer="adam",
            decay="decoupled",
            mup={"base_width": 32},
            weight_decay=0.1,
        ),
        dict(model_args={"width": 64, "depth": 2}, optimizer="adam", mup={"base_width": 32}, weight_decay=0.1),
        "1872961067d2c50e82f5856d",
    ),
    # YAML 1.1 reads 1e-8 and 0 without a dot as text; momentum 0 beside adam was ignored and stays out
    "yaml_strings": (
        dict(optimizer="adam", eps="1e-8", momentum="0", lr="1e-3"),
        dict(optimizer={"name": "adam", "eps": "1e-8"}, lr="1e-3"),
        "467ae49157fed20d473f2cf7",
    ),
    "cnn_sgd_l2_golden": (
        dict(
            data="digits",
            model="cnn",
            optimizer="sgd",
            decay="l2",
            momentum=0.9,
            nesterov=True,
            lr=0.05,
            weight_decay=5e-4,
            steps=30,
            eval_every=10,
            decay_vectors=True,
            lr_schedule={"name": "step", "final": 0.1},
        ),
        dict(
            data="digits",
            model="cnn",
            optimizer={"name": "sgd", "decay": "l2", "momentum": 0.9, "nesterov": True},
            lr=0.05,
            weight_decay=5e-4,
            steps=30,
            eval_every=10,
            decay_vectors=True,
            lr_schedule={"name": "step", "final": 0.1},
        ),
        "af837bfab7d628831013c50a",
    ),
}

#: What the old code stored in a run store's index for two configurations (RunConfig.to_dict, flat).
STORED_ROWS = [
    (
        '{"batch_size": 32, "betas": [0.9, 0.999], "bf16_update": "nearest", "block_size": 64, "checkpoint_every": 0, '
        '"data": "digits", "data_args": {}, "data_seed": 0, "decay": "l2", "decay_vectors": false, "diagnostics": [], '
        '"divergence_factor": 100.0, "dtype": "float32", "ema": null, "eps": 1e-08, "eval_batches": 20, '
        '"eval_every": 0, '
        '"grad_accum": 1, "grad_clip": null, "init_from": null, "label_noise": 0.0, "lr": 0.05, "lr_schedule": null, '
        '"measures": [], "model": "cnn", "model_args": {}, "momentum": 0.9, "mup": null, "nesterov": true, '
        '"optimizer": "sgd", "perturb_step": null, "precision": "fp32", "probes": [], "scale": "test", "seed": 0, '
        '"snapshots": [], "steps": 3, "subset": null, "wd_schedule": null, "weight_decay": 0.0005}',
        "f01fd224076ac181e7bccbc7",
        {
            "name": "sgd",
            "decay": "l2",
            "momentum": 0.9,
            "nesterov": True,
            "bf16_update": "nearest",
            "impl": "auto",
            "cautious": False,
        },
    ),
    (
        '{"batch_size": 32, "betas": [0.8, 0.99], "bf16_update": "nearest", "block_size": 64, "checkpoint_every": 0, '
        '"data": "mnist1d", "data_args": {"num_samples": 600}, "data_seed": 0, "decay": "decoupled", '
        '"decay_vectors": false, "diagnostics": [], "divergence_factor": 100.0, "dtype": "float32", "ema": null, '
        '"eps": 1e-06, "eval_batches": 20, "eval_every": 0, "grad_accum": 1, "grad_clip": null, "init_from": null, '
        '"label_noise": 0.0, "lr": 0.001, "lr_schedule": null, "measures": [], "model": "mlp", "model_args": '
        '{"depth": 1, "width": 8}, "momentum": 0.0, "mup": null, "nesterov": false, "optimizer": "torch.adam", '
        '"perturb_step": null, "precision": "fp32", "probes": [], "scale": "test", "seed": 0, "snapshots": [], '
        '"steps": 3, "subset": null, "wd_schedule": null, "weight_decay": 0.01}',
        "7dc5936fec4a371acca08577",
        {"name": "torch.adam", "decay": "l2", "betas": [0.8, 0.99], "eps": 1e-6},
    ),
]


# --- keys ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(KEYED))
def test_keys_are_those_of_the_code_before_the_spec(name):
    flat, nested, key = KEYED[name]
    old = RunConfig.from_dict(flat)
    new = RunConfig(**nested)
    assert old.key() == key and new.key() == key
    assert old == new and old.to_dict() == new.to_dict()
    assert RunConfig.from_dict(json.loads(json.dumps(new.to_dict()))).key() == key  # the nested form, stored


@pytest.mark.parametrize("row,key,spec", STORED_ROWS)
def test_rows_stored_by_the_old_code_load_with_their_keys(row, key, spec):
    cfg = RunConfig.from_dict(json.loads(row))
    assert cfg.key() == key
    assert cfg.optimizer == spec


def test_a_different_spec_is_a_different_key():
    keys = {
        RunConfig(optimizer=spec).key()
        for spec in (
            "adam",
            {"name": "adam", "decay": "l2"},
            {"name": "adam", "decay": "independent"},
            "sgd",
            "torch.adam",
            "torch.adamw",
            "torch.sgd",
            {"name": "sgd", "momentum": 0.5},
            {"name": "adam", "eps": 1e-6},
        )
    }
    assert len(keys) == 9


# --- the spec ----------------------------------------------------------------------------------------------


def test_a_name_is_short_for_the_full_spec_with_its_defaults():
    assert RunConfig().optimizer == {
        "name": "adam",
        "decay": "decoupled",
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "bf16_update": "nearest",
        "impl": "auto",
        "cautious": False,
    }
    assert RunConfig(optimizer="sgd").optimizer == {
        "name": "sgd",
        "decay": "decoupled",
        "momentum": 0.0,
        "nesterov": False,
        "bf16_update": "nearest",
        "impl": "auto",
        "cautious": False,
    }
    assert RunConfig(optimizer="torch.adamw").optimizer == {
        "name": "torch.adamw",
        "decay": "decoupled",
        "betas": [0.9, 0.999],
        "eps": 1e-8,
    }
    assert RunConfig(optimizer="torch.adam").optimizer["decay"] == "l2"
    assert RunConfig(optimizer="torch.sgd").optimizer["decay"] == "l2"
    assert RunConfig(optimizer={"name": "torch.adam", "decay": "l2"}) == RunConfig(optimizer="torch.adam")


def test_the_registry_declares_every_optimizer_its_options_and_rules():
    assert list(OPTIMIZERS) == ["adam", "sgd", "muon", "torch.adam", "torch.adamw", "torch.sgd"]
    assert {n: e.decays for n, e in OPTIMIZERS.items() if n.startswith("torch.")} == {
        "torch.adam": ("l2",),
        "torch.adamw": ("decoupled",),
        "torch.sgd": ("l2",),
    }
    assert set(OPTIMIZERS["adam"].decays) == set(optim.DECAYS) == set(OPTIMIZERS["sgd"].decays)
    assert set(OPTIMIZERS["muon"].decays) == set(optim.DECAYS)
    for name in OPTIMIZERS:
        assert optimizer_spec(name) == optimizer_spec(optimizer_spec(name))  # the full form is a fixed point


@pytest.mark.parametrize(
    "spec,match",
    [
        ({"name": "torch.adamw", "decay": "l2"}, "optimizer.decay must be 'decoupled'"),
        ({"name": "torch.adamw", "decay": "independent"}, "optimizer.decay must be 'decoupled'"),
        ({"name": "torch.adam", "decay": "decoupled"}, "optimizer.decay must be 'l2'"),
        ({"name": "torch.sgd", "decay": "decoupled"}, "optimizer.decay must be 'l2'"),
        ({"name": "adam", "nesterov": True}, "optimizer.nesterov is not an option"),
        ({"name": "sgd", "eps": 1e-8}, "optimizer.eps is not an option"),
        ({"name": "torch.sgd", "bf16_update": "master"}, "optimizer.bf16_update is not an option"),
    ],
)
def test_an_optimizer_is_never_asked_for_what_it_cannot_do(spec, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(optimizer=spec)
    with pytest.raises(ValueError, match=match):
        make_optimizer(spec, [torch.nn.Parameter(torch.zeros(2))], lr=1e-3, weight_decay=0.1)


def test_old_flat_fields_migrate_and_ignored_ones_must_hold_their_default():
    assert RunConfig.from_dict({"optimizer": "torch.adamw", "decay": "decoupled"}).optimizer["name"] == "torch.adamw"
    assert RunConfig.from_dict(
        {"optimizer": "torch.sgd", "decay": "decoupled", "betas": [0.9, 0.999]}
    ).optimizer == optimizer_spec("torch.sgd")
    with pytest.raises(ValueError, match="optimizer.decay must be 'decoupled'"):
        RunConfig.from_dict({"optimizer": "torch.adamw", "decay": "l2"})
    with pytest.raises(ValueError, match="betas .* does not apply to optimizer 'sgd'"):
        RunConfig.from_dict({"optimizer": "sgd", "betas": [0.9, 0.95]})
    # a flat field overrides the spec's option; so does optimizer.<option>
    both = RunConfig.from_dict({"optimizer": {"name": "sgd", "momentum": 0.5}, "momentum": 0.9})
    assert both.optimizer["momentum"] == 0.9
    assert RunConfig.from_dict({"optimizer": "sgd", "optimizer.momentum": 0.9}).optimizer["momentum"] == 0.9


def test_replace_value_and_the_cross_field_checks():
    cfg = RunConfig(optimizer={"name": "sgd", "decay": "l2", "momentum": 0.9})
    assert cfg.replace(optimizer="sgd").optimizer["momentum"] == 0.0  # optimizer= replaces the whole spec
    assert cfg.replace(**{"optimizer.decay": "decoupled"}).optimizer == {**cfg.optimizer, "decay": "decoupled"}
    assert cfg.replace(optimizer={**cfg.optimizer, "decay": "decoupled"}) == cfg.replace(decay="decoupled")
    assert cfg.value("optimizer") == "sgd" and cfg.value("optimizer.momentum") == 0.9 and cfg.value("decay") == "l2"
    assert cfg.value("lr") == cfg.lr
    with pytest.raises(ValueError, match="no option 'betas'"):
        cfg.value("optimizer.betas")
    with pytest.raises(ValueError, match="bf16-pure"):
        RunConfig(optimizer={"name": "adam", "bf16_update": "master"})
    with pytest.raises(ValueError, match="mup with optimizer.decay 'independent'"):
        RunConfig(
            model_args={"width": 8, "depth": 1},
            mup={"base_width": 4},
            optimizer={"name": "adam", "decay": "independent"},
        )
    assert {"optimizer", "optimizer.decay", "optimizer.momentum", "optimizer.bf16_update"} <= set(FIELD_HELP)
    assert not {"decay", "momentum", "betas", "bf16_update"} & set(FIELD_HELP)


# --- building and the one shrink function ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,cls,rule",
    [
        ({"name": "adam", "decay": "l2"}, optim.Adam, "l2"),
        ("adam", optim.Adam, "decoupled"),
        ({"name": "sgd", "decay": "independent", "momentum": 0.9}, optim.SGD, "independent"),
        ("torch.adam", torch.optim.Adam, "l2"),
        ("torch.adamw", torch.optim.AdamW, "decoupled"),
        ({"name": "torch.sgd", "momentum": 0.5, "nesterov": True}, torch.optim.SGD, "l2"),
    ],
)
def test_build_optimizer_builds_through_the_registry_and_the_shrink_follows_the_rule(spec, cls, rule):
    cfg = RunConfig(
        data_args={"num_samples": 600}, model_args={"width": 8, "depth": 1}, optimizer=spec, lr=0.01, weight_decay=0.1
    )
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    opt, groups = build_optimizer(cfg, model)
    assert type(opt) is cls and groups
    g = opt.param_groups[0]
    assert decay_rule(g, opt) == rule
    assert decay_factor(g, opt) == {"l2": 0.0, "decoupled": 0.01 * 0.1, "independent": 0.1}[rule]
    for key, value in cfg.optimizer.items():
        if key in g and key not in ("name", "decay"):  # a group's "name" is its own (decay_groups)
            assert g[key] == (tuple(value) if key == "betas" else value)


def test_the_shrink_of_a_torch_group_without_its_rule_comes_from_the_optimizer():
    p = torch.nn.Parameter(torch.zeros(2))
    adamw = torch.optim.AdamW([p], lr=0.01, weight_decay=0.1)
    group = {k: v for k, v in adamw.param_groups[0].items() if k != "decoupled_weight_decay"}  # older torch
    assert decay_factor(group, adamw) == 0.01 * 0.1 and decay_factor(group) == 0.0
    assert (
        decay_factor(torch.optim.Adam([p], lr=0.01, weight_decay=0.1, decoupled_weight_decay=True).param_groups[0])
        == 0.01 * 0.1
    )


def test_the_cli_takes_optimizer_options_in_set_and_grid(tmp_path, capsys):
    from wdlib.cli import main

    path = tmp_path / "c.json"
    path.write_text(
        json.dumps(
            {
                "data_args": {"num_samples": 600},
                "model_args": {"width": 8, "depth": 1},
                "optimizer": {"name": "sgd", "momentum": 0.5},
                "steps": 2,
                "batch_size": 32,
                "scale": "test",
            }
        )
    )
    store = str(tmp_path / "store")
    assert main(["run", str(path), "--store", store, "--set", "optimizer.decay=l2", "--set", "lr=0.01"]) == 0
    key = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["key"]
    cfg = RunConfig.from_dict({**json.loads(path.read_text()), "lr": 0.01, "optimizer.decay": "l2"})
    assert key == cfg.key() and cfg.optimizer["decay"] == "l2" and cfg.optimizer["momentum"] == 0.5
    assert main(["sweep", str(path), "--store", store, "--grid", "optimizer.decay=l2,decoupled", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["optimizer.decay"] for r in rows] == ["l2", "decoupled"]
    assert main(["runs", "--store", store]) == 0
    assert "sgd(l2)" in capsys.readouterr().out


def test_optimizer_impl_is_a_spec_option_that_enters_the_key_only_when_set():
    """``optimizer.impl`` picks the kernel (only rounding differs); "auto" keeps every stored run's key."""
    base = RunConfig(optimizer={"name": "sgd", "decay": "decoupled", "momentum": 0.9})
    assert base.optimizer["impl"] == "auto"
    assert RunConfig(optimizer={**base.optimizer, "impl": "auto", "cautious": False}).key() == base.key()
    foreach = RunConfig(optimizer={**base.optimizer, "impl": "foreach"})
    assert foreach.key() != base.key() and RunConfig.from_dict(foreach.to_dict()).key() == foreach.key()
    with pytest.raises(ValueError, match="optimizer.impl must be one of 'auto', 'fused', 'foreach'"):
        RunConfig(optimizer={"name": "adam", "impl": "cuda"})
    with pytest.raises(ValueError, match="impl is not an option of optimizer 'torch.sgd'"):
        RunConfig(optimizer={"name": "torch.sgd", "impl": "foreach"})


def test_cautious_and_muon_options_enter_the_key_only_off_their_defaults():
    plain = RunConfig(optimizer="adam")
    assert RunConfig(optimizer={"name": "adam", "cautious": False}).key() == plain.key()
    assert RunConfig(optimizer={"name": "adam", "cautious": True}).key() != plain.key()
    muon = RunConfig(optimizer="muon")
    assert RunConfig(optimizer={"name": "muon", "adjust_lr": "original"}).key() != muon.key()
    assert RunConfig(optimizer={"name": "muon", "ns_steps": 3}).key() != muon.key()
    assert muon.key() != plain.key()
