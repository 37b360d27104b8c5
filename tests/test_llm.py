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
    fields = dict(data="stdlib_chars", data_args={"max_bytes": SMALL, "val_split": "interleaved", "val_block": 4096},
                  model="gpt", model_args={"n_layer": 1, "n_head": 2, "n_embd": 16}, optimizer="adam", lr=3e-3,
                  weight_decay=0.1, betas=(0.9, 0.95), steps=12, batch_size=4, block_size=16, eval_every=6,
                  eval_batches=2, scale="test")
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
    opt2 = Adam([w], lr=0.01, weight_decay=0.5)
    p2 = RelativeUpdateProbe(opt2, [w])
    w.grad = torch.zeros_like(w)
    p2.before_step(0)
    opt2.step()
    p2.after_step(0)
    assert p2.result()["ratio"][0] == pytest.approx(0.005, rel=1e-4)
    with pytest.raises(ValueError, match="every"):
        RelativeUpdateProbe(opt, [w], every=0)


# --- seen and unseen windows ---------------------------------------------------------------------------

def test_train_starts_are_the_training_batches():
    ds = stdlib_chars(SMALL)
    starts = ds.train_starts(5, 4, 16, seed=3)
    assert starts.shape == (20,)
    for step in range(5):
        x, _ = ds.batch(step, 4, 16, 3)
        expected = torch.stack([ds.train[s:s + 16] for s in starts[step * 4:(step + 1) * 4]])
        assert torch.equal(x, expected)


def test_unseen_starts_touch_no_seen_token():
    ds = stdlib_chars(SMALL)
    seen = ds.train_starts(300, 16, 32, seed=0)
    unseen = ds.unseen_starts(64, 32, seen, seed=1)
    covered = torch.zeros(len(ds.train), dtype=torch.bool)
    for s in seen.tolist():
        covered[s:s + 33] = True
    assert unseen.numel() == 64 and len(set(unseen.tolist())) == 64
    assert all(not covered[s:s + 33].any() for s in unseen.tolist())
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
    cfg = _gpt(diagnostics=["attn_logit_max"], probes=[{"name": "relative_update", "every": 2}],
               measures=[{"name": "seen_unseen", "windows": 8}], precision="bf16-autocast")
    r = train(cfg, device="cpu", progress=False)
    assert r.history["diag/attn_logit_max"].shape == (2, 1)
    assert np.isfinite(r.history["diag/attn_logit_max"]).all()
    assert r.probes["relative_update/ratio"].shape == (6,) and (r.probes["relative_update/ratio"] > 0).all()
    assert {"seen_unseen/seen_loss", "seen_unseen/unseen_loss", "seen_unseen/gap"} <= set(r.final)
    assert r.final["seen_unseen/gap"] == pytest.approx(
        r.final["seen_unseen/unseen_loss"] - r.final["seen_unseen/seen_loss"])


def test_seen_unseen_measure_evaluates_the_windows_it_names():
    """The measure's losses are those of the drawn training windows and of untouched ones, computed by hand."""
    import torch.nn.functional as F

    from wdlib.diagnostics import MEASURES
    from wdlib.train import build_data, build_model

    cfg = _gpt(steps=40)
    ds = build_data(cfg)
    model = build_model(cfg, ds)
    got = MEASURES["seen_unseen"](model, ds, run=cfg, windows=6, seed=2)
    all_seen = ds.train_starts(40, cfg.batch_size, cfg.block_size, cfg.seed)
    seen = all_seen[torch.randperm(all_seen.numel(), generator=torch.Generator().manual_seed(2))[:6]]
    unseen = ds.unseen_starts(6, cfg.block_size, all_seen, seed=2)

    def loss(starts):
        x = torch.stack([ds.train[s:s + cfg.block_size] for s in starts])
        y = torch.stack([ds.train[s + 1:s + 1 + cfg.block_size] for s in starts])
        with torch.no_grad():
            return float(F.cross_entropy(model(x).reshape(-1, ds.vocab_size), y.reshape(-1)))

    assert got["seen_loss"] == pytest.approx(loss(seen.tolist()), rel=1e-5)
    assert got["unseen_loss"] == pytest.approx(loss(unseen.tolist()), rel=1e-5)
    with pytest.raises(ValueError, match="language"):
        MEASURES["seen_unseen"](model, object(), run=cfg)
