"""What counts as a number in wdlib's arguments: the numbers torch itself accepts.

Python ``int`` and ``float``, numpy scalars (``np.float32(1e-3)``, ``np.int64(100)``) and 0-d
arrays, and 0-d torch tensors are numbers; ``bool`` is not (``True`` is almost always a slip).
Everything that checks an argument (the optimizers, the timescales, the run configuration)
goes through :func:`as_real` / :func:`as_integer`, so one rule holds everywhere.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["as_real", "as_integer", "check_real", "short_repr"]


def _unwrap(value: Any) -> Any:
    """A 0-d numpy array or torch tensor as its Python scalar; anything else unchanged."""
    if type(value).__module__.startswith("torch") and hasattr(value, "dim"):
        if value.dim() != 0 or value.dtype.is_complex or value.dtype == _torch_bool():
            return value
        return value.item()
    if type(value).__module__ == "numpy" and getattr(value, "shape", None) == () and hasattr(value, "item"):
        return value.item()  # 0-d arrays and numpy scalars: np.float32 -> float, np.int64 -> int, np.bool_ -> bool
    return value


def short_repr(value: Any, limit: int = 40) -> str:
    """``repr(value)`` for an error message, shortened when long (a 300-digit integer: its digit count)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** limit:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _torch_bool() -> Any:
    import torch

    return torch.bool


def as_real(value: Any) -> float | None:
    """``value`` as a Python float when it is a real number (not a bool), else None.

    Integers too large for a float (a 400-digit int) come back as ``inf``, so that a range check
    rejects them with its own message instead of an OverflowError.
    """
    value = _unwrap(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def as_integer(value: Any) -> int | None:
    """``value`` as a Python int when it is an integer (int, numpy integer, integer 0-d tensor), else None.

    Floats are not integers here, even integral ones: ``seed: 1e26`` is a float that lost its digits.
    """
    value = _unwrap(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def check_real(name: str, value: Any, *, low: float = 0.0, high: float | None = None, low_open: bool = False,
               high_open: bool = False) -> float:
    """``value`` as a finite float in the range, or ValueError naming ``name`` and the allowed range."""
    lo = "(" if low_open else "["
    hi = "inf)" if high is None else f"{high}{')' if high_open else ']'}"
    allowed = f"a finite number in {lo}{low}, {hi}"
    x = as_real(value)
    ok = x is not None and math.isfinite(x) and (x > low if low_open else x >= low)
    if ok and high is not None:
        ok = x < high if high_open else x <= high  # type: ignore[operator]
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {short_repr(value)}")
    return x  # type: ignore[return-value]
