"""Data for the chapters: offline datasets as tensors, and seeded batches without a per-sample loop.

MNIST-1D (Greydanus 2020, package ``mnist1d``) is generated procedurally with
``mnist1d.data.make_dataset``; its download path is never called. 40-sample 1-D signals, 10 classes.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Dataset", "mnist1d", "batches"]


@dataclass(frozen=True)
class Dataset:
    """Train and test tensors of a classification task."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_dim(self) -> int:
        return int(self.x_train[0].numel())

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> Dataset:
        """A copy on ``device``; ``dtype`` applies to the inputs only."""
        def cast(x: torch.Tensor) -> torch.Tensor:
            return x.to(device=device, dtype=dtype) if dtype is not None and x.is_floating_point() else x.to(device)
        return Dataset(self.name, cast(self.x_train), self.y_train.to(device), cast(self.x_test),
                       self.y_test.to(device), self.num_classes)


@functools.lru_cache(maxsize=8)
def _mnist1d_arrays(num_samples: int, seed: int) -> tuple[np.ndarray, ...]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    py_state, np_state = random.getstate(), np.random.get_state()
    try:  # make_dataset reseeds the global RNGs; put them back afterwards
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return (d["x"].astype(np.float32), d["y"].astype(np.int64), d["x_test"].astype(np.float32),
            d["y_test"].astype(np.int64))


def mnist1d(num_samples: int = 5000, seed: int = 42) -> Dataset:
    """MNIST-1D generated offline: ``num_samples`` signals (80% train, 20% test), standardized.

    ``seed`` fixes the generator (42 is the package's default and the published dataset's).
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 20:
        raise ValueError(f"num_samples must be an integer >= 20, got {num_samples!r}")
    x, y, xt, yt = _mnist1d_arrays(num_samples, seed)
    return Dataset("mnist1d", torch.from_numpy(x.copy()), torch.from_numpy(y.copy()),
                   torch.from_numpy(xt.copy()), torch.from_numpy(yt.copy()), num_classes=10)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, steps: int,
            generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` minibatches drawn by reshuffling each epoch with ``generator`` (indices on x's device)."""
    n = x.shape[0]
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size must be in [1, {n}], got {batch_size!r}")
    per_epoch = n // batch_size
    done = 0
    while done < steps:
        perm = torch.randperm(n, generator=generator).to(x.device)
        for b in range(min(per_epoch, steps - done)):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            yield x[idx], y[idx]
            done += 1
