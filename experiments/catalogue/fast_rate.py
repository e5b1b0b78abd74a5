"""fast-rate (docs/theory.md E11, §7, §9.2 invariant 18): fast 1/n vs slow 1/sqrt(n) suboptimality rates.

Three panels, all evaluated exactly (no Monte Carlo over contexts or actions):

- ``canonical``: the canonical random family (d, K, n_x, B; uniform ``pi0``), one stream of
  comparisons ``a1, a2 ~ pi0`` whose nested prefixes are the data sets of size ``n``, a warm-started
  BT-MLE per ``n``. Algorithms: ``gibbs`` = Gibbs-of-MLE, metric the KL-regularized suboptimality
  ``J(pi*) - J(pi_hat)``; ``greedy`` = ``argmax_a r_hat(x, a)``, metric the *unregularized*
  suboptimality ``E_x[max_a r*(x,a) - r*(x, argmax_a r_hat(x,a))]``.
- ``margin``: the margin family. K = 2 actions, one context, d = 1, ``theta* = 1`` and
  ``phi(x, a_1) = +gap/2``, ``phi(x, a_2) = -gap/2`` (a linear BT instance whose reward gap is
  ``gap``), uniform ``pi0``; ``gap`` on a log-grid. The quantity of interest is, for each ``n``, the
  WORST case over the family of the seed-mean suboptimality: about ``n^-1/2`` for greedy (the gap
  that is hardest is ``gap ~ n^-1/2``), about ``n^-1`` for Gibbs-of-MLE (its error is quadratic in the
  reward error for every gap, docs/theory.md §1.3). All gaps share the stream's keys (common random numbers).
- ``tmps``: TMPS-PF (``algorithms.offline.tmps``; Zhao et al. 2411.04625 Alg. 2) against Gibbs-of-MLE on
  plain ``pi0`` data at equal total comparisons ``n``, on an instance where ``pi0`` covers ``pi*``
  poorly (coverage ``c < 0``, temperature ``s > 0``). TMPS uses ``m = round(tmps_stage1 * n)``
  stage-1 comparisons and ``n - m`` stage-2 ones; it is rerun for each ``n`` (its stage-2 policy
  depends on ``m``), from the same stream as the ``pi0`` baseline, so stage 1 of TMPS is the prefix
  of size ``m`` of the baseline's data.

Slopes: least squares on log(seed mean) vs log n with a bootstrap-over-seeds 95% CI
(``stats.fit_loglog_slope``); for the margin envelope the bootstrap resamples seeds, recomputes
every gap's seed mean and takes the max over gaps before refitting (``envelope_slope``).
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import bandits as b
from algorithms.core.bt_mle import fit_bt_mle
from algorithms.offline.gshf import linear_gibbs
from algorithms.offline.tmps import tmps
from bandits import validation as v
from experiments.engine import plotting, stats
from experiments.engine.config import check_unused, replace
from experiments.engine.results import Results, concat_tables, tidy
from experiments.engine.runner import run_vectorized, seed_keys

PANELS = ("canonical", "margin", "tmps")
LABELS = {"gibbs": "Gibbs-of-MLE (KL-reg.)", "greedy": "greedy argmax r_hat (unreg.)",
          "pi0": "Gibbs-of-MLE, pi0 data", "tmps": "TMPS-PF"}
COLORS = {"gibbs": "C0", "greedy": "C3", "pi0": "C2", "tmps": "C4"}

description = "E11: fast-rate slopes (KL-reg. Gibbs-of-MLE ~1/n vs greedy worst case ~1/sqrt(n)); TMPS vs pi0"


# The canonical and TMPS panels are linear BT instances with a uniform pi0 (TMPS: its own coverage and
# temperature): the instance fields below are not read.
UNUSED_INSTANCE_FIELDS = ("instance.coverage", "instance.temperature", "instance.reward", "instance.hidden",
                          "instance.skew_strength")


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields reachable with ``--set field=value``, those of the nested ``instance`` by their own names.

    panels: which panels run (canonical, margin, tmps); instance: the canonical panel's
    ``bandits.InstanceConfig`` (n_contexts, n_actions, dim, reward_norm (B), kl_coef; its coverage,
    temperature, reward, hidden and skew_strength are refused: the panel is the linear BT family with a
    uniform pi0); sample_sizes: the canonical and TMPS panels' numbers of comparisons ``n`` (increasing);
    margin_gap_min: the smallest reward gap ``Delta`` of the margin panel's log-grid; margin_gap_max: the
    largest gap of that grid; margin_gap_count: the number of gaps in that grid; margin_kl_coef: the margin
    panel's ``eta``; margin_sample_sizes: the margin panel's numbers of comparisons; tmps_coverage: ``c``
    of the TMPS panel's pi0; tmps_temperature: ``s`` of the TMPS panel's pi0; tmps_kl_coef: the TMPS
    panel's ``eta``; tmps_stage1: the stage-1 fraction of each TMPS budget ``n`` (docs/theory.md §5.3);
    lam: the ridge of every BT-MLE (no confidence set is built).
    """

    panels: tuple[str, ...] = PANELS
    instance: b.InstanceConfig = b.InstanceConfig()
    sample_sizes: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
    margin_gap_min: float = 1e-3
    margin_gap_max: float = 1.0
    margin_gap_count: int = 16
    margin_kl_coef: float = 1.0
    margin_sample_sizes: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
    tmps_coverage: float = -0.8
    tmps_temperature: float = 10.0
    tmps_kl_coef: float = 0.1
    tmps_stage1: float = 0.5
    lam: float = 1.0
    chunk_size: int = 256
    seed: int = 0

    def __post_init__(self):
        if not self.panels or len(set(self.panels)) != len(self.panels):
            v.fail("panels", self.panels, "a non-empty tuple of distinct names from " + ", ".join(PANELS))
        for p in self.panels:
            v.check_choice("panels", p, PANELS)
        check_unused(self, UNUSED_INSTANCE_FIELDS, "the canonical and TMPS panels are linear BT instances with a "
                     "uniform pi0 (TMPS sets its own tmps_coverage and tmps_temperature)")
        v.check_increasing_ints("sample_sizes", self.sample_sizes, 2)
        v.check_increasing_ints("margin_sample_sizes", self.margin_sample_sizes, 1)
        v.check_float("margin_gap_min", self.margin_gap_min, low=0.0, low_open=True)
        v.check_float("margin_gap_max", self.margin_gap_max, low=self.margin_gap_min, high=4.0)
        v.check_int("margin_gap_count", self.margin_gap_count, 1)
        v.check_float("margin_kl_coef", self.margin_kl_coef, low=0.0, low_open=True)
        v.check_float("tmps_coverage", self.tmps_coverage, low=-1.0, high=1.0)
        v.check_float("tmps_temperature", self.tmps_temperature, low=0.0)
        v.check_float("tmps_kl_coef", self.tmps_kl_coef, low=0.0, low_open=True)
        stage1 = v.check_float("tmps_stage1", self.tmps_stage1, low=0.0, high=1.0, low_open=True)
        if "tmps" in self.panels and round(stage1 * self.sample_sizes[0]) < 1:
            v.fail("tmps_stage1", self.tmps_stage1,
                   f"large enough that round(tmps_stage1 * {self.sample_sizes[0]}) >= 1 "
                   "(TMPS needs stage-1 data at the smallest sample size)")
        v.check_float("lam", self.lam, low=0.0, low_open=True)
        v.check_int("chunk_size", self.chunk_size, 1)

    @property
    def gaps(self) -> np.ndarray:
        return np.geomspace(self.margin_gap_min, self.margin_gap_max, self.margin_gap_count)

    def stage_sizes(self, n: int) -> tuple[int, int]:
        m = min(max(int(round(self.tmps_stage1 * n)), 1), n)
        return m, n - m


