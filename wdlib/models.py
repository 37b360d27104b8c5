"""Models for the chapters, each sized by a few numbers so one class serves smoke and full scale. ::

    from wdlib import models
    net = models.build("resnet18", num_classes=10, width=64, scale_invariant=True)

``MODELS`` names what :func:`build` knows: an MLP, a VGG-style CNN without normalization, the CIFAR
ResNet-18 (optionally scale-invariant, as in Andriushchenko et al., arXiv 2310.04415), a nanoGPT-like
GPT, and a convolution and an RNN whose weights are shared over a chosen number of positions or steps.
Each model class names in ``DATA_ARGS`` the constructor arguments its data sets (input size, classes,
vocabulary, context), and :func:`data_args` reads them from a dataset's ``sizes``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._registry import call_checked

__all__ = [
    "MLP",
    "CNN",
    "ConvNet",
    "ResNet18",
    "GPT",
    "TiedConv",
    "TiedRNN",
    "MODELS",
    "attention_backend",
    "attention_logit_max",
    "build",
    "data_args",
    "flat_parameters",
]


def _check_int(name: str, value: object, minimum: int = 1) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")


# --------------------------------------------------------------------------------------------------
# Sizes from the data: each model's DATA_ARGS names the constructor arguments the data sets
# --------------------------------------------------------------------------------------------------

#: How a model reads one constructor argument from a dataset's ``sizes`` (``input_shape`` and
#: ``num_classes`` for classification data, ``vocab_size`` and ``block_size`` for token data).
SizeRule = Callable[[Mapping[str, Any]], int]


def _flat_size(sizes: Mapping[str, Any]) -> int:
    """Values per input sample: the product of ``input_shape``."""
    return int(math.prod(sizes["input_shape"]))


def _channels(sizes: Mapping[str, Any]) -> int:
    """Input channels: the first axis of ``input_shape``, or 1 for samples with a single axis."""
    shape = sizes["input_shape"]
    return int(shape[0]) if len(shape) > 1 else 1


def _leading(sizes: Mapping[str, Any]) -> int:
    """The first axis of ``input_shape`` (channels of images)."""
    return int(sizes["input_shape"][0])


def _spatial(sizes: Mapping[str, Any]) -> int:
    """The last axis of ``input_shape`` (length of a signal, side of an image)."""
    return int(sizes["input_shape"][-1])


def _size(key: str) -> SizeRule:
    """The size named ``key`` as it is."""
    return lambda sizes: sizes[key]


def data_args(name: str, sizes: Mapping[str, Any]) -> dict[str, int]:
    """The constructor arguments of model ``name`` that the data sets, read from the data's ``sizes``.

    Each model class declares them in ``DATA_ARGS`` (argument -> rule); an argument whose size the data
    lacks is left out (the constructor then reports it missing), as is everything for an unknown name.
    ``data_args("mlp", {"input_shape": (1, 8, 8), "num_classes": 10})`` is ``{"in_dim": 64, "out_dim": 10}``.
    """
    out = {}
    for arg, rule in getattr(_REGISTRY.get(name), "DATA_ARGS", {}).items():
        try:
            out[arg] = rule(sizes)
        except KeyError:
            continue
    return out


class MLP(nn.Sequential):
    """``depth`` hidden layers of ``width`` units with ReLU: in_dim -> width -> ... -> out_dim.

    With ``scale_invariant=True`` each hidden layer is a bias-free Linear followed by a LayerNorm
    without affine parameters, so the output does not change when a hidden weight matrix is scaled
    (the setting where the weight norm is set by decay and noise alone; chapter 2, EMA-3).
    Used in chapter 1 on MNIST-1D (40 -> 128 -> 128 -> 10 at smoke scale) and chapter 2.
    """

    DATA_ARGS: ClassVar[dict[str, SizeRule]] = {"in_dim": _flat_size, "out_dim": _size("num_classes")}

    def __init__(
        self, in_dim: int, width: int, depth: int, out_dim: int, bias: bool = True, scale_invariant: bool = False
    ) -> None:
        if not isinstance(scale_invariant, bool):
            raise ValueError(f"scale_invariant must be True or False, got {scale_invariant!r}")
        for name, value in (("in_dim", in_dim), ("width", width), ("out_dim", out_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth must be an integer >= 0, got {depth!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        dims = [in_dim] + [width] * depth
        for a, b in zip(dims[:-1], dims[1:]):
            if scale_invariant:
                layers += [nn.Linear(a, b, bias=False), nn.LayerNorm(b, elementwise_affine=False), nn.ReLU()]
            else:
                layers += [nn.Linear(a, b, bias=bias), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], out_dim, bias=bias))
        super().__init__(*layers)


# --------------------------------------------------------------------------------------------------
# CNN
# --------------------------------------------------------------------------------------------------


class _MaxPoolIfLarge(nn.Module):
    """Max-pool by 2 over every spatial axis, or pass through when an axis is already shorter than 2."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[2:]) < 2:
            return x
        return F.max_pool1d(x, 2) if self.dim == 1 else F.max_pool2d(x, 2)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kernel_size=2, skipped below size 2"


