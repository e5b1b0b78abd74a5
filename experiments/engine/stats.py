"""Statistics of results over seeds, one module for every experiment, summary and figure.

- ``t_interval``: the mean and the half-width ``t_{(1+level)/2, n-1} sd / sqrt(n)`` of its Student-t
  interval (NaN half-width for fewer than two values: no interval can be estimated);
- ``mean_ci``: the mean over seeds (axis 0) with that interval as ``(mean, low, high)`` arrays;
- ``paired_interval``: the t-interval of per-seed differences ``y - base``: methods run on the same seeds
  with common random numbers are compared by their paired differences, not by two marginal intervals;
- ``paired_summary``: that interval as summary entries ``{prefix}/diff``, ``_low``, ``_high`` (and
  ``{prefix}/below_frac``: the fraction of seeds where ``y < base``);
- ``welch_interval``: ``mean(y) - mean(x)`` for independent samples with Welch's t-interval;
- ``fit_loglog_slope``: least-squares slope of ``log(mean over seeds of y)`` against ``log x``, with a
  percentile-bootstrap interval over seeds (seeds resampled with replacement, the seed-mean curve
  refitted; ``numpy.random.default_rng(seed)``, so the interval is reproducible).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from scipy import stats

__all__ = ["Slope", "by_seed", "fit_loglog_slope", "mean_ci", "paired_interval", "paired_summary", "slope_summary",
           "t_interval", "welch_interval"]


class Slope(NamedTuple):
    slope: float
    low: float
    high: float
    intercept: float


def t_interval(y: Any, level: float = 0.95, axis: int = 0) -> tuple[Any, Any]:
    """``(mean, half)`` along ``axis``: ``half = t_{(1+level)/2, n-1} sd / sqrt(n)``, NaN when ``n < 2``.

    Scalars for a 1-D ``y``, arrays otherwise."""
    y = np.asarray(y, dtype=float)
    n = y.shape[axis]
    mean = y.mean(axis=axis)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    return mean, stats.t.ppf(0.5 + level / 2, n - 1) * y.std(axis=axis, ddof=1) / np.sqrt(n)


def paired_interval(y: Any, base: Any, level: float = 0.95) -> tuple[Any, Any]:
    """``t_interval`` of the per-seed differences ``y - base`` (axis 0 is the seed, paired by seed)."""
    y, base = np.asarray(y, dtype=float), np.asarray(base, dtype=float)
    if y.shape != base.shape:
        raise ValueError(f"paired_interval needs one value per seed on both sides, got shapes {y.shape} "
                         f"and {base.shape}.")
    return t_interval(y - base, level)


def paired_summary(prefix: str, y: Any, base: Any, level: float = 0.95) -> dict[str, float]:
    """``{prefix}/diff`` = mean over seeds of ``y - base`` with its paired interval ``{prefix}/diff_low``,
    ``_high`` (``paired_interval``; NaN bounds for one seed) and ``{prefix}/below_frac``, the fraction of
    seeds with ``y < base``: for a loss, an interval wholly below 0 says ``y`` is lower on these seeds."""
    mean, half = map(float, paired_interval(y, base, level))
    below = float(np.mean(np.asarray(y, float) < np.asarray(base, float)))
    return {f"{prefix}/diff": mean, f"{prefix}/diff_low": mean - half, f"{prefix}/diff_high": mean + half,
            f"{prefix}/below_frac": below}


def welch_interval(x: Any, y: Any, level: float = 0.95) -> tuple[float, float, float]:
    """``mean(y) - mean(x)`` and its Welch t-interval ``(diff, low, high)`` for independent samples
    (a zero-width interval when both samples are constant)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    diff = float(y.mean() - x.mean())
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = np.sqrt(vx + vy)
    if se == 0:
        return diff, diff, diff
    dof = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, dof) * se)
    return diff, diff - half, diff + half


