"""batch-size (docs/theory.md E4, §9.2 invariant 19): is batching free, as P1 claims?

At a fixed total of ``total_queries`` comparisons, P1's online loop (``experiments.catalogue.online_explore``)
runs with batch size ``m`` in ``batch_sizes`` and ``T = total_queries / m`` iterations. P1
(Xiong et al., ICML 2024, docs/theory.md §2.4): with ``T = Õ(d)`` iterations the total ``m T`` matches
the sequential ``m = 1`` sample complexity, so the final suboptimality should barely depend on
``m`` once ``T >= d log d`` (invariant 19); with ``T < d`` (large ``m``) the loop adapts too rarely.
Every ``m`` sees the same instances and the same stream of contexts and label uniforms (comparison
``i`` has the same uniforms whatever the batching).

Columns: those of ``online-explore`` (``batch_size`` tells the runs apart), with its cumulative regrets of
the queries made and its diagnostics (identical pairs, log-determinants; ``algorithms.online.loop``): at a
fixed budget they compare the cost and the information of the ``total_queries`` comparisons across ``m``. ``total_queries`` and
``batch_sizes`` set ``m`` and ``T``, so ``batch_size`` and ``iterations`` are refused. The summary gives, per
setting, algorithm and ``m``, the final suboptimality with its 95% interval, the final regrets and diagnostics
(``online_common.metrics_summary``) and the frequencies of P1's bounds, overall and on the event ``theta* in C_t``
(``online_common.bound_summary``: ``{setting}/{alg}/m{m}/bound_holds_frac``, ``.../bound_holds_frac_in_set``, ...),
and each ``m`` against the smallest at the end of the budget, paired by seed (every ``m`` sees the same instances
and comparison stream): ``{setting}/{alg}/m{m}/minus_m{m_min}/{metric}/diff`` with its 95% interval for the final
``subopt``, ``subopt_kl`` and each regret (``online_common.paired_final``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from bandits import validation as v
from experiments.catalogue import online_common
from experiments.engine import plotting, stats
from experiments.engine.config import check_unused, replace
from experiments.engine.results import Results, concat_tables
from experiments.engine.runner import seed_keys

description = "E4: final suboptimality at a fixed query budget across batch sizes m (P1: batching is free)"
nan_columns = online_common.nan_columns


@dataclasses.dataclass(frozen=True)
class Config(online_common.Config):
    """The fields of ``online_common.Config`` (documented there) and E4's own.

    ``total_queries``: the fixed budget ``m T`` of comparisons of every run (an integer ``>= 1``),
    the same for each batch size so the runs compare at equal cost (P1's batching claim, docs/theory.md
    §2.4). ``batch_sizes``: the batch sizes ``m`` compared, a non-empty tuple of divisors of
    ``total_queries``, each run for ``T = total_queries / m`` iterations (hence ``batch_size`` and
    ``iterations`` are refused). ``algorithms``: the online algorithms run at every ``m`` (names of
    ``algorithms.online.agents``, optionally ``+distinct``; empty: every built-in algorithm), by default
    P1's enhancer, ``pi0`` (pairs ``(pi_t, pi0)``) and ``optimism``."""

    total_queries: int = 4096
    batch_sizes: tuple[int, ...] = (16, 64, 256)
    algorithms: tuple[str, ...] = ("enhancer", "pi0", "optimism")

    def __post_init__(self):
        super().__post_init__()
        check_unused(self, ("online.iterations", "online.batch_size"),
                     "batch-size runs m in batch_sizes with T = total_queries / m")
        v.check_int("total_queries", self.total_queries, 1)
        if not self.batch_sizes:
            v.fail("batch_sizes", self.batch_sizes, "a non-empty tuple of divisors of total_queries")
        for m in self.batch_sizes:
            v.check_int("batch_sizes", m, 1)
            if self.total_queries % m:
                v.fail("batch_sizes", self.batch_sizes, f"divisors of total_queries = {self.total_queries}")


