"""Figure helpers: one style, and captions that state the scale a figure was run at."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from . import ema

__all__ = ["figure", "caption", "heatmap", "live_widgets", "show_interactive", "ema_explorer", "ema_explorer_widget"]


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


def _in_kernel() -> bool:
    """Whether this runs in a live IPython kernel (Jupyter, Colab, VS Code; not a terminal IPython, not a script)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return getattr(get_ipython(), "kernel", None) is not None


def live_widgets() -> bool:
    """Whether an interactive widget can work here: ipywidgets is installed, this runs in a live IPython kernel
    (Jupyter, Colab, VS Code), and ``WDLIB_STATIC`` is not set. The book build sets ``WDLIB_STATIC=1`` in its
    kernels: a page of the book has no kernel behind it to redraw when a slider moves."""
    if os.environ.get("WDLIB_STATIC", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return _in_kernel()


def show_interactive(make_widget: Callable[[], Any], draw: Callable[[], Figure], note: str) -> None:
    """Display the widget ``make_widget()`` where one can work (:func:`live_widgets`); elsewhere (the book's
    build, a script) the figure ``draw()`` makes, which should be the widget's drawing at its starting values,
    followed by the Markdown ``note`` saying what the widget does. Figures the caller drew before come first."""
    if live_widgets():
        from IPython.display import display

        plt.show()  # the caller's figures above the widget, not inside its output area
        display(make_widget())
        return
    draw()
    plt.show()  # in a kernel the inline backend shows (and closes) the open figures, in the order they were made
    if _in_kernel():
        from IPython.display import Markdown, display

        display(Markdown(note))
    else:
        print(note)


_EXPLORER_START = {"log10_lr": -3.0, "log10_wd": -1.0, "schedule": "cosine"}


def _ema_explorer_figure(steps: int, log10_lr: float, log10_wd: float, schedule: str) -> Figure:
    """The explorer's drawing: the contribution weights and the predicted RMS for one setting."""
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
    return fig


def ema_explorer_widget(steps: int = 20_000) -> Any:
    """Sliders for eta, lambda and the schedule, redrawing the contribution weights and the predicted RMS.

    Needs ipywidgets; returns the widget (:func:`ema_explorer` displays it, or its static figure where a widget
    cannot work). The curves are :func:`wdlib.ema.contribution_figure_data`.
    """
    import ipywidgets as widgets
    from IPython.display import display

    def draw(log10_lr: float, log10_wd: float, schedule: str) -> None:
        fig = _ema_explorer_figure(steps, log10_lr, log10_wd, schedule)
        display(fig)  # this figure only, into the widget's output area
        plt.close(fig)

    start = _EXPLORER_START
    return widgets.interactive(
        draw,
        log10_lr=widgets.FloatSlider(value=start["log10_lr"], min=-5.0, max=-1.0, step=0.25, description="log10 lr"),
        log10_wd=widgets.FloatSlider(value=start["log10_wd"], min=-3.0, max=1.0, step=0.25, description="log10 wd"),
        schedule=widgets.Dropdown(options=list(ema.SCHEDULE_NAMES), value=start["schedule"], description="schedule"),
    )


def ema_explorer(steps: int = 20_000) -> None:
    """Chapter 2's explorer: in Jupyter, Colab or VS Code the sliders of :func:`ema_explorer_widget`; in the book
    (``WDLIB_STATIC=1``) or without ipywidgets, the figure it starts with and a note on what it does
    (:func:`show_interactive`). Displays; returns nothing."""
    start = _EXPLORER_START
    note = (
        "*In Jupyter or Colab this is an interactive explorer: sliders for the learning rate η and the weight "
        f"decay λ (as powers of ten) and a menu of schedules ({', '.join(ema.SCHEDULE_NAMES)}) redraw both "
        f"panels. Shown here at its starting values: η = {10 ** start['log10_lr']:g}, λ = {10 ** start['log10_wd']:g}, "
        f"{start['schedule']} schedule.*"
    )
    show_interactive(lambda: ema_explorer_widget(steps), lambda: _ema_explorer_figure(steps, **start), note)
