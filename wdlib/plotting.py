"""Figure helpers: one style, and captions that state the scale a figure was run at."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from . import ema

__all__ = ["figure", "caption", "heatmap", "ema_explorer"]


def figure(ncols: int = 1, width: float = 5.0, height: float = 3.6) -> tuple[Figure, list]:
    """A figure with ``ncols`` side-by-side axes (always returned as a list)."""
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), layout="constrained", squeeze=False)
    return fig, list(axes[0])


def caption(fig: Figure, text: str, scale: str) -> Figure:
    """Put ``text`` and the scale under the figure (the HTML shows the figure with its caption)."""
    fig.supxlabel(f"{text} [scale: {scale}]", fontsize=9, style="italic")
    return fig


def _log_edges(v: np.ndarray) -> np.ndarray:
    lv = np.log10(np.asarray(v, dtype=np.float64))
    if lv.size == 1:
        return 10 ** np.array([lv[0] - 0.5, lv[0] + 0.5])
    mid = (lv[1:] + lv[:-1]) / 2
    return 10 ** np.concatenate([[2 * lv[0] - mid[0]], mid, [2 * lv[-1] - mid[-1]]])


def heatmap(
    ax: Any,
    x: Any,
    y: Any,
    z: Any,
    *,
    xlabel: str,
    ylabel: str,
    label: str,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis_r",
    fmt: str = "{:.3f}",
    colorbar: bool = True,
) -> Any:
    """Cells of ``z[i, j]`` at ``(x[j], y[i])`` on log-log axes (``x``, ``y`` increasing, log-spaced), each
    cell annotated with its value (``fmt``; ``nan`` left blank), and a colorbar titled ``label``. Returns the mesh."""
    z = np.asarray(z, dtype=np.float64)
    mesh = ax.pcolormesh(
        _log_edges(x), _log_edges(y), np.ma.masked_invalid(z), cmap=cmap, vmin=vmin, vmax=vmax, shading="flat"
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    for i, yv in enumerate(y):
        for j, xv in enumerate(x):
            if np.isfinite(z[i, j]):
                r, g, b, _ = mesh.cmap(mesh.norm(z[i, j]))
                ax.text(
                    xv,
                    yv,
                    fmt.format(z[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white",
                )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if colorbar:
        ax.figure.colorbar(mesh, ax=ax, label=label, shrink=0.9)
    return mesh


def ema_explorer(steps: int = 20_000) -> Any:
    """Sliders for eta, lambda and the schedule, redrawing the contribution weights and the predicted RMS.

    Needs ipywidgets (Jupyter, Colab); returns the widget. The book shows a static figure instead. Chapter 2;
    the curves are :func:`wdlib.ema.contribution_figure_data`.
    """
    import ipywidgets as widgets

    def draw(log10_lr: float = -3.0, log10_wd: float = -1.0, schedule: str = "cosine") -> None:
        d = ema.contribution_figure_data(10**log10_lr, 10**log10_wd, steps, schedule)
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
        a.plot(d["step"], d["weights"] / d["weights"].sum())
        a.set_xlabel("step")
        a.set_ylabel("share of the final parameters")
        a.set_title(f"theta_0 keeps {d['theta0_weight']:.2%}", fontsize=10)
        b.plot(d["step"], d["rms"], label="mean-field recursion")
        b.plot(d["step"], d["rms_instant"], ":", label=r"$\sqrt{\eta_s/(2\lambda_s)}$")
        b.set_xlabel("step")
        b.set_ylabel("predicted weight RMS")
        b.legend(fontsize=7)
        fig.tight_layout()
        plt.show()

    return widgets.interactive(
        draw,
        log10_lr=widgets.FloatSlider(value=-3.0, min=-5.0, max=-1.0, step=0.25, description="log10 lr"),
        log10_wd=widgets.FloatSlider(value=-1.0, min=-3.0, max=1.0, step=0.25, description="log10 wd"),
        schedule=widgets.Dropdown(options=list(ema.SCHEDULE_NAMES), value="cosine"),
    )
