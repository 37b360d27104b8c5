"""Figure helpers: one style, and captions that state the scale a figure was run at."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = ["figure", "caption"]


def figure(ncols: int = 1, width: float = 5.0, height: float = 3.6) -> tuple[Figure, list]:
    """A figure with ``ncols`` side-by-side axes (always returned as a list)."""
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), layout="constrained", squeeze=False)
    return fig, list(axes[0])


def caption(fig: Figure, text: str, scale: str) -> Figure:
    """Put ``text`` and the scale under the figure (the HTML shows the figure with its caption)."""
    fig.supxlabel(f"{text} [scale: {scale}]", fontsize=9, style="italic")
    return fig
