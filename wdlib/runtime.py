"""Scale, device and seed: the three parameters every chapter takes, checked in one place."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SCALES", "Setting", "check_parameters", "resolve_device", "seed_everything"]

SCALES: tuple[str, ...] = ("smoke", "full")


@dataclass(frozen=True)
class Setting:
    """A chapter's checked parameters."""

    scale: str
    device: torch.device
    seed: int

    @property
    def smoke(self) -> bool:
        return self.scale == "smoke"

    def seeds(self, n: int) -> tuple[int, ...]:
        """``n`` run seeds derived from the base seed: ``seed * 1000 + i`` for ``i < n``.

        Base seed 0 gives ``0, 1, ..., n-1``; another base seed (``make book SEED=1``) gives a disjoint
        set, so rebuilding with it checks that each verdict holds on new seeds.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        return tuple(self.seed * 1000 + i for i in range(n))


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise the named device, which must exist."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here; use 'auto' or 'cpu'")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_parameters(scale: str, device: str = "auto", seed: int = 0) -> Setting:
    """Validate a notebook's papermill parameters; unknown values raise ValueError listing the allowed ones."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(repr(s) for s in SCALES)}, got {scale!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    setting = Setting(scale=scale, device=resolve_device(device), seed=seed)
    seed_everything(seed)
    return setting
