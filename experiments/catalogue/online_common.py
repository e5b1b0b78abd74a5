"""The configuration and the vectorized driver shared by the online experiments of P1: online-explore,
batch-size, hybrid and bonus-compare (docs/theory.md §2.4-2.5).

- ``Config``: the nested instance (``bandits.InstanceConfig``), confidence set
  (``algorithms.core.confidence.ConfidenceConfig``) and loop options (``algorithms.online.loop.OnlineOptions``),
  plus the settings and algorithms; each online experiment derives its own ``Config`` from it;
- ``per_seed``: one seed, one setting, one algorithm of a group: the trace of ``algorithms.online.loop``;
- ``run_algorithms``: every algorithm and setting over all seeds, one compiled program per agent
  (``experiments.engine.runner.run_vectorized``), as tidy tables;
- ``final_summary``: the last iteration's mean per algorithm with its Student-t 95% half-width;
- ``metrics_summary``: per algorithm, the final cumulative regrets (``REGRETS``), the mean fraction of
  identical pairs over the queries made and the final log-determinants (definitions in
  ``algorithms.online.loop``);
- ``metric_panel``: one panel of a metric against queries, one band per algorithm.

Algorithm names resolve through the registry ``algorithms.online.agents`` (a strategy, an agent and the
agent's options), so a plugin's algorithm runs here unchanged.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

import bandits as b
from algorithms.core import confidence as conf
from algorithms.online import agents, strategies
from algorithms.online.loop import REWARD_LEARNERS, OnlineOptions, run_online
from bandits import validation as v
from experiments.engine import plotting, stats
from experiments.engine.config import check_unused
from experiments.engine.results import tidy
from experiments.engine.runner import run_vectorized

QUICK_ALGORITHMS = ("enhancer", "pi0", "self_play", "optimism", "thompson", "max_min", "xpo")
SETTINGS = ("hard", "easy")

nan_columns = ("bound", "bound_holds", "in_confidence_set", "strategy_info", "bound_rate", "bound_rate_holds",
               "log_det_fisher")
# the cumulative regrets of algorithms.online.loop (sums over the queries made, each an exact expectation)
REGRETS = ("agent_regret_kl", "query_regret", "query_regret_kl", "avg_regret", "weak_regret")
DIAGNOSTICS = ("identical_pairs", "log_det_gram", "log_det_fisher")
# what a ranking may sort by, lower is better: the main agent's final suboptimality or a cumulative regret
RANK_METRICS = ("subopt", "subopt_kl") + REGRETS
LABELS = {
    "subopt": "J(pi*) - J(pi_t)",
    "subopt_kl": "subopt + eta KL(pi* || pi_t)",
    "agent_regret_kl": "sum_s m subopt_kl(pi_s) (main agent)",
    "query_regret": "sum m [J(pi*) - (J(pi1_s) + J(pi2_s))/2]",
    "query_regret_kl": "sum m [subopt_kl(pi1_s) + subopt_kl(pi2_s)]/2",
    "avg_regret": "sum m E[r*(a*) - (r*(a1) + r*(a2))/2]",
    "weak_regret": "sum m E[r*(a*) - max(r*(a1), r*(a2))]",
    "identical_pairs": "P(a1 = a2) of batch t",
    "log_det_gram": "log det(lam I + sum z z^T)",
    "log_det_fisher": "log det(lam I + sum sigma'(<theta*, z>) z z^T)",
}
TITLES = {
    "subopt": "suboptimality of the main agent",
    "subopt_kl": "KL-form suboptimality of the main agent",
    "agent_regret_kl": "main agent's cumulative subopt_kl",
    "query_regret": "query regret (KL-regularised J)",
    "query_regret_kl": "query regret, P1 form (subopt_kl)",
    "avg_regret": "average regret of the queries (unregularised)",
    "weak_regret": "weak regret of the queries (unregularised)",
    "identical_pairs": "fraction of identical pairs",
    "log_det_gram": "log det of the Gram matrix",
    "log_det_fisher": "log det of the Fisher info at theta*",
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields reachable with ``--set field=value``; those of the nested ``instance``, ``confidence`` and
    ``online`` (``algorithms.online.loop.OnlineOptions``) by their own names. The settings set the
    instance's coverage and temperature (``hard``: ``hard_coverage``, ``hard_temperature``; ``easy``:
    uniform ``pi0``), so ``coverage`` and ``temperature`` are refused.

    ``settings``: the settings run, a non-empty tuple of distinct names from ``hard`` (a peaked ``pi0``
    covering ``pi*`` poorly, where exploration matters) and ``easy`` (uniform ``pi0``); every algorithm
    runs in each on the same instances, contexts and label uniforms (common random numbers).
    ``hard_coverage``: the coverage knob ``c`` in ``[-1, 1]`` of the hard setting's ``pi0``, whose logits
    are ``s (c rho + sqrt(1 - c^2) xi)`` with ``rho = r*/B`` and ``xi = <u, phi>`` for a random unit
    ``u`` orthogonal to ``theta*`` (docs/theory.md §8.1); ``c < 0`` puts ``pi0``'s mass on low-reward
    actions, so ``pi0`` covers ``pi*`` poorly.
    ``hard_temperature``: the peakedness ``s >= 0`` of the hard setting's ``pi0`` (the logit scale
    above, so ``|logit| <= s``; 0 would make it uniform, like ``easy``).
    ``algorithms``: the online algorithms run, distinct names of the registry ``algorithms.online.agents``
    (a strategy of ``algorithms.online.strategies`` with P1's Gibbs agent, a DPO-agent algorithm, or a
    plugin's), each optionally with the suffix ``+distinct`` (its pair law conditioned on ``a1 != a2``,
    outside P1); empty: the experiment's default set ``algorithm_names``, every built-in algorithm
    (``agents.BUILTIN_ALGORITHMS``), and in bonus-compare every registered one."""

    instance: b.InstanceConfig = b.InstanceConfig(n_contexts=64, n_actions=16, kl_coef=0.1)
    confidence: conf.ConfidenceConfig = conf.ConfidenceConfig()
    online: OnlineOptions = OnlineOptions(iterations=24, batch_size=64, bonus_coef=0.001, dpo_learning_rate=0.2)
    settings: tuple[str, ...] = SETTINGS
    hard_coverage: float = -0.8
    hard_temperature: float = 10.0
    algorithms: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self):
        check_unused(self, ("instance.coverage", "instance.temperature"),
                     "the settings set pi0 (hard: hard_coverage and hard_temperature; easy: uniform)")
        v.check_names("settings", self.settings, SETTINGS)
        v.check_float("hard_coverage", self.hard_coverage, low=-1.0, high=1.0)
        v.check_float("hard_temperature", self.hard_temperature, low=0.0)
        agents.check_names("algorithms", self.algorithms, empty=True)
        # the loop itself allows T = 0 (an evaluation of pi0 only); a curve against queries needs T >= 1
        v.check_int("iterations", self.online.iterations, 1)

    @property
    def algorithm_names(self) -> tuple[str, ...]:
        return tuple(self.algorithms) if self.algorithms else agents.BUILTIN_ALGORITHMS

    @property
    def learner_name(self) -> str:
        """The reward learner the loop runs on this instance (``online.learner``, ``auto`` resolved)."""
        return self.online.learner_name(self.instance.reward)

    @property
    def exact_confidence_set(self) -> bool:
        """Whether ``theta*`` is a point of the learner's model (a linear learner in a linear world), so
        that ``C_t``, ``bound`` and ``in_confidence_set`` are P1's."""
        return REWARD_LEARNERS[self.learner_name].exact and self.instance.reward == "linear"

    def setting_values(self, name: str) -> tuple[float, float]:
        """(coverage, temperature) of a setting."""
        return (self.hard_coverage, self.hard_temperature) if name == "hard" else (0.0, 0.0)


