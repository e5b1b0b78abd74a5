"""Shared by the four P2 experiments (docs/theory.md §3): nash-intransitive, nash-offline, nash-online and
nash-kl-sweep.

- the metrics of one policy in P2's KL-regularized game (``policy_metrics``, columns ``METRICS``);
- one label and one colour per algorithm name, so a method looks the same in every P2 figure;
- the default number of seeds per chunk (``CHUNK_SIZE``);
- the validation of an algorithm/design tuple (``check_algorithms``);
- one figure panel of a metric against the swept quantity, one 95% band per algorithm
  (``metric_panel``): the plotting loop the experiments had each written out; ``thin_log_x_ticks``
  keeps a wide log axis legible.
"""
from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from matplotlib import ticker

import bandits as b
from algorithms.nash import methods
from bandits import validation as v
from experiments.engine import plotting
METRICS = ("nash_gap", "win_rate_vs_ref", "win_rate_vs_nash", "kl_to_ref")

# Seeds per compiled chunk unless --chunk-size says otherwise (results do not depend on it): the paper
# preset of nash-offline, 128 seeds in one chunk, was killed by the OOM killer at 24 GB on this machine.
CHUNK_SIZE = 16

LABELS = {**{name: method.label for name, method in methods.OFFLINE.items()},
          "nash_md": "Nash-MD (sampled)", "inpo": "INPO (sampled)", "sppo": "SPPO (sampled)",
          "enhancer": "P2 online: main agent + enhancer", "self_play": "online: self-play pairs",
          "uniform": "online: uniform random pairs", "ipo": "IPO (offline, pairs from pi0)",
          "online_ipo": "iterative IPO (self-play)", "p2_online": "P2 online (enhancer)",
          "nash": "exact equilibrium pi*"}
COLORS = {"bt_gibbs": "C3", "dpo": "C1", "nash_mle": "C0", "p2_pessimistic": "C2", "nash_md": "C4",
          "inpo": "C9", "sppo": "C5", "enhancer": "C2", "self_play": "C3", "uniform": "C7", "ipo": "C8",
          "online_ipo": "C6", "p2_online": "C2", "nash": "k"}


def policy_metrics(instance: b.Instance, log_pi: jax.Array, log_star: jax.Array, payoff: str) -> dict:
    """Exact ``nash_gap`` (P2's duality gap), win rates vs ``pi0`` and vs ``pi*`` (true oracle), KL to ``pi0``."""
    return {"nash_gap": b.duality_gap(instance, log_pi, payoff),
            "win_rate_vs_ref": b.win_rate(instance, log_pi, instance.log_pi0),
            "win_rate_vs_nash": b.win_rate(instance, log_pi, log_star),
            "kl_to_ref": b.kl_to_reference(instance, log_pi)}


def check_algorithms(field: str, names, allowed) -> None:
    """``names`` must be a non-empty tuple of names from ``allowed``."""
    if not names:
        v.fail(field, names, "a non-empty tuple of " + ", ".join(repr(a) for a in allowed))
    for name in names:
        v.check_choice(field, name, allowed)


def thin_log_x_ticks(ax, max_decades: float = 2.5) -> None:
    """Ticks at powers of ten only when a log x axis spans more than ``max_decades`` decades (the 1-2-5
    ticks of ``plotting.set_logx`` then run into each other, e.g. n = 64 .. 65536)."""
    low, high = ax.get_xlim()
    if low > 0 and np.log10(high / low) > max_decades:
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10.0, subs=(1.0,)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))


def metric_panel(ax, table, x: str, metric: str, labels: Mapping[str, str], *, title: str, xlabel: str,
                 ylabel: str, where: Mapping | None = None, marker: str | None = "o", log_x: bool = False,
                 legend_size: str | None = "x-small", legend_loc: str = "best") -> None:
    """``metric`` against ``x`` with a 95% band over seeds for each algorithm of ``labels`` (name ->
    legend text), rows filtered by ``where``. The gap is drawn on a log scale, win rates with the
    1/2 line (the equilibrium against itself); ``legend_size=None`` leaves the curves out of any
    legend (for a figure whose other panel carries it)."""
    for alg, label in labels.items():
        xs, ys = plotting.pivot(table, x, metric, where={**(where or {}), "algorithm": alg})
        # "_": matplotlib's mark for a curve left out of legends (another panel carries the legend)
        plotting.band_plot(ax, xs, ys, label if legend_size else f"_{label}", color=COLORS.get(alg), marker=marker)
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
