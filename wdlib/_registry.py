"""Build a registered thing by name with keyword arguments checked against its signature."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any


def call_checked(
    kind: str,
    name: str,
    registry: Mapping[str, Callable[..., Any]],
    kwargs: Mapping[str, Any],
    quote_names: bool = True,
) -> Any:
    """``registry[name](**kwargs)``; an unknown name, an unknown keyword or a missing one raises ValueError.

    ``kind`` ("dataset", "model") words the message, which names the offending argument and the allowed
    ones (quoted or not, as ``quote_names`` says).
    """
    if name not in registry:
        names = ", ".join(repr(n) if quote_names else str(n) for n in registry)
        raise ValueError(f"unknown {kind} {name!r}; allowed: {names}")
    fn = registry[name]
    params = inspect.signature(fn).parameters
    for key in kwargs:
        if key not in params:
            raise ValueError(f"{name}: unknown argument {key!r}; allowed: {', '.join(params)}")
    for key, p in params.items():
        if p.default is inspect.Parameter.empty and key not in kwargs:
            raise ValueError(f"{name}: missing required argument {key!r}")
    return fn(**kwargs)
