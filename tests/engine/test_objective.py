"""The objective (wdlib.objective), the dataset protocol both kinds of data answer (wdlib.data), the sizes models
take from the data (wdlib.models.data_args), and the run state a checkpoint holds (wdlib.train.RunState)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wdlib import objective
from wdlib.components import build_data, build_model, run_data
from wdlib.config import RunConfig
from wdlib.data import EVAL_TRAIN_SAMPLES, Dataset, TokenDataset, batch_indices
from wdlib.models import GPT, MLP, data_args
from wdlib.train import CHECKPOINT_FORMAT, RunState, train


def toy(n: int = 20, n_test: int = 7, num_classes: int = 3) -> Dataset:
    """A classification dataset whose first input coordinate is the sample's index."""
    x = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 4)
    xt = -torch.arange(n_test, dtype=torch.float32)[:, None].repeat(1, 4)
    return Dataset("toy", x, torch.arange(n) % num_classes, xt, torch.arange(n_test) % num_classes, num_classes)


def tokens(n: int = 500, vocab: int = 11) -> TokenDataset:
    """A token stream ``i % vocab`` split 400/100."""
    ids = torch.arange(n) % vocab
    return TokenDataset("tokens", ids[:400], ids[400:], vocab, {})


# --- the objective ------------------------------------------------------------------------------------------------


def test_loss_is_the_mean_cross_entropy_for_classes_and_per_token_for_language():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)
    assert torch.equal(objective.loss(logits, y), F.cross_entropy(logits, y))
    assert torch.equal(objective.loss(logits, y, reduction="sum"), F.cross_entropy(logits, y, reduction="sum"))
    seq, tgt = torch.randn(2, 3, 5, generator=g), torch.randint(0, 5, (2, 3), generator=g)
    per_token = torch.stack([F.cross_entropy(seq[b, t][None], tgt[b, t][None]) for b in range(2) for t in range(3)])
    assert objective.loss(seq, tgt).item() == pytest.approx(per_token.mean().item(), rel=1e-6)


def test_model_loss_takes_float32_logits():
    model = nn.Linear(4, 3).double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    got = objective.model_loss(model, x, y)
    assert got.dtype == torch.float32
    assert torch.equal(got, F.cross_entropy(model(x).float(), y))


def test_loss_and_correct_counts_right_predictions_per_token():
    logits = torch.tensor([[[5.0, 0.0], [0.0, 5.0]], [[5.0, 0.0], [5.0, 0.0]]])
    model = _Fixed(logits)
    total, right = objective.loss_and_correct(model, torch.zeros(2), torch.tensor([[0, 1], [1, 0]]))
    assert int(right) == 3
    expected = F.cross_entropy(logits.reshape(-1, 2), torch.tensor([0, 1, 1, 0]), reduction="sum")
    assert float(total.detach()) == pytest.approx(float(expected))


