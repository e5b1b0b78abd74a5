"""The configuration and the vectorized driver shared by the online experiments of P1: online-explore,
batch-size, hybrid and bonus-compare (docs/theory.md §2.4-2.5).

- ``Config``: the instance and confidence fields (``WorldConfig``) plus the loop's fields; each online
  experiment derives its own ``Config`` from it;
- ``per_seed``: one seed, one setting, one algorithm of a group: the trace of ``algorithms.online.loop``;
- ``run_algorithms``: every algorithm and setting over all seeds, one compiled program per agent
  (``experiments.engine.runner.run_vectorized``), as tidy tables;
- ``final_summary``: the last iteration's mean per algorithm with its Student-t 95% half-width.

Algorithm names resolve through ``algorithms.online.agents`` (a strategy plus the agent's options).
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
from algorithms.online import iterative_dpo, strategies
from algorithms.online.agents import ALGORITHMS, algorithm_spec
from algorithms.online.loop import LEARNERS, OnlineSettings, run_online
from bandits import validation as v
from experiments.engine import stats
from experiments.engine.results import tidy
from experiments.engine.runner import run_vectorized
from experiments.catalogue.world_config import WorldConfig

QUICK_ALGORITHMS = ("enhancer", "pi0", "self_play", "optimism", "thompson", "max_min", "xpo")
SETTINGS = ("hard", "easy")

nan_columns = ("bound", "bound_holds", "in_confidence_set", "strategy_info", "bound_rate", "bound_rate_holds")


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


def per_seed(key, coverage, temperature, strategy_index, config: Config, group: tuple[str, ...],
             settings: OnlineSettings, offline_size: int = 0, agent_table: tuple | None = None):
    """One seed, one setting, strategy ``group[strategy_index]``: the ``algorithms.online.loop`` trace as a
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
    """P1's online/hybrid rate ``sqrt(d / (gamma^2 m)) + confidence_width`` (constant 1; docs/theory.md §2.4)."""
    gamma = float(conf.sigmoid_slope_lower_bound(config.reward_norm))
    return math.sqrt(config.dim / (gamma**2 * batch_size)) + np.asarray(confidence_width, float)


def final_summary(table, group: str = "algorithm", metric: str = "subopt") -> dict:
    """Per group: mean of ``metric`` at the last iteration and the half-width of its Student-t 95% interval
    over seeds (``stats.t_interval``)."""
    out = {}
    last = table["iteration"] == table["iteration"].max() if "iteration" in table else slice(None)
    for name in dict.fromkeys(np.asarray(table[group])[last].tolist()):
        y = np.asarray(table[metric])[last][np.asarray(table[group])[last] == name]
        out[name] = tuple(map(float, stats.t_interval(y)))
    return out


