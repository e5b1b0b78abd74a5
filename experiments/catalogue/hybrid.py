"""hybrid (docs/theory.md E5; P1 hybrid GSHF, §2.4): offline only vs online only vs hybrid at one budget.

With ``budget`` comparisons in total:

- ``offline``: all ``budget`` comparisons ``a1, a2 ~ pi0`` up front, then MLE-Gibbs (no online rounds);
- ``online``: no offline data, ``budget / m`` online iterations under ``strategy``;
- ``hybrid``: ``offline_fraction * budget`` comparisons from ``pi0``, then the rest online under
  ``strategy``: P1's hybrid algorithm with its exploration pair ``(pi_t, pi0)`` by default.

P1's hybrid bound (docs/theory.md §2.4) has the coverage term ``beta ||E_x[phi(x, pi*) - phi(x, pi0)]||_{Sigma^{-1}}``
(``confidence_width``): the online pairs ``(pi_t, pi0)`` should shrink it faster than more ``pi0``
data. The offline data's coverage is set by the instance's coverage knob (settings ``hard``:
``pi0`` covering ``pi*`` poorly; ``easy``: uniform ``pi0``).

Columns: those of ``online-explore`` plus ``mode`` and ``comparisons`` (offline + online data). The
regrets charge the online queries only (the offline data are given, not queried: 0 for ``offline``);
``log_det_gram`` / ``log_det_fisher`` measure the information of all the data, offline included, so the
three modes compare at an equal number of comparisons. The budget
sets the number of iterations of each mode and ``strategy`` (any online algorithm of
``algorithms.online.agents``) is the one algorithm run, so ``iterations`` and ``algorithms`` are refused.
The summary gives per setting and mode the final suboptimality, regrets and confidence width, and the
frequencies of P1's bounds, overall and on the event ``theta* in C_t`` (``online_common.bound_summary``:
``{setting}/{mode}/bound_holds_frac``, ``.../bound_holds_frac_in_set``, ...; where the strategy states a bound),
and the offline and online modes against the hybrid one at the end of the budget, paired by seed (same instances,
contexts and label uniforms): ``{setting}/{mode}/minus_hybrid/{metric}/diff`` with its 95% interval for the final
``subopt``, ``subopt_kl`` and ``confidence_width`` (``online_common.paired_final``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from algorithms.online import agents
from bandits import validation as v
from experiments.catalogue import online_common
from experiments.engine import plotting, stats
from experiments.engine.config import check_unused, replace
from experiments.engine.results import Results, concat_tables
from experiments.engine.runner import seed_keys

MODES = ("offline", "online", "hybrid")
PAIRED = ("subopt", "subopt_kl", "confidence_width")
description = "E5: offline-only vs online-only vs hybrid (P1) at an equal comparison budget"
nan_columns = online_common.nan_columns


@dataclasses.dataclass(frozen=True)
class Config(online_common.Config):
    """The fields of ``online_common.Config`` (documented there) and E5's own.

    ``budget``: the total number of comparisons ``n_off + m T`` of each mode (an integer ``>= 2``):
    ``offline`` takes all of them from ``pi0``, ``online`` runs ``budget / m`` iterations and ``hybrid``
    spends ``offline_fraction * budget`` on ``pi0`` data and the rest online (P1's hybrid GSHF,
    docs/theory.md §2.4). ``offline_fraction``: the share ``n_off / budget`` in ``(0, 1]`` of the hybrid
    mode's comparisons drawn ``a1, a2 ~ pi0`` up front, rounded to an integer ``n_off`` that must leave
    both parts non-empty (``0 < n_off < budget``); ``budget`` and ``budget - n_off`` must be multiples of
    ``batch_size``. ``strategy``: the one online algorithm of the online and hybrid modes, a name of
    ``algorithms.online.agents`` (optionally ``+distinct``); the default ``pi0`` queries ``(pi_t, pi0)``,
    P1's hybrid exploration pair. ``algorithms``: refused (must stay empty), since ``strategy`` is the
    one algorithm run."""

    budget: int = 2048
    offline_fraction: float = 0.5
    strategy: str = "pi0"

    def __post_init__(self):
        super().__post_init__()
        why = "hybrid runs budget / batch_size iterations of the one algorithm `strategy`"
        check_unused(self, ("online.iterations",), why)
        if self.algorithms:   # a top-level field (check_unused names nested ones)
            v.fail("algorithms", self.algorithms, f"() ({why})")
        v.check_int("budget", self.budget, 2)
        v.check_float("offline_fraction", self.offline_fraction, low=0.0, high=1.0, low_open=True)
        if not 0 < self.offline_size < self.budget:
            v.fail("offline_fraction", self.offline_fraction, f"a fraction leaving both parts of budget = "
                   f"{self.budget} non-empty")
        agents.check_name("strategy", self.strategy)
        m = self.online.batch_size
        for mode, n in (("online", self.budget), ("hybrid", self.budget - self.offline_size)):
            if n % m:
                v.fail("batch_size", m, f"a divisor of the {mode} part of the budget, {n}")

    @property
    def offline_size(self) -> int:
        return int(round(self.offline_fraction * self.budget))


presets = {
    "quick": replace(Config(), n_contexts=32, n_actions=16, budget=512, batch_size=32, strategy="pi0"),
    "paper": replace(Config(), n_contexts=64, n_actions=16, budget=1024, batch_size=32),
}
seeds = {"quick": 32, "paper": 256}


def run(config: Config, seeds: int, progress) -> Results:
    keys = seed_keys(config.seed, seeds)
    m = config.online.batch_size
    plan = {"offline": (config.budget, 0), "online": (0, config.budget // m),
            "hybrid": (config.offline_size, (config.budget - config.offline_size) // m)}
    tables = []
    for mode, (n_off, iterations) in plan.items():
        for table in online_common.run_algorithms(config, (config.strategy,), keys, progress, iterations=iterations,
                                                   offline_size=n_off, tag=f"{mode}/"):
            count = len(table["seed"])
            table["mode"] = np.full(count, mode)
            table["comparisons"] = table["offline_size"] + table["queries"]
            tables.append(table)
    table = concat_tables(tables)

    def summarize():
        summary = {}
        for setting in config.settings:
            part = {k: c[table["setting"] == setting] for k, c in table.items()}
            summary.update(online_common.paired_final(part, "mode", "hybrid", setting, PAIRED))
            for mode in MODES:
                sel = (table["setting"] == setting) & (table["mode"] == mode)
                last = sel & (table["comparisons"] == table["comparisons"][sel].max())
                summary[f"{setting}/{mode}/final_subopt"] = float(table["subopt"][last].mean())
                summary[f"{setting}/{mode}/final_subopt_kl"] = float(table["subopt_kl"][last].mean())
                summary[f"{setting}/{mode}/final_confidence_width"] = float(table["confidence_width"][last].mean())
                for metric in online_common.REGRETS + ("log_det_gram", "log_det_fisher"):
                    value = float(np.mean(table[metric][last]))
                    if np.isfinite(value):
                        summary[f"{setting}/{mode}/final_{metric}"] = value
                summary.update(online_common.bound_summary({k: c[sel] for k, c in table.items()},
                                                           f"{setting}/{mode}", config.exact_confidence_set))
                used = sel & (table["iteration"] < table["iteration"][sel].max())
                if np.any(used):   # the offline mode queries nothing
                    summary[f"{setting}/{mode}/identical_pairs"] = float(np.mean(table["identical_pairs"][used]))
        return summary

    return Results(table, summarize)


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    settings = list(dict.fromkeys(np.asarray(table["setting"]).tolist()))
    info = online_common.info_metric(config)
    fig, axes = plotting.figure(ncols=4, nrows=len(settings), size=(5.2, 4.2))
    axes = np.asarray(axes).reshape(len(settings), 4)
    for row, setting in zip(axes, settings):
        for i, mode in enumerate(MODES):
            where = {"setting": setting, "mode": mode}
            x, y = plotting.pivot(table, "comparisons", "subopt", where=where)
            if len(x) == 1:
                row[0].errorbar(x, y.mean(0), yerr=stats.mean_ci(y)[2] - y.mean(0), fmt="s", color=f"C{i}",
                                label=f"{mode} (MLE-Gibbs on {int(x[0])} pi0 comparisons)")
                row[1].plot(x, plotting.pivot(table, "comparisons", "confidence_width", where=where)[1].mean(0),
                            "s", color=f"C{i}", label=mode)
                row[3].plot(x, plotting.pivot(table, "comparisons", info, where=where)[1].mean(0),
                            "s", color=f"C{i}", label=mode)
                continue
            plotting.band_plot(row[0], x, y, mode, color=f"C{i}", loglog=True)
            x, w = plotting.pivot(table, "comparisons", "confidence_width", where=where)
            plotting.band_plot(row[1], x, w, mode, color=f"C{i}", loglog=True)
            x, r = plotting.pivot(table, "comparisons", "query_regret_kl", where=where)
            plotting.band_plot(row[2], x, r, mode, color=f"C{i}")
            x, g = plotting.pivot(table, "comparisons", info, where=where)
            plotting.band_plot(row[3], x, g, mode, color=f"C{i}")
        row[2].set(title=f"{setting}: query regret of the online queries (P1 form)",
                   xlabel="comparisons (offline + online)", ylabel=online_common.LABELS["query_regret_kl"])
        row[3].set(title=f"{setting}: {online_common.TITLES[info]} (all data)",
                   xlabel="comparisons (offline + online)", ylabel=online_common.LABELS[info])
        coverage, temperature = config.setting_values(setting)
        pi0 = "uniform pi0" if temperature == 0 else f"pi0: c={coverage:+.1f}, s={temperature:g}"
        row[0].set(title=f"{setting} ({pi0}): suboptimality", xlabel="comparisons (offline + online)",
                   ylabel="J(pi*) - J(pi_t)")
        row[1].set(title=f"{setting}: coverage term of P1's hybrid bound", xlabel="comparisons (offline + online)",
                   ylabel="beta ||phi(pi*) - phi(pi0)||_{Sigma^-1}")
        row[0].legend(fontsize="x-small")
    n_seeds = len(np.unique(np.asarray(table["seed"])))
    i = config.instance
    fig.suptitle(f"hybrid: budget {config.budget}, offline fraction {config.offline_fraction:g}, online pairs "
                 f"'{config.strategy}', m={config.online.batch_size}, {n_seeds} seeds (mean, 95% band)\n"
                 f"d={i.dim}, K={i.n_actions}, n_x={i.n_contexts}, kl_coef={i.kl_coef:g}")
    return plotting.save_figure(fig, out_dir, "hybrid")
