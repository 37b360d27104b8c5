"""Data for the chapters: datasets as tensors, fixed subsets, and stateless seeded batches.

Offline (smoke scale, no network needed):

- MNIST-1D (Greydanus 2020, arXiv:2011.14439; package ``mnist1d``), generated procedurally with
  ``mnist1d.data.make_dataset``; its download path is never called. 40-sample 1-D signals, 10 classes.
- scikit-learn's ``load_digits`` (bundled with scikit-learn): 1,797 8x8 images, 10 classes.
- ``stdlib_chars``: a character-level corpus built from this Python's own standard-library sources.

Full scale (read from disk; a clear error names the offline alternative when the files are missing):

- CIFAR-10 (Krizhevsky 2009), the official python-pickle batches.
- OpenWebText-style GPT-2 token files (``train.bin``/``val.bin`` as nanoGPT's ``prepare.py`` writes them).

Both kinds of data, :class:`Dataset` (classification) and :class:`TokenDataset` (a token stream), answer
one protocol, so the training loop never asks which it has:

- ``ds.batch(step, seed, *, batch_size, device=None, rank=0, world_size=1)``: the training batch of
  ``step``, a pure function of ``(seed, step)``, so a run resumed from a checkpoint at step ``t`` sees
  bit-identical batches, and the ranks of a data-parallel run each take a contiguous shard of the same
  global batch (a token dataset's window length is its bound ``block_size``);
- ``ds.eval_sets(*, batch_size, count, device=None)``: ``{"val": f, "train": f}``, fixed evaluation batches;
- ``ds.sizes``: what sizes a model to the data (:func:`wdlib.models.data_args`);
- ``ds.for_device(device)``: the dataset as a run on that device reads it.

``load(name, **kwargs)`` picks a dataset by name.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import operator
import os
import pickle
import platform
import random
import shutil
import sys
import sysconfig
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._extras import require
from ._registry import call_checked

__all__ = [
    "DATASETS",
    "DataNotFoundError",
    "Dataset",
    "EvalSet",
    "TokenDataset",
    "batch_indices",
    "batches",
    "check_vocab",
    "cifar10",
    "digits",
    "encode_gpt2",
    "load",
    "mnist1d",
    "openwebtext",
    "spurious",
    "stdlib_chars",
    "subset",
    "token_file",
    "with_label_noise",
    "write_tokens",
]

_MAX_SEED = 2**32  # seeds and steps live in [0, 2**32): the generator seeds below stay within 64 bits


EVAL_CHUNK = 1024  # samples per evaluation batch of classification data
EVAL_TRAIN_SAMPLES = 4096  # training samples a run evaluates (the first ones: the split is in a seeded order)


#: An evaluation set; called, it gives a fresh iterator of ``(x, y)`` batches (see ``Dataset.eval_sets``).
EvalSet = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]


class DataNotFoundError(FileNotFoundError):
    """A full-scale dataset is not on disk and could not be downloaded; the message names the offline fallback."""


# ----------------------------------------------------------------------------------------------- checks


def _int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in [lo, hi), or a ValueError that names ``name``."""
    if isinstance(value, bool):
        ok = False
    else:
        try:
            value = operator.index(value)
            ok = True
        except TypeError:
            ok = False
    if not ok or value < lo or (hi is not None and value >= hi):
        bound = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi - 1}]"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return value


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def _shard(name: str, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """The [start, stop) of ``rank``'s contiguous shard of a global batch of ``batch_size``."""
    world_size = _int("world_size", world_size, 1)
    rank = _int("rank", rank, 0, world_size)
    if batch_size % world_size:
        raise ValueError(f"{name} ({batch_size}) must be divisible by world_size ({world_size})")
    per = batch_size // world_size
    return rank * per, (rank + 1) * per


# ----------------------------------------------------------------------------------------------- batching


@functools.lru_cache(maxsize=4)
def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices (int64, CPU) of the global batch at ``step`` over ``n`` training samples, without state.

    With ``k = n // batch_size`` full batches per epoch (the incomplete last batch is dropped), step ``step``
    falls in epoch ``e = step // k`` and is batch ``b = step % k`` of it:
    ``perm_e = torch.randperm(n, generator=Generator().manual_seed(seed * 1_000_003 + e))`` and the batch is
    ``perm_e[b * batch_size:(b + 1) * batch_size]``. Each epoch therefore visits every index at most once,
    and a run resumed at ``step`` gets the same batches bit for bit. The last permutation is cached.

    Used by every chapter's training loop (resumable and data-parallel runs).
    """
    n = _int("n", n, 1)
    batch_size = _int("batch_size", batch_size, 1, n + 1)
    step = _int("step", step, 0)
    seed = _int("seed", seed, 0, _MAX_SEED)
    per_epoch = n // batch_size
    epoch, b = divmod(step, per_epoch)
    return _epoch_permutation(n, seed, epoch)[b * batch_size : (b + 1) * batch_size].clone()


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, steps: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` minibatches drawn by reshuffling each epoch with ``generator`` (indices on x's device).

    Stateful (the generator advances); ``Dataset.batch`` is the stateless, resumable alternative.
    """
    n = x.shape[0]
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size must be in [1, {n}], got {batch_size!r}")
    per_epoch = n // batch_size
    done = 0
    while done < steps:
        perm = torch.randperm(n, generator=generator).to(x.device)
        for b in range(min(per_epoch, steps - done)):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            yield x[idx], y[idx]
            done += 1


# ----------------------------------------------------------------------------------------------- classification


@dataclass(frozen=True)
class Dataset:
    """Train and test tensors of a classification task: inputs ``x_*`` (float), labels ``y_*`` (int64)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    noisy: torch.Tensor | None = None  # bool mask of training samples whose label was replaced (with_label_noise)

    @property
    def input_dim(self) -> int:
        return int(self.x_train[0].numel())

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input sample (``x_train.shape[1:]``)."""
        return tuple(int(n) for n in self.x_train.shape[1:])

    @property
    def sizes(self) -> dict[str, Any]:
        """What sizes a model to this data (``input_shape`` and ``num_classes``; see :func:`wdlib.models.data_args`)."""
        return {"input_shape": self.input_shape, "num_classes": self.num_classes}

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> Dataset:
        """A copy on ``device``; ``dtype`` applies to the inputs only."""

        def cast(x: torch.Tensor) -> torch.Tensor:
            return x.to(device=device, dtype=dtype) if dtype is not None and x.is_floating_point() else x.to(device)

        return Dataset(
            self.name,
            cast(self.x_train),
            self.y_train.to(device),
            cast(self.x_test),
            self.y_test.to(device),
            self.num_classes,
            self.noisy.to(device) if self.noisy is not None else None,
        )

    def for_device(self, device: str | torch.device) -> Dataset:
        """The dataset as a run on ``device`` reads it: itself on the CPU, else a copy there (:meth:`to`), so
        batches are gathered by indexing on the device."""
        return self if torch.device(device).type == "cpu" else self.to(device)

    def batch(
        self,
        step: int,
        seed: int,
        *,
        batch_size: int,
        device: str | torch.device | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of ``rank``'s shard of the global training batch at ``step``, moved to ``device`` if given.

        The global batch is ``batch_indices(len(x_train), batch_size, step, seed)``; rank ``r`` of
        ``world_size`` takes its ``r``-th contiguous slice of ``batch_size // world_size`` samples, so the
        ranks' shards, concatenated in rank order, are the global batch. Gathered by tensor indexing.
        The signature is :class:`TokenDataset`'s: one training loop serves both kinds of data.
        """
        start, stop = _shard("batch_size", _int("batch_size", batch_size, 1), rank, world_size)
        idx = batch_indices(self.x_train.shape[0], batch_size, step, seed)[start:stop].to(self.x_train.device)
        x, y = self.x_train[idx], self.y_train[idx]
        return (x, y) if device is None else (x.to(device), y.to(device))

    def eval_sets(self, *, batch_size: int, count: int, device: str | torch.device | None = None) -> dict[str, EvalSet]:
        """The evaluation sets of a run: ``{"val": f, "train": f}``, each ``f()`` a fresh iterator of ``(x, y)``.

        ``val`` is the whole test split, ``train`` the first ``EVAL_TRAIN_SAMPLES`` (4,096) training samples,
        both in order in chunks of ``EVAL_CHUNK`` (1,024) (:meth:`eval_batches`), moved to ``device`` if given.
        They are fixed samples: ``batch_size`` and ``count`` size the sampled windows of token data only.
        """

        def chunks(split: str, limit: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for x, y in self.eval_batches(split, EVAL_CHUNK, limit):
                yield (x, y) if device is None else (x.to(device), y.to(device))

        return {"val": lambda: chunks("test", None), "train": lambda: chunks("train", EVAL_TRAIN_SAMPLES)}

    def eval_batches(
        self, split: str = "test", batch_size: int = EVAL_CHUNK, limit: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x, y)`` chunks of ``batch_size`` over the ``split`` ("test" or "train"), in order.

        ``limit`` caps the number of samples evaluated (the first ``limit``); ``None`` takes them all.
        """
        if split not in ("test", "train"):
            raise ValueError(f"split must be 'test' or 'train', got {split!r}")
        x, y = (self.x_test, self.y_test) if split == "test" else (self.x_train, self.y_train)
        batch_size = _int("batch_size", batch_size, 1)
        n = x.shape[0] if limit is None else min(_int("limit", limit, 1), x.shape[0])
        for i in range(0, n, batch_size):
            j = min(i + batch_size, n)
            yield x[i:j], y[i:j]


def subset(dataset: Dataset, size: int, seed: int) -> Dataset:
    """The first ``size`` training samples of a permutation fixed by ``seed``; the test split is kept whole.

    ``perm = torch.randperm(N, generator=Generator().manual_seed(seed))`` and the subset is
    ``x_train[perm[:size]]``, so with one seed a smaller subset is contained in every larger one, and all
    sizes share one test set (the dataset-size sweeps of SCALE-1, the scaling chapter).
    """
    n = dataset.x_train.shape[0]
    size = _int("size", size, 1, n + 1)
    seed = _int("seed", seed, 0, _MAX_SEED)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].to(dataset.x_train.device)
    return Dataset(
        f"{dataset.name}[{size} of {n}, seed {seed}]",
        dataset.x_train[idx],
        dataset.y_train[idx],
        dataset.x_test,
        dataset.y_test,
        dataset.num_classes,
        dataset.noisy[idx] if dataset.noisy is not None else None,
    )


def with_label_noise(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """A copy whose training labels are wrong for ``round(fraction * N)`` samples; the test split stays clean.

    The samples are the first ``k`` of ``torch.randperm(N)`` under a generator seeded by ``seed``; each
    gets a class drawn uniformly from the ``num_classes - 1`` wrong ones (so exactly ``k`` labels are
    wrong). ``noisy`` marks them, for measuring how much of the noise a model memorized. Label noise
    gives a small, easy task the overfitting that CIFAR-10 without augmentation has in the
    overparameterized-regime chapter (Andriushchenko et al., arXiv 2310.04415, train on clean labels).
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ValueError(f"fraction must be a number in [0, 1), got {fraction!r}")
    seed = _int("seed", seed, 0, _MAX_SEED)
    if dataset.noisy is not None:
        raise ValueError("the dataset already has label noise; apply with_label_noise to the clean dataset once")
    n = dataset.x_train.shape[0]
    k = int(round(fraction * n))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[:k]
    shift = torch.randint(1, dataset.num_classes, (k,), generator=g)
    y = dataset.y_train.clone()
    dev = y.device
    y[idx.to(dev)] = (y[idx.to(dev)] + shift.to(dev)) % dataset.num_classes
    noisy = torch.zeros(n, dtype=torch.bool, device=dev)
    noisy[idx.to(dev)] = True
    return Dataset(
        f"{dataset.name}[{fraction:g} label noise, seed {seed}]",
        dataset.x_train,
        y,
        dataset.x_test,
        dataset.y_test,
        dataset.num_classes,
        noisy,
    )


@functools.lru_cache(maxsize=8)
def _mnist1d_arrays(num_samples: int, seed: int) -> tuple[np.ndarray, ...]:
    mnist1d_data = require("mnist1d.data", purpose="the MNIST-1D dataset")
    get_dataset_args, make_dataset = mnist1d_data.get_dataset_args, mnist1d_data.make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    py_state, np_state = random.getstate(), np.random.get_state()
    try:  # make_dataset reseeds the global RNGs; put them back afterwards
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return (
        d["x"].astype(np.float32),
        d["y"].astype(np.int64),
        d["x_test"].astype(np.float32),
        d["y_test"].astype(np.int64),
    )


def mnist1d(num_samples: int = 5000, seed: int = 42) -> Dataset:
    """MNIST-1D generated offline: ``num_samples`` signals (80% train, 20% test), standardized.

    ``seed`` fixes the generator (42 is the package's default and the published dataset's).
    Source: Greydanus, arXiv:2011.14439. Used in chapter 1 (``notebooks/01_l2_vs_decoupled.ipynb``).
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 20:
        raise ValueError(f"num_samples must be an integer >= 20, got {num_samples!r}")
    x, y, xt, yt = _mnist1d_arrays(num_samples, seed)
    return Dataset(
        "mnist1d",
        torch.from_numpy(x.copy()),
        torch.from_numpy(y.copy()),
        torch.from_numpy(xt.copy()),
        torch.from_numpy(yt.copy()),
        num_classes=10,
    )


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    load_digits = require("sklearn.datasets", purpose="the digits dataset").load_digits

    d = load_digits()
    return d.data.astype(np.float64), d.target.astype(np.int64)


def digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 8x8 digits (offline), as (N, 1, 8, 8) float32 images, split by ``seed``, standardized.

    ``perm = numpy.random.default_rng(seed).permutation(1797)``; the first ``round(1797 * test_fraction)``
    indices are the test set, the rest the training set. Inputs become ``(x - mean) / std`` with ``mean`` and
    ``std`` the scalar pixel statistics of the training set (per channel; one channel), so rarely-lit border
    pixels are not blown up as per-pixel scaling would. Global RNGs are left alone.
    Source: UCI optical digits (Alpaydin & Kaynak 1998), bundled with scikit-learn. The offline stand-in for
    CIFAR-10 at smoke scale (the scaling and overparameterized chapters).
    """
    seed = _int("seed", seed, 0, _MAX_SEED)
    test_fraction = _fraction("test_fraction", test_fraction)
    x, y = _digits_arrays()
    n = x.shape[0]
    n_test = round(n * test_fraction)
    if not 0 < n_test < n:
        raise ValueError(f"test_fraction={test_fraction} leaves an empty split of the {n} digits")
    perm = np.random.default_rng(seed).permutation(n)
    test, train = perm[:n_test], perm[n_test:]
    mean, std = x[train].mean(), x[train].std()

    def images(idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((x[idx] - mean) / std).astype(np.float32).reshape(-1, 1, 8, 8))

    return Dataset(
        "digits", images(train), torch.from_numpy(y[train]), images(test), torch.from_numpy(y[test]), num_classes=10
    )


# ----------------------------------------------------------------------------------------------- spurious


def spurious(
    num_train: int = 500,
    num_test: int = 2000,
    agreement: float = 0.95,
    test_agreement: float | None = None,
    causal_noise: float = 1.0,
    spurious_noise: float = 0.25,
    noise_dims: int = 20,
    seed: int = 0,
    test_draw: int = 0,
) -> Dataset:
    """A two-class task with a causal feature and a spurious one that agrees with the label only in training.

    Labels ``y`` are fair coin flips, ``s = 2y - 1``. Feature 0 is causal, ``x_c = s + causal_noise * e``
    (the same rule in every split). Feature 1 is spurious, ``x_s = a + spurious_noise * e`` with ``a = s``
    with probability ``agreement`` in the training split (``test_agreement`` in the test split, default the
    same: an in-distribution test) and ``a = -s`` otherwise. Features ``2 .. 1 + noise_dims`` are pure
    ``N(0, 1)`` noise. With the defaults the spurious feature alone is right on 95% of the training
    samples and the causal one on about 84% (``Phi(1)``), so training rewards both; a test split with
    ``test_agreement=0.5`` (the spurious feature independent of the label) is the out-of-distribution
    test of DEC-4 (chapter 1b), where only the causal feature helps.

    The training split is drawn from a generator seeded by ``seed``, the test split from another, so
    splits with different ``test_agreement`` share the same labels, causal values and noise, and differ
    only in the spurious feature (a paired comparison); the training split never changes with it.
    ``test_draw`` picks another, independent draw of the test split (same rule, same training split):
    chapter 1b chooses lambda on draw 0 and measures out of distribution on draw 1, so the choice
    never sees the noise it is judged on.
    """
    num_train = _int("num_train", num_train, 2)
    num_test = _int("num_test", num_test, 2)
    noise_dims = _int("noise_dims", noise_dims, 0)
    seed = _int("seed", seed, 0, _MAX_SEED // 2)
    test_draw = _int("test_draw", test_draw, 0, _MAX_SEED)
    for name, value in (("agreement", agreement), ("test_agreement", test_agreement)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1
        ):
            raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    test_agreement = agreement if test_agreement is None else test_agreement
    for name, value in (("causal_noise", causal_noise), ("spurious_noise", spurious_noise)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")

    def split(n: int, agree: float, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        # torch's CPU generator keeps 32 bits of its seed: further test draws get theirs from a SeedSequence
        first = 2 * seed + stream
        g = torch.Generator().manual_seed(
            first
            if not (stream and test_draw)
            else int(np.random.SeedSequence([seed, stream, test_draw]).generate_state(1)[0])
        )
        y = torch.randint(0, 2, (n,), generator=g)
        sign = 2.0 * y - 1.0
        flip = torch.rand(n, generator=g) >= agree
        e = torch.randn(n, 2 + noise_dims, generator=g)
        x = e.clone()
        x[:, 0] = sign + causal_noise * e[:, 0]
        x[:, 1] = torch.where(flip, -sign, sign) + spurious_noise * e[:, 1]
        return x, y

    x, y = split(num_train, agreement, 0)
    xt, yt = split(num_test, test_agreement, 1)
    return Dataset(f"spurious[agreement {agreement:g}, test {test_agreement:g}]", x, y, xt, yt, num_classes=2)


# ----------------------------------------------------------------------------------------------- CIFAR-10

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR10_MD5: str | None = "c58f30108f718f92721af3b95e74349a"  # of the official archive
_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # per-channel statistics of the 50,000 training images, in [0, 1]
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_DOWNLOAD_TIMEOUT_S = 10.0


def _cifar10_dir(root: Path) -> Path:
    """``root/cifar-10-batches-py``, or ``root`` itself when it already holds the batches."""
    return root if (root / "test_batch").is_file() and not (root / _CIFAR10_DIR).is_dir() else root / _CIFAR10_DIR


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive without letting a member escape ``dest`` or create links/devices."""
    with tarfile.open(archive, "r:*") as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.12, and 3.8.17+/3.9.17+/3.10.12+/3.11.4+
            tar.extractall(dest, filter="data")
            return
        root = dest.resolve()
        for m in tar.getmembers():
            target = (dest / m.name).resolve()
            if not (m.isfile() or m.isdir()) or os.path.isabs(m.name) or root not in (target, *target.parents):
                raise RuntimeError(f"refusing to extract {m.name!r} from {archive}: unsafe tar member")
        tar.extractall(dest)


def _download_cifar10(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz"
    part = archive.with_suffix(".gz.part")
    try:
        with urllib.request.urlopen(CIFAR10_URL, timeout=_DOWNLOAD_TIMEOUT_S) as resp, open(part, "wb") as f:
            shutil.copyfileobj(resp, f)
    except (urllib.error.URLError, OSError) as err:
        part.unlink(missing_ok=True)
        raise DataNotFoundError(
            f"CIFAR-10 is full-scale data and could not be downloaded from {CIFAR10_URL} ({err}); "
            f"run with scale='smoke', which uses MNIST-1D/digits offline, or place the official python batches "
            f"under {root / _CIFAR10_DIR}"
        ) from err
    if _CIFAR10_MD5 is not None:
        digest = hashlib.md5(part.read_bytes()).hexdigest()
        if digest != _CIFAR10_MD5:
            part.unlink(missing_ok=True)
            raise RuntimeError(
                f"CIFAR-10 download from {CIFAR10_URL} is corrupt: md5 {digest}, expected {_CIFAR10_MD5}"
            )
    os.replace(part, archive)
    _safe_extract(archive, root)


def _read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")  # trusted format: the official CIFAR-10 python batches
    try:
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a CIFAR-10 python batch (needs b'data' and b'labels')") from err
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: expected data (N, 3072) and N labels, got {data.shape} and {labels.shape}")
    if labels.size and not 0 <= labels.min() <= labels.max() <= 9:
        raise ValueError(f"{path}: labels must lie in 0..9")
    return data, labels


def _cifar10_images(data: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(data).reshape(-1, 3, 32, 32).to(torch.float32).div_(255.0)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def cifar10(root: str | os.PathLike[str], download: bool = False) -> Dataset:
    """CIFAR-10 from the official python batches: (N, 3, 32, 32) float32, normalized per channel.

    Reads ``root/cifar-10-batches-py/data_batch_1..5`` (50,000 training images) and ``test_batch`` (10,000),
    each a pickled dict with ``b"data"`` (uint8, N x 3072, channel-major RGB) and ``b"labels"``. They are
    loaded with ``pickle.load(f, encoding="bytes")``: pickle can run code, so only read files from the
    official archive (or ones you wrote). Inputs become ``(x / 255 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]``.
    With ``download=True`` and files missing, fetches ``CIFAR10_URL`` (10 s socket timeout), checks its md5
    and extracts it safely. Missing files without a network raise ``DataNotFoundError`` (a
    ``FileNotFoundError``) naming the offline alternative. Not cached: the training set is 600 MB as float32.
    Source: Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny Images". Full scale of the
    scaling and overparameterized chapters.
    """
    root = Path(root)
    folder = _cifar10_dir(root)
    missing = [name for name in _CIFAR10_FILES if not (folder / name).is_file()]
    if missing and download:
        _download_cifar10(root)
        folder = _cifar10_dir(root)
        missing = [name for name in _CIFAR10_FILES if not (folder / name).is_file()]
    if missing:
        raise DataNotFoundError(
            f"CIFAR-10 is full-scale data; its python batches ({', '.join(missing)}) were not found at {folder}. "
            f"Run with scale='smoke', which uses MNIST-1D/digits offline, or call cifar10({str(root)!r}, "
            f"download=True) on a machine with a network"
        )
    train = [_read_cifar10_batch(folder / name) for name in _CIFAR10_FILES[:-1]]
    xt, yt = _read_cifar10_batch(folder / "test_batch")
    x = _cifar10_images(np.concatenate([d for d, _ in train]))
    y = torch.from_numpy(np.concatenate([lab for _, lab in train]))
    return Dataset("cifar10", x, y, _cifar10_images(xt), torch.from_numpy(yt), num_classes=10)


# ----------------------------------------------------------------------------------------------- language


@dataclass(frozen=True, eq=False)
class TokenDataset:
    """A token stream split into ``train`` and ``val`` (1-D int64 tensors, or uint16 memmaps of token files).

    ``block_size`` is the length of the windows a run trains on (None until bound with
    :meth:`with_block_size`; :func:`wdlib.components.build_data` binds the run's). :meth:`batch` and
    :meth:`eval_sets` read it, so they take the same arguments as :class:`Dataset`'s.
    """

    name: str
    train: torch.Tensor | np.ndarray
    val: torch.Tensor | np.ndarray
    vocab_size: int
    meta: dict = field(default_factory=dict)
    block_size: int | None = None

    def _split(self, split: str) -> torch.Tensor | np.ndarray:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return self.train if split == "train" else self.val

    def with_block_size(self, block_size: int) -> TokenDataset:
        """The same tokens (shared, not copied) with windows of ``block_size`` tokens for :meth:`batch` and
        :meth:`eval_sets`."""
        return dataclasses.replace(self, block_size=_int("block_size", block_size, 1))

    def _block(self) -> int:
        """The bound ``block_size``, or a ValueError saying how to bind one."""
        if self.block_size is None:
            raise ValueError(
                f"{self.name} has no block_size: bind the window length with "
                f"with_block_size(n) (wdlib.components.build_data binds the run's)"
            )
        return self.block_size

    @property
    def sizes(self) -> dict[str, Any]:
        """What sizes a model to this data (``vocab_size``, and ``block_size`` once bound;
        see :func:`wdlib.models.data_args`)."""
        out: dict[str, Any] = {"vocab_size": self.vocab_size}
        if self.block_size is not None:
            out["block_size"] = self.block_size
        return out

    def for_device(self, device: str | torch.device) -> TokenDataset:
        """The dataset as a run on ``device`` reads it: itself, the tokens staying on the CPU (a memmap stays on
        disk); :meth:`batch` gathers the windows there and moves them to the device."""
        return self

    def batch(
        self,
        step: int,
        seed: int,
        *,
        batch_size: int,
        device: str | torch.device | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``, int64 (batch_size // world_size, block_size), of ``rank``'s shard of the batch at ``step``.

        Window starts ``s ~ randint(0, len(train) - block_size)`` are drawn, ``batch_size`` of them, from a
        generator seeded with ``seed * 2**32 + step``; ``x = train[s:s + block_size]`` and
        ``y = train[s + 1:s + 1 + block_size]`` (next-token targets). Every rank draws the same global starts
        and keeps its contiguous slice, so the shards concatenate to the global batch and a resumed run
        repeats it exactly. Gathered by indexing with ``s + arange(block_size + 1)``, without a Python loop,
        on the CPU, then moved to ``device`` (the CPU when None). ``block_size`` is the bound one
        (:meth:`with_block_size`). Used by the large-language-model chapter (LLM-1..LLM-7).
        """
        block_size = self._block()
        batch_size = _int("batch_size", batch_size, 1)
        start, stop = _shard("batch_size", batch_size, rank, world_size)
        step = _int("step", step, 0, _MAX_SEED)
        seed = _int("seed", seed, 0, _MAX_SEED)
        gen = torch.Generator().manual_seed(seed * _MAX_SEED + step)
        return _windows(
            self.train,
            _starts(len(self.train), batch_size, block_size, gen)[start:stop],
            block_size,
            "cpu" if device is None else device,
        )

    def eval_sets(self, *, batch_size: int, count: int, device: str | torch.device | None = None) -> dict[str, EvalSet]:
        """The evaluation sets of a run: ``{"val": f, "train": f}``, each ``f()`` a fresh iterator of ``(x, y)``.

        Each is :meth:`eval_batches` of its split: ``count`` batches of ``batch_size`` fixed windows of the
        bound ``block_size``, drawn with seed 0 (the same windows at every evaluation and in every run),
        on ``device`` (the CPU when None).
        """
        block_size, device = self._block(), "cpu" if device is None else device

        def windows(split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            return self.eval_batches(batch_size, block_size, count, seed=0, split=split, device=device)

        return {"val": lambda: windows("val"), "train": lambda: windows("train")}

    def train_starts(self, steps: int, batch_size: int, block_size: int, seed: int) -> torch.Tensor:
        """The window starts of the training batches of steps ``0 .. steps-1`` (global batches), in step order.

        The same draws as :meth:`batch`: the windows a run with this ``seed`` has trained on after
        ``steps`` steps. Used to tell seen from unseen training text (claim LLM-1, chapter 5).
        """
        steps = _int("steps", steps, 0)
        batch_size = _int("batch_size", batch_size, 1)
        seed = _int("seed", seed, 0, _MAX_SEED)
        if steps == 0:
            return torch.zeros(0, dtype=torch.int64)
        return torch.cat(
            [
                _starts(len(self.train), batch_size, block_size, torch.Generator().manual_seed(seed * _MAX_SEED + step))
                for step in range(steps)
            ]
        )

    def unseen_starts(self, count: int, block_size: int, seen: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """``count`` window starts in ``train`` whose ``block_size + 1`` tokens no window of ``seen`` touched.

        ``seen`` holds the starts of the windows trained on (:meth:`train_starts`), each covering
        ``train[s : s + block_size + 1]`` (inputs and next-token targets). Coverage is marked with a
        difference array and a cumulative sum, the candidates found with a running sum over windows;
        ``count`` of them are drawn without replacement with a generator seeded by ``seed``. Raises
        ValueError when fewer than ``count`` untouched windows exist.
        """
        count = _int("count", count, 1)
        block_size = _int("block_size", block_size, 1)
        n, span = len(self.train), block_size + 1
        diff = torch.zeros(n + span + 1, dtype=torch.int64)
        seen = torch.as_tensor(seen, dtype=torch.int64).reshape(-1)
        diff.index_add_(0, seen, torch.ones_like(seen))
        diff.index_add_(0, seen + span, -torch.ones_like(seen))
        covered = (diff.cumsum(0)[:n] > 0).to(torch.int64)
        run = torch.cat([torch.zeros(1, dtype=torch.int64), covered.cumsum(0)])
        touched = run[span:] - run[:-span]  # covered tokens in train[s : s + span], for s = 0 .. n - span
        free = torch.nonzero(touched == 0).reshape(-1)
        if free.numel() < count:
            raise ValueError(
                f"only {free.numel()} windows of {span} tokens are untouched by the {seen.numel()} "
                f"seen windows; asked for count={count}"
            )
        gen = torch.Generator().manual_seed(_int("seed", seed, 0, _MAX_SEED))
        return free[torch.randperm(free.numel(), generator=gen)[:count]].sort().values

    def windows(
        self,
        starts: torch.Tensor,
        block_size: int,
        batch_size: int,
        split: str = "train",
        device: str | torch.device = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x, y)`` batches of at most ``batch_size`` windows of ``split`` at the given ``starts``."""
        tokens = self._split(split)
        batch_size = _int("batch_size", batch_size, 1)
        starts = torch.as_tensor(starts, dtype=torch.int64).reshape(-1)
        for i in range(0, starts.numel(), batch_size):
            yield _windows(tokens, starts[i : i + batch_size], block_size, device)

    def eval_batches(
        self,
        batch_size: int,
        block_size: int,
        count: int,
        seed: int = 0,
        split: str = "val",
        device: str | torch.device = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``count`` batches of fixed windows of ``split`` (default the validation tokens), for evaluation.

        The ``count * batch_size`` starts are drawn once from a generator seeded with ``seed``, so every call
        (and every run with the same ``seed``) evaluates on the same windows.
        """
        tokens = self._split(split)
        batch_size = _int("batch_size", batch_size, 1)
        count = _int("count", count, 1)
        gen = torch.Generator().manual_seed(_int("seed", seed, 0, _MAX_SEED))
        starts = _starts(len(tokens), count * batch_size, block_size, gen)
        for i in range(count):
            yield _windows(tokens, starts[i * batch_size : (i + 1) * batch_size], block_size, device)


def _starts(n: int, count: int, block_size: Any, gen: torch.Generator) -> torch.Tensor:
    block_size = _int("block_size", block_size, 1)
    if n < block_size + 1:
        raise ValueError(f"block_size ({block_size}) must be smaller than the number of tokens ({n})")
    return torch.randint(0, n - block_size, (count,), generator=gen)


def _windows(
    tokens: torch.Tensor | np.ndarray, starts: torch.Tensor, block_size: int, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + torch.arange(block_size + 1)
    if isinstance(tokens, torch.Tensor):
        w = tokens[idx.to(tokens.device)].to(torch.int64)
    else:  # a memmap: numpy fancy indexing reads only the pages it touches
        w = torch.from_numpy(np.array(tokens[idx.numpy()], dtype=np.int64))
    return w[:, :-1].contiguous().to(device), w[:, 1:].contiguous().to(device)


_STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"})
_STDLIB_SEPARATOR = "\n\f\n"  # between files: a form feed on its own line


def _stdlib_files(root: Path) -> list[tuple[str, Path]]:
    """``(relative posix path, path)`` of the ``.py`` files under ``root``, skipped directories pruned, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):  # symlinked directories are not followed
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP_DIRS]
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath, name)
                out.append((path.relative_to(root).as_posix(), path))
    return sorted(out)


def _site_roots() -> list[Path]:
    """The installed-package directories of this Python (purelib and platlib, once each, if they exist)."""
    paths = sysconfig.get_paths()
    roots: list[Path] = []
    for key in ("purelib", "platlib"):
        root = Path(paths[key])
        if root.is_dir() and root.resolve() not in [r.resolve() for r in roots]:
            roots.append(root)
    return roots


@functools.lru_cache(maxsize=4)
def _stdlib_corpus(max_bytes: int, site_packages: bool = False) -> tuple[np.ndarray, str, dict]:
    root = Path(sysconfig.get_paths()["stdlib"])
    sep = _STDLIB_SEPARATOR.encode()
    parts: list[bytes] = []
    total = used = skipped = 0
    files = [path for _, path in _stdlib_files(root)]
    if site_packages:  # the installed packages after the standard library, each root in path order
        files += [path for site in _site_roots() for _, path in _stdlib_files(site)]
    for path in files:
        if total >= max_bytes:
            break
        try:
            raw = path.read_bytes()
            raw.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            skipped += 1
            continue
        chunk = sep + raw if parts else raw
        parts.append(chunk)
        total += len(chunk)
        used += 1
    text = b"".join(parts)[:max_bytes].decode("utf-8", errors="ignore")  # drops a cut multi-byte char only
    if not text:
        raise ValueError(f"no readable .py files under the standard library at {root}")
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    vocab_codes = np.unique(codes)  # sorted by code point, as sorted(set(text)) is
    ids = np.searchsorted(vocab_codes, codes).astype(np.int64)
    ids.flags.writeable = False
    vocab = "".join(map(chr, vocab_codes.tolist()))
    meta = {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "vocab": vocab,
        "files": used,
        "skipped_undecodable": skipped,
        "bytes": len(text.encode("utf-8")),
        "max_bytes": max_bytes,
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "skipped_dirs": sorted(_STDLIB_SKIP_DIRS),
        "separator": _STDLIB_SEPARATOR,
        "site_packages": site_packages,
    }
    return ids, vocab, meta


def stdlib_chars(
    max_bytes: int = 2_000_000,
    val_fraction: float = 0.1,
    val_split: str = "tail",
    val_block: int = 16_384,
    site_packages: bool = False,
) -> TokenDataset:
    """A character-level corpus from this Python's standard-library ``.py`` sources (offline).

    The ``.py`` files under ``sysconfig.get_paths()["stdlib"]`` are taken in sorted relative-path order,
    skipping the directories ``site-packages``, ``dist-packages``, ``test``, ``tests``, ``idlelib`` and
    ``__pycache__`` (at any depth) and any file that is not valid UTF-8; they are joined with ``"\\n\\f\\n"``
    and cut at ``max_bytes`` UTF-8 bytes. The vocabulary is the sorted set of characters (token id = rank of
    the character). With ``val_split="tail"`` ``train`` is the first ``1 - val_fraction`` of the tokens and
    ``val`` the rest (the last files in path order: other modules than the training text). With
    ``"interleaved"`` the text is cut into blocks of ``val_block`` characters and block ``i`` goes to
    ``val`` when ``floor((i + 1) * val_fraction) > floor(i * val_fraction)``, so the validation text is
    spread over the whole corpus and drawn from the same mix of modules as the training text (each
    split is its blocks joined in order; a window may straddle two blocks). ``site_packages=True``
    appends the ``.py`` files of the installed packages (``sysconfig`` purelib and platlib, the same
    directories skipped inside them): the largest offline corpus a machine's own Python sources give,
    about 11 MB of standard library alone on Python 3.11, far more where torch is installed.
    ``meta`` records the Python version, the vocabulary (a string), the number of files, and the sha256 of the
    text: another Python version gives another text, and possibly another vocabulary (see ``check_vocab``).
    Built once per ``max_bytes`` and cached in memory. The offline stand-in for OpenWebText at smoke scale
    in the large-language-model chapter (LLM-1..LLM-7).
    """
    max_bytes = _int("max_bytes", max_bytes, 1)
    val_fraction = _fraction("val_fraction", val_fraction)
    if val_split not in ("tail", "interleaved"):
        raise ValueError(f"val_split must be 'tail' or 'interleaved', got {val_split!r}")
    val_block = _int("val_block", val_block, 1)
    if not isinstance(site_packages, bool):
        raise ValueError(f"site_packages must be True or False, got {site_packages!r}")
    ids, vocab, meta = _stdlib_corpus(max_bytes, site_packages)
    meta = dict(meta, val_fraction=val_fraction, val_split=val_split)
    if val_split == "tail":
        n_train = int(len(ids) * (1.0 - val_fraction))
        if not 0 < n_train < len(ids):
            raise ValueError(f"val_fraction={val_fraction} leaves an empty split of {len(ids)} characters")
        return TokenDataset(
            "stdlib_chars",
            torch.from_numpy(ids[:n_train].copy()),
            torch.from_numpy(ids[n_train:].copy()),
            len(vocab),
            meta,
        )
    block = np.arange(len(ids)) // val_block
    to_val = np.floor((block + 1) * val_fraction) > np.floor(block * val_fraction)
    if to_val.all() or not to_val.any():
        raise ValueError(
            f"val_fraction={val_fraction} with val_block={val_block} leaves an empty split of {len(ids)} characters"
        )
    return TokenDataset(
        "stdlib_chars",
        torch.from_numpy(ids[~to_val].copy()),
        torch.from_numpy(ids[to_val].copy()),
        len(vocab),
        dict(meta, val_block=val_block),
    )


def check_vocab(dataset: TokenDataset, vocab: str, python: str | None = None) -> None:
    """Raise ValueError unless ``dataset``'s character vocabulary equals ``vocab``, recorded with a past run.

    Token ids are ranks in the vocabulary, so a different vocabulary (another Python version's stdlib)
    changes the ids and the loss scale: results are then not comparable. ``python`` is the version the
    record was made on, quoted in the message. Used when a chapter compares with stored ``stdlib_chars`` runs.
    """
    here = dataset.meta.get("vocab")
    if not isinstance(here, str):
        raise ValueError(f"{dataset.name} has no character vocabulary in its meta to check against")
    if here == vocab:
        return
    only_here, only_there = sorted(set(here) - set(vocab)), sorted(set(vocab) - set(here))
    where = f"Python {dataset.meta.get('python', '?')}"
    if python:
        where += f" versus the recorded Python {python}"
    detail = (
        f"{len(only_here)} character(s) only here {only_here!r}, {len(only_there)} only in the record {only_there!r}"
        if only_here or only_there
        else "the same characters in another order"
    )
    raise ValueError(
        f"{dataset.name} vocabulary differs from the recorded one ({where}): {detail}; "
        f"token ids differ, so results are not comparable with the recorded run"
    )


def token_file(path: str | os.PathLike[str]) -> np.memmap:
    """A read-only uint16 memmap of a nanoGPT-style token file (raw little-endian uint16 ids, no header).

    Source: nanoGPT's ``data/openwebtext/prepare.py`` format. Used by ``openwebtext``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token file {path} not found")
    size = path.stat().st_size
    if size == 0 or size % 2:
        raise ValueError(f"token file {path} has {size} bytes; expected a non-zero multiple of 2 (uint16 ids)")
    return np.memmap(path, dtype=np.dtype("<u2"), mode="r")


def write_tokens(tokens: Any, path: str | os.PathLike[str]) -> Path:
    """Write 1-D token ids (each in [0, 65535]) as a uint16 token file, atomically (temp file, then os.replace).

    The reader is ``token_file``; the format is nanoGPT's ``train.bin``/``val.bin``.
    """
    path = Path(path)
    arr = tokens.detach().cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"tokens must be a non-empty 1-D array of integers, got shape {arr.shape} and dtype {arr.dtype}"
        )
    if arr.min() < 0 or arr.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"tokens must lie in [0, 65535] to fit uint16, got [{arr.min()}, {arr.max()}]")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(arr.astype("<u2").tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


GPT2_VOCAB_SIZE = 50257
GPT2_EOT = 50256


def openwebtext(root: str | os.PathLike[str]) -> TokenDataset:
    """OpenWebText as GPT-2 BPE tokens: ``root/train.bin`` and ``root/val.bin`` as uint16 memmaps.

    Vocabulary size 50,257 (GPT-2 BPE, end-of-text id 50256). Prepare the files with nanoGPT's
    ``data/openwebtext/prepare.py`` (about 9B training tokens, 17 GB) or with ``encode_gpt2`` and
    ``write_tokens``. Missing files raise ``DataNotFoundError`` naming the offline alternative.
    Source: Gokaslan & Cohen 2019 (OpenWebText); nanoGPT's token format. Full scale of the
    large-language-model chapter (LLM-1..LLM-7).
    """
    root = Path(root)
    missing = [name for name in ("train.bin", "val.bin") if not (root / name).is_file()]
    if missing:
        raise DataNotFoundError(
            f"OpenWebText is full-scale data; {', '.join(missing)} not found at {root} (GPT-2 uint16 token files "
            f"as nanoGPT's data/openwebtext/prepare.py writes them). Run with scale='smoke', which uses "
            f"stdlib_chars (a character corpus of Python's own sources) offline, or prepare the files on a "
            f"machine with a network"
        )
    train, val = token_file(root / "train.bin"), token_file(root / "val.bin")
    meta = {"tokenizer": "gpt2", "train_tokens": len(train), "val_tokens": len(val), "root": str(root)}
    return TokenDataset("openwebtext", train, val, GPT2_VOCAB_SIZE, meta)


def encode_gpt2(text: str, eot: bool = True) -> np.ndarray:
    """GPT-2 BPE ids (uint16) of ``text`` via ``tiktoken``, with the end-of-text id 50256 appended if ``eot``.

    As nanoGPT's ``prepare.py``: ``encode_ordinary`` (special tokens in the text are not parsed). Needs the
    optional package ``tiktoken`` (and its BPE files, downloaded on first use).
    """
    try:
        import tiktoken
    except ImportError as err:
        raise ImportError(
            "encode_gpt2 needs the optional package 'tiktoken' (pip install tiktoken); it is not "
            "installed. Offline, use stdlib_chars for a character-level corpus instead"
        ) from err
    ids = tiktoken.get_encoding("gpt2").encode_ordinary(text)
    if eot:
        ids.append(GPT2_EOT)
    return np.asarray(ids, dtype=np.uint16)


# ----------------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[..., Dataset | TokenDataset]] = {
    "mnist1d": mnist1d,
    "digits": digits,
    "spurious": spurious,
    "stdlib_chars": stdlib_chars,
    "cifar10": cifar10,
    "openwebtext": openwebtext,
}
DATASETS: tuple[str, ...] = tuple(_REGISTRY)


def load(name: str, **kwargs: Any) -> Dataset | TokenDataset:
    """The dataset ``name`` (one of ``DATASETS``) built with ``kwargs``, checked against its signature.

    An unknown name, an unknown keyword or a missing required one raises ValueError naming it.
    ``load("digits", seed=1)`` is ``digits(seed=1)``. Used by every chapter to pick data by scale.
    """
    return call_checked("dataset", name, _REGISTRY, kwargs)
