"""Progress bars: whether someone is watching, and a bar that suits where they watch (terminal or notebook)."""

from __future__ import annotations

import os
import sys
from typing import Any

from ._extras import require

__all__ = ["progress_bar", "show_progress"]


def progress_bar(**kwargs: Any) -> Any:
    """A tqdm bar with ``kwargs``: a notebook widget where ipywidgets exists (Colab, Jupyter), plain text elsewhere."""
    try:  # a notebook widget where ipywidgets exists (Colab, Jupyter), plain text elsewhere
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = require("tqdm", purpose="a progress bar").tqdm
    return tqdm(**kwargs)


def show_progress(progress: bool | None) -> bool:
    """Whether to draw a progress bar: ``progress`` when given; for None, when a person is watching (a terminal,
    or a Jupyter/Colab kernel with ipywidgets), never when ``CI`` is set (CI logs) or ``WDLIB_PROGRESS=0`` (the
    book build's kernels, so executed notebooks hold no widget outputs). ``WDLIB_PROGRESS=1`` forces it on."""
    if progress is not None:
        return bool(progress)
    setting = os.environ.get("WDLIB_PROGRESS", "").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return False
    if setting in ("1", "true", "yes", "on"):
        return True
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    try:
        import ipywidgets  # noqa: F401

        in_notebook = "ipykernel" in sys.modules
    except ImportError:
        in_notebook = False
    return in_notebook or sys.stderr.isatty()