presets = {
    "quick": replace(Config(), n_contexts=32, n_actions=16, total_queries=512, batch_sizes=(16, 64, 256),
                     algorithms=("enhancer", "pi0"), settings=("hard",)),
    "paper": replace(Config(), n_contexts=64, n_actions=16, total_queries=1024, batch_sizes=(16, 64, 256)),
}
seeds = {"quick": 32, "paper": 256}


def run(config: Config, seeds: int, progress) -> Results:
    keys = seed_keys(config.seed, seeds)
    tables = []
    for m in config.batch_sizes:
        tables += online_common.run_algorithms(config, config.algorithm_names, keys, progress,
                                                iterations=config.total_queries // m, batch_size=m, tag=f"m{m}/")
    table = concat_tables(tables)

    def summarize():
        summary = {}
        for setting in config.settings:
            for alg in config.algorithm_names:
                finals = []
                for m in config.batch_sizes:
                    sel = (table["setting"] == setting) & (table["algorithm"] == alg) & (table["batch_size"] == m)
                    last = sel & (table["queries"] == table["queries"][sel].max())
                    y = table["subopt"][last]
                    finals.append(float(y.mean()))
                    summary[f"{setting}/{alg}/m{m}/final_subopt"] = finals[-1]
                    summary[f"{setting}/{alg}/m{m}/final_subopt_ci95"] = float(stats.t_interval(y)[1])
                    part = {k: c[sel] for k, c in table.items()}
                    summary.update({key.replace(f"{setting}/{alg}/", f"{setting}/{alg}/m{m}/"): value for key, value
                                    in online_common.metrics_summary(part, setting).items()})
                    summary.update(online_common.bound_summary(part, f"{setting}/{alg}/m{m}",
                                                               config.exact_confidence_set))
                summary[f"{setting}/{alg}/max_over_min_final_subopt"] = max(finals) / min(finals)
                sel = (table["setting"] == setting) & (table["algorithm"] == alg)
                part = {k: c[sel] for k, c in table.items()}
                part["m"] = np.array([f"m{m}" for m in part["batch_size"]])
                summary.update(online_common.paired_final(part, "m", f"m{min(config.batch_sizes)}", f"{setting}/{alg}"))
        return summary

    return Results(table, summarize)


ROWS = ("subopt", "query_regret_kl", "weak_regret", None)


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    settings = list(dict.fromkeys(np.asarray(table["setting"]).tolist()))
    algorithms = list(dict.fromkeys(np.asarray(table["algorithm"]).tolist()))
    sizes = sorted(set(np.asarray(table["batch_size"]).tolist()))
    info = online_common.info_metric(config)
    fig, axes = plotting.figure(ncols=len(algorithms), nrows=len(ROWS) * len(settings), size=(5.0, 3.6))
    axes = np.asarray(axes).reshape(len(settings), len(ROWS), len(algorithms))
    for rows, setting in zip(axes, settings):
        for row, metric in zip(rows, ROWS):
            metric = metric or info
            for ax, alg in zip(row, algorithms):
                for i, m in enumerate(sizes):
                    where = {"setting": setting, "algorithm": alg, "batch_size": m}
                    x, y = plotting.pivot(table, "queries", metric, where=where)
                    keep = x > 0 if metric == "subopt" else slice(None)
                    plotting.band_plot(ax, x[keep], y[:, keep], f"m = {m} (T = {config.total_queries // m})",
                                       color=f"C{i}", loglog=metric == "subopt")
                ax.set(title=f"{setting}: {alg}: {online_common.TITLES[metric]}", xlabel="queries m t",
                       ylabel=online_common.LABELS[metric])
                if metric == "query_regret_kl":   # eta KL(pi* || pi2) of a peaked explorer can dwarf the rest
                    ax.set_yscale("symlog", linthresh=10.0)
    n_seeds = len(np.unique(np.asarray(table["seed"])))
    i = config.instance
    fig.suptitle(f"batch-size: {config.total_queries} queries in batches of m, {n_seeds} seeds (mean, 95% band)\n"
                 f"regrets: cumulative over the queries made (both queried actions charged; exact expectations)\n"
                 f"d={i.dim}, K={i.n_actions}, n_x={i.n_contexts}, kl_coef={i.kl_coef:g}")
    return plotting.save_figure(fig, out_dir, "batch_size")
