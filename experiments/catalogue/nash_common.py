"""Config checks and plotting shared by the four P2 experiments (docs/theory.md §3): nash-intransitive,
nash-offline, nash-online and nash-kl-sweep.

- ``check_p2_config``: the checks every P2 config shares (linear reward, the confidence fields it reads,
  the ``nash`` options its methods read, the payoff, the algorithms);
- one figure panel of a metric against the swept quantity, one 95% band per algorithm
  (``metric_panel``), coloured by the method's registry entry (``algorithms.nash.methods``) so a method
  looks the same in every P2 figure (``panel_colors``: a method without a colour gets a free one);
- ``thin_log_x_ticks`` keeps a wide log axis legible;
- for the two sweeps (nash-intransitive over the skew strength, nash-kl-sweep over ``kl_coef``): every
  method on one point of the sweep, evaluated exactly (``sweep_point_metrics``), every seed and point with
  the query count of each row (``run_sweep``) and the legend texts with them (``labels_with_queries``).

The methods, their labels, colours, kinds and query counts live in ``algorithms.nash.methods``; the
exact metrics of a policy in ``bandits.nash.policy_metrics``.
"""
from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib import ticker

import bandits as b
from algorithms.nash import methods
from algorithms.nash import preference_model as gp
from bandits import validation as v
from bandits.nash import policy_metrics
from experiments.engine import plotting
from experiments.engine.config import check_unused
from experiments.engine.results import tidy
from experiments.engine.runner import run_vectorized, seed_keys


def check_p2_config(config, kinds: tuple[str, ...], name: str, *, confidence_set: bool = True) -> None:
    """Refuse what a P2 experiment's config does not read and check its payoff and algorithms: a linear
    reward (the general-preference class is then realizable); no reference vector (the uncertainty
    ``||psi||_{Sigma^-1}`` needs none), or no confidence fields at all without an offline confidence set
    (``confidence_set=False``); no ``nash`` option that no registered method of ``kinds`` reads."""
    check_unused(config, ("instance.reward", "instance.hidden"), "P2's experiments use a linear reward "
                 "(the general-preference class is then realizable)")
    if confidence_set:
        check_unused(config, ("confidence.reference_vector",), "the uncertainty ||psi||_{Sigma^-1} of the "
                     "general-preference model needs no reference vector")
    else:
        check_unused(config, ("confidence.beta_mode", "confidence.c_beta", "confidence.delta",
                              "confidence.reference_vector"),
                     f"{name} builds no offline confidence set (the enhancer's radius is beta)")
    only = "offline methods only and no registered one" if kinds == ("offline",) else (
        f"methods of the kinds {', '.join(kinds)} and no registered one")
    check_unused(config, tuple(f"nash.{f}" for f in methods.unread_options(kinds)), f"{name} runs {only} reads it")
    v.check_choice("payoff", config.payoff, b.PAYOFFS)
    methods.check_algorithms("algorithms", config.algorithms, kinds, config.payoff)


def thin_log_x_ticks(ax, max_decades: float = 2.5) -> None:
    """Ticks at powers of ten only when a log x axis spans more than ``max_decades`` decades (the 1-2-5
    ticks of ``plotting.set_logx`` then run into each other, e.g. n = 64 .. 65536)."""
    low, high = ax.get_xlim()
    if low > 0 and np.log10(high / low) > max_decades:
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10.0, subs=(1.0,)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))


def panel_colors(algorithms) -> dict[str, str | None]:
    """Each method's registry colour; a method without one (a plugin's) gets the first colour of
    matplotlib's cycle ``C0 .. C9`` that no other method of ``algorithms`` uses (else ``None``)."""
    colors = {a: methods.color(a) for a in algorithms}
    free = [f"C{i}" for i in range(10) if f"C{i}" not in colors.values()]
    return {a: c if c is not None else (free.pop(0) if free else None) for a, c in colors.items()}


