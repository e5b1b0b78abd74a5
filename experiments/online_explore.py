"""online-explore (THEORY.md E3): P1's online loop under every pair-selection strategy.

For each seed: one instance per setting, then for each algorithm the loop of ``algorithms.online``
(``T`` iterations of ``m`` comparisons, BT-MLE refit, exact evaluation of the main agent). Settings:
``hard`` (a peaked ``pi0`` covering ``pi*`` poorly: coverage ``hard_coverage``, temperature
``hard_temperature``), where exploration matters, and ``easy`` (uniform ``pi0``). All algorithms of
a seed see the same instance and, through ``bandits.data``'s streams, the same contexts and label
uniforms (common random numbers).

Algorithms (``ALGORITHMS``): the main agent ``Gibbs(theta_t)`` with each built-in strategy of
``algorithms.strategies`` (enhancer, pi0, self_play, uniform, optimism, thompson, max_min,
max_random, best_second, best_quartile), and the DPO agent (a linear-softmax policy trained by DPO
on all data, ``algorithms.iterative_dpo``): ``iterative_dpo`` (warm start; pairs ``max_min``),
``iterative_dpo_restart`` (restart from ``pi0``), and ``xpo`` / ``vpo`` / ``selm`` (likelihood bonus
``bonus_coef``, pairs ``(pi_t, pi_cal)``). A strategy registered by the user
(``algorithms.strategies.register``) is an algorithm of the same name with the Gibbs agent.

Columns: ``algorithm, setting, coverage, temperature, kl_coef, batch_size, seed, iteration,
queries, subopt, subopt_kl, regret_kl, kl_to_ref, kl_to_ref_explorer, confidence_width, bound,
bound_holds, in_confidence_set, strategy_info, bound_rate, bound_rate_holds`` (definitions in
``algorithms.online``; ``bound`` is P1's plug-in bound for the Gibbs agent, NaN for the DPO agent).
``bound_rate`` is the rate form of P1's online/hybrid theorem (THEORY.md §2.4),
``sqrt(d / (gamma^2 m)) + beta_t ||phi_bar(pi*) - phi_bar(pi0)||_{Sigma_t^{-1}}`` with the constant of
its ``≲`` set to 1 and ``gamma = 1 / (2 + e^{2B} + e^{-2B})``, for the Gibbs agent of a linear learner
in a linear world (NaN elsewhere, like ``bound``); ``bound_rate_holds`` compares ``subopt_kl`` with it.

Neural rewards (``--set reward=neural``): the learner becomes the MLP reward of
``algorithms.online`` (``learner=auto``; ``neural_steps`` warm-started Adam steps per iteration) and
every uncertainty-based strategy runs on its last-layer features (neural-linear); ``--set
learner=linear`` keeps the misspecified linear BT-MLE as the baseline.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import bandits as b
from algorithms import confidence as conf
from algorithms import iterative_dpo, strategies
from algorithms.online import LEARNERS, OnlineSettings, run_online
from bandits import validation as v
from experiments import plotting
from experiments.registry import Results, concat_tables, tidy
from experiments.runner import run_vectorized, seed_keys
from experiments.world_config import WorldConfig

# name -> (strategy, OnlineSettings overrides)
SPECIAL = {
    "iterative_dpo": ("max_min", {"agent": "dpo"}),
    "iterative_dpo_restart": ("max_min", {"agent": "dpo", "restart": True}),
    "xpo": ("calibration", {"agent": "dpo", "bonus": "xpo"}),
    "vpo": ("calibration", {"agent": "dpo", "bonus": "vpo"}),
    "selm": ("calibration", {"agent": "dpo", "bonus": "selm"}),
}
GIBBS_STRATEGIES = tuple(s for s in strategies.BUILTIN_STRATEGIES if s != "calibration")
ALGORITHMS = GIBBS_STRATEGIES + tuple(SPECIAL)
QUICK_ALGORITHMS = ("enhancer", "pi0", "self_play", "optimism", "thompson", "max_min", "xpo")
SETTINGS = ("hard", "easy")

nan_columns = ("bound", "bound_holds", "in_confidence_set", "strategy_info", "bound_rate", "bound_rate_holds")
description = "E3: online suboptimality and regret vs queries for every pair-selection strategy (P1 online)"


def known_algorithms() -> tuple[str, ...]:
    """Built-in algorithms plus every strategy registered since import."""
    extra = tuple(s for s in strategies.STRATEGIES if s not in ALGORITHMS and s != "calibration")
    return ALGORITHMS + extra


def algorithm_spec(name: str) -> tuple[str, dict]:
    v.check_choice("algorithms", name, known_algorithms())
    return SPECIAL.get(name, (name, {}))


@dataclasses.dataclass(frozen=True)
class Config(WorldConfig):
    """Fields reachable with ``--set field=value``; instance and confidence fields in ``WorldConfig``
    (redeclared here only to change their defaults)."""

    n_contexts: int = 64
    n_actions: int = 16
    kl_coef: float = 0.1
    settings: tuple[str, ...] = SETTINGS
    hard_coverage: float = -0.8
    hard_temperature: float = 10.0
    iterations: int = 24
    batch_size: int = 64
    newton_steps: int = 30
    k: int = 4
    bonus_coef: float = 0.001
    dpo_steps: int = 100
    dpo_learning_rate: float = 0.2
    dpo_policy: str = "linear"
    learner: str = "auto"            # auto: the reward's kind; "linear" on a neural reward is misspecified
    neural_steps: int = 30
    neural_learning_rate: float = 0.02
    algorithms: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        for s in self.settings:
            v.check_choice("settings", s, SETTINGS)
        if not self.settings:
            v.fail("settings", self.settings, f"a non-empty tuple of {SETTINGS}")
        v.check_float("hard_coverage", self.hard_coverage, low=-1.0, high=1.0)
        v.check_float("hard_temperature", self.hard_temperature, low=0.0)
        v.check_choice("learner", self.learner, ("auto",) + LEARNERS)
        for a in self.algorithms:
            algorithm_spec(a)
        self.online_settings()

    @property
    def algorithm_names(self) -> tuple[str, ...]:
        return tuple(self.algorithms) if self.algorithms else ALGORITHMS

    def online_settings(self, iterations: int | None = None, batch_size: int | None = None,
                        **overrides) -> OnlineSettings:
        return OnlineSettings(
            iterations=self.iterations if iterations is None else iterations,
            batch_size=self.batch_size if batch_size is None else batch_size,
            lam=self.lam, beta_mode=self.beta_mode, c_beta=self.c_beta, delta=self.delta,
            reward_norm=self.reward_norm, reference_vector=self.reference_vector,
            newton_steps=self.newton_steps, bonus_coef=self.bonus_coef, dpo_steps=self.dpo_steps,
            dpo_learning_rate=self.dpo_learning_rate, dpo_policy=self.dpo_policy,
            learner=self.learner_kind, neural_hidden=self.hidden, neural_steps=self.neural_steps,
            neural_learning_rate=self.neural_learning_rate,
            options=strategies.StrategyOptions(k=self.k), **overrides)

    @property
    def learner_kind(self) -> str:
        if self.learner != "auto":
            return self.learner
        return "neural" if self.reward == "neural" else "linear"

    def setting_values(self, name: str) -> tuple[float, float]:
        """(coverage, temperature) of a setting."""
        return (self.hard_coverage, self.hard_temperature) if name == "hard" else (0.0, 0.0)


presets = {
    "quick": Config(n_contexts=32, n_actions=16, iterations=12, batch_size=32, algorithms=QUICK_ALGORITHMS,
                    dpo_steps=50),
    # Every algorithm and both settings; sized to finish in about half an hour on 2 CPU cores (the
    # first draft, n_x = 128, K = 32, T = 32 x m = 64 at 256 seeds, would have taken about half a day).
    "paper": Config(n_contexts=64, n_actions=16, iterations=24, batch_size=32),
}
seeds = {"quick": 32, "paper": 64}


def per_seed(key, coverage, temperature, strategy_index, config: Config, group: tuple[str, ...],
             settings: OnlineSettings, offline_size: int = 0, agent_table: tuple | None = None):
    """One seed, one setting, strategy ``group[strategy_index]``: the ``algorithms.online`` trace as a
    dict of ``[T + 1]`` arrays. The index is traced, so every strategy of ``group`` shares one compiled
    program (``lax.switch`` runs only the selected branch); for the DPO agent ``agent_table`` holds
    each member's bonus as numbers (``iterative_dpo.AgentParams``), selected by the same index."""
    k_inst, k_run, k_off = jax.random.split(key, 3)
    inst = b.make_instance(k_inst, config.instance, coverage=coverage, temperature=temperature)
    offline = None
    if offline_size:
        offline = b.sample_preference_data(k_off, inst, inst.log_pi0, inst.log_pi0, offline_size)
    branches = [strategies.get(name) for name in group]
    strategy = branches[0] if len(branches) == 1 else (
        lambda view: jax.lax.switch(strategy_index, [functools.partial(f, view) for f in branches]))
    agent = None
    if agent_table is not None:
        row = jnp.asarray(agent_table, inst.phi.dtype)[strategy_index]
        agent = iterative_dpo.AgentParams(*row)
    trace = run_online(k_run, inst, strategy, settings, offline, agent)
    return trace._asdict()