def per_seed(key, coverage, temperature, index, config: Config, group: tuple[str, ...], online: OnlineOptions,
             offline_size: int = 0):
    """One seed, one setting, algorithm ``group[index]``: the ``algorithms.online.loop`` trace as a dict of
    ``[T + 1]`` arrays. Every algorithm of ``group`` has the same agent and ``index`` is traced, so they
    share one compiled program: ``lax.switch`` runs only the selected strategy, and the agent's numbers
    (``Agent.hyper`` of each member's options) are a table indexed by the same ``index``."""
    k_inst, k_run, k_off = jax.random.split(key, 3)
    inst = b.make_instance(k_inst, config.instance, coverage=coverage, temperature=temperature)
    offline = None
    if offline_size:
        offline = b.sample_preference_data(k_off, inst, inst.log_pi0, inst.log_pi0, offline_size)
    members = [agents.get(name) for name in group]
    agent = agents.AGENTS[members[0].agent]
    branches = [strategies.get(m.strategy) for m in members]
    strategy = branches[0] if len(branches) == 1 else strategies.select(index, branches)
    rows = [agent.hyper(m.options, online, config.instance.kl_coef) for m in members]
    hyper = jax.tree.map(lambda *column: jnp.asarray(column, inst.phi.dtype)[index], *rows)
    trace = run_online(k_run, inst, strategy, agent, online, config.confidence,
                       reward_norm=config.instance.reward_norm, hidden=config.instance.hidden, hyper=hyper,
                       offline=offline)
    return trace._asdict()