def metric_panel(ax, table, x: str, metric: str, labels: Mapping[str, str], *, title: str, xlabel: str,
                 ylabel: str, where: Mapping | None = None, marker: str | None = "o", log_x: bool = False,
                 legend_size: str | None = "x-small", legend_loc: str = "best") -> None:
    """``metric`` against ``x`` with a 95% band over seeds for each algorithm of ``labels`` (name ->
    legend text), rows filtered by ``where``. The gap is drawn on a log scale, win rates with the
    1/2 line (the equilibrium against itself); ``legend_size=None`` leaves the curves out of any
    legend (for a figure whose other panel carries it)."""
    colors = panel_colors(labels)
    for alg, label in labels.items():
        xs, ys = plotting.pivot(table, x, metric, where={**(where or {}), "algorithm": alg})
        # "_": matplotlib's mark for a curve left out of legends (another panel carries the legend)
        plotting.band_plot(ax, xs, ys, label if legend_size else f"_{label}", color=colors[alg], marker=marker)
    if metric == "nash_gap":
        plotting.set_loglog(ax) if log_x else ax.set_yscale("log")
    elif log_x:
        plotting.set_logx(ax)
    if log_x:
        thin_log_x_ticks(ax)
    if metric.startswith("win_rate"):
        ax.axhline(0.5, color="0.5", linewidth=0.8, linestyle=":")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if legend_size is not None:
        ax.legend(fontsize=legend_size, loc=legend_loc)


def sweep_point_metrics(inst: b.Instance, k_data: jax.Array, key_of, config) -> dict:
    """``{metric: [n_algorithms]}`` of the methods of ``config.algorithms`` on ``inst``: offline methods on
    ``config.n`` comparisons ``a1, a2 ~ pi0`` drawn with ``k_data`` (and the confidence set of the nested
    ``confidence`` config when one of them needs it), the others with the key ``key_of(name)``; each
    method's final policy evaluated exactly against the equilibrium ``pi*`` (``bandits.nash.policy_metrics``)."""
    star = b.nash_equilibrium(inst, config.payoff).log_pi
    data = b.sample_preference_data(k_data, inst, inst.log_pi0, inst.log_pi0, config.n)
    cs = (gp.mle_confidence_set(inst, data, config.n, config.instance.reward_norm, config.confidence)
          if methods.needs_fit(config.algorithms) else None)
    policies = methods.run_methods(config.algorithms, inst, payoff=config.payoff, options=config.nash,
                                   lam=config.confidence.lam, key_of=key_of, data=data, confidence=cs)
    rows = [policy_metrics(inst, methods.final_policy(a, policies[a]), star, config.payoff)
            for a in config.algorithms]
    return {k: jnp.stack([r[k] for r in rows]) for k in rows[0]}


def run_sweep(per_seed, config, seeds: int, progress, chunk_size: int, **grid):
    """``(out, table)`` of a sweep over the one axis ``grid`` (``{column: values}``): ``per_seed(key, values,
    config=config)`` for every seed (``runner.run_vectorized``), its ``{metric: [n_seeds, n_grid,
    n_algorithms]}`` and the tidy table with the column ``n``, the comparisons each row's method used
    (``methods.queries``)."""
    (axis, values), = grid.items()
    out = run_vectorized(functools.partial(per_seed, config=config), seed_keys(config.seed, seeds), values,
                         progress=progress, chunk_size=chunk_size)
    table = tidy(out, seed=np.arange(seeds), **{axis: values}, algorithm=np.asarray(config.algorithms))
    table["n"] = np.asarray([methods.queries(a, config.nash, config.n) for a in table["algorithm"]])
    return out, table


def labels_with_queries(table) -> dict[str, str]:
    """``{method: "label (n=...)"}`` for the methods of ``table`` in order of appearance."""
    names, n = np.asarray(table["algorithm"]), np.asarray(table["n"])
    return {a: f"{methods.label(a)} (n={int(n[names == a][0])})" for a in dict.fromkeys(names.tolist())}
