"""online-explore (docs/theory.md E3): P1's online loop under every pair-selection strategy.

For each seed: one instance per setting, then for each algorithm the loop of ``algorithms.online.loop``
(``T`` iterations of ``m`` comparisons, BT-MLE refit, exact evaluation of the main agent). Settings:
``hard`` (a peaked ``pi0`` covering ``pi*`` poorly: coverage ``hard_coverage``, temperature
``hard_temperature``), where exploration matters, and ``easy`` (uniform ``pi0``). All algorithms of
a seed see the same instance and, through ``bandits.data``'s streams, the same contexts and label
uniforms (common random numbers).

Algorithms (``ALGORITHMS``): the main agent ``Gibbs(theta_t)`` with each built-in strategy of
``algorithms.online.strategies`` (enhancer, pi0, self_play, uniform, optimism, thompson, max_min,
max_random, best_second, best_quartile), and the DPO agent (a linear-softmax policy trained by DPO
on all data, ``algorithms.online.iterative_dpo``): ``iterative_dpo`` (warm start; pairs ``max_min``),
``iterative_dpo_restart`` (restart from ``pi0``), and ``xpo`` / ``vpo`` / ``selm`` (likelihood bonus
``bonus_coef``, pairs ``(pi_t, pi_cal)``). Any algorithm of the registry ``algorithms.online.agents`` is
accepted by ``--set algorithms=...``: a strategy registered by the user
(``algorithms.online.strategies.register``) is an algorithm of the same name with the Gibbs agent, and a
plugin may register a new agent or algorithm (``agents.register_agent``, ``agents.register``); figures
label each by its registry label and draw each agent's family in its line style.

Columns: ``algorithm, setting, coverage, temperature, kl_coef, batch_size, seed, iteration,
queries, subopt, subopt_kl, regret_kl, kl_to_ref, kl_to_ref_explorer, confidence_width, bound,
bound_holds, in_confidence_set, strategy_info, bound_rate, bound_rate_holds`` (definitions in
``algorithms.online.loop``; ``bound`` is P1's plug-in bound for an agent whose registry entry says it
applies, the Gibbs agent, NaN for the others).
``bound_rate`` is the rate form of P1's online/hybrid theorem (docs/theory.md §2.4),
``sqrt(d / (gamma^2 m)) + beta_t ||phi_bar(pi*) - phi_bar(pi0)||_{Sigma_t^{-1}}`` with the constant of
its ``≲`` set to 1 and ``gamma = 1 / (2 + e^{2B} + e^{-2B})``, where ``bound`` is defined (the Gibbs agent of a linear learner
in a linear world) (NaN elsewhere, like ``bound``); ``bound_rate_holds`` compares ``subopt_kl`` with it.

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
seeds = {"quick": 32, "paper": 64}


def run(config: Config, seeds: int, progress) -> Results:
    keys = seed_keys(config.seed, seeds)
    table = concat_tables(run_algorithms(config, config.algorithm_names, keys, progress))
    summary = {}
    for setting in config.settings:
        part = {k: c[table["setting"] == setting] for k, c in table.items()}
        for alg, (mean, half) in final_summary(part).items():
            summary[f"{setting}/{alg}/final_subopt"] = mean
            summary[f"{setting}/{alg}/final_subopt_ci95"] = half
        for alg, (mean, _) in final_summary(part, metric="regret_kl").items():
            summary[f"{setting}/{alg}/final_regret_kl"] = mean
        for alg in dict.fromkeys(part["algorithm"].tolist()):
            info = part["strategy_info"][part["algorithm"] == alg]
            if np.any(~np.isnan(info)):   # the strategy reports a diagnostic (the enhancer's feasibility)
                summary[f"{setting}/{alg}/nontrivial_frac"] = float(np.nanmean(info))
        holds = part["bound_holds"]
        if np.any(~np.isnan(holds)):
            summary[f"{setting}/bound_holds_frac"] = float(np.nanmean(holds))
        rate_holds = part["bound_rate_holds"]
        if np.any(~np.isnan(rate_holds)):
            summary[f"{setting}/bound_rate_holds_frac"] = float(np.nanmean(rate_holds))
            ratio = part["bound_rate"] / np.maximum(part["subopt_kl"], 1e-300)
            summary[f"{setting}/bound_rate_over_subopt_kl_median"] = float(np.nanmedian(ratio))
        if config.exact_confidence_set:
            summary[f"{setting}/in_confidence_set_frac"] = float(np.nanmean(part["in_confidence_set"]))
    return Results(table, summary)


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    settings = list(dict.fromkeys(np.asarray(table["setting"]).tolist()))
    algorithms = list(dict.fromkeys(np.asarray(table["algorithm"]).tolist()))
    fig, axes = plotting.figure(ncols=2, nrows=len(settings), size=(6.0, 4.4))
    axes = np.asarray(axes).reshape(len(settings), 2)
    colors = plotting.distinct_colors(algorithms)
    known = set(agents.names())
    styles = {a: agents.agent_of(a).linestyle if a in known else "-" for a in algorithms}
    labels = {a: agents.get(a).label if a in known else a for a in algorithms}
    for row, setting in zip(axes, settings):
        coverage, temperature = config.setting_values(setting)
        for alg in algorithms:
            where = {"setting": setting, "algorithm": alg}
            x, y = plotting.pivot(table, "queries", "subopt", where=where)
            keep = x > 0
            plotting.band_plot(row[0], x[keep], y[:, keep], labels[alg], color=colors[alg], loglog=True,
                               linestyle=styles[alg])
            x, r = plotting.pivot(table, "queries", "regret_kl", where=where)
            plotting.band_plot(row[1], x, r, labels[alg], color=colors[alg], linestyle=styles[alg])
        if "enhancer" in algorithms:
            x, bound = plotting.pivot(table, "queries", "bound", where={"setting": setting, "algorithm": "enhancer"})
            keep = (x > 0) & np.all(np.isfinite(bound), axis=0)
        if "enhancer" in algorithms and np.any(keep):
            plotting.bound_plot(row[0], x[keep], np.nanmean(bound, 0)[keep], "P1 plug-in bound (enhancer)",
                                color="black")
        if "enhancer" in algorithms and "bound_rate" in table:
            x, rate = plotting.pivot(table, "queries", "bound_rate", where={"setting": setting, "algorithm": "enhancer"})
            keep = (x > 0) & np.all(np.isfinite(rate), axis=0)
            if np.any(keep):
                plotting.bound_plot(row[0], x[keep], np.nanmean(rate, 0)[keep],
                                    "P1 rate bound, constant 1 (enhancer)", color="black", linestyle=":")
        pi0 = "uniform pi0" if temperature == 0 else f"pi0: c={coverage:+.1f}, s={temperature:g}"
        row[0].set(title=f"{setting}: {pi0}", xlabel="queries m t", ylabel="J(pi*) - J(pi_t)")
        row[1].set(title=f"{setting}: cumulative KL-regularised regret", xlabel="queries m t",
                   ylabel="sum_s m subopt_kl(pi_s)")
        row[0].legend(fontsize="xx-small", ncol=2)
    n_seeds = len(np.unique(np.asarray(table["seed"])))
    i, c, o = config.instance, config.confidence, config.online
    words = {"--": "dashed", ":": "dotted", "-.": "dash-dot"}
    drawn = {agents.agent_of(a) for a in algorithms if a in known}
    styled = "".join(sorted(f"; {words.get(agent.linestyle, agent.linestyle)}: {agent.label}" for agent in drawn
                            if agent.linestyle != "-"))
    fig.suptitle(f"online-explore: main agent under each strategy, {n_seeds} seeds (mean, 95% band){styled}\n"
                 f"d={i.dim}, K={i.n_actions}, n_x={i.n_contexts}, B={i.reward_norm:g}, "
                 f"kl_coef={i.kl_coef:g}, m={o.batch_size}, T={o.iterations}, "
                 f"beta={c.beta_mode} x {c.c_beta:g}, reward={i.reward}, learner={config.learner_name}")
    return plotting.save_figure(fig, out_dir, "online_explore")
