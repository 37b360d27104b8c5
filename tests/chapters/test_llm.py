"""Engine pieces of chapter 5: attention logits, relative update size, seen and unseen windows, the
interleaved validation split, and the measures and diagnostics that need data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wdlib.config import RunConfig
from wdlib.data import stdlib_chars
from wdlib.diagnostics import RelativeUpdateProbe
from wdlib.models import GPT, attention_logit_max
from wdlib.optim import Adam
from wdlib.train import train

SMALL = 200_000


def _gpt(**changes):
    fields = dict(
        data="stdlib_chars",
        data_args={"max_bytes": SMALL, "val_split": "interleaved", "val_block": 4096},
        model="gpt",
        model_args={"n_layer": 1, "n_head": 2, "n_embd": 16},
        optimizer={"name": "adam", "betas": [0.9, 0.95]},
        lr=3e-3,
        weight_decay=0.1,
        steps=12,
        batch_size=4,
        block_size=16,
        eval_every=6,
        eval_batches=2,
        scale="test",
    )
    fields.update(changes)
    return RunConfig(**fields)


# --- attention logits ----------------------------------------------------------------------------------


def _manual_logit_max(model: GPT, idx: torch.Tensor, causal: bool = True) -> list[float]:
    """Layer by layer, the explicit ``q k^T / sqrt(d)`` with the causal mask, from the module's own weights."""
    out = []
    with torch.no_grad():
        x = model.wte(idx) + model.wpe(torch.arange(idx.shape[1]))
        B, T, C = x.shape
        for block in model.blocks:
            H = block.attn.n_head
            q, k, _ = block.attn.qkv(block.ln1(x)).split(C, dim=2)
            q = q.view(B, T, H, C // H).transpose(1, 2)
            k = k.view(B, T, H, C // H).transpose(1, 2)
            logits = q @ k.transpose(-2, -1) / math.sqrt(C // H)
            mask = torch.ones(T, T, dtype=torch.bool).tril() if causal else torch.ones(T, T, dtype=torch.bool)
            out.append(float(logits.masked_fill(~mask, -math.inf).max()))
            x = block(x)
    return out


def test_attention_logit_max_matches_explicit_computation_and_restores_mode():
    torch.manual_seed(0)
    model = GPT(40, 16, n_layer=2, n_head=2, n_embd=16)
    with torch.no_grad():  # larger logits than the 0.02 init gives, so the comparison means something
        for block in model.blocks:
            block.attn.qkv.weight.mul_(20)
    idx = torch.randint(0, 40, (3, 16))
    model.train()
    got = attention_logit_max(model, idx)
    assert model.training
    np.testing.assert_allclose(got, _manual_logit_max(model, idx), rtol=1e-5)
    assert got.shape == (2,) and (got > 1).all()
    # inside bf16 autocast the q.k matmul runs in bfloat16: close to, not equal to, float32
    bf = attention_logit_max(model, idx, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    np.testing.assert_allclose(bf, got, rtol=0.05)
    assert not np.array_equal(bf, got)


def test_attention_logit_max_only_looks_at_causal_positions():
    torch.manual_seed(7)
    model = GPT(10, 4, n_layer=1, n_head=1, n_embd=8)
    idx = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.mul_(50)
    causal, everything = _manual_logit_max(model, idx)[0], _manual_logit_max(model, idx, causal=False)[0]
    assert everything > causal  # this seed has its largest logit above the diagonal: the mask matters here
    assert attention_logit_max(model, idx)[0] == pytest.approx(causal, rel=1e-5)
    with pytest.raises(ValueError, match="GPT"):
        attention_logit_max(torch.nn.Linear(2, 2), idx)


# --- relative update probe -----------------------------------------------------------------------------


def test_relative_update_probe_measures_the_step_and_sees_decay():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(30, 20))
    opt = Adam([w], lr=0.01, weight_decay=0.0)
    probe = RelativeUpdateProbe(opt, [w])
    for step in range(3):
        w.grad = torch.randn_like(w)
        before = w.detach().clone()
        probe.before_step(step)
        opt.step()
        probe.after_step(step)
        expected = float((w.detach() - before).norm() / before.norm())
        assert probe.result()["ratio"][-1] == pytest.approx(expected, rel=1e-5)
    # zero gradient, pure decoupled decay: the relative update is exactly lr * lambda
    opt2 = Adam([w], lr=0.01, weight_decay=0.5, decay="decoupled")
    p2 = RelativeUpdateProbe(opt2, [w])
    w.grad = torch.zeros_like(w)
    p2.before_step(0)
    opt2.step()
    p2.after_step(0)
    assert p2.result()["ratio"][0] == pytest.approx(0.005, rel=1e-4)
    assert p2.result()["step_ratio"][0] == pytest.approx(0.0, abs=1e-6)  # the decay's own shrink taken out
    # with a gradient, step_norm is the Adam step alone: ||W1 - W0*(1 - lr*wd)||
    w.grad = torch.randn_like(w)
    before = w.detach().clone()
    p2.before_step(1)
    opt2.step()
    p2.after_step(1)
    expected = float((w.detach() - before * (1 - 0.005)).norm() / before.norm())
    assert p2.result()["step_ratio"][-1] == pytest.approx(expected, rel=1e-4)
    torch_opt = torch.optim.AdamW([w], lr=0.01, weight_decay=0.5)
    p3 = RelativeUpdateProbe(torch_opt, [w])
    w.grad = torch.zeros_like(w)
    p3.before_step(0)
    torch_opt.step()
    p3.after_step(0)
    assert p3.result()["step_ratio"][0] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="every"):
        RelativeUpdateProbe(opt, [w], every=0)


# --- seen and unseen windows ---------------------------------------------------------------------------


def test_train_starts_are_the_training_batches():
    ds = stdlib_chars(SMALL)
    starts = ds.train_starts(5, 4, 16, seed=3)
    assert starts.shape == (20,)
    for step in range(5):
        x, _ = ds.with_block_size(16).batch(step, 3, batch_size=4)
        expected = torch.stack([ds.train[s : s + 16] for s in starts[step * 4 : (step + 1) * 4]])
        assert torch.equal(x, expected)


def test_unseen_starts_touch_no_seen_token():
    ds = stdlib_chars(SMALL)
    seen = ds.train_starts(300, 16, 32, seed=0)
    unseen = ds.unseen_starts(64, 32, seen, seed=1)
    covered = torch.zeros(len(ds.train), dtype=torch.bool)
    for s in seen.tolist():
        covered[s : s + 33] = True
    assert unseen.numel() == 64 and len(set(unseen.tolist())) == 64
    assert all(not covered[s : s + 33].any() for s in unseen.tolist())
    with pytest.raises(ValueError, match="untouched"):
        ds.unseen_starts(10, 32, torch.arange(0, len(ds.train), 8), seed=0)


def test_unseen_window_boundaries_are_exact():
    ds = stdlib_chars(SMALL)
    n, span = len(ds.train), 5  # block_size 4: a window covers 5 tokens
    seen = torch.tensor([100])
    free = set(ds.unseen_starts(n - span + 1 - 2 * span + 1, 4, seen, seed=0).tolist())
    # windows starting at 96..104 overlap tokens 100..104; 95 and 105 do not
    assert free.isdisjoint(range(96, 105)) and {95, 105} <= free


def test_interleaved_split_spreads_validation_over_the_corpus():
    tail = stdlib_chars(SMALL)
    inter = stdlib_chars(SMALL, val_split="interleaved", val_block=1000)
    assert len(inter.train) + len(inter.val) == len(tail.train) + len(tail.val)
    assert abs(len(inter.val) / (len(inter.train) + len(inter.val)) - 0.1) < 0.01
    whole = torch.cat([tail.train, tail.val])
    assert torch.equal(inter.val[:1000], whole[9000:10000])  # block 9 is the first validation block
    assert torch.equal(inter.train[:9000], whole[:9000])
    with pytest.raises(ValueError, match="val_split"):
        stdlib_chars(SMALL, val_split="random")


# --- through the training loop -------------------------------------------------------------------------


def test_run_records_attention_logits_relative_updates_and_seen_unseen():
    cfg = _gpt(
        diagnostics=["attn_logit_max"],
        probes=[{"name": "relative_update", "every": 2}],
        measures=[{"name": "seen_unseen", "windows": 8}],
        precision="bf16-autocast",
    )
    r = train(cfg, device="cpu", progress=False)
    assert r.history["diag/attn_logit_max"].shape == (2, 1)
    assert np.isfinite(r.history["diag/attn_logit_max"]).all()
    assert r.probes["relative_update/ratio"].shape == (6,) and (r.probes["relative_update/ratio"] > 0).all()
    assert {"seen_unseen/seen_loss", "seen_unseen/unseen_loss", "seen_unseen/gap"} <= set(r.final)
    assert r.final["seen_unseen/gap"] == pytest.approx(
        r.final["seen_unseen/unseen_loss"] - r.final["seen_unseen/seen_loss"]
    )


def test_seen_unseen_measure_evaluates_the_windows_it_names():
    """The measure's losses are those of the drawn training windows and of untouched ones, computed by hand."""
    import torch.nn.functional as F

    from wdlib.components import build_data, build_model
    from wdlib.measures import MEASURES

    cfg = _gpt(steps=40)
    ds = build_data(cfg)
    model = build_model(cfg, ds)
    got = MEASURES["seen_unseen"](model, ds, run=cfg, windows=6, seed=2)
    all_seen = ds.train_starts(40, cfg.batch_size, cfg.block_size, cfg.seed)
    seen = all_seen[torch.randperm(all_seen.numel(), generator=torch.Generator().manual_seed(2))[:6]]
    unseen = ds.unseen_starts(6, cfg.block_size, all_seen, seed=2)

    def loss(starts):
        x = torch.stack([ds.train[s : s + cfg.block_size] for s in starts])
        y = torch.stack([ds.train[s + 1 : s + 1 + cfg.block_size] for s in starts])
        with torch.no_grad():
            return float(F.cross_entropy(model(x).reshape(-1, ds.vocab_size), y.reshape(-1)))

    assert got["seen_loss"] == pytest.approx(loss(seen.tolist()), rel=1e-5)
    assert got["unseen_loss"] == pytest.approx(loss(unseen.tolist()), rel=1e-5)
    with pytest.raises(ValueError, match="language"):
        MEASURES["seen_unseen"](model, object(), run=cfg)


# --- the corpus with installed packages ------------------------------------------------------------------


def test_site_packages_corpus_extends_the_standard_library():
    only = stdlib_chars(15_000_000)
    more = stdlib_chars(15_000_000, site_packages=True)
    assert more.meta["site_packages"] and not only.meta["site_packages"]
    n = len(only.train) + len(only.val)
    assert len(more.train) + len(more.val) > n  # the stdlib alone is under 15 MB here
    assert more.meta["files"] > only.meta["files"]
    with pytest.raises(ValueError, match="site_packages"):
        stdlib_chars(SMALL, site_packages="yes")


# --- chapter 5's experiment module ---------------------------------------------------------------------


def test_divergence_rule_needs_a_spike_that_does_not_recover():
    from wdlib.experiments.llm import diverged

    assert not diverged([3.0, 2.5, 2.2, 2.1])["diverged"]
    assert not diverged([3.0, 2.5, 2.4, 2.6, 2.7])["diverged"]  # a stall is not a divergence
    spike = diverged([3.0, 2.0, 3.5, 3.6])  # 3.5 > 1.5 x 2.0, still up at the end
    assert spike["diverged"] and spike["spike_at"] == 2 and not spike["recovered"]
    back = diverged([3.0, 2.0, 3.5, 2.2])
    assert not back["diverged"] and back["recovered"]
    assert diverged([3.0, 2.0, float("nan")])["diverged"]
    assert diverged([3.0, 2.9], nonfinite_at=1)["diverged"]
    # an early spike that recovers does not hide a late divergence
    late = diverged([4.0, 6.5, 3.0, 2.5, 2.0, 1.9, 4.5, 4.6, 4.7])
    assert late["diverged"] and late["spike_at"] == 1 and not late["recovered"]


def _wsd_multipliers(s):
    """The LR multiplier of each step of the test setup's warmup-stable-decay schedule, written out by hand."""
    from wdlib.experiments.llm import decay_start

    out = []
    for t in range(s.steps):
        if t < s.warmup:
            out.append((t + 1) / s.warmup)
        elif t <= decay_start(s):
            out.append(1.0)
        else:
            out.append(1.0 - (1.0 - s.final) * (t - decay_start(s)) / (s.steps - decay_start(s)))
    return out


def test_chapter_plan_runs_at_test_scale(tmp_path):
    from wdlib.experiments import llm
    from wdlib.runs import Store

    s = llm.setup("test")
    store = Store(tmp_path)
    runs = llm.run_plan(s, store=store)
    assert {k: len(v) for k, v in runs.items()} == {"main": 2, "ln": 1, "ladder": 3, "bf16_pure": 9}
    main = runs["main"]
    r = main[(0.0, 0)]
    assert "ema_val_loss" in r.history and "relative_update/ratio" in r.probes and s.ft_from in r.snapshots
    assert (
        llm.value_at(r, llm.constant_phase_end(s))
        == r.history["val_loss"][list(r.history["step"]).index(llm.constant_phase_end(s))]
    )
    with pytest.raises(ValueError, match="not evaluated"):
        llm.value_at(r, 5)
    assert llm.constant_phase_end(s) < llm.decay_start(s) <= s.steps
    ft = llm.run_finetunes(s, main, store=store)
    assert set(ft) == set(main)
    copy = ft[(0.0, 0)]
    assert copy.config["init_from"] == {"run": r.info["key"], "step": s.ft_from}
    assert copy.config["lr"] == pytest.approx(s.lr * s.ft_lr_factor) and copy.config["seed"] == 1000
    # the LayerNorm arm decays the gains, the main arm does not
    ln = runs["ln"][(1.0, 0)]
    assert ln.config["decay_vectors"] and not main[(1.0, 0)].config["decay_vectors"]
    assert "diag/attn_logit_max" in runs["ladder"][(2e-2, "fp32", 0.0, 0)].history
    # LLM-7 arms: torch's AdamW on bf16 weights, and wdlib's with each remedy
    assert (
        runs["bf16_pure"][("bf16-pure", "torch.adamw", "nearest", 1.0, 0)].config["optimizer"]["name"] == "torch.adamw"
    )
    assert runs["bf16_pure"][("bf16-pure", "adam", "kahan", 1.0, 0)].config["optimizer"]["bf16_update"] == "kahan"
    shares = llm.shrink_shares(s, runs["bf16_pure"])
    assert list(shares["arm"]) == list(llm.BF16_PURE_PAIRS) and set(shares["seed"]) == {0}
    f32 = shares.set_index("arm").loc["float32"]
    assert f32["shrink_vs_float32"] == pytest.approx(1.0) and f32["val_minus_float32"] == 0.0
    tq = shares.set_index("arm").loc["bf16, torch AdamW"]
    bf16_pure = runs["bf16_pure"]
    expected = 1 - (
        bf16_pure[("bf16-pure", "torch.adamw", "nearest", 1.0, 0)].final["weight_norm/decay"]
        / bf16_pure[("bf16-pure", "torch.adamw", "nearest", 0.0, 0)].final["weight_norm/decay"]
    )
    assert tq["shrink"] == pytest.approx(expected) and tq["shrink_vs_float32"] == pytest.approx(
        expected / f32["shrink"]
    )
    t = llm.applied_decay_table(llm.bf16_pure_weights(r), s.applied_decay_grid, steps=20)
    assert set(t["arm"]) == set(llm.APPLIED_ARMS) and len(t) == len(llm.APPLIED_ARMS) * len(s.applied_decay_grid)
    f32 = t[t["arm"] == "float32"]["ratio"]
    np.testing.assert_allclose(f32, 1.0, rtol=1e-3)
    lost = t[(t["arm"] == "bf16, nearest (fused kernel)") & (t["lr_x_wd"] == 1e-4)]["ratio"]
    assert float(lost.iloc[0]) < 0.05
    cfg = llm.plan(s)["main"][(1.0, 0)]
    assert llm.accumulated_decay(cfg) == pytest.approx(sum(cfg.lr * m for m in _wsd_multipliers(s)), rel=1e-9)
    table = llm.table(main, ("wd", "seed"))
    assert list(table["wd"]) == [0.0, 1.0] and "seen_unseen/gap" in table
    with pytest.raises(ValueError, match="scale"):
        llm.setup("huge")


def test_plan_takes_its_training_seeds_from_the_caller():
    from wdlib.experiments import llm

    s = llm.setup("smoke")
    assert llm.seed_count(s) == max(s.n_seeds, s.ladder_n_seeds, s.bf16_pure_n_seeds)
    seeds = tuple(1000 + i for i in range(llm.seed_count(s)))
    p = llm.plan(s, seeds)
    assert {k[1] for k in p["main"]} == set(seeds[: s.n_seeds]) == {k[1] for k in p["ln"]}
    assert {k[-1] for k in p["ladder"]} == set(seeds[: s.ladder_n_seeds])
    assert {k[-1] for k in p["bf16_pure"]} == set(seeds[: s.bf16_pure_n_seeds])
    assert all(cfg.seed == k[-1] for section in ("main", "ln", "ladder", "bf16_pure") for k, cfg in p[section].items())
    assert len(p["bf16_pure"]) == 9 * s.bf16_pure_n_seeds
    # the default seeds are 0, 1, ...: the same runs (same keys) as the notebook's base seed 0
    assert llm.plan(s)["main"][(0.0, 0)].key() == llm.plan(s, range(llm.seed_count(s)))["main"][(0.0, 0)].key()
    with pytest.raises(ValueError, match="distinct seeds"):
        llm.plan(s, (0,))
    with pytest.raises(ValueError, match="distinct seeds"):
        llm.plan(s, (0,) * llm.seed_count(s))


def test_divergence_ratio_is_the_statistic_of_the_divergence_rule():
    from wdlib.experiments.llm import diverged, divergence_ratio

    curves = [
        [3.0, 2.5, 2.2, 2.1],
        [3.0, 2.0, 3.5, 3.6],
        [3.0, 2.0, 3.5, 2.2],
        [4.0, 6.5, 3.0, 2.5, 2.0, 1.9, 4.5, 4.6, 4.7],
        [3.0, 2.5, 2.4, 2.6, 2.7],
    ]
    for c in curves:  # above 1.5 exactly when the rule says diverged
        assert (divergence_ratio(c) > 1.5) == diverged(c)["diverged"]
    assert divergence_ratio([3.0, 2.0, 3.6]) == pytest.approx(1.8)
    assert divergence_ratio([3.0, 2.0, float("nan")]) == 10.0
    assert divergence_ratio([3.0, 2.9], nonfinite_at=1) == 10.0
    assert divergence_ratio([1.0, 0.01, 50.0], cap=10.0) == 10.0


def test_crossing_strength_needs_above_before_and_below_after():
    from wdlib.experiments.llm import crossing_strength

    # lambda 0.1 crosses (above by 0.03 then below by 0.01 on the seed means); lambda 1 is worse throughout
    units = [{0.1: (0.04, -0.02), 1.0: (0.2, 0.1)}, {0.1: (0.02, 0.0), 1.0: (0.3, 0.2)}]
    assert crossing_strength(units) == pytest.approx(0.01)
    assert crossing_strength([units[0]]) == pytest.approx(0.02)
    assert crossing_strength([{0.1: (-0.01, -0.05)}]) == pytest.approx(-0.01)  # never above: no crossing
    assert crossing_strength([{0.1: (0.05, 0.02)}, {0.1: (0.05, 0.0)}]) == pytest.approx(-0.01)  # never below


def test_per_seed_statistics_and_consecutive_ratios():
    import pandas as pd

    from wdlib.experiments.llm import consecutive_ratios, per_seed

    np.testing.assert_allclose(consecutive_ratios([4.0, 2.0, 3.0]), [0.5, 1.5])
    t = pd.DataFrame(
        {"wd": [1.0, 0.0, 0.1, 0.0, 1.0, 0.1], "seed": [0, 0, 0, 1, 1, 1], "x": [3.0, 1.0, 2.0, 5.0, 4.0, 6.0]}
    )
    assert per_seed(t, lambda g: g["x"].iloc[-1] - g["x"].iloc[0]) == [2.0, -1.0]  # sorted by wd within each seed


def test_llm_precision_policy(monkeypatch):
    from wdlib.experiments import llm

    def no_measuring(device):
        raise AssertionError("below full scale nothing is measured")

    monkeypatch.setattr(llm, "fast_bf16", no_measuring)
    smoke = llm.setup("smoke")
    assert llm.main_precision(smoke, "cpu") == "fp32"
    p = llm.plan(smoke)
    assert {c.precision for c in p["main"].values()} == {c.precision for c in p["ln"].values()} == {"fp32"}
    # the claims about bfloat16 keep their arms, and everything else of their runs is as before
    assert {k[1] for k in p["ladder"]} == {"bf16-autocast", "fp32"}
    assert {c.precision for c in p["ladder"].values()} == {"bf16-autocast", "fp32"}
    assert {c.precision for c in p["bf16_pure"].values()} == {"bf16-pure", "fp32"}
    cfg = p["main"][(smoke.wds[1], 0)]
    assert (
        cfg.replace(precision="bf16-autocast").to_dict()
        == llm.base_config(
            smoke,
            weight_decay=smoke.wds[1],
            seed=0,
            ema=smoke.ema,
            diagnostics=["matrix_norm", "adam_elr"],
            probes=[{"name": "relative_update", "every": smoke.rel_every}],
            measures=[{"name": "seen_unseen", "windows": smoke.seen_windows}],
            snapshots=[smoke.ft_from],
        ).to_dict()
    )

    full = llm.setup("full")
    monkeypatch.setattr(llm, "fast_bf16", lambda device: True)
    assert llm.main_precision(full, "cpu") == "bf16-autocast"
    assert {c.precision for c in llm.plan(full)["main"].values()} == {"bf16-autocast"}
    monkeypatch.setattr(llm, "fast_bf16", lambda device: False)
    assert llm.main_precision(full, "cpu") == "fp32"


def test_llm_precision_table_names_each_claim(monkeypatch):
    from wdlib.experiments import llm

    monkeypatch.setattr(
        llm,
        "bf16_matmul_speed",
        lambda device: {"n": 512, "float32_gflops": 65.0, "bfloat16_gflops": 1.3, "fast": False},
    )
    t = llm.precision_table(llm.setup("smoke"), "cpu")
    assert list(t["claim"]) == ["LLM-1 to LLM-4", "LLM-5", "LLM-6", "LLM-7"]
    row = t.set_index("claim").loc["LLM-5"]
    assert row["precision"] == "float32" and "1.3 GFLOP/s" in row["why"] and "slow" in row["why"]
    assert "bf16 autocast" in t.set_index("claim").loc["LLM-6", "precision"]
    monkeypatch.setattr(llm, "fast_bf16", lambda device: False)
    t = llm.precision_table(llm.setup("full"), "cpu")
    assert t.set_index("claim").loc["LLM-5", "precision"] == "float32"
    assert "instead of the source's bf16 autocast" in t.set_index("claim").loc["LLM-5", "why"]