def run_algorithms(config: Config, algorithms, keys, progress, settings_names=None, iterations=None,
                   batch_size=None, offline_size: int = 0, tag: str = "") -> list[dict]:
    """Tables (one per algorithm and setting); shared by the online experiments.

    Algorithms with the same agent (all Gibbs-agent strategies; all DPO-agent bonuses) share one
    compiled program: compilation, not running, dominates small runs.
    """
    groups: dict[str, list[str]] = {}
    for alg in algorithms:
        groups.setdefault(agents.get(alg).agent, []).append(alg)
    online = dataclasses.replace(config.online, iterations=config.online.iterations if iterations is None
                                 else iterations, batch_size=config.online.batch_size if batch_size is None
                                 else batch_size)
    tables = []
    for members in groups.values():
        fn = functools.partial(per_seed, config=config, group=tuple(members), online=online,
                               offline_size=offline_size)
        for index, alg in enumerate(members):
            for setting in settings_names or config.settings:
                coverage, temperature = config.setting_values(setting)
                out = run_vectorized(fn, keys, np.float64(coverage), np.float64(temperature), np.int32(index),
                                     progress=progress, tag=f"{tag}{setting}/{alg}")
                tables.append(_table(out, config, alg, setting, online, offline_size, len(keys)))
    order = {a: i for i, a in enumerate(algorithms)}
    return sorted(tables, key=lambda t: order[str(t["algorithm"][0])])


def _table(out, config: Config, alg: str, setting: str, online: OnlineOptions, offline_size: int, n_seeds: int):
    coverage, temperature = config.setting_values(setting)
    out["bound_holds"] = np.where(np.isnan(out["bound"]), np.nan, (out["subopt_kl"] <= out["bound"]).astype(float))
    out["bound_rate"] = np.where(np.isnan(out["bound"]), np.nan,
                                 rate_bound(config, online.batch_size, out["confidence_width"]))
    out["bound_rate_holds"] = np.where(np.isnan(out["bound_rate"]), np.nan,
                                       (out["subopt_kl"] <= out["bound_rate"]).astype(float))
    table = tidy(out, seed=np.arange(n_seeds), iteration=np.arange(online.iterations + 1))
    count = len(table["seed"])
    table.update(algorithm=np.full(count, alg), setting=np.full(count, setting),
                 coverage=np.full(count, coverage), temperature=np.full(count, temperature),
                 kl_coef=np.full(count, config.instance.kl_coef), batch_size=np.full(count, online.batch_size),
                 offline_size=np.full(count, offline_size))
    return table


def rate_bound(config: Config, batch_size: int, confidence_width):
    """P1's online/hybrid rate ``sqrt(d / (gamma^2 m)) + confidence_width`` (constant 1; docs/theory.md §2.4)."""
    gamma = float(conf.sigmoid_slope_lower_bound(config.instance.reward_norm))
    return math.sqrt(config.instance.dim / (gamma**2 * batch_size)) + np.asarray(confidence_width, float)


def info_metric(config: Config) -> str:
    """The log-determinant figures draw: the Fisher information at theta* where it is defined (an exact
    learner in a linear world), else the Gram matrix of the learner's features."""
    return "log_det_fisher" if config.exact_confidence_set else "log_det_gram"


def metrics_summary(table, prefix: str, group: str = "algorithm") -> dict:
    """``{prefix}/{name}/...`` per group: ``final_<regret>`` (mean at the last iteration) for each of
    ``REGRETS``, ``identical_pairs`` (mean over seeds and the iterations whose batch is used, ``t < T``)
    and ``final_log_det_gram`` / ``final_log_det_fisher`` (the latter where defined)."""
    out = {}
    for metric in REGRETS:
        for name, (mean, _) in final_summary(table, group, metric).items():
            out[f"{prefix}/{name}/final_{metric}"] = mean
    used = np.asarray(table["iteration"]) < np.asarray(table["iteration"]).max()
    for name in dict.fromkeys(np.asarray(table[group]).tolist()):
        sel = np.asarray(table[group]) == name
        out[f"{prefix}/{name}/identical_pairs"] = float(np.mean(np.asarray(table["identical_pairs"])[sel & used]))
    for metric in ("log_det_gram", "log_det_fisher"):
        for name, (mean, _) in final_summary(table, group, metric).items():
            if np.isfinite(mean):
                out[f"{prefix}/{name}/final_{metric}"] = mean
    return out