def by_seed(x: Any, y_by_seed: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=float)
    y = np.asarray(y_by_seed, dtype=float)
    if y.ndim == 1:
        y = y[None, :]
    if x.ndim != 1 or y.ndim != 2 or y.shape[1] != x.shape[0]:
        raise ValueError(f"expected x [n_points] and y_by_seed [n_seeds, n_points]; got x {x.shape}, "
                         f"y_by_seed {y.shape}.")
    return x, y


def mean_ci(y_by_seed: Any, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds (axis 0) and its Student-t interval as ``(mean, low, high)`` (``t_interval``); with
    one seed the interval collapses to the mean (a band of zero width)."""
    mean, half = t_interval(y_by_seed, level)
    half = np.nan_to_num(half, nan=0.0)
    return mean, mean - half, mean + half


def fit_loglog_slope(x: Any, y_by_seed: Any, *, level: float = 0.95, n_boot: int = 2000,
                     seed: int = 0) -> Slope:
    """Slope of ``log(mean over seeds of y)`` against ``log x`` (least squares) and a bootstrap CI.

    The interval resamples seeds with replacement ``n_boot`` times (``np.random.default_rng(seed)``)
    and takes percentiles of the refitted slopes; with one seed it collapses to the point estimate.
    Needs ``x > 0`` and positive seed means. A resample whose mean is zero at some ``x`` (seeds with an exact
    zero, e.g. a gap at the solver's tolerance) has no slope: the percentiles are taken over the resamples that
    have one, and the interval is NaN when fewer than ``level`` of them do.
    """
    x, y = by_seed(x, y_by_seed)
    if x.size < 2 or np.any(x <= 0):
        raise ValueError(f"fit_loglog_slope needs at least two positive x values, got {x}.")
    lx = np.log(x) - np.log(x).mean()

    def slopes(means: np.ndarray) -> np.ndarray:
        if np.any(means <= 0) or not np.all(np.isfinite(means)):
            raise ValueError("fit_loglog_slope needs positive finite seed means of y.")
        ly = np.log(means)
        return (ly - ly.mean(axis=-1, keepdims=True)) @ lx / (lx @ lx)

    mean = y.mean(axis=0)
    point = float(slopes(mean))
    intercept = float(np.log(mean).mean() - point * np.log(x).mean())
    n = y.shape[0]
    if n < 2:
        return Slope(point, point, point, intercept)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    means = y[idx].mean(axis=1)
    defined = np.all(means > 0, axis=-1) & np.all(np.isfinite(means), axis=-1)
    if defined.mean() < level:   # too few resamples have a slope for a level-`level` interval
        return Slope(point, float("nan"), float("nan"), intercept)
    low, high = np.quantile(slopes(means[defined]), [0.5 - level / 2, 0.5 + level / 2])
    return Slope(point, float(low), float(high), intercept)


def slope_summary(prefix: str, x: Any, y_by_seed: Any, level: float = 0.95) -> dict[str, Any]:
    """Summary entries ``{prefix}/slope``, ``_low``, ``_high`` of ``fit_loglog_slope``; when the fit is
    undefined (fewer than two sizes, a seed mean that is zero, negative or not finite) the slope is NaN and
    ``{prefix}/slope_missing`` says why: a summary never loses the results that precede it."""
    x, y = by_seed(x, y_by_seed)
    means = y.mean(axis=0)
    reason = None
    if x.size < 2:
        reason = "fewer than two sizes"
    elif not np.all(np.isfinite(means)):
        reason = "a seed mean is not finite"
    elif np.any(means <= 0):
        reason = "a seed mean is <= 0 (log-log slope undefined)"
    if reason is not None:
        return {f"{prefix}/slope": float("nan"), f"{prefix}/slope_low": float("nan"),
                f"{prefix}/slope_high": float("nan"), f"{prefix}/slope_missing": reason}
    fit = fit_loglog_slope(x, y, level=level)
    out = {f"{prefix}/slope": fit.slope, f"{prefix}/slope_low": fit.low, f"{prefix}/slope_high": fit.high}
    if np.isnan(fit.low):
        out[f"{prefix}/slope_missing"] = (f"interval: fewer than {level:.0%} of the bootstrap resamples have positive "
                                          "seed means at every size")
    return out