presets = {
    "quick": replace(Config(), sample_sizes=(64, 256, 1024), margin_sample_sizes=(64, 256, 1024, 4096),
                     margin_gap_count=12),
    "paper": replace(Config(), sample_sizes=(64, 128, 256, 512, 1024, 2048, 4096, 8192)),
}
seeds = {"quick": 64, "paper": 256}


def greedy_suboptimality(instance: b.Instance, reward_hat: jax.Array) -> jax.Array:
    """``E_x[max_a r*(x,a) - r*(x, a_hat(x))]``, ``a_hat = argmax_a r_hat(x,a)``: unregularized, exact.

    Exact ties in ``r_hat`` are broken uniformly at random (the expected reward over the tied set),
    so a tie never favours the first action.
    """
    tied = reward_hat == jnp.max(reward_hat, axis=-1, keepdims=True)
    chosen = jnp.sum(jnp.where(tied, instance.reward, 0.0), axis=-1) / jnp.sum(tied, axis=-1)
    return b.context_mean(instance, jnp.max(instance.reward, axis=-1) - chosen)


def nested_fits(instance: b.Instance, stream: b.PreferenceData, sizes, lam) -> list[jax.Array]:
    """Warm-started BT-MLE on each prefix ``stream[:n]``, ``n`` in ``sizes``."""
    z_all = b.feature_differences(instance, stream)
    theta = jnp.zeros(instance.dim, z_all.dtype)
    out = []
    for n in sizes:
        theta = fit_bt_mle(z_all[:n], stream.y[:n], stream.mask[:n], lam, theta0=theta).theta
        out.append(theta)
    return out