def run_algorithms(config: Config, algorithms, keys, progress, settings_names=None, iterations=None,
                   batch_size=None, offline_size: int = 0, tag: str = "") -> list[dict]:
    """Tables (one per algorithm and setting); shared by the online experiments.

    Algorithms with the same agent (all Gibbs-agent strategies; all DPO-agent bonuses) share one
    compiled program: compilation, not running, dominates small runs.
    """
    groups: dict[str, list[str]] = {}
    for alg in algorithms:
        groups.setdefault(algorithm_spec(alg)[1].get("agent", "gibbs"), []).append(alg)
    tables = []
    for agent, members in groups.items():
        settings = config.online_settings(iterations, batch_size, agent=agent)
        group = tuple(algorithm_spec(a)[0] for a in members)
        table = None
        if agent == "dpo":
            table = tuple(iterative_dpo.agent_params(algorithm_spec(a)[1].get("bonus", "none"), config.bonus_coef,
                                                     config.kl_coef, algorithm_spec(a)[1].get("restart", False))
                          for a in members)
        fn = functools.partial(per_seed, config=config, group=group, settings=settings, offline_size=offline_size,
                               agent_table=table)
        for index, alg in enumerate(members):
            for setting in settings_names or config.settings:
                coverage, temperature = config.setting_values(setting)
                out = run_vectorized(fn, keys, np.float64(coverage), np.float64(temperature), np.int32(index),
                                     progress=progress, tag=f"{tag}{setting}/{alg}")
                tables.append(_table(out, config, alg, setting, settings, offline_size, len(keys)))
    order = {a: i for i, a in enumerate(algorithms)}
    return sorted(tables, key=lambda t: order[str(t["algorithm"][0])])


