"""The optional packages of wdlib's extras, imported where they are needed with an error that names the extra.

``pip install wdlib`` is the core (torch and numpy); the ``engine`` extra adds data, models and the training
loop's packages, ``notebooks`` what the chapters draw with, ``book`` what builds the book (pyproject.toml).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, extra: str = "engine", *, purpose: str = "") -> ModuleType:
    """``importlib.import_module(module)``, or a ``ModuleNotFoundError`` that says which extra installs it.

    ``purpose`` (e.g. ``"the MNIST-1D dataset"``) goes into the message:
    ``"<purpose> needs the package 'mnist1d' of wdlib's 'engine' extra: pip install 'wdlib[engine]'"``.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # the package is there but something it imports is not: torch's own message is clearer
        what = purpose or f"this part of wdlib ({module})"
        raise ModuleNotFoundError(
            f"{what} needs the package {top!r} of wdlib's {extra!r} extra: pip install 'wdlib[{extra}]'",
            name=exc.name,
        ) from exc