class _Fixed(nn.Module):
    """A model that outputs the same logits whatever the input (and remembers its mode)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits + self.w


def test_evaluate_averages_over_all_labels_restores_the_mode_and_uses_the_autocast():
    torch.manual_seed(0)
    model = MLP(4, 8, 1, 3)
    ds = toy()
    batches = list(ds.eval_batches("train", batch_size=6))
    x, y = ds.x_train, ds.y_train
    calls = []

    def autocast():
        calls.append(1)
        return torch.autocast("cpu", enabled=False)

    model.train()
    loss, acc = objective.evaluate(model, batches, autocast)
    assert model.training and len(calls) == len(batches) == 4
    with torch.no_grad():
        assert loss == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-6)
        assert acc == pytest.approx(float((model(x).argmax(-1) == y).double().mean()))
    assert objective.evaluate(model, []) == (0.0, 0.0)


# --- one dataset protocol -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["classification", "tokens"])
def test_batch_has_one_signature_and_is_a_pure_function_of_step_and_seed(kind):
    ds = toy() if kind == "classification" else tokens().with_block_size(8)
    x, y = ds.batch(3, 7, batch_size=4)
    assert x.shape[0] == y.shape[0] == 4
    again = ds.batch(3, 7, batch_size=4, device="cpu")
    assert torch.equal(again[0], x) and torch.equal(again[1], y)
    assert not torch.equal(ds.batch(4, 7, batch_size=4)[0], x)
    shards = [ds.batch(3, 7, batch_size=4, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat([s[0] for s in shards]), x) and torch.equal(torch.cat([s[1] for s in shards]), y)
    with pytest.raises(TypeError):
        ds.batch(3, 4, 7)  # batch_size is keyword-only: an old positional call fails loudly


def test_classification_batch_is_the_seeded_permutation():
    ds = toy()
    x, y = ds.batch(6, 2, batch_size=8)
    idx = batch_indices(20, 8, 6, 2)
    assert torch.equal(x[:, 0].long(), idx) and torch.equal(y, idx % 3)


def test_token_batch_reads_the_bound_block_size():
    ds = tokens()
    with pytest.raises(ValueError, match="block_size"):
        ds.batch(0, 0, batch_size=2)
    bound = ds.with_block_size(6)
    assert bound.train is ds.train and bound.block_size == 6 and ds.block_size is None
    x, y = bound.batch(2, 1, batch_size=3)
    assert x.shape == y.shape == (3, 6) and torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(ValueError, match="block_size"):
        ds.with_block_size(0)


def test_classification_eval_sets_are_the_test_split_and_the_first_training_samples():
    n = EVAL_TRAIN_SAMPLES + 300
    ds = Dataset(
        "big", torch.randn(n, 2), torch.randint(0, 2, (n,)), torch.randn(1500, 2), torch.randint(0, 2, (1500,)), 2
    )
    sets = ds.eval_sets(batch_size=5, count=2)
    assert set(sets) == {"val", "train"}
    val = list(sets["val"]())
    assert [len(b[1]) for b in val] == [1024, 476] and torch.equal(torch.cat([b[0] for b in val]), ds.x_test)
    train_x = torch.cat([b[0] for b in sets["train"]()])
    assert torch.equal(train_x, ds.x_train[:EVAL_TRAIN_SAMPLES])
    assert torch.equal(next(sets["val"]())[0], val[0][0])  # each call is a fresh pass


def test_token_eval_sets_are_fixed_windows_of_each_split():
    ds = tokens().with_block_size(5)
    sets = ds.eval_sets(batch_size=3, count=2)
    val, val_again = list(sets["val"]()), list(sets["val"]())
    assert len(val) == 2 and all(x.shape == (3, 5) for x, _ in val)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(val, val_again))
    expected = list(ds.eval_batches(3, 5, 2, seed=0, split="train"))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(sets["train"](), expected))
    assert int(val[0][0].min()) >= 0 and torch.equal(val[0][0][:, 1:], val[0][1][:, :-1])


def test_for_device_on_the_cpu_is_the_dataset_itself():
    ds, tok = toy(), tokens()
    assert ds.for_device("cpu") is ds and tok.for_device("cpu") is tok


# --- models sized from the data -------------------------------------------------------------------------------------


def test_models_take_their_sizes_from_the_data():
    img = {"input_shape": (1, 8, 8), "num_classes": 10}
    assert data_args("mlp", img) == {"in_dim": 64, "out_dim": 10}
    assert data_args("cnn", img) == {"in_channels": 1, "num_classes": 10}
    assert data_args("convnet", {"input_shape": (40,), "num_classes": 10}) == {
        "in_channels": 1,
        "num_classes": 10,
        "input_size": 40,
    }
    assert data_args("resnet18", {"input_shape": (3, 32, 32), "num_classes": 10}) == {
        "in_channels": 3,
        "num_classes": 10,
    }
    assert data_args("tiedrnn", {"input_shape": (40,), "num_classes": 10}) == {"input_size": 40, "num_classes": 10}
    assert data_args("gpt", tokens().with_block_size(16).sizes) == {"vocab_size": 11, "block_size": 16}
    assert data_args("gpt", tokens().sizes) == {"vocab_size": 11}  # no block size bound: left to the caller
    assert data_args("gpt", img) == {} and data_args("nope", img) == {}
    assert toy().sizes == {"input_shape": (4,), "num_classes": 3}


def test_build_data_binds_the_block_size_and_build_model_sizes_a_gpt_from_it():
    cfg = RunConfig(
        data="stdlib_chars",
        data_args={"max_bytes": 20_000},
        model="gpt",
        model_args={"n_layer": 1, "n_head": 2, "n_embd": 16},
        block_size=12,
        scale="test",
    )
    ds = build_data(cfg)
    assert isinstance(ds, TokenDataset) and ds.block_size == 12
    model = build_model(cfg, ds)
    assert isinstance(model, GPT) and model.block_size == 12 and model.vocab_size == ds.vocab_size
    unbound = TokenDataset(ds.name, ds.train, ds.val, ds.vocab_size, ds.meta)
    assert run_data(cfg, unbound).block_size == 12
    same = build_model(cfg, unbound)  # the seed is set right before construction: the same weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))


# --- the run state --------------------------------------------------------------------------------------------------


def _mlp_cfg(**kw) -> RunConfig:
    return RunConfig(
        data="mnist1d",
        data_args={"num_samples": 600},
        model="mlp",
        model_args={"width": 8, "depth": 1},
        lr=1e-3,
        weight_decay=0.1,
        steps=6,
        eval_every=3,
        batch_size=32,
        ema=0.9,
        scale="test",
        **kw,
    )


def test_run_state_dict_is_the_checkpoint_and_loads_into_a_fresh_state():
    cfg = _mlp_cfg()
    ds = build_data(cfg)
    state = RunState.build(cfg, ds, torch.device("cpu"))
    state.step, state.running_min, state.history = 3, 1.5, {"step": [3]}
    with torch.no_grad():
        next(state.model.parameters()).add_(1.0)
    ckpt = state.state_dict()
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["config_key"] == cfg.key()
    assert list(ckpt) == [
        "format",
        "config_key",
        "step",
        "model",
        "optimizer",
        "scheduler",
        "ema",
        "probes",
        "history",
        "snapshots",
        "running_min",
        "wall_time",
        "rng",
    ]
    fresh = RunState.build(cfg, ds, torch.device("cpu"))
    fresh.load_state_dict(ckpt)
    assert fresh.step == 3 and fresh.running_min == 1.5 and fresh.history == {"step": [3]}
    assert all(torch.equal(a, b) for a, b in zip(fresh.model.state_dict().values(), state.model.state_dict().values()))
    with pytest.raises(ValueError, match="configuration"):
        RunState.build(_mlp_cfg(seed=1), ds, torch.device("cpu")).load_state_dict(ckpt)


def test_a_resumed_run_ends_bit_identical(tmp_path):
    cfg = _mlp_cfg(checkpoint_every=3)
    whole = train(cfg, progress=False)
    path = tmp_path / "ckpt.pt"
    first = train(cfg, checkpoint=path, progress=False)
    assert path.exists() and first.info["resumed_from"] == 0
    again = train(cfg, checkpoint=path, progress=False)
    assert again.info["resumed_from"] == 3
    for a, b in ((whole, first), (whole, again)):
        assert all(torch.equal(a.model_state[k], b.model_state[k]) for k in a.model_state)
        assert all((a.history[k] == b.history[k]).all() for k in a.history if k != "wall_time")