def _table(out, config: Config, alg: str, setting: str, settings: OnlineSettings, offline_size: int, n_seeds: int):
    coverage, temperature = config.setting_values(setting)
    out["bound_holds"] = np.where(np.isnan(out["bound"]), np.nan, (out["subopt_kl"] <= out["bound"]).astype(float))
    out["bound_rate"] = np.where(np.isnan(out["bound"]), np.nan,
                                 rate_bound(config, settings.batch_size, out["confidence_width"]))
    out["bound_rate_holds"] = np.where(np.isnan(out["bound_rate"]), np.nan,
                                       (out["subopt_kl"] <= out["bound_rate"]).astype(float))
    table = tidy(out, seed=np.arange(n_seeds), iteration=np.arange(settings.iterations + 1))
    count = len(table["seed"])
    table.update(algorithm=np.full(count, alg), setting=np.full(count, setting),
                 coverage=np.full(count, coverage), temperature=np.full(count, temperature),
                 kl_coef=np.full(count, config.kl_coef), batch_size=np.full(count, settings.batch_size),
                 offline_size=np.full(count, offline_size))
    return table


def rate_bound(config: Config, batch_size: int, confidence_width):
    """P1's online/hybrid rate ``sqrt(d / (gamma^2 m)) + confidence_width`` (constant 1; THEORY.md §2.4)."""
    gamma = float(conf.sigmoid_slope_lower_bound(config.reward_norm))
    return math.sqrt(config.dim / (gamma**2 * batch_size)) + np.asarray(confidence_width, float)


