"""Chapter 6's experiments (wdlib.experiments.beyond): the toy and the statistics on known inputs, and every
experiment at the "test" scale against the chapter's plan."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wdlib.experiments import beyond as bs
from wdlib.runs import Store

TINY = bs.setup("test")


def test_factorization_toy_shrinks_singular_values_by_half_lambda():
    r = bs.factorization_toy(4, 1.0, 3000, seed=0)
    assert r["max_error"] < 1e-4
    assert r["rank_trained"] == r["rank_predicted"] == 3  # d = 2, 1.4, 0.8, 0.2: the last one is cut
    # without decay gradient descent fits D itself: the prediction is then d, and a wrong lambda is far off
    r0 = bs.factorization_toy(4, 0.0, 3000, seed=0)
    assert r0["max_error"] < 1e-4 and r0["predicted"] == pytest.approx(r0["d"])
    assert max(abs(a - b) for a, b in zip(r0["trained"], r["predicted"])) > 0.4


def test_factorization_toy_can_fail_when_undertrained():
    assert bs.factorization_toy(4, 1.0, 3, seed=0)["max_error"] > 0.1


def test_effective_rank_of_known_matrices():
    assert bs.effective_rank(torch.eye(6)) == pytest.approx(6.0)
    u = torch.randn(6, 1)
    assert bs.effective_rank(u @ u.T) == pytest.approx(1.0, abs=1e-6)
    assert 1.0 < bs.effective_rank(torch.diag(torch.tensor([1.0, 0.5, 0.1]))) < 3.0


def test_qk_ranks_split_heads_as_the_gpt_does():
    c, heads = 8, 2
    wq = torch.zeros(c, c)
    wq[0, 0] = 1.0  # head 0: rank 1
    wq[4:8, 4:8] = torch.eye(4)  # head 1: rank 4
    qkv = torch.cat([wq, wq, torch.randn(c, c)])  # W_K = W_Q
    ranks = bs._qk_ranks({"blocks.0.attn.qkv.weight": qkv, "blocks.0.mlp.fc.weight": torch.randn(4, c)}, heads)
    assert ranks == pytest.approx([1.0, 4.0])


def test_predicted_angle_is_kossons_formula():
    assert bs.predicted_angle(3e-3, 0.5, 0.9) == pytest.approx(math.sqrt(2 * 3e-3 * 0.5 * 0.1 / 1.9))
    assert bs.predicted_angle(1e-3, 0.1, 0.0) == pytest.approx(math.sqrt(2e-4))


def test_kahan_placement_loses_the_decay_outside_and_keeps_it_inside():
    s = bs.setup("test")
    s = type(s)(**{**{f: getattr(s, f) for f in s.__dataclass_fields__}, "kahan_steps": 60})
    kp = bs.kahan_placement(s, (0,))
    assert kp["ratios"]["outside Kahan"][6e-5] == [0.0]
    assert kp["ratios"]["nearest"][6e-5] == [0.0]
    assert kp["ratios"]["master (wdlib)"][1e-3][0] == pytest.approx(1.0, abs=0.1)
    assert kp["ratios"]["outside Kahan"][1e-2][0] > 0.5  # above 2^-8 rounding keeps most of it


def test_every_experiment_runs_at_test_scale_and_trains_the_planned_runs(tmp_path, monkeypatch):
    log = tmp_path / "runs.txt"
    monkeypatch.setenv("WDLIB_RUN_LOG", str(log))
    store = Store(tmp_path / "store")
    seeds = TINY.seeds(TINY.n_seeds)
    opts = dict(store=store, device="cpu")
    rise = bs.gradient_rise_runs(TINY, seeds, **opts)
    assert set(rise["per_seed"][0]) == {"seed", "decoupled", "corrected"}
    assert np.isfinite(rise["per_seed"][0]["corrected"]["rise"])
    rot = bs.rotation(TINY, seeds, **opts)
    assert len(rot["per_seed"][0]["angle_over_prediction"]) == 3
    caut = bs.cautious(TINY, seeds, **opts)
    assert set(caut["table"][seeds[0]][TINY.caut_wds[0]]) == {"plain", "cautious"}
    gpt = bs.gpt_runs(TINY, seeds, **opts)
    assert set(gpt["table"][seeds[0]]) == set(bs.gpt_arms(TINY))
    assert len(gpt["table"][seeds[0]]["adamw wd 0"]["qk_ranks"]) == TINY.gpt_model_args["n_head"]
    ws = bs.width_sweep(TINY, seeds, **opts)
    assert set(ws["table"]) == set(bs.WIDTH_RULES)
    requested = log.read_text().split()
    assert set(requested) == {c.key() for c in bs.planned_runs(TINY)}
    assert len(requested) == len(bs.planned_runs(TINY))


def test_arms_differ_in_what_they_compare():
    pair = bs.rise_configs(TINY, 0)
    assert pair["decoupled"].key() != pair["corrected"].key()
    assert pair["corrected"].optimizer["decay"] == "corrected"
    caut = bs.cautious_configs(TINY, 0)
    assert {c.optimizer["cautious"] for _, _, c in caut} == {False, True}
    assert len({c.key() for _, _, c in caut}) == len(caut)
    arms = bs.gpt_configs(TINY, 0)
    assert arms["muon wd 1"].optimizer["name"] == "muon" and arms["adamw wd 1"].weight_decay == 1.0
    assert set(bs.gpt_arms(bs.setup("full"))) >= {"muon wd 0.1", "adamw wd 0.1", "adamw wd 0", "adamw wd 1"}
    widths = bs.width_configs(TINY, 0)
    assert len({c.key() for *_, c in widths}) == len(widths)


def test_kappa_sums_the_schedule_times_lambda():
    assert bs.kappa(None, 1e-2, 0.5, 100) == pytest.approx(0.5)  # constant LR: steps * lr * lambda
    cos = bs.kappa({"name": "cosine", "final": 0.0}, 1e-2, 0.5, 1000)
    assert cos == pytest.approx(0.5 * 1e-2 * 1000 / 2, rel=0.01)  # a cosine to zero averages half its peak


def test_the_smoke_settings_span_the_timescales_their_rules_ask_for():
    s = bs.setup("smoke")
    assert bs.width_kappa_min(s) >= 3  # NEW-5's sanity check
    assert bs.kappa(bs._gpt_schedule(s), bs.GPT_LR, s.gpt_decay, s.gpt_steps) >= 0.5  # NEW-6's
    # the first build's settings (lambda 0.1, 600 steps; lambda_d 0.1) did not: the checks can fail
    short = type(s)(**{**{f: getattr(s, f) for f in s.__dataclass_fields__}, "width_steps": 120, "gpt_decay": 0.1})
    assert bs.width_kappa_min(short) < 3
    assert bs.kappa(bs._gpt_schedule(short), bs.GPT_LR, short.gpt_decay, short.gpt_steps) < 0.5