class CNN(nn.Module):
    """A VGG-style convolutional classifier without normalization layers, for 1-D or 2-D inputs.

    Architecture: for each ``c`` in ``channels`` a stage conv3(c)-ReLU-conv3(c)-ReLU-maxpool(2)
    (padding 1, convolutions with bias), then global average pooling over the spatial axes and a
    ``Linear(channels[-1], num_classes)`` head. There is no BatchNorm anywhere, as in the VGG-16
    without BN of Andriushchenko et al. (arXiv 2310.04415, figure 1), so the weight norm matters for
    the function. Any number of stages works on any input size: a max-pool is skipped when a spatial
    axis is already shorter than 2 (8x8 digits with ``channels=(32, 64, 128)`` pool 8 -> 4 -> 2 -> 1;
    a fourth stage would not pool). Weights use PyTorch's default initialization.

    Args:
        in_channels: input channels (1 for MNIST-1D or digits, 3 for CIFAR).
        num_classes: outputs of the head.
        channels: width of each stage; its length is the number of stages.
        dim: 1 for signals, input ``(N, L)`` or ``(N, C, L)`` (Conv1d); 2 for images, input
            ``(N, C, H, W)``, or ``(N, H, W)`` when ``in_channels == 1`` (Conv2d).

    Used in the vision chapters (MNIST-1D at ``dim=1``, digits 8x8 at ``dim=2``) at CPU scale.
    """

    DATA_ARGS: ClassVar[dict[str, SizeRule]] = {"in_channels": _channels, "num_classes": _size("num_classes")}

    def __init__(
        self, in_channels: int, num_classes: int, channels: tuple[int, ...] = (32, 64, 128), dim: int = 2
    ) -> None:
        super().__init__()
        _check_int("in_channels", in_channels)
        _check_int("num_classes", num_classes)
        if not isinstance(channels, (tuple, list)) or len(channels) == 0:
            raise ValueError(f"channels must be a non-empty tuple of integers >= 1, got {channels!r}")
        for c in channels:
            if isinstance(c, bool) or not isinstance(c, int) or c < 1:
                raise ValueError(f"channels must be a non-empty tuple of integers >= 1, got {channels!r}")
        if dim not in (1, 2) or isinstance(dim, bool):
            raise ValueError(f"dim must be 1 or 2, got {dim!r}")
        self.in_channels, self.dim, self.channels = in_channels, dim, tuple(channels)
        conv = nn.Conv1d if dim == 1 else nn.Conv2d
        stages: list[nn.Module] = []
        c_in = in_channels
        for c in self.channels:
            stages.append(
                nn.Sequential(
                    conv(c_in, c, 3, padding=1), nn.ReLU(), conv(c, c, 3, padding=1), nn.ReLU(), _MaxPoolIfLarge(dim)
                )
            )
            c_in = c
        self.features = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        if x.dim() == self.dim + 1 and self.in_channels == 1:
            x = x.unsqueeze(1)
        elif x.dim() != self.dim + 2:
            shape = "(N, L) or (N, C, L)" if self.dim == 1 else "(N, C, H, W)"
            raise ValueError(f"CNN(dim={self.dim}) expects input of shape {shape}, got {tuple(x.shape)}")
        x = self.features(x)
        return self.head(x.mean(dim=tuple(range(2, x.dim()))))


