"""bonus-compare: every registered online algorithm, built-in and user-defined, on the same seeds, ranked.

Runs the ``online-explore`` loop (``experiments.catalogue.online_common``) for every algorithm of the registry
``algorithms.online.agents``, including the strategies, agents and algorithms registered by a plugin
(``rlhf-bandits run bonus-compare --plugin my_bonus.py``),
on the same instances, contexts and label uniforms (common random numbers). Prints a table ranked by
the final suboptimality of the main agent, with 95% intervals over seeds, and for each algorithm the
*paired* difference to ``baseline`` (default: P1's enhancer) with its 95% interval: under common
random numbers the paired interval is much narrower than the two marginal ones.

Columns: those of ``online-explore``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from algorithms.online import agents
from bandits import validation as v
from experiments.catalogue import online_common
from experiments.engine import plotting, stats
from experiments.engine.config import replace
from experiments.engine.results import Results, concat_tables
from experiments.engine.runner import seed_keys

description = "Rank every registered online algorithm (strategies and agents, built-in and plugins) on common seeds"
nan_columns = online_common.nan_columns


@dataclasses.dataclass(frozen=True)
class Config(online_common.Config):
    settings: tuple[str, ...] = ("hard",)
    baseline: str = "enhancer"
    metric: str = "subopt"

    def __post_init__(self):
        super().__post_init__()
        v.check_choice("metric", self.metric, ("subopt", "subopt_kl", "regret_kl"))
        v.check_choice("baseline", self.baseline, agents.names())

    @property
    def algorithm_names(self) -> tuple[str, ...]:
        return tuple(self.algorithms) if self.algorithms else agents.names()


presets = {
    "quick": replace(Config(), n_contexts=16, n_actions=8, dim=4, iterations=8, batch_size=16, dpo_steps=30),
    "paper": replace(Config(), n_contexts=64, n_actions=16, iterations=24, batch_size=32),
}
seeds = {"quick": 32, "paper": 64}


def ranking(table, metric: str, baseline: str | None) -> list[dict]:
    """Rows (sorted by mean ``metric`` at the last iteration) with intervals and paired differences."""
    last = table["iteration"] == table["iteration"].max()
    algs = list(dict.fromkeys(np.asarray(table["algorithm"]).tolist()))

    def final(alg):
        sel = last & (table["algorithm"] == alg)
        order = np.argsort(table["seed"][sel])
        return np.asarray(table[metric][sel], float)[order]

    base = final(baseline) if baseline in algs else None
    rows = []
    for alg in algs:
        y = final(alg)
        mean, half = map(float, stats.t_interval(y))
        row = {"algorithm": alg, "mean": mean, "ci95": half}
        if base is not None:
            row["diff"], row["diff_ci95"] = map(float, stats.paired_interval(y, base))
        rows.append(row)
    return sorted(rows, key=lambda r: r["mean"])


def format_ranking(rows: list[dict], metric: str, baseline: str | None) -> str:
    head = f"{'rank':>4}  {'algorithm':24s} {metric + ' (95% CI)':>26s}"
    if rows and "diff" in rows[0]:
        head += f"  {'minus ' + str(baseline) + ' (paired 95% CI)':>34s}"
    lines = [head]
    for i, r in enumerate(rows, 1):
        line = f"{i:>4}  {r['algorithm']:24s} {r['mean']:>14.4g} ± {r['ci95']:<9.2g}"
        if "diff" in r:
            line += f"  {r['diff']:>+20.4g} ± {r['diff_ci95']:<9.2g}"
        lines.append(line)
    return "\n".join(lines)


def run(config: Config, seeds: int, progress) -> Results:
    keys = seed_keys(config.seed, seeds)
    table = concat_tables(online_common.run_algorithms(config, config.algorithm_names, keys, progress))
    summary = {}
    for setting in config.settings:
        part = {k: c[table["setting"] == setting] for k, c in table.items()}
        rows = ranking(part, config.metric, config.baseline)
        progress.message(f"{setting}: final {config.metric} after {config.online.iterations * config.online.batch_size} "
                         f"queries, {seeds} seeds\n" + format_ranking(rows, config.metric, config.baseline))
        for rank, r in enumerate(rows, 1):
            for key, value in r.items():
                if key != "algorithm":
                    summary[f"{setting}/{r['algorithm']}/{key}"] = value
            summary[f"{setting}/{r['algorithm']}/rank"] = rank
    return Results(table, summary)


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    settings = list(dict.fromkeys(np.asarray(table["setting"]).tolist()))
    fig, axes = plotting.figure(ncols=2, nrows=len(settings), size=(6.0, 4.6))
    axes = np.asarray(axes).reshape(len(settings), 2)
    for row, setting in zip(axes, settings):
        part = {k: c[table["setting"] == setting] for k, c in table.items()}
        rows = ranking(part, config.metric, config.baseline)
        names = [r["algorithm"] for r in rows]
        ypos = np.arange(len(rows))[::-1]
        row[0].errorbar([r["mean"] for r in rows], ypos, xerr=[r["ci95"] for r in rows], fmt="o",
                        color="C0", label=f"final {config.metric}")
        row[0].set_yticks(ypos, names, fontsize="small")
        row[0].set(title=f"{setting}: final {config.metric} (mean, 95% CI), best on top",
                   xlabel=config.metric, ylabel="algorithm")
        if rows and "diff" in rows[0]:
            row[1].errorbar([r["diff"] for r in rows], ypos, xerr=[r["diff_ci95"] for r in rows], fmt="o",
                            color="C3", label=f"paired difference to {config.baseline}")
            row[1].axvline(0.0, color="0.4", lw=0.8)
            row[1].set_yticks(ypos, names, fontsize="small")
            row[1].set(title=f"{setting}: paired difference to {config.baseline} (same seeds)",
                       xlabel=f"{config.metric} - {config.metric}[{config.baseline}]", ylabel="algorithm")
        else:
            row[1].set_visible(False)
    n_seeds = len(np.unique(np.asarray(table["seed"])))
    i, o = config.instance, config.online
    fig.suptitle(f"bonus-compare: {n_seeds} seeds, d={i.dim}, K={i.n_actions}, n_x={i.n_contexts}, "
                 f"kl_coef={i.kl_coef:g}, m={o.batch_size}, T={o.iterations}")
    return plotting.save_figure(fig, out_dir, "bonus_compare")
