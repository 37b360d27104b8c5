"""wdlib.models: shapes, GPT causality/tying/init, ResNet-18 scale invariance, the build() registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from wdlib.models import CNN, GPT, MLP, MODELS, ResNet18, attention_backend, build, flat_parameters

# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("shape", [(5, 40), (5, 1, 40)])
def test_cnn_1d_shapes(shape):
    torch.manual_seed(0)
    model = CNN(1, 10, channels=(8, 16, 16), dim=1)
    assert model(torch.randn(*shape)).shape == (5, 10)


def test_cnn_1d_multichannel():
    assert CNN(3, 4, channels=(8,), dim=1)(torch.randn(2, 3, 40)).shape == (2, 4)


def test_cnn_2d_shapes_digits_and_deep_stacks():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 8)
    assert CNN(1, 10)(x).shape == (4, 10)
    # more stages than 8x8 can halve: pooling stops at size 1 instead of failing
    assert CNN(1, 10, channels=(4, 4, 4, 4, 4))(x).shape == (4, 10)
    assert CNN(1, 10, channels=(4, 8))(torch.randn(4, 8, 8)).shape == (4, 10)  # (N, H, W) with one channel
    assert CNN(3, 7, channels=(4, 8))(torch.randn(2, 3, 16, 16)).shape == (2, 7)


def test_cnn_has_no_batchnorm_and_rejects_bad_input():
    model = CNN(1, 10, channels=(4, 8), dim=1)
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
    assert not any(isinstance(m, norms) for m in model.modules())
    assert sum(isinstance(m, nn.Conv1d) for m in model.modules()) == 4
    with pytest.raises(ValueError, match="expects input"):
        model(torch.randn(2, 1, 8, 8))


def test_resnet18_shapes_and_structure():
    torch.manual_seed(0)
    model = ResNet18(num_classes=10, width=4)
    assert model(torch.randn(3, 3, 16, 16)).shape == (3, 10)
    assert ResNet18(num_classes=5, width=4, in_channels=1)(torch.randn(2, 1, 8, 8)).shape == (2, 5)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 16 + 3  # stem, 8 blocks x 2, 3 shortcut convs
    assert [s[0].conv2.out_channels for s in model.layers] == [4, 8, 16, 32]
    assert [s[0].conv1.stride for s in model.layers] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert all(m.affine for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_gpt_shapes_and_block_size():
    model = GPT(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16)
    idx = torch.randint(0, 50, (3, 8))
    assert model(idx).shape == (3, 8, 50)
    assert model(idx[:, :5]).shape == (3, 5, 50)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.randint(0, 50, (3, 9)))


def test_mlp_still_works():
    assert MLP(40, 16, 2, 10)(torch.zeros(3, 40)).shape == (3, 10)
    assert flat_parameters(MLP(4, 3, 1, 2)).numel() == 4 * 3 + 3 + 3 * 2 + 2


# ---------------------------------------------------------------- GPT


def test_gpt_is_causal():
    torch.manual_seed(0)
    model = GPT(vocab_size=30, block_size=12, n_layer=2, n_head=4, n_embd=32).eval()
    idx = torch.randint(0, 30, (2, 12))
    t = 5
    other = idx.clone()
    other[:, t + 1] = (idx[:, t + 1] + 1) % 30
    with torch.no_grad():
        a, b = model(idx), model(other)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    assert (a[:, t + 1] - b[:, t + 1]).abs().max() > 1e-4


def test_gpt_tied_weights_and_parameter_count():
    model = GPT(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=16, bias=True)
    assert model.lm_head.weight is model.wte.weight
    unique = sum(p.numel() for p in model.parameters())
    assert model.num_parameters(non_embedding=False) == unique
    assert model.num_parameters() == unique - 8 * 16
    # counted once: the tied matrix is 40 x 16
    per_block = 2 * 2 * 16 + (16 * 48 + 48) + (16 * 16 + 16) + (16 * 64 + 64) + (64 * 16 + 16)
    assert unique == 40 * 16 + 8 * 16 + per_block + 2 * 16


def test_gpt_init():
    torch.manual_seed(0)
    n_layer = 4
    model = GPT(vocab_size=64, block_size=16, n_layer=n_layer, n_head=4, n_embd=256, bias=True)
    resid = 0.02 / math.sqrt(2 * n_layer)
    for block in model.blocks:
        for w in (block.attn.proj.weight, block.mlp.proj.weight):
            assert abs(w.std().item() / resid - 1) < 0.03
        for w in (block.attn.qkv.weight, block.mlp.fc.weight):
            assert abs(w.std().item() / 0.02 - 1) < 0.03
    assert abs(model.wte.weight.std().item() / 0.02 - 1) < 0.05
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    biases = [m.bias for m in linears if m.bias is not None]
    assert biases and all(torch.all(b == 0) for b in biases)
    assert all(torch.all(m.weight == 1) for m in model.modules() if isinstance(m, nn.LayerNorm))


def test_gpt_no_bias_by_default():
    model = GPT(vocab_size=10, block_size=4, n_layer=1, n_head=1, n_embd=8)
    assert not any(n.endswith("bias") for n, _ in model.named_parameters())


def test_attention_backend_reports_something():
    text = attention_backend("cpu")
    assert text.endswith("(cpu, float32)")
    assert text.split()[0] in {
        "math",
        "flash_attention",
        "efficient_attention",
        "cudnn_attention",
        "overrideable",
        "unknown",
    }
    assert attention_backend("cpu", dropout=0.1).split()[0] in {"math", "unknown"}


# ---------------------------------------------------------------- scale invariance


def _scale_trainable_(model: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.mul_(0.2 + 4.8 * torch.rand((), generator=gen, dtype=p.dtype))


def test_scale_invariant_resnet18_structure():
    model = ResNet18(num_classes=10, width=4, scale_invariant=True)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == len(convs) == 20
    assert all(any(p is c.weight for c in convs) for p in trainable)
    assert not model.head.weight.requires_grad and not model.head.bias.requires_grad
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == len(convs) and not any(m.affine for m in bns)


def test_scale_invariant_resnet18_logits_unchanged_by_scaling_weights():
    torch.manual_seed(0)
    model = ResNet18(num_classes=10, width=4, scale_invariant=True).double().train()
    x = torch.randn(8, 3, 16, 16, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        before = model(x)
        _scale_trainable_(model, gen)
        after = model(x)
    # equal up to BatchNorm's eps (1e-5 against the batch variance)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-3 * before.abs().max().item())
    with torch.no_grad():  # and equal to float64 rounding with a negligible eps (0 is refused in train mode)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = 1e-30
        before = model(x)
        _scale_trainable_(model, gen)
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-9)


def test_default_resnet18_is_not_scale_invariant_in_its_head():
    torch.manual_seed(0)
    model = ResNet18(num_classes=10, width=4).train()
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        model.head.weight.mul_(3.0)
        after = model(x)
    assert model.head.weight.requires_grad
    assert (after - before).abs().max() > 0.1 * before.abs().max()


# ---------------------------------------------------------------- determinism, validation, registry


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("mlp", dict(in_dim=40, width=8, depth=1, out_dim=10)),
        ("cnn", dict(in_channels=1, num_classes=10, channels=(4, 8), dim=1)),
        ("resnet18", dict(num_classes=10, width=4, scale_invariant=True)),
        ("gpt", dict(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16)),
    ],
)
def test_init_is_deterministic_under_seed(name, kwargs):
    torch.manual_seed(3)
    a = flat_parameters(build(name, **kwargs))
    torch.manual_seed(3)
    b = flat_parameters(build(name, **kwargs))
    torch.manual_seed(4)
    c = flat_parameters(build(name, **kwargs))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_build_registry():
    assert MODELS == ("mlp", "cnn", "convnet", "resnet18", "gpt", "tiedconv", "tiedrnn")
    assert isinstance(build("resnet18", width=4), ResNet18)
    assert isinstance(build("cnn", in_channels=1, num_classes=3), CNN)
    with pytest.raises(ValueError, match="allowed: mlp, cnn, convnet, resnet18, gpt, tiedconv, tiedrnn"):
        build("vgg16")
    with pytest.raises(ValueError, match="'widht'"):
        build("resnet18", widht=4)
    with pytest.raises(ValueError, match="'n_embd'"):
        build("gpt", vocab_size=20, block_size=8, n_layer=1, n_head=2)


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: CNN(0, 10), "in_channels"),
        (lambda: CNN(1, 10, channels=()), "channels"),
        (lambda: CNN(1, 10, channels=(4, 0)), "channels"),
        (lambda: CNN(1, 10, dim=3), "dim"),
        (lambda: ResNet18(width=0), "width"),
        (lambda: ResNet18(num_classes=2.5), "num_classes"),
        (lambda: ResNet18(scale_invariant=1), "scale_invariant"),
        (lambda: GPT(10, 8, 1, 3, 16), "n_embd"),
        (lambda: GPT(10, 0, 1, 2, 16), "block_size"),
        (lambda: GPT(10, 8, 1, 2, 16, dropout=1.0), "dropout"),
        (lambda: GPT(10, 8, True, 2, 16), "n_layer"),
    ],
)
def test_constructor_validation(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_mlp_shape_and_bad_width():
    assert MLP(40, 16, 2, 10)(torch.zeros(3, 40)).shape == (3, 10)
    with pytest.raises(ValueError, match="width"):
        MLP(40, 0, 2, 10)
