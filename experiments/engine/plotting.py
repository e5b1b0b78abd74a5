"""Figure helpers (matplotlib, Agg backend): confidence bands over seeds, log-log slopes, bounds.

The statistics behind the bands and slopes live in ``experiments.engine.stats``.

- ``band_plot`` draws the mean over seeds and a 95% band ``mean +- t_{0.975, n-1} sd / sqrt(n)``
  (``stats.mean_ci``), and optionally the fitted log-log slope (``stats.fit_loglog_slope``).
- ``bound_plot`` draws a theoretical bound as a dashed curve beside the empirical ones.
- ``save_figure`` checks that every panel is titled and labelled, adds the legend, wraps a figure
  title wider than the figure (``fit_suptitle``) and writes PNG + SVG atomically.
"""
from __future__ import annotations

import io
import os
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402
from experiments.engine.stats import Slope, by_seed as _by_seed, fit_loglog_slope, mean_ci  # noqa: E402
from experiments.engine.storage import atomic_write_bytes  # noqa: E402

__all__ = ["band_plot", "bound_plot", "figure", "pivot", "save_figure", "set_loglog", "slope_label"]


def figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.8), **kwargs):
    """``plt.subplots`` with a per-panel size; returns ``(fig, ax)`` (or an array of axes)."""
    return plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=True,
                        constrained_layout=True, **kwargs)


def distinct_colors(names) -> dict:
    """One colour per name: matplotlib's ten ``C0..C9``, then (beyond ten) ``tab20``'s dark shades
    followed by its light ones, so no two curves of one figure share a colour up to 20 names."""
    names = list(names)
    if len(names) <= 10:
        return {n: f"C{i}" for i, n in enumerate(names)}
    import matplotlib
    cmap = matplotlib.colormaps["tab20"]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return {n: cmap(order[i % 20]) for i, n in enumerate(names)}


BANDS = ("ci", "range")


def band_plot(ax, x: Any, y_by_seed: Any, label: str, *, color: Any = None, marker: str | None = "o",
              alpha: float = 0.2, loglog: bool = False, slope: bool = False, level: float = 0.95,
              band: str = "ci", **line_kwargs: Any):
    """Mean curve over seeds with a band: ``band="ci"`` its ``level`` confidence interval, ``"range"`` the
    minimum to maximum over seeds (for a handful of seeds, where a t-interval is wide and, on a log axis,
    can reach below zero). ``slope=True`` appends the fitted log-log slope and its CI to the label;
    ``loglog=True`` sets both axes to log scale. Returns the line."""
    x, y = _by_seed(x, y_by_seed)
    if band not in BANDS:
        raise ValueError(f"band={band!r} is not allowed: band must be one of {BANDS}.")
    mean, low, high = mean_ci(y, level)
    if band == "range":
        low, high = np.min(y, axis=0), np.max(y, axis=0)
    means = y.mean(axis=0)
    if slope and x.size >= 2 and np.all(np.isfinite(means)) and np.all(means > 0):   # else: no slope to show
        label = slope_label(label, fit_loglog_slope(x, y, level=level))
    (line,) = ax.plot(x, mean, label=label, color=color, marker=marker, markersize=3, **line_kwargs)
    if y.shape[0] > 1:
        ax.fill_between(x, low, high, color=line.get_color(), alpha=alpha, linewidth=0)
    if loglog:
        set_loglog(ax)
    return line


def set_loglog(ax) -> None:
    """Log scales on both axes, ticks at 1-2-5 x 10^k labelled as plain numbers (no minor labels)."""
    set_logx(ax)
    _log_axis(ax.yaxis, ax.set_yscale)


def set_logx(ax) -> None:
    """Log scale on x only, with the ticks of ``set_loglog``."""
    _log_axis(ax.xaxis, ax.set_xscale)


def _log_axis(axis, scale) -> None:
    scale("log")
    axis.set_major_locator(ticker.LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def bound_plot(ax, x: Any, bound: Any, label: str, *, color: Any = None, **line_kwargs: Any):
    """A theoretical bound (or rate ``C n^-1/2``) as a dashed curve (unless ``linestyle`` is given); returns
    the line."""
    line_kwargs.setdefault("linestyle", "--")
    (line,) = ax.plot(np.asarray(x, float), np.asarray(bound, float), label=label,
                      color=color if color is not None else "0.35", **line_kwargs)
    return line


def slope_label(label: str, fit: Slope) -> str:
    return f"{label} (slope {fit.slope:.2f} [{fit.low:.2f}, {fit.high:.2f}])"


def pivot(table: Mapping[str, Any], x: str, y: str, seed: str = "seed",
          where: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """From a tidy table, the sorted ``x`` values and ``y`` as ``[n_seeds, n_x]`` (rows with
    ``where`` column values only). Every (seed, x) pair must appear exactly once."""
    mask = np.ones(len(np.asarray(table[x])), bool)
    for col, val in (where or {}).items():
        mask &= np.asarray(table[col]) == val
    xs, seeds = np.asarray(table[x])[mask], np.asarray(table[seed])[mask]
    ys = np.asarray(table[y], dtype=float)[mask]
    ux, ix = np.unique(xs, return_inverse=True)
    us, iseed = np.unique(seeds, return_inverse=True)
    if len(ys) != len(ux) * len(us):
        raise ValueError(f"pivot: expected one row per ({seed}, {x}) pair, got {len(ys)} rows for "
                         f"{len(us)} seeds x {len(ux)} {x} values (filter with where=...).")
    if len(np.unique(iseed * len(ux) + ix)) != len(ys):
        raise ValueError(f"pivot: some ({seed}, {x}) pairs are missing or repeated.")
    out = np.empty((len(us), len(ux)))
    out[iseed, ix] = ys
    return ux, out


def fit_suptitle(fig) -> None:
    """Wrap the figure title onto as few lines as keep it inside the figure's width (a long title of
    config values is otherwise cut at both edges)."""
    title = fig._suptitle   # matplotlib keeps the suptitle Text here (no public getter of the artist)
    if title is None or not title.get_text():
        return
    text = " ".join(title.get_text().split())
    renderer = fig.canvas.get_renderer()
    width = fig.bbox.width * 0.98
    title.set_text(text)
    chars = len(text)
    while title.get_window_extent(renderer).width > width and chars > 20:
        chars = int(chars * 0.9)
        title.set_text("\n".join(textwrap.wrap(text, chars)))


def save_figure(fig, out_dir: str | os.PathLike, stem: str,
                formats: Sequence[str] = ("png", "svg"), dpi: int = 150) -> list[Path]:
    """Check titles/labels, add legends, write ``out_dir/stem.<fmt>`` atomically, close the figure."""
    problems = []
    for i, ax in enumerate(fig.get_axes()):
        if not ax.get_visible() or ax.get_label() == "<colorbar>":
            continue
        missing = [what for what, text in (("title", ax.get_title() or fig.get_suptitle()),
                                           ("x label", ax.get_xlabel()), ("y label", ax.get_ylabel()))
                   if not text]
        if missing:
            problems.append(f"panel {i}: no {', '.join(missing)}")
        if ax.get_legend() is None and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    if problems:
        plt.close(fig)
        raise ValueError(f"figure {stem!r} is incomplete ({'; '.join(problems)}): every figure needs "
                         "a title and axis labels.")
    fit_suptitle(fig)
    paths = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi)
        paths.append(atomic_write_bytes(Path(out_dir) / f"{stem}.{fmt}", buf.getvalue()))
    plt.close(fig)
    return paths
