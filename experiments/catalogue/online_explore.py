"""online-explore (docs/theory.md E3): P1's online loop under every pair-selection strategy.

For each seed: one instance per setting, then for each algorithm the loop of ``algorithms.online.loop``
(``T`` iterations of ``m`` comparisons, BT-MLE refit, exact evaluation of the main agent). Settings:
``hard`` (a peaked ``pi0`` covering ``pi*`` poorly: coverage ``hard_coverage``, temperature
``hard_temperature``), where exploration matters, and ``easy`` (uniform ``pi0``). All algorithms of
a seed see the same instance and, through ``bandits.data``'s streams, the same contexts and label
uniforms (common random numbers).

Algorithms (``ALGORITHMS``): the main agent ``Gibbs(theta_t)`` with each built-in strategy of
``algorithms.online.strategies`` (enhancer, pi0, self_play, uniform, pi_uniform, optimism, thompson,
max_min, max_random, best_second, best_quartile), and the DPO agent (a linear-softmax policy trained by DPO
on all data, ``algorithms.online.iterative_dpo``): ``iterative_dpo`` (warm start; pairs ``max_min``),
``iterative_dpo_restart`` (restart from ``pi0``), and ``xpo`` / ``vpo`` / ``selm`` (likelihood bonus
``bonus_coef``, pairs ``(pi_t, pi_cal)``). Any algorithm of the registry ``algorithms.online.agents`` is
accepted by ``--set algorithms=...``: a strategy registered by the user
(``algorithms.online.strategies.register``) is an algorithm of the same name with the Gibbs agent, and a
plugin may register a new agent or algorithm (``agents.register_agent``, ``agents.register``); figures
label each by its registry label and draw each agent's family in its line style. Any algorithm name takes
the suffix ``+distinct`` (``--set algorithms=uniform,uniform+distinct``): its pair law conditioned on
``a1 != a2``, a variant outside P1 (``algorithms.online.strategies.distinct_law``).

Columns: ``algorithm, setting, coverage, temperature, kl_coef, batch_size, seed, iteration,
queries, subopt, subopt_kl, agent_regret_kl, query_regret, query_regret_kl, avg_regret, weak_regret,
identical_pairs, log_det_gram, log_det_fisher, kl_to_ref, kl_to_ref_explorer, confidence_width, bound,
bound_holds, in_confidence_set, strategy_info, bound_rate, bound_rate_holds`` (definitions in
``algorithms.online.loop``; ``bound`` is P1's plug-in bound for an agent whose registry entry says it
applies, the Gibbs agent, NaN for the others). The regrets are cumulative over the queries made:
``agent_regret_kl`` is the main agent's cumulative ``subopt_kl`` (the column named ``regret_kl`` before
issue 16), ``query_regret`` / ``query_regret_kl`` charge both queried actions (KL-regularised ``J`` and
P1's ``subopt_kl`` form), ``avg_regret`` / ``weak_regret`` are the unregularised dueling-bandit regrets
of the queries; ``identical_pairs`` is the probability that a query of iteration ``t`` compares an action
with itself and ``log_det_gram`` / ``log_det_fisher`` the information of the data of ``pi_t``.
``bound_rate`` is the rate form of P1's online/hybrid theorem (docs/theory.md §2.4),
``sqrt(d / (gamma^2 m)) + beta_t ||phi_bar(pi*) - phi_bar(pi0)||_{Sigma_t^{-1}}`` with the constant of
its ``≲`` set to 1 and ``gamma = 1 / (2 + e^{2B} + e^{-2B})``, where ``bound`` is defined (the Gibbs agent of a linear learner
in a linear world) (NaN elsewhere, like ``bound``); ``bound_rate_holds`` compares ``subopt_kl`` with it.
The summary gives, per setting, the fraction of rows where ``bound`` held (``bound_holds_frac``), that
fraction on the event ``theta* in C_t`` the bound assumes (``bound_holds_frac_in_set``) and the event's
frequency (``in_confidence_set_frac``; ``--set beta_mode=laplace`` gives a radius that covers)
(``online_common.bound_summary``), and every algorithm against P1's enhancer at the last iteration, paired by
seed, for the final ``subopt``, ``subopt_kl`` and each regret: ``{setting}/{alg}/minus_enhancer/{metric}/diff``
with its 95% interval (``online_common.paired_final``; absent when the enhancer is not run).

Neural rewards (``--set reward=neural``): the learner becomes the MLP reward of
``algorithms.online.loop`` (``learner=auto``; ``neural_steps`` warm-started Adam steps per iteration) and
every uncertainty-based strategy runs on its last-layer features (neural-linear); ``--set
learner=linear`` keeps the misspecified linear BT-MLE as the baseline.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from algorithms.online import agents
from experiments.catalogue import online_common
from experiments.catalogue.online_common import (
    QUICK_ALGORITHMS,
    final_summary,
    run_algorithms,
)
from experiments.engine import plotting
from experiments.engine.config import replace
from experiments.engine.results import Results, concat_tables
from experiments.engine.runner import seed_keys

description = "E3: online suboptimality and regret vs queries for every pair-selection strategy (P1 online)"
nan_columns = online_common.nan_columns
Config = online_common.Config

presets = {
    "quick": replace(Config(), n_contexts=32, n_actions=16, iterations=12, batch_size=32,
                     algorithms=QUICK_ALGORITHMS, dpo_steps=50),
    # Every algorithm and both settings; sized to finish in about half an hour on 2 CPU cores (the
    # first draft, n_x = 128, K = 32, T = 32 x m = 64 at 256 seeds, would have taken about half a day).
    "paper": replace(Config(), n_contexts=64, n_actions=16, iterations=24, batch_size=32),
}
seeds = {"quick": 32, "paper": 256}


def run(config: Config, seeds: int, progress) -> Results:
    keys = seed_keys(config.seed, seeds)
    table = concat_tables(run_algorithms(config, config.algorithm_names, keys, progress))

    def summarize():
        summary = {}
        for setting in config.settings:
            part = {k: c[table["setting"] == setting] for k, c in table.items()}
            for alg, (mean, half) in final_summary(part).items():
                summary[f"{setting}/{alg}/final_subopt"] = mean
                summary[f"{setting}/{alg}/final_subopt_ci95"] = half
            summary.update(online_common.metrics_summary(part, setting))
            for alg in dict.fromkeys(part["algorithm"].tolist()):
                info = part["strategy_info"][part["algorithm"] == alg]
                if np.any(~np.isnan(info)):   # the strategy reports a diagnostic (the enhancer's feasibility)
                    summary[f"{setting}/{alg}/nontrivial_frac"] = float(np.nanmean(info))
            summary.update(online_common.bound_summary(part, setting, config.exact_confidence_set))
            summary.update(online_common.paired_final(part, "algorithm", "enhancer", setting))
        return summary

    return Results(table, summarize)


PANELS = (("subopt", "agent_regret_kl", "query_regret_kl", "query_regret"),
          ("avg_regret", "weak_regret", "identical_pairs", None))


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    settings = list(dict.fromkeys(np.asarray(table["setting"]).tolist()))
    algorithms = list(dict.fromkeys(np.asarray(table["algorithm"]).tolist()))
    ncols = len(PANELS[0])
    fig, axes = plotting.figure(ncols=ncols, nrows=2 * len(settings), size=(4.6, 3.7))
    axes = np.asarray(axes).reshape(len(settings), 2, ncols)
    colors = plotting.distinct_colors(algorithms)
    styles = {a: _agent_or_none(a).linestyle if _agent_or_none(a) else "-" for a in algorithms}
    labels = {a: _algorithm_or_none(a).label if _algorithm_or_none(a) else a for a in algorithms}
    info = online_common.info_metric(config)
    for rows, setting in zip(axes, settings):
        coverage, temperature = config.setting_values(setting)
        pi0 = "uniform pi0" if temperature == 0 else f"pi0: c={coverage:+.1f}, s={temperature:g}"
        for row, metrics in zip(rows, PANELS):
            for ax, metric in zip(row, metrics):
                metric = metric or info
                if metric == "subopt":
                    for alg in algorithms:
                        x, y = plotting.pivot(table, "queries", "subopt", where={"setting": setting, "algorithm": alg})
                        keep = x > 0
                        plotting.band_plot(ax, x[keep], y[:, keep], labels[alg], color=colors[alg], loglog=True,
                                           linestyle=styles[alg])
                    ax.set(title=f"{setting}: {pi0}", xlabel="queries m t", ylabel="J(pi*) - J(pi_t)")
                    continue
                online_common.metric_panel(ax, table, metric, {"setting": setting}, algorithms, colors,
                                           styles=styles, labels=labels,
                                           title=f"{setting}: {online_common.TITLES[metric]}")
                if metric == "query_regret_kl":   # eta KL(pi* || pi2) of a peaked explorer can dwarf the others
                    ax.set_yscale("symlog", linthresh=10.0)
        row0 = rows[0][0]
        if "enhancer" in algorithms:
            x, bound = plotting.pivot(table, "queries", "bound", where={"setting": setting, "algorithm": "enhancer"})
            keep = (x > 0) & np.all(np.isfinite(bound), axis=0)
        if "enhancer" in algorithms and np.any(keep):
            plotting.bound_plot(row0, x[keep], np.nanmean(bound, 0)[keep], "P1 plug-in bound (enhancer)",
                                color="black")
        if "enhancer" in algorithms and "bound_rate" in table:
            x, rate = plotting.pivot(table, "queries", "bound_rate", where={"setting": setting, "algorithm": "enhancer"})
            keep = (x > 0) & np.all(np.isfinite(rate), axis=0)
            if np.any(keep):
                plotting.bound_plot(row0, x[keep], np.nanmean(rate, 0)[keep],
                                    "P1 rate bound, constant 1 (enhancer)", color="black", linestyle=":")
        row0.legend(fontsize="xx-small", ncol=2)
    n_seeds = len(np.unique(np.asarray(table["seed"])))
    i, c, o = config.instance, config.confidence, config.online
    words = {"--": "dashed", ":": "dotted", "-.": "dash-dot"}
    drawn = {_agent_or_none(a) for a in algorithms} - {None}
    styled = "".join(sorted(f"; {words.get(agent.linestyle, agent.linestyle)}: {agent.label}" for agent in drawn
                            if agent.linestyle != "-"))
    fig.suptitle(f"online-explore: main agent under each strategy, {n_seeds} seeds (mean, 95% band){styled}\n"
                 f"regrets: cumulative over the queries made, exact expectations under each pair law "
                 f"(agent_regret_kl charges pi_t only; query regrets charge both queried actions)\n"
                 f"d={i.dim}, K={i.n_actions}, n_x={i.n_contexts}, B={i.reward_norm:g}, "
                 f"kl_coef={i.kl_coef:g}, m={o.batch_size}, T={o.iterations}, "
                 f"beta={c.beta_mode} x {c.c_beta:g}, reward={i.reward}, learner={config.learner_name}")
    return plotting.save_figure(fig, out_dir, "online_explore")


def _algorithm_or_none(name: str):
    """The registry entry of ``name``, or None for an algorithm of a plugin that is not imported."""
    try:
        return agents.get(name)
    except ValueError:
        return None


def _agent_or_none(name: str):
    algorithm = _algorithm_or_none(name)
    return agents.AGENTS.get(algorithm.agent) if algorithm else None
