"""bonus-compare: every registered online algorithm, built-in and user-defined, on the same seeds, ranked.

Runs the ``online-explore`` loop (``experiments.catalogue.online_common``) for every algorithm of the registry
``algorithms.online.agents``, including the strategies, agents and algorithms registered by a plugin
(``rlhf-bandits run bonus-compare --plugin my_bonus.py``),
on the same instances, contexts and label uniforms (common random numbers). Prints a table ranked by
``rank_by`` at the last iteration (``--set rank_by=...``; lower is better), with 95% intervals over seeds,
and for each algorithm the *paired* difference to ``baseline`` (default: P1's enhancer) with its 95%
interval: under common random numbers the paired interval is much narrower than the two marginal ones.
``rank_by`` is one of ``online_common.RANK_METRICS``: the main agent's final ``subopt`` (the default) or
``subopt_kl``, or a cumulative regret (``agent_regret_kl``: the main agent's cumulative ``subopt_kl``;
``query_regret``, ``query_regret_kl``: both queried actions charged; ``avg_regret``, ``weak_regret``:
unregularised; definitions in ``algorithms.online.loop``). The summary records the metric under
``rank_by`` and, besides the ranked metric's statistics, every algorithm's final regrets and diagnostics, and per
setting the frequencies of P1's bounds, overall and on the event ``theta* in C_t`` (``online_common.bound_summary``),
and every algorithm against ``baseline`` paired by seed on every rank metric, not only ``rank_by``:
``{setting}/{alg}/minus_{baseline}/{metric}/diff`` with its 95% interval (``online_common.paired_final``).

Presets ``regime_explore`` and ``regime_plain`` (issue 16 item 6): the enhancer, ``uniform``, ``pi_uniform``, ``pi0``
and ``self_play``, each with and without ``+distinct``, paired by seed with the enhancer, where P1's argument for
the enhancer should bite and where it should not; 256 seeds each. ``regime_explore``: K = 256 actions of which
``good_actions = 4`` per context beat all others by at least ``B`` (``bandits.instance.few_good_actions``),
anisotropic features (``feature_anisotropy = 100``: the feature covariance's eigenvalues fall geometrically from 1
to 1/100, ``bandits.instance.random_features``), kl_coef = 0.02 (``pi*`` far from ``pi0``) and a ``pi0`` that
covers ``pi*`` poorly (coverage -0.9, temperature 10: it puts its mass on the bad actions).
``regime_plain``: K = 8, isotropic unit features with no planted good actions, kl_coef = 1, uniform ``pi0``.

Columns: those of ``online-explore``.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
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
    """``baseline``: the algorithm every paired difference is taken against (default P1's enhancer);
    ``rank_by``: the metric the ranking sorts by (module docstring); named ``metric`` before issue 16,
    whose value ``regret_kl`` is today's ``agent_regret_kl`` (a record written before reads as such)."""

    RENAMED_FIELDS: typing.ClassVar[dict] = {"metric": "rank_by"}   # manifests written before the rename

    settings: tuple[str, ...] = ("hard",)
    baseline: str = "enhancer"
    rank_by: str = "subopt"

    def __post_init__(self):
        if self.rank_by == "regret_kl":   # the column's name before issue 16
            object.__setattr__(self, "rank_by", "agent_regret_kl")
        super().__post_init__()
        v.check_choice("rank_by", self.rank_by, online_common.RANK_METRICS)
        agents.check_name("baseline", self.baseline)

    @property
    def algorithm_names(self) -> tuple[str, ...]:
        return tuple(self.algorithms) if self.algorithms else agents.names()


# Issue 16 item 6: P1's argument for the enhancer against the simplest alternatives, each with and without the
# distinct modifier, paired by seed with the enhancer.
REGIME_ALGORITHMS = tuple(f"{name}{suffix}" for name in ("enhancer", "uniform", "pi_uniform", "pi0", "self_play")
                          for suffix in ("", "+distinct"))
presets = {
    "quick": replace(Config(), n_contexts=16, n_actions=8, dim=4, iterations=8, batch_size=16, dpo_steps=30),
    "paper": replace(Config(), n_contexts=64, n_actions=16, iterations=24, batch_size=32),
    # where exploration should matter: 4 good actions among 256, features whose covariance has condition number
    # 100 (directions random queries rarely excite), a small KL coefficient (pi* far from pi0) and a pi0 on the
    # bad actions
    "regime_explore": replace(Config(), n_contexts=16, n_actions=256, dim=8, kl_coef=0.02, good_actions=4,
                              feature_anisotropy=100.0, iterations=16, batch_size=32, settings=("hard",),
                              hard_coverage=-0.9, hard_temperature=10.0, algorithms=REGIME_ALGORITHMS),
    # where it should not: few actions, isotropic features without planted good actions, a large KL coefficient
    # (pi* close to pi0) and a uniform pi0
    "regime_plain": replace(Config(), n_contexts=16, n_actions=8, dim=8, kl_coef=1.0, iterations=16, batch_size=32,
                            settings=("easy",), algorithms=REGIME_ALGORITHMS),
}
seeds = {"quick": 32, "paper": 256, "regime_explore": 256, "regime_plain": 256}


def ranking(table, metric: str, baseline: str | None) -> list[dict]:
    """Rows (sorted by mean ``metric`` at the last iteration) with intervals and paired differences."""
    algs = list(dict.fromkeys(np.asarray(table["algorithm"]).tolist()))
    final = functools.partial(online_common.final_by_seed, table, "algorithm", metric=metric)
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

    def summarize():
        summary = {"rank_by": config.rank_by}
        for setting in config.settings:
            part = {k: c[table["setting"] == setting] for k, c in table.items()}
            rows = ranking(part, config.rank_by, config.baseline)
            progress.message(f"{setting}: ranked by final {config.rank_by} after "
                             f"{config.online.iterations * config.online.batch_size} queries, {seeds} seeds\n"
                             + format_ranking(rows, config.rank_by, config.baseline))
            for rank, r in enumerate(rows, 1):
                for key, value in r.items():
                    if key != "algorithm":
                        summary[f"{setting}/{r['algorithm']}/{key}"] = value
                summary[f"{setting}/{r['algorithm']}/rank"] = rank
            for alg, (mean, half) in online_common.final_summary(part).items():
                summary[f"{setting}/{alg}/final_subopt"] = mean
                summary[f"{setting}/{alg}/final_subopt_ci95"] = half
            summary.update(online_common.metrics_summary(part, setting))
            summary.update(online_common.bound_summary(part, setting, config.exact_confidence_set))
            summary.update(online_common.paired_final(part, "algorithm", config.baseline, setting))
        return summary

    return Results(table, summarize)


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    settings = list(dict.fromkeys(np.asarray(table["setting"]).tolist()))
    fig, axes = plotting.figure(ncols=2, nrows=len(settings), size=(6.0, 4.6))
    axes = np.asarray(axes).reshape(len(settings), 2)
    for row, setting in zip(axes, settings):
        part = {k: c[table["setting"] == setting] for k, c in table.items()}
        rows = ranking(part, config.rank_by, config.baseline)
        names = [r["algorithm"] for r in rows]
        ypos = np.arange(len(rows))[::-1]
        row[0].errorbar([r["mean"] for r in rows], ypos, xerr=[r["ci95"] for r in rows], fmt="o",
                        color="C0", label=f"final {config.rank_by}")
        row[0].set_yticks(ypos, names, fontsize="small")
        row[0].set(title=f"{setting}: ranked by final {config.rank_by} (mean, 95% CI), best on top",
                   xlabel=online_common.LABELS[config.rank_by], ylabel="algorithm")
        if rows and "diff" in rows[0]:
            row[1].errorbar([r["diff"] for r in rows], ypos, xerr=[r["diff_ci95"] for r in rows], fmt="o",
                            color="C3", label=f"paired difference to {config.baseline}")
            row[1].axvline(0.0, color="0.4", lw=0.8)
            row[1].set_yticks(ypos, names, fontsize="small")
            row[1].set(title=f"{setting}: paired difference to {config.baseline} (same seeds)",
                       xlabel=f"{config.rank_by} - {config.rank_by}[{config.baseline}]", ylabel="algorithm")
        else:
            row[1].set_visible(False)
    n_seeds = len(np.unique(np.asarray(table["seed"])))
    i, o = config.instance, config.online
    fig.suptitle(f"bonus-compare: ranked by final {config.rank_by}, {n_seeds} seeds, d={i.dim}, K={i.n_actions}, n_x={i.n_contexts}, "
                 f"kl_coef={i.kl_coef:g}, m={o.batch_size}, T={o.iterations}")
    return plotting.save_figure(fig, out_dir, "bonus_compare")