def canonical_seed(key, config: Config):
    """``{"subopt": [n_sizes, 2]}`` for (gibbs, greedy) on one canonical instance."""
    k_inst, k_data = jax.random.split(key)
    inst = b.make_instance(k_inst, config.instance)
    stream = b.sample_preference_data(k_data, inst, inst.log_pi0, inst.log_pi0, config.sample_sizes[-1])
    rows = []
    for theta in nested_fits(inst, stream, config.sample_sizes, config.lam):
        rows.append(jnp.stack([b.suboptimality(inst, linear_gibbs(inst, theta)),
                               greedy_suboptimality(inst, inst.phi @ theta)]))
    return {"subopt": jnp.stack(rows)}


def margin_instance(gap, kl_coef) -> b.Instance:
    """K=2, one context, d=1: ``theta* = 1``, ``phi = (+gap/2, -gap/2)``, uniform ``pi0``."""
    gap = jnp.asarray(gap)
    phi = jnp.stack([0.5 * gap, -0.5 * gap]).reshape(1, 2, 1)
    theta = jnp.ones((1,), gap.dtype)
    log_pi0 = jnp.full((1, 2), -jnp.log(2.0), gap.dtype)
    inst = b.instance_from_arrays(phi, log_pi0, phi @ theta, kl_coef)
    return inst._replace(params=b.LinearReward(theta))


def margin_stream(key, n: int, dtype):
    """Gap-free randomness of the margin family's comparison stream, as arrays of length ``n``.

    ``a1, a2 ~ uniform{0, 1}`` and label uniforms ``u``; comparison ``i`` of gap ``g`` has
    ``y_i = 1{u_i < sigma(r(a1_i) - r(a2_i))}``, so prefixes are nested and every gap sees the same
    actions and uniforms (common random numbers). Drawn as whole arrays: with one context, two
    actions and ``n_gaps x n`` comparisons per seed, the per-comparison keys of
    ``bandits.sample_preference_data`` would dominate the run time; the law is the same.
    """
    k1, k2, ku = jax.random.split(key, 3)
    a1 = jax.random.bernoulli(k1, 0.5, (n,)).astype(jnp.int32)
    a2 = jax.random.bernoulli(k2, 0.5, (n,)).astype(jnp.int32)
    return a1, a2, jax.random.uniform(ku, (n,), dtype)


def margin_counts(a1, a2, u, gap, sizes):
    """Sufficient statistics of the margin-family BT data at each prefix size: ``(wins, losses)``.

    A non-tied comparison (``a1 != a2``) is a "win" when the better action 0 is preferred; with
    ``d = 1`` the BT log-likelihood of a prefix is ``-W softplus(-gap theta) - L softplus(gap theta)``.
    """
    inst = margin_instance(gap, 1.0)
    p1 = b.preference_probability(inst, jnp.zeros_like(a1), a1, a2)
    y = u < p1
    win = (a1 != a2) & (y == (a1 == 0))
    lose = (a1 != a2) & ~win
    cw, cl = jnp.cumsum(win), jnp.cumsum(lose)
    index = jnp.asarray(sizes) - 1
    return cw[index].astype(u.dtype), cl[index].astype(u.dtype)


def margin_mle(wins, losses, gap, lam, steps: int = 80):
    """``argmin_theta W softplus(-gap theta) + L softplus(gap theta) + lam theta^2 / 2`` (d = 1).

    The derivative is increasing and vanishes in ``|theta| <= (W + L) gap / lam``: bisection on it
    (``steps`` halvings), then two Newton steps. Equals ``fit_bt_mle`` on the comparison rows
    (checked in tests/test_fast_rate.py) at a tiny fraction of the cost.
    """
    def grad(t):
        return -wins * gap * jax.nn.sigmoid(-gap * t) + losses * gap * jax.nn.sigmoid(gap * t) + lam * t

    bound = (wins + losses) * gap / lam + 1.0

    def halve(_, state):
        lo, hi = state
        mid = 0.5 * (lo + hi)
        up = grad(mid) > 0
        return jnp.where(up, lo, mid), jnp.where(up, mid, hi)

    lo, hi = jax.lax.fori_loop(0, steps, halve, (-bound, bound))
    t = 0.5 * (lo + hi)
    for _ in range(2):
        curv = (wins + losses) * gap**2 * jax.nn.sigmoid(gap * t) * jax.nn.sigmoid(-gap * t) + lam
        t = t - grad(t) / curv
    return jnp.where(wins == losses, 0.0, t)   # the exact minimiser when W = L