class ConvNet(nn.Module):
    """A small strided convolutional classifier without normalization: conv-ReLU blocks, then a
    flatten and one ``Linear`` head (no pooling).

    Block ``i`` is ``Conv(c_{i-1}, channels[i], kernels[i], stride=strides[i], padding=kernels[i]//2)``
    followed by ReLU. With the defaults on MNIST-1D (length 40): 1 -> 32 (k5) -> 32 (k3, s2) -> 32
    (k3, s2), length 40 -> 40 -> 20 -> 10, head 320 -> 10, 9,610 parameters. It is the CPU stand-in for
    the VGG without BatchNorm of Andriushchenko et al. (arXiv 2310.04415) in chapter 4: no
    normalization, so the weight norm matters for the function, and plain SGD trains it at large
    learning rates.

    Args:
        in_channels: input channels (1 for MNIST-1D).
        num_classes: outputs of the head.
        input_size: the input's spatial size (an int: length for ``dim=1``, side for ``dim=2``).
        channels, kernels, strides: one entry per block (same lengths).
        dim: 1 (Conv1d; input ``(N, L)`` or ``(N, C, L)``) or 2 (Conv2d; ``(N, C, H, W)``).
        norm: ``"none"`` (the default above) or ``"batch"``: each convolution without bias and
            followed by BatchNorm (with affine parameters) before the ReLU, so every convolution
            weight is scale-invariant, as in the BatchNorm ResNets of Loshchilov & Hutter's
            (lr, lambda) grids (chapter 1b, DEC-8).
    """

    DATA_ARGS: ClassVar[dict[str, SizeRule]] = {
        "in_channels": _channels,
        "num_classes": _size("num_classes"),
        "input_size": _spatial,
    }

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        input_size: int,
        channels: tuple[int, ...] = (32, 32, 32),
        kernels: tuple[int, ...] = (5, 3, 3),
        strides: tuple[int, ...] = (1, 2, 2),
        dim: int = 1,
        norm: str = "none",
    ) -> None:
        super().__init__()
        _check_int("in_channels", in_channels)
        _check_int("num_classes", num_classes)
        _check_int("input_size", input_size)
        for name, seq in (("channels", channels), ("kernels", kernels), ("strides", strides)):
            if (
                not isinstance(seq, (tuple, list))
                or not seq
                or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in seq)
            ):
                raise ValueError(f"{name} must be a non-empty tuple of integers >= 1, got {seq!r}")
        if not len(channels) == len(kernels) == len(strides):
            raise ValueError(
                f"channels, kernels and strides must have the same length, got "
                f"{len(channels)}, {len(kernels)}, {len(strides)}"
            )
        if dim not in (1, 2) or isinstance(dim, bool):
            raise ValueError(f"dim must be 1 or 2, got {dim!r}")
        if norm not in ("none", "batch"):
            raise ValueError(f"norm must be 'none' or 'batch', got {norm!r}")
        self.in_channels, self.dim = in_channels, dim
        conv = nn.Conv1d if dim == 1 else nn.Conv2d
        bn = nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d
        layers: list[nn.Module] = []
        c_in, size = in_channels, input_size
        for c, k, st in zip(channels, kernels, strides):
            if norm == "batch":
                layers += [conv(c_in, c, k, stride=st, padding=k // 2, bias=False), bn(c), nn.ReLU()]
            else:
                layers += [conv(c_in, c, k, stride=st, padding=k // 2), nn.ReLU()]
            c_in, size = c, (size + 2 * (k // 2) - k) // st + 1
            if size < 1:
                raise ValueError(f"input_size {input_size} is too small for kernels {kernels} and strides {strides}")
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * size**dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        if x.dim() == self.dim + 1 and self.in_channels == 1:
            x = x.unsqueeze(1)
        elif x.dim() != self.dim + 2:
            raise ValueError(f"ConvNet(dim={self.dim}) expects input with {self.dim + 2} dims, got {tuple(x.shape)}")
        return self.head(self.features(x).flatten(1))


# --------------------------------------------------------------------------------------------------
# ResNet-18
# --------------------------------------------------------------------------------------------------


class _BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), shortcut bn(conv1x1(x)) where the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, affine: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out, affine=affine)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, affine=affine)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out, affine=affine)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """The CIFAR ResNet-18, optionally made scale-invariant in every trainable weight.

    Architecture: a 3x3 stem convolution (stride 1, no max-pool) with BatchNorm and ReLU, four stages
    of two BasicBlocks with widths ``width * (1, 2, 4, 8)`` and strides 1, 2, 2, 2 (1x1 convolution
    plus BatchNorm on the shortcut where the shape changes), global average pooling and a
    ``Linear(8 * width, num_classes)`` head. Convolutions have no bias; every convolution is followed
    by a BatchNorm2d. PyTorch's default initialization.

    ``scale_invariant=False`` (default): BatchNorm2d with a learnable affine, trainable head with bias:
    the "ResNet-18 with BN" of Andriushchenko et al. (arXiv 2310.04415, figures 1 and 3).

    ``scale_invariant=True``: BatchNorm2d(affine=False) after every convolution, shortcut convolutions
    included, and the head frozen at its random initialization (weight and bias with
    ``requires_grad=False``). The trainable parameters are then the convolution weights only, and the
    logits are unchanged when any of them is multiplied by a positive number (in train mode exactly
    up to BatchNorm's eps; in eval mode once the running statistics are re-estimated), so weight decay
    only changes the effective learning rate. Source: the scale-invariant runs of Andriushchenko et
    al. (code tml-epfl/why-weight-decay, ``get_models_scale_inv.py`` with ``learnable_bn=False`` and
    ``freeze_last_layer=True``, which freezes the last layer's weight and bias "to ensure scale
    invariance"). Their network is a pre-activation ResNet-18 with an extra BatchNorm on the input
    and on the shortcut branch and with biased convolutions; ours keeps the post-activation CIFAR
    layout of the default model and drops the conv biases, so each weight tensor is scale-invariant
    on its own. Frozen parameters stay in ``parameters()`` and ``state_dict()``; optimizers skip them
    because their ``grad`` stays ``None``, and ``requires_grad_(True)`` on the whole model would
    unfreeze the head.

    Args:
        num_classes: outputs of the head.
        width: channels of the first stage (64 is the standard ResNet-18; 4 or 8 for CPU smoke runs).
        in_channels: input channels (3 for CIFAR).
        scale_invariant: see above.

    Input ``(N, in_channels, H, W)``, any H, W >= 1 (32x32 at full scale). Used in the vision chapter
    (large-LR SGD, scale-invariant networks and the effective learning rate).
    """

    DATA_ARGS: ClassVar[dict[str, SizeRule]] = {"in_channels": _leading, "num_classes": _size("num_classes")}

    def __init__(
        self, num_classes: int = 10, width: int = 64, in_channels: int = 3, scale_invariant: bool = False
    ) -> None:
        super().__init__()
        _check_int("num_classes", num_classes)
        _check_int("width", width)
        _check_int("in_channels", in_channels)
        _check_bool("scale_invariant", scale_invariant)
        self.scale_invariant = scale_invariant
        affine = not scale_invariant
        self.stem = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width, affine=affine)
        stages: list[nn.Module] = []
        c_in = width
        for mult, stride in zip((1, 2, 4, 8), (1, 2, 2, 2)):
            c_out = width * mult
            stages.append(nn.Sequential(_BasicBlock(c_in, c_out, stride, affine), _BasicBlock(c_out, c_out, 1, affine)))
            c_in = c_out
        self.layers = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, num_classes)
        if scale_invariant:
            self.head.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        out = F.relu(self.bn(self.stem(x)))
        out = self.layers(out)
        return self.head(out.mean(dim=(2, 3)))


