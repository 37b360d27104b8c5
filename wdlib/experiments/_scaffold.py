"""What every chapter stands on: its parameters (scale, device, seed), checked once, and its settings per scale.

A notebook's first cell after its parameters calls :func:`check_parameters`, which returns a :class:`Setting`
(and seeds every generator). A chapter's settings are a frozen dataclass that extends :class:`Setting` with
the sizes of its experiments, one instance per scale of :data:`wdlib.config.SCALES` in a dict; its
``setup(scale)`` picks one with :func:`pick_settings`. Training seeds derive from the base seed with
:meth:`Setting.seeds`, so the counts live in the settings and the seeds themselves come from the notebook.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any, TypeVar

import torch

from ..config import SCALES
from ..runtime import resolve_device, seed_everything

__all__ = ["SCALES", "Setting", "check_finished", "check_parameters", "pick_settings", "check_scale", "check_seed"]

S = TypeVar("S", bound="Setting")


@dataclass(frozen=True)
class Setting:
    """A chapter's parameters: ``scale`` (one of :data:`SCALES`), ``device`` and the base ``seed``.

    Each chapter's settings extend it with their sizes; ``device`` and ``seed`` are keyword-only, after the
    chapter's own fields, so a chapter's settings are written ``Setup("smoke", width=..., ...)``.
    """

    scale: str
    _: KW_ONLY
    device: torch.device = torch.device("cpu")
    seed: int = 0

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


def check_scale(scale: object) -> str:
    """``scale`` when it is one of :data:`SCALES`; otherwise ValueError listing them."""
    if not isinstance(scale, str) or scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(repr(s) for s in SCALES)}, got {scale!r}")
    return scale


def check_seed(seed: object) -> int:
    """``seed`` when it is an integer >= 0; otherwise ValueError."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return seed


def check_parameters(scale: str, device: str | torch.device = "auto", seed: int = 0) -> Setting:
    """Validate a notebook's papermill parameters and seed every generator with ``seed``; unknown values raise
    ValueError listing the allowed ones."""
    setting = Setting(check_scale(scale), device=resolve_device(device), seed=check_seed(seed))
    seed_everything(seed)
    return setting


def pick_settings(settings: Mapping[str, S], scale: str, *, device: str | torch.device = "cpu", seed: int = 0) -> S:
    """A chapter's settings for ``scale`` (its ``settings[scale]``), with ``device`` and ``seed`` filled in.

    ValueError names the allowed scales when ``scale`` is not one of :data:`SCALES` or the chapter has no
    settings for it."""
    check_scale(scale)
    if scale not in settings:
        raise ValueError(
            f"this chapter has no settings for scale {scale!r}; it has {', '.join(repr(s) for s in settings)}"
        )
    s = settings[scale]
    if s.scale != scale:
        raise ValueError(f"the settings filed under scale {scale!r} are those of scale {s.scale!r}")
    return dataclasses.replace(s, device=resolve_device(device), seed=check_seed(seed))


def check_finished(r: Any) -> Any:
    """The run result ``r`` when its run finished; RuntimeError naming its key and step when it diverged (for the
    experiments whose statistics need every run)."""
    if r.diverged:
        raise RuntimeError(f"run {r.info.get('key')} diverged at step {r.diverged_at}")
    return r