def margin_seed(key, gaps, kl_coef, config: Config):
    """``{"subopt": [n_sizes, n_gaps, 2]}`` for (gibbs, greedy); every gap uses the same stream."""
    a1, a2, u = margin_stream(key, config.margin_sample_sizes[-1], gaps.dtype)

    def one_gap(gap):
        inst = margin_instance(gap, kl_coef)
        wins, losses = margin_counts(a1, a2, u, gap, config.margin_sample_sizes)
        theta = margin_mle(wins, losses, gap, config.lam)          # [n_sizes]

        def metrics(t):
            t = t[None]
            return jnp.stack([b.suboptimality(inst, linear_gibbs(inst, t)),
                              greedy_suboptimality(inst, inst.phi @ t)])

        return jax.vmap(metrics)(theta)

    return {"subopt": jnp.moveaxis(jax.vmap(one_gap)(gaps), 0, 1)}


def tmps_seed(key, coverage, temperature, kl_coef, config: Config):
    """``{"subopt": [n_sizes, 2]}`` for (pi0, tmps) at equal total comparisons."""
    k_inst, k_data = jax.random.split(key)
    inst = b.make_instance(k_inst, config.instance, coverage=coverage, temperature=temperature,
                           kl_coef=kl_coef)
    stream = b.sample_preference_data(k_data, inst, inst.log_pi0, inst.log_pi0, config.sample_sizes[-1])
    rows = []
    for n, theta in zip(config.sample_sizes, nested_fits(inst, stream, config.sample_sizes, config.lam)):
        m, rest = config.stage_sizes(n)
        two_stage = tmps(k_data, inst, m, rest, config.lam)
        rows.append(jnp.stack([b.suboptimality(inst, linear_gibbs(inst, theta)),
                               b.suboptimality(inst, two_stage.log_pi)]))
    return {"subopt": jnp.stack(rows)}


