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

__all__ = ["plain", "as_real", "as_integer", "check_real", "short_repr"]


def plain(value: Any, *, shortest: bool = False) -> Any:
    """A 0-d numpy array, numpy scalar or 0-d torch tensor as the Python bool, int or float it holds.

    Anything else comes back unchanged (a 1-d tensor too: it is not a number). ``shortest=True`` reads
    a float32 or float16 value as the shortest decimal that rounds to it (``np.float32(1e-3)`` ->
    ``0.001``, the number the user wrote; the run configuration uses it so that keys match the plain-
    number configuration's); by default it is the exact value, as torch itself reads it.
    """
    module = type(value).__module__.split(".")[0]
    if module == "torch" and hasattr(value, "dim"):
        if value.dim() != 0 or value.dtype.is_complex:
            return value
        low = value.dtype in (_torch().float32, _torch().float16)
        if shortest and low:
            import numpy as np

            return plain(
                np.array(value.item(), dtype="float32" if value.dtype == _torch().float32 else "float16")[()],
                shortest=True,
            )
        return value.item()  # bool, int or float by the tensor's dtype
    if module == "numpy" and getattr(value, "shape", None) == () and hasattr(value, "item"):
        if (
            shortest
            and getattr(value, "dtype", None) is not None
            and value.dtype.kind == "f"
            and value.dtype.itemsize < 8
        ):
            return float(str(value[()]))  # numpy prints a float32/float16 as its shortest decimal
        return value.item()  # np.float32 -> float, np.int64 -> int, np.bool_ -> bool
    return value


def short_repr(value: Any, limit: int = 40) -> str:
    """``repr(value)`` for an error message, shortened when long (a 300-digit integer: its digit count)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _torch() -> Any:
    import torch

    return torch


def as_real(value: Any) -> float | None:
    """``value`` as a Python float when it is a real number (not a bool), else None.

    Integers too large for a float (a 400-digit int) come back as ``inf``, so that a range check
    rejects them with its own message instead of an OverflowError.
    """
    value = plain(value)
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
    value = plain(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def check_real(
    name: str,
    value: Any,
    *,
    low: float = 0.0,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
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


def check_integer(name: str, value: Any, *, low: int, high: int) -> int:
    """``value`` as a Python int in ``[low, high]``, or ValueError naming ``name`` and the allowed range."""
    x = as_integer(value)
    if x is None or not low <= x <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {short_repr(value)}")
    return x