def bound_summary(table, prefix: str, exact_set: bool) -> dict:
    """P1's online bounds over the rows of ``table`` (docs/theory.md §2.4): ``{prefix}/bound_holds_frac``, the
    fraction of rows with a plug-in bound where ``subopt_kl <= bound``; ``{prefix}/bound_holds_frac_in_set``, the
    same fraction on the event ``theta* in C_t`` the bound assumes (absent when the event never occurs);
    ``{prefix}/bound_rate_holds_frac`` and ``{prefix}/bound_rate_over_subopt_kl_median`` for the rate form; and,
    where ``C_t`` is P1's (``exact_set``), ``{prefix}/in_confidence_set_frac``, the event's frequency. Rows
    without a bound (strategies that state none) are left out; no entry when no row has one."""
    out = {}
    holds = np.asarray(table["bound_holds"], float)
    in_set = np.asarray(table["in_confidence_set"], float)
    if np.any(~np.isnan(holds)):
        out[f"{prefix}/bound_holds_frac"] = float(np.nanmean(holds))
        inside = (in_set == 1.0) & ~np.isnan(holds)
        if np.any(inside):
            out[f"{prefix}/bound_holds_frac_in_set"] = float(np.mean(holds[inside]))
    rate_holds = np.asarray(table["bound_rate_holds"], float)
    if np.any(~np.isnan(rate_holds)):
        out[f"{prefix}/bound_rate_holds_frac"] = float(np.nanmean(rate_holds))
        ratio = np.asarray(table["bound_rate"], float) / np.maximum(np.asarray(table["subopt_kl"], float), 1e-300)
        out[f"{prefix}/bound_rate_over_subopt_kl_median"] = float(np.nanmedian(ratio))
    if exact_set:
        out[f"{prefix}/in_confidence_set_frac"] = float(np.nanmean(in_set))
    return out


def paired_final(table, group: str, baseline, prefix: str, metrics=RANK_METRICS) -> dict:
    """Every group against ``baseline`` at its own last iteration, paired by seed (the groups share instances,
    contexts and label uniforms): ``{prefix}/{name}/minus_{baseline}/{metric}/diff`` with its 95% Student-t
    interval (``.../diff_low``, ``.../diff_high``) and ``.../below_frac`` (``stats.paired_summary``), for each
    ``metric``; for a loss or a regret an interval wholly below 0 says ``name`` is lower than ``baseline``. Empty
    when ``baseline`` is not among the groups."""
    names = np.asarray(table[group]).tolist()
    if baseline not in names:
        return {}
    out = {}
    for name in dict.fromkeys(names):
        if name == baseline:
            continue
        for metric in metrics:
            out.update(stats.paired_summary(f"{prefix}/{name}/minus_{baseline}/{metric}",
                                            final_by_seed(table, group, name, metric),
                                            final_by_seed(table, group, baseline, metric)))
    return out


def final_by_seed(table, group: str, name, metric: str) -> np.ndarray:
    """``metric`` of group ``name`` at its last iteration, one value per seed in seed order."""
    names, iteration, seed = (np.asarray(table[k]) for k in (group, "iteration", "seed"))
    sel = names == name
    sel = sel & (iteration == iteration[sel].max())
    return np.asarray(table[metric], float)[sel][np.argsort(seed[sel], kind="stable")]


def metric_panel(ax, table, metric: str, where: dict, algorithms, colors, *, x: str = "queries", styles=None,
                 labels=None, title: str = "") -> None:
    """``metric`` against ``x`` for each algorithm (mean and 95% band over seeds) on ``ax``."""
    for alg in algorithms:
        xs, ys = plotting.pivot(table, x, metric, where={**where, "algorithm": alg})
        plotting.band_plot(ax, xs, ys, (labels or {}).get(alg, alg), color=colors[alg],
                           linestyle=(styles or {}).get(alg, "-"))
    ax.set(title=title or TITLES[metric], xlabel="queries m t" if x == "queries" else x, ylabel=LABELS[metric])


def final_summary(table, group: str = "algorithm", metric: str = "subopt") -> dict:
    """Per group: mean of ``metric`` at the last iteration and the half-width of its Student-t 95% interval
    over seeds (``stats.t_interval``)."""
    out = {}
    last = table["iteration"] == table["iteration"].max() if "iteration" in table else slice(None)
    for name in dict.fromkeys(np.asarray(table[group])[last].tolist()):
        y = np.asarray(table[metric])[last][np.asarray(table[group])[last] == name]
        out[name] = tuple(map(float, stats.t_interval(y)))
    return out