def envelope_slope(x, y, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> stats.Slope:
    """Log-log slope of ``max_g mean_seeds y[:, g, :]`` vs ``x`` (``y [seeds, gaps, n]``), bootstrap CI.

    Mirrors ``stats.fit_loglog_slope``: point estimate on the full sample; the interval resamples
    seeds with replacement (``np.random.default_rng(seed)``), recomputes every gap's seed mean and
    the max over gaps, and refits.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    point = safe_slope(x, y.mean(0).max(0)[None, :])
    if np.isnan(point.slope):
        return point
    rng = np.random.default_rng(seed)
    lx = np.log(x) - np.log(x).mean()
    boot = np.empty(n_boot)
    for i in range(n_boot):
        env = y[rng.integers(0, y.shape[0], y.shape[0])].mean(0).max(0)
        ly = np.log(np.where(env > 0, env, np.nan))
        boot[i] = (ly - ly.mean()) @ lx / (lx @ lx)      # NaN if a resample's envelope hits 0
    low, high = np.nanquantile(boot, [0.5 - level / 2, 0.5 + level / 2])
    return stats.Slope(point.slope, float(low), float(high), point.intercept)


def envelope_band(y, *, level: float = 0.95, n_boot: int = 500, seed: int = 0):
    """Envelope ``max_g mean_seeds y`` and its bootstrap percentile band (``y [seeds, gaps, n]``)."""
    rng = np.random.default_rng(seed)
    boot = np.stack([y[rng.integers(0, y.shape[0], y.shape[0])].mean(0).max(0) for _ in range(n_boot)])
    low, high = np.quantile(boot, [0.5 - level / 2, 0.5 + level / 2], axis=0)
    return y.mean(0).max(0), low, high


def safe_slope(x, y) -> stats.Slope:
    """``stats.fit_loglog_slope``; NaNs when some seed mean is zero (e.g. greedy exactly right
    on every seed), and a NaN interval when only some bootstrap resamples have a zero mean."""
    y = np.asarray(y, float)
    if not np.all(y.mean(0) > 0):
        return stats.Slope(np.nan, np.nan, np.nan, np.nan)
    try:
        return stats.fit_loglog_slope(x, y)
    except ValueError:
        point = stats.fit_loglog_slope(x, y.mean(0)[None, :])
        return stats.Slope(point.slope, np.nan, np.nan, point.intercept)


def _slope_summary(summary, prefix, fit):
    summary[f"{prefix}/slope"] = fit.slope
    summary[f"{prefix}/slope_low"] = fit.low
    summary[f"{prefix}/slope_high"] = fit.high


def _table(subopt, panel, algorithms, seeds, sizes, kl_coef, gap=None):
    count = subopt.shape[0] * int(np.prod(subopt.shape[1:]))
    if gap is None:
        table = tidy({"subopt": subopt}, seed=np.arange(seeds), n=np.asarray(sizes),
                     algorithm=np.asarray(algorithms))
        table["gap"] = np.full(count, np.nan)
    else:
        table = tidy({"subopt": subopt}, seed=np.arange(seeds), n=np.asarray(sizes), gap=gap,
                     algorithm=np.asarray(algorithms))
    table = {"panel": np.full(count, panel), "algorithm": table["algorithm"], "seed": table["seed"],
             "n": table["n"], "gap": table["gap"], "kl_coef": np.full(count, kl_coef),
             "subopt": table["subopt"]}
    return table


def run(config: Config, seeds: int, progress) -> Results:
    keys = seed_keys(config.seed, seeds)
    tables, outs = [], {}
    chunk = config.chunk_size
    if "canonical" in config.panels:
        out = outs["canonical"] = run_vectorized(functools.partial(canonical_seed, config=config), keys,
                                                 chunk_size=chunk, progress=progress, tag="canonical")
        tables.append(_table(out["subopt"], "canonical", ("gibbs", "greedy"), seeds, config.sample_sizes,
                             config.instance.kl_coef))
    if "margin" in config.panels:
        out = outs["margin"] = run_vectorized(functools.partial(margin_seed, config=config), keys, config.gaps,
                                              np.float64(config.margin_kl_coef), chunk_size=chunk, progress=progress,
                                              tag="margin")
        tables.append(_table(out["subopt"], "margin", ("gibbs", "greedy"), seeds, config.margin_sample_sizes,
                             config.margin_kl_coef, gap=config.gaps))
    if "tmps" in config.panels:
        out = outs["tmps"] = run_vectorized(functools.partial(tmps_seed, config=config), keys,
                                            np.float64(config.tmps_coverage), np.float64(config.tmps_temperature),
                                            np.float64(config.tmps_kl_coef), chunk_size=chunk, progress=progress,
                                            tag="tmps")
        tables.append(_table(out["subopt"], "tmps", ("pi0", "tmps"), seeds, config.sample_sizes,
                             config.tmps_kl_coef))

    def summarize():
        summary = {}
        for panel in (p for p in ("canonical", "margin", "tmps") if p in outs):
            subopt = outs[panel]["subopt"]
            for i, alg in enumerate(("pi0", "tmps") if panel == "tmps" else ("gibbs", "greedy")):
                if panel == "margin":
                    y = np.moveaxis(subopt[..., i], 2, 1)   # [seeds, gaps, n]
                    _slope_summary(summary, f"margin/{alg}/worst_case", envelope_slope(config.margin_sample_sizes, y))
                    worst = y.mean(0).argmax(0)
                    summary[f"margin/{alg}/worst_gap_n_min"] = float(config.gaps[worst[0]])
                    summary[f"margin/{alg}/worst_gap_n_max"] = float(config.gaps[worst[-1]])
                else:
                    y = subopt[:, :, i]
                    _slope_summary(summary, f"{panel}/{alg}", safe_slope(config.sample_sizes, y))
                    summary[f"{panel}/{alg}/subopt_n_max"] = float(y[:, -1].mean())
            if panel == "tmps":
                summary["tmps/subopt_ratio_tmps_over_pi0_n_max"] = float(subopt[:, -1, 1].mean()
                                                                         / subopt[:, -1, 0].mean())
        return summary

    return Results(concat_tables(tables), summarize)


def _reference(ax, x, y0, power, label):
    """Dashed ``y0 (n / n_0)^power`` from the first point: long dashes for -1, short for -1/2."""
    x = np.asarray(x, float)
    style = {"dashes": (7, 3), "color": "0.15"} if power == -1.0 else {"dashes": (2, 2), "color": "0.45"}
    plotting.bound_plot(ax, x, y0 * (x / x[0]) ** power, label, linewidth=1.1, **style)


def _rows(table, **where):
    mask = np.ones(len(table["panel"]), bool)
    for k, val in where.items():
        mask &= np.asarray(table[k]) == val
    return mask


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    panels = [p for p in PANELS if np.any(np.asarray(table["panel"]) == p)]
    fig, axes = plotting.figure(ncols=len(panels), size=(5.2, 4.4))
    axes = np.atleast_1d(axes)
    for ax, panel in zip(axes, panels):
        kl = float(np.asarray(table["kl_coef"])[_rows(table, panel=panel)][0])
        if panel == "margin":
            _plot_margin(ax, table, kl)
            continue
        algs = ("gibbs", "greedy") if panel == "canonical" else ("pi0", "tmps")
        first = None
        for alg in algs:
            x, y = plotting.pivot(table, "n", "subopt", where={"panel": panel, "algorithm": alg})
            fit = safe_slope(x, y)
            label = LABELS[alg] if np.isnan(fit.slope) else plotting.slope_label(LABELS[alg], fit)
            plotting.band_plot(ax, x, y, label, color=COLORS[alg], loglog=True)
            first = y.mean(0)[0] if first is None else max(first, y.mean(0)[0])
        _reference(ax, x, first, -1.0, "reference slope -1")
        _reference(ax, x, first, -0.5, "reference slope -1/2")
        if panel == "canonical":
            i = config.instance
            ax.set(title=f"(a) canonical: d={i.dim}, K={i.n_actions}, n_x={i.n_contexts}, "
                         f"B={i.reward_norm:g},\nuniform pi0, kl_coef={kl:g}",
                   ylabel="suboptimality (gibbs: J-gap; greedy: reward gap)")
        else:
            ax.set(title=f"(c) TMPS vs pi0 data, equal total n: c={config.tmps_coverage:+g}, "
                         f"s={config.tmps_temperature:g},\nkl_coef={kl:g}, stage 1 = "
                         f"{config.tmps_stage1:g} n",
                   ylabel="J(pi*) - J(pi_hat)")
        ax.set_xlabel("n (total comparisons)")
        ax.legend(fontsize="x-small", loc="lower left")
    fig.suptitle("fast-rate: exact suboptimality vs n (mean over seeds, 95% band; slopes with 95% bootstrap CI)")
    return plotting.save_figure(fig, out_dir, "fast_rate")


def _plot_margin(ax, table, kl):
    gaps = np.unique(np.asarray(table["gap"])[_rows(table, panel="margin")])
    starts, floors = [], []
    for alg in ("gibbs", "greedy"):
        ys = []
        for g in gaps:
            mask = _rows(table, panel="margin", algorithm=alg) & (np.asarray(table["gap"]) == g)
            x, y = plotting.pivot({k: np.asarray(val)[mask] for k, val in table.items()}, "n", "subopt")
            ys.append(y)
        y = np.stack(ys, axis=1)                        # [seeds, gaps, n]
        env, low, high = envelope_band(y)
        fit = envelope_slope(x, y)
        for j in range(len(gaps)):
            single = y[:, j].mean(0)                     # zero (all seeds right) is left out on log axes
            ax.plot(x, np.where(single > 0, single, np.nan), color=COLORS[alg], alpha=0.18, linewidth=0.7)
        line, = ax.plot(x, env, color=COLORS[alg], marker="o", markersize=3,
                        label=plotting.slope_label(f"worst case over gaps, {LABELS[alg]}", fit))
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        starts.append(env[0])
        floors.append(env.min())
    ax.plot([], [], color="0.5", alpha=0.5, linewidth=0.7, label="single gaps (thin; 0 omitted)")
    _reference(ax, x, max(starts), -1.0, "reference slope -1")
    _reference(ax, x, max(starts), -0.5, "reference slope -1/2")
    plotting.set_loglog(ax)
    ax.set_ylim(min(floors) / 20, max(starts) * 3)   # single gaps far below the envelopes are clipped
    ax.set(title=f"(b) margin family: K=2, reward gap in [{gaps[0]:g}, {gaps[-1]:g}] "
                 f"({len(gaps)} gaps),\nuniform pi0, kl_coef={kl:g}",
           xlabel="n (comparisons)", ylabel="max over gaps of mean suboptimality")
    ax.legend(fontsize="x-small", loc="lower left")