# --------------------------------------------------------------------------------------------------
# GPT
# --------------------------------------------------------------------------------------------------


class _CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)  # residual projection
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class _FeedForward(nn.Module):
    def __init__(self, n_embd: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.proj = nn.Linear(4 * n_embd, n_embd, bias=bias)  # residual projection
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class _Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = _CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = _FeedForward(n_embd, dropout, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A nanoGPT-like decoder-only transformer: ``forward(idx)`` gives next-token logits.

    Architecture: token embedding ``wte`` plus learned position embedding ``wpe``, dropout, ``n_layer``
    pre-LayerNorm blocks ``x + attn(ln1(x))``, ``x + mlp(ln2(x))`` (causal multi-head self-attention
    through ``F.scaled_dot_product_attention(..., is_causal=True)``; MLP ``n_embd -> 4 n_embd -> n_embd``
    with exact GELU), a final LayerNorm ``ln_f`` and an LM head ``lm_head`` without bias whose weight
    *is* ``wte.weight`` (tied). Initialization: every Linear and Embedding weight normal with std 0.02,
    the residual projections (``attn.proj`` and ``mlp.proj``) std ``0.02 / sqrt(2 * n_layer)``, biases
    zero, LayerNorm weight 1 and bias 0.

    Source: karpathy/nanoGPT ``model.py``, the code base of the language-model runs of Andriushchenko
    et al. (arXiv 2310.04415): GPT-2 small is ``GPT(50304, 256, 12, 12, 768)`` with ``bias=False``
    (their main runs at context 256; 1024 for the bf16 runs). Parameter names differ from nanoGPT's
    (``blocks.i.attn.qkv`` for ``transformer.h.i.attn.c_attn``, ``proj`` for ``c_proj``, ``fc`` for
    ``c_fc``).

    Args:
        vocab_size: tokens in the vocabulary.
        block_size: the longest context ``forward`` accepts.
        n_layer, n_head, n_embd: depth, heads, width (``n_embd`` divisible by ``n_head``).
        dropout: on embeddings, attention weights and residual branches, in [0, 1).
        bias: biases in Linear and LayerNorm layers.

    Used in the language-model chapter (a few layers of width 64-128 on CPU, GPT-2 small on a GPU).
    """

    DATA_ARGS: ClassVar[dict[str, SizeRule]] = {"vocab_size": _size("vocab_size"), "block_size": _size("block_size")}

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float = 0.0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("vocab_size", vocab_size),
            ("block_size", block_size),
            ("n_layer", n_layer),
            ("n_head", n_head),
            ("n_embd", n_embd),
        ):
            _check_int(name, value)
        if n_embd % n_head:
            raise ValueError(f"n_embd must be divisible by n_head, got n_embd={n_embd}, n_head={n_head}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        _check_bool("bias", bias)
        self.vocab_size, self.block_size, self.n_layer = vocab_size, block_size, n_layer
        self.n_head, self.n_embd, self.dropout = n_head, n_embd, float(dropout)
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(n_embd, n_head, float(dropout), bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        std_resid = 0.02 / math.sqrt(2 * n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=std_resid)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=std_resid)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T, vocab_size)`` for token ids ``idx`` of shape ``(B, T)``, ``T <= block_size``."""
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        T = idx.shape[1]
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def num_parameters(self, non_embedding: bool = True) -> int:
        """Number of parameters, the tied ``wte``/``lm_head`` weight counted once.

        With ``non_embedding=True`` the position embedding is left out; the token embedding stays in
        because it is also the LM head (nanoGPT's convention, the "N" of scaling laws).
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wpe.weight.numel()
        return n


@torch.no_grad()
def attention_logit_max(
    model: nn.Module, idx: torch.Tensor, autocast: Callable[[], contextlib.AbstractContextManager] | None = None
) -> np.ndarray:
    """The largest pre-softmax attention logit of each layer of a :class:`GPT` on the tokens ``idx``.

    The logit of query position ``i`` and key ``j <= i`` in head ``h`` is ``q_i . k_j / sqrt(d_head)``,
    the quantity ``F.scaled_dot_product_attention`` feeds to its softmax (fused kernels never expose
    it). It is recomputed from the output of each block's ``qkv`` projection during one forward
    pass, *inside the same autocast* as training when ``autocast`` (a callable returning the context,
    as the training loop builds it) is given, so under bf16 autocast ``q . k`` is a bfloat16 matmul
    as in training. Returns the maximum over the batch, heads and causal positions, one value per
    layer, as float64. Growing logits are the attention-entropy collapse that precedes loss spikes in
    large-LR transformer training (Wortsman et al., arXiv 2309.14322; Dehghani et al., arXiv
    2302.05442). Used by chapter 5 (claim LLM-6).
    """
    if not isinstance(model, GPT):
        raise ValueError(f"attention_logit_max needs a wdlib.models.GPT, got {type(model).__name__}")
    found: list[float] = []

    def hook(module: nn.Module, inputs: tuple, out: torch.Tensor, *, attn: _CausalSelfAttention) -> None:
        B, T, C3 = out.shape
        C, H = C3 // 3, attn.n_head
        q, k, _ = (t.view(B, T, H, C // H).transpose(1, 2) for t in out.split(C, dim=2))
        logits = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // H))
        causal = torch.ones(T, T, dtype=torch.bool, device=out.device).tril()
        found.append(float(logits.float().masked_fill(~causal, float("-inf")).amax()))

    handles = [block.attn.qkv.register_forward_hook(functools.partial(hook, attn=block.attn)) for block in model.blocks]
    was_training = model.training
    model.eval()
    try:
        with autocast() if autocast is not None else contextlib.nullcontext():
            model(idx)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return np.asarray(found, dtype=np.float64)


def attention_backend(
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    head_dim: int = 64,
    dropout: float = 0.0,
) -> str:
    """The kernel ``F.scaled_dot_product_attention(..., is_causal=True)`` would use, e.g.
    ``"flash_attention (cpu, float32)"``.

    Asks torch's own dispatcher (``torch._fused_sdp_choice``, private) about a small causal
    self-attention on ``device`` (default: CUDA when available, else CPU) with ``dtype`` (pass the
    autocast dtype, e.g. ``torch.bfloat16``, for mixed-precision runs), ``head_dim`` (``n_embd //
    n_head``) and ``dropout``. The answer is one of ``math``, ``flash_attention``,
    ``efficient_attention``, ``cudnn_attention``, ``overrideable``; on CPU recent torch has a fused
    "flash" kernel of its own (torch 2.13 picks it for float32 without dropout, math with dropout). On CUDA the global
    ``torch.backends.cuda.*_sdp_enabled()`` switches are appended. If torch offers no such query the
    answer starts with ``unknown``. Recorded with each language-model run because the kernel is a known
    confounder of divergence in nanoGPT reproductions.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    dtype_name = str(dtype).removeprefix("torch.")
    try:
        from torch.nn.attention import SDPBackend

        q = torch.zeros(1, 1, 8, head_dim, device=dev, dtype=dtype)
        name = SDPBackend(int(torch._fused_sdp_choice(q, q, q, None, float(dropout), True))).name.lower()
    except Exception:  # a private API: absent or refusing on some builds and devices
        name = "unknown"
    text = f"{name} ({dev.type}, {dtype_name})"
    if dev.type == "cuda":
        cuda = torch.backends.cuda
        switches = [
            ("flash", cuda.flash_sdp_enabled),
            ("mem_efficient", cuda.mem_efficient_sdp_enabled),
            ("math", cuda.math_sdp_enabled),
            ("cudnn", getattr(cuda, "cudnn_sdp_enabled", None)),
        ]
        enabled = [label for label, flag in switches if flag is not None and flag()]
        text += f"; enabled: {', '.join(enabled) or 'none'}"
    return text


# --------------------------------------------------------------------------------------------------
# Tied layers: the same weights used at several positions or time steps (chapter 1b, DEC-5)
# --------------------------------------------------------------------------------------------------


def _check_tie(tie: object, uses: int, what: str) -> int:
    _check_int("tie", tie)
    if uses % int(tie):  # type: ignore[operator]
        divisors = [d for d in range(1, uses + 1) if uses % d == 0]
        raise ValueError(f"tie must divide the number of {what} ({uses}); allowed: {divisors}, got {tie!r}")
    return int(tie)  # type: ignore[call-overload]


class TiedConv(nn.Module):
    """A 1-D convolution whose kernel is shared by groups of ``tie`` consecutive positions, then a head.

    The layer sees ``input_size`` positions (stride 1, padding ``kernel // 2``, ``kernel`` odd). Positions
    ``[g*tie, (g+1)*tie)`` use kernel ``g``, so each kernel weight is used ``tie`` times per sample:
    ``tie=1`` is a locally connected layer (no sharing), ``tie=input_size`` an ordinary ``Conv1d``
    (every position shares one kernel). In between, the layer has ``input_size // tie`` kernels of
    ``channels x in_channels x kernel`` weights (``tied.weight``, ``(groups, channels, in_channels*kernel)``)
    and ``channels`` biases per kernel (``tied.bias``, stored flat as ``(groups*channels,)`` so that
    :func:`wdlib.params.decay_groups` treats it as the bias it is). Output: ReLU, flatten,
    ``Linear(channels * input_size, num_classes)`` (``head``,
    whose weights are used once). Kernels start from ``Conv1d``'s default initialization (uniform,
    bound ``1/sqrt(in_channels*kernel)``), the same for every ``tie``.

    The sharing factor is the quantity of DEC-5: under Adam+L2 a weight used ``tie`` times collects
    ``tie`` gradient terms, a larger second moment, and so (the claim) a smaller effective decay.
    """

    DATA_ARGS: ClassVar[dict[str, SizeRule]] = {
        "in_channels": _channels,
        "num_classes": _size("num_classes"),
        "input_size": _spatial,
    }

    def __init__(
        self, in_channels: int, num_classes: int, input_size: int, channels: int = 16, kernel: int = 5, tie: int = 1
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("input_size", input_size),
            ("channels", channels),
            ("kernel", kernel),
        ):
            _check_int(name, value)
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (the output keeps the input's length), got {kernel!r}")
        self.tie = _check_tie(tie, input_size, "positions (input_size)")
        self.in_channels, self.kernel, self.positions = in_channels, kernel, input_size
        groups = input_size // self.tie
        bound = 1 / math.sqrt(in_channels * kernel)
        self.tied = nn.Module()
        self.tied.weight = nn.Parameter(torch.empty(groups, channels, in_channels * kernel).uniform_(-bound, bound))
        self.tied.bias = nn.Parameter(torch.empty(groups * channels).uniform_(-bound, bound))
        self.head = nn.Linear(channels * input_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of inputs ``(N, L)`` or ``(N, C, L)``."""
        if x.dim() == 2 and self.in_channels == 1:
            x = x.unsqueeze(1)
        if x.dim() != 3 or x.shape[1] != self.in_channels or x.shape[2] != self.positions:
            raise ValueError(f"TiedConv expects input (N, {self.in_channels}, {self.positions}), got {tuple(x.shape)}")
        pad = self.kernel // 2
        cols = F.pad(x, (pad, pad)).unfold(2, self.kernel, 1)  # (N, C_in, P, k)
        cols = cols.permute(2, 0, 1, 3).reshape(self.positions, x.shape[0], -1)  # (P, N, C_in*k)
        w = self.tied.weight.repeat_interleave(self.tie, dim=0)  # (P, C, C_in*k): one kernel per position
        b = self.tied.bias.view(w.shape[0] // self.tie, -1).repeat_interleave(self.tie, dim=0)  # (P, C)
        out = torch.baddbmm(b.unsqueeze(1), cols, w.transpose(1, 2))  # (P, N, C)
        return self.head(torch.relu(out).permute(1, 2, 0).flatten(1))


class TiedRNN(nn.Module):
    """An Elman RNN over the input cut into ``input_size // chunk`` steps, its weights tied over ``tie`` steps.

    Step ``t`` reads ``x_t`` (``chunk`` consecutive values) and computes
    ``h_t = tanh(W_x[g] x_t + W_h[g] h_{t-1} + b[g])`` with ``g = t // tie`` and ``h_0 = 0``; the head
    reads the last state, ``Linear(hidden, num_classes)``. ``tie = steps`` is the ordinary RNN (one set
    of weights used at every step, gradients summed over the unrolled time steps), ``tie=1`` the
    unshared network of the same shape with a separate ``W_x, W_h, b`` per step. Parameters ``w_x``
    ``(groups, hidden, chunk)``, ``w_h`` ``(groups, hidden, hidden)``, ``bias`` ``(groups*hidden,)`` (flat,
    so that :func:`wdlib.params.decay_groups` treats it as a bias; ``b[g]`` is its ``g``-th slice),
    initialized as ``nn.RNN`` does (uniform, bound ``1/sqrt(hidden)``). Chapter 1b, DEC-5.
    """

    DATA_ARGS: ClassVar[dict[str, SizeRule]] = {"input_size": _flat_size, "num_classes": _size("num_classes")}

    def __init__(self, input_size: int, num_classes: int, hidden: int = 32, chunk: int = 4, tie: int = 1) -> None:
        super().__init__()
        for name, value in (
            ("input_size", input_size),
            ("num_classes", num_classes),
            ("hidden", hidden),
            ("chunk", chunk),
        ):
            _check_int(name, value)
        if input_size % chunk:
            raise ValueError(f"chunk must divide input_size ({input_size}), got {chunk!r}")
        self.steps, self.chunk = input_size // chunk, chunk
        self.tie = _check_tie(tie, self.steps, "time steps (input_size // chunk)")
        groups = self.steps // self.tie
        bound = 1 / math.sqrt(hidden)
        self.w_x = nn.Parameter(torch.empty(groups, hidden, chunk).uniform_(-bound, bound))
        self.w_h = nn.Parameter(torch.empty(groups, hidden, hidden).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups * hidden).uniform_(-bound, bound))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of inputs ``(N, input_size)``."""
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.steps * self.chunk:
            raise ValueError(f"TiedRNN expects {self.steps * self.chunk} input values per sample, got {x.shape[1]}")
        xs = x.reshape(x.shape[0], self.steps, self.chunk)
        h = x.new_zeros(x.shape[0], self.w_h.shape[1])
        bias = self.bias.view(self.w_h.shape[0], -1)
        for t in range(self.steps):
            g = t // self.tie
            h = torch.tanh(torch.addmm(bias[g], xs[:, t], self.w_x[g].T) + h @ self.w_h[g].T)
        return self.head(h)


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "convnet": ConvNet,
    "resnet18": ResNet18,
    "gpt": GPT,
    "tiedconv": TiedConv,
    "tiedrnn": TiedRNN,
}
MODELS: tuple[str, ...] = tuple(_REGISTRY)


def build(name: str, **kwargs: object) -> nn.Module:
    """The model ``name`` (one of ``MODELS``) constructed from ``kwargs``.

    Raises ``ValueError`` for an unknown name (listing the allowed ones), for a keyword the
    constructor does not take or a required one that is missing (naming it), and for any value the
    constructor rejects. Used by the chapters and the CLI to build a model from a configuration.
    """
    return call_checked("model", name, _REGISTRY, kwargs, quote_names=False)


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """All parameters of ``model`` concatenated into one detached vector."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])