def final_summary(table, group: str = "algorithm", metric: str = "subopt") -> dict:
    """Per group: mean of ``metric`` at the last iteration with a 95% normal interval over seeds."""
    out = {}
    last = table["iteration"] == table["iteration"].max() if "iteration" in table else slice(None)
    for name in dict.fromkeys(np.asarray(table[group])[last].tolist()):
        y = np.asarray(table[metric])[last][np.asarray(table[group])[last] == name]
        half = 1.96 * y.std(ddof=1) / math.sqrt(len(y)) if len(y) > 1 else float("nan")
        out[name] = (float(y.mean()), float(half))
    return out


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
        for alg, (mean, _) in final_summary(part, metric="strategy_info").items():
            if alg == "enhancer":
                summary[f"{setting}/enhancer/nontrivial_frac"] = float(
                    np.nanmean(part["strategy_info"][part["algorithm"] == "enhancer"]))
        holds = part["bound_holds"]
        if np.any(~np.isnan(holds)):
            summary[f"{setting}/bound_holds_frac"] = float(np.nanmean(holds))
        rate_holds = part["bound_rate_holds"]
        if np.any(~np.isnan(rate_holds)):
            summary[f"{setting}/bound_rate_holds_frac"] = float(np.nanmean(rate_holds))
            ratio = part["bound_rate"] / np.maximum(part["subopt_kl"], 1e-300)
            summary[f"{setting}/bound_rate_over_subopt_kl_median"] = float(np.nanmedian(ratio))
        if config.learner_kind == "linear" and config.reward == "linear":
            summary[f"{setting}/in_confidence_set_frac"] = float(np.nanmean(part["in_confidence_set"]))
    return Results(table, summary)


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    settings = list(dict.fromkeys(np.asarray(table["setting"]).tolist()))
    algorithms = list(dict.fromkeys(np.asarray(table["algorithm"]).tolist()))
    fig, axes = plotting.figure(ncols=2, nrows=len(settings), size=(6.0, 4.4))
    axes = np.asarray(axes).reshape(len(settings), 2)
    colors = plotting.distinct_colors(algorithms)
    styles = {a: ("--" if algorithm_spec(a)[1].get("agent") == "dpo" else "-") for a in algorithms}
    for row, setting in zip(axes, settings):
        coverage, temperature = config.setting_values(setting)
        for alg in algorithms:
            where = {"setting": setting, "algorithm": alg}
            x, y = plotting.pivot(table, "queries", "subopt", where=where)
            keep = x > 0
            plotting.band_plot(row[0], x[keep], y[:, keep], alg, color=colors[alg], loglog=True,
                               linestyle=styles[alg])
            x, r = plotting.pivot(table, "queries", "regret_kl", where=where)
            plotting.band_plot(row[1], x, r, alg, color=colors[alg], linestyle=styles[alg])
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
    fig.suptitle(f"online-explore: main agent under each strategy, {n_seeds} seeds (mean, 95% band); dashed: DPO agent\n"
                 f"d={config.dim}, K={config.n_actions}, n_x={config.n_contexts}, B={config.reward_norm:g}, "
                 f"kl_coef={config.kl_coef:g}, m={config.batch_size}, T={config.iterations}, "
                 f"beta={config.beta_mode} x {config.c_beta:g}, reward={config.reward}, learner={config.learner_kind}")
    return plotting.save_figure(fig, out_dir, "online_explore")
