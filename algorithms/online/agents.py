"""The online algorithms of P1's loop by name: an agent plus a pair-selection strategy (docs/theory.md §2.4-2.5, §6).

An online algorithm (``OnlineAlgorithm``) is a strategy of ``algorithms.online.strategies`` choosing each
comparison, an agent producing the policy ``pi_t`` that is evaluated (an entry of ``AGENTS``) and the
agent's options. An agent is a small bundle of pure functions over its own NamedTuple state
(``algorithms.online.loop.Agent``)::

    state = agent.init(instance, options)                  # once, before iteration 0
    hyper = agent.hyper(algorithm_options, options, kl_coef)   # numbers, traced: one program per agent
    policy, state = agent.act(view, state, hyper)          # view: loop.AgentView; policy: loop.AgentPolicy

Built-in agents:

- ``gibbs``: P1's main agent ``pi_t = Gibbs(<theta_t, phi>)`` of the reward learner's estimate (no memory;
  P1's plug-in bound applies);
- ``dpo``: a softmax policy trained by DPO on all data so far (``algorithms.online.iterative_dpo``), warm
  started from ``pi_{t-1}`` or restarted from ``pi0`` (option ``restart``), with a likelihood bonus
  (option ``bonus``: ``none`` | ``xpo`` | ``vpo`` | ``selm``; coefficient ``bonus_coef``).

Built-in algorithms: every strategy with the Gibbs agent under the strategy's name (a strategy registered
later included; ``calibration`` excepted: with the Gibbs agent it is ``pi0``), and ``iterative_dpo`` (DPO,
``max_min`` pairs), ``iterative_dpo_restart``, ``xpo``, ``vpo`` and ``selm`` (DPO with the bonus, pairs
``(pi_t, pi_cal)``). Every algorithm name takes the suffix ``+distinct`` (``uniform+distinct``,
``xpo+distinct``): the same algorithm with its strategy's pair law conditioned on ``a1 != a2``
(``algorithms.online.strategies.distinct_law``, a variant outside P1). The suffix is a modifier, not a
registry entry: ``names()`` lists the registered algorithms only, and ``check_names`` / ``get`` accept
any of them with the suffix (registry names cannot contain ``+``). A new agent and an algorithm using it are two registry lines::

    def act(view, state, hyper):                         # Gibbs of the pessimistic reward
        reward = view.reward_hat - view.confidence.beta * view.uncertainty
        return loop.AgentPolicy(bandits.gibbs_policy(view.instance.log_pi0, reward, view.instance.kl_coef)), state

    register_agent("pessimistic", loop.Agent(act, label="Gibbs(r_hat - beta Gamma)"))
    register("pessimistic_enhancer", OnlineAlgorithm("enhancer", agent="pessimistic"))
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from algorithms.core import confidence as conf
from algorithms.offline.gshf import linear_gibbs
from algorithms.online import iterative_dpo, loop, strategies
from algorithms.online.loop import Agent, AgentPolicy, AgentView, NoState
from bandits import Instance, PreferenceData
from bandits import validation as v

__all__ = ["AGENTS", "ALGORITHMS", "BUILTIN_ALGORITHMS", "DPOState", "OnlineAlgorithm", "agent_of", "check_name",
           "check_names", "get", "names", "register", "register_agent", "run_algorithm"]


class DPOState(NamedTuple):
    params: jax.Array          # the policy's parameters: w [d] (linear) or logits [n_x, K] (tabular)
    log_pi: jax.Array          # pi_{t-1}, SELM's calibration policy


def _gibbs_act(view: AgentView, state: NoState, hyper) -> tuple[AgentPolicy, NoState]:
    return AgentPolicy(linear_gibbs(view.world, view.theta)), state


def _dpo_init(instance: Instance, options) -> DPOState:
    return DPOState(iterative_dpo.initial_params(options.dpo_policy, instance), instance.log_pi0)


def _dpo_act(view: AgentView, state: DPOState, hyper: iterative_dpo.AgentParams) -> tuple[AgentPolicy, DPOState]:
    inst, o = view.instance, view.options
    log_pi_cal = jnp.where(hyper.previous_calibration > 0, state.log_pi, inst.log_pi0)
    start = jax.tree.map(lambda a, b: jnp.where(hyper.restart > 0, a, b),
                         iterative_dpo.initial_params(o.dpo_policy, inst), state.params)
    params = iterative_dpo.train_dpo_agent_with(o.dpo_policy, start, inst, view.data, log_pi_cal, hyper.coef,
                                                hyper.ref_coef, o.dpo_steps, o.dpo_learning_rate)
    log_pi = iterative_dpo.policy_log_probs(o.dpo_policy, params, inst)
    return AgentPolicy(log_pi, log_pi_cal), DPOState(params, log_pi)


def _dpo_hyper(algorithm_options: Mapping[str, Any], options, kl_coef) -> iterative_dpo.AgentParams:
    return iterative_dpo.agent_params(algorithm_options.get("bonus", "none"), options.bonus_coef, kl_coef,
                                      algorithm_options.get("restart", False))


AGENTS: dict[str, Agent] = {
    "gibbs": Agent(_gibbs_act, label="Gibbs(theta_t)", plug_in_bound=True, linestyle="-"),
    "dpo": Agent(_dpo_act, _dpo_init, _dpo_hyper, label="DPO agent", linestyle="--", options=("bonus", "restart")),
}


class OnlineAlgorithm(NamedTuple):
    strategy: str                                          # a name in algorithms.online.strategies
    agent: str = "gibbs"                                   # a name in AGENTS
    options: Mapping[str, Any] = MappingProxyType({})      # the agent's options (names in its ``options``)
    label: str = ""                                        # the legend label (default: the name)


ALGORITHMS: dict[str, OnlineAlgorithm] = {
    **{name: OnlineAlgorithm(name, label=name) for name in strategies.BUILTIN_STRATEGIES if name != "calibration"},
    "iterative_dpo": OnlineAlgorithm("max_min", "dpo", MappingProxyType({}), "iterative_dpo"),
    "iterative_dpo_restart": OnlineAlgorithm("max_min", "dpo", MappingProxyType({"restart": True}),
                                             "iterative_dpo_restart"),
    **{bonus: OnlineAlgorithm("calibration", "dpo", MappingProxyType({"bonus": bonus}), bonus)
       for bonus in ("xpo", "vpo", "selm")},
}
BUILTIN_ALGORITHMS = tuple(ALGORITHMS)


def register_agent(name: str, agent: Agent, *, overwrite: bool = False) -> Agent:
    """Add ``agent`` under ``name`` (a taken name is refused unless ``overwrite``); returns it."""
    v.check_registry_name("agent", name, tuple(AGENTS), overwrite=overwrite)
    if not isinstance(agent, Agent) or not all(callable(f) for f in (agent.act, agent.init, agent.hyper)):
        v.fail(f"agent {name!r}", agent, "an algorithms.online.loop.Agent(act, init, hyper, label, plug_in_bound, "
               "linestyle, options)")
    if not isinstance(agent.linestyle, str) or not isinstance(agent.plug_in_bound, bool):
        v.fail(f"agent {name!r} linestyle/plug_in_bound", (agent.linestyle, agent.plug_in_bound),
               "a matplotlib line style string and a boolean")
    AGENTS[name] = agent._replace(label=agent.label or name, options=tuple(agent.options))
    return AGENTS[name]


def register(name: str, algorithm: OnlineAlgorithm, *, overwrite: bool = False) -> OnlineAlgorithm:
    """Add the online algorithm ``name`` (its strategy and agent must be registered; its options are those
    its agent reads, checked by the agent's ``hyper``); a taken name is refused unless ``overwrite``."""
    v.check_registry_name("online algorithm", name, names(), overwrite=overwrite)
    if not isinstance(algorithm, OnlineAlgorithm):
        v.fail(f"online algorithm {name!r}", algorithm, "an OnlineAlgorithm(strategy, agent, options, label)")
    v.check_choice(f"online algorithm {name!r} strategy", algorithm.strategy, tuple(strategies.STRATEGIES))
    v.check_choice(f"online algorithm {name!r} agent", algorithm.agent, tuple(AGENTS))
    agent = AGENTS[algorithm.agent]
    for key in algorithm.options:
        v.check_choice(f"online algorithm {name!r} options of agent {algorithm.agent!r}", key, agent.options)
    options = MappingProxyType(dict(algorithm.options))
    agent.hyper(options, loop.OnlineOptions(), 1.0)   # the agent refuses bad option values here
    ALGORITHMS[name] = algorithm._replace(options=options, label=algorithm.label or name)
    return ALGORITHMS[name]


def names() -> tuple[str, ...]:
    """The registered algorithms, then every strategy registered since import (with the Gibbs agent)."""
    extra = tuple(s for s in strategies.STRATEGIES if s not in ALGORITHMS and s != "calibration")
    return tuple(ALGORITHMS) + extra


def check_name(field: str, name: str) -> str:
    """``name`` must be a registered algorithm (``names()``), optionally with the suffix ``+distinct``."""
    base, _ = strategies.split_modifier(name)
    if not isinstance(base, str) or base not in names():
        v.fail(field, name, f"one of {', '.join(repr(c) for c in names())}, optionally with the suffix "
               f"'{strategies.DISTINCT}'")
    return name


def check_names(field: str, values, *, empty: bool = False) -> tuple[str, ...]:
    """A tuple of distinct algorithm names (``check_name`` each), non-empty unless ``empty``."""
    if not isinstance(values, tuple) or (not values and not empty):
        v.fail(field, values, "a non-empty tuple of algorithm names (names(), optionally with the suffix "
               f"'{strategies.DISTINCT}')")
    for name in values:
        check_name(field, name)
    if len(set(values)) != len(values):
        v.fail(field, values, "a tuple without repeated names")
    return values


def get(name: str) -> OnlineAlgorithm:
    """The algorithm ``name``; ``NAME+distinct`` is ``NAME`` with the strategy ``STRATEGY+distinct``."""
    check_name("algorithms", name)
    base, modified = strategies.split_modifier(name)
    algorithm = ALGORITHMS.get(base) or OnlineAlgorithm(base, label=base)
    if modified:
        algorithm = algorithm._replace(strategy=algorithm.strategy + strategies.DISTINCT,
                                       label=algorithm.label + strategies.DISTINCT)
    return algorithm


def agent_of(name: str) -> Agent:
    """The agent entry of algorithm ``name``."""
    return AGENTS[get(name).agent]


def run_algorithm(key: jax.Array, instance: Instance, name: str, options: loop.OnlineOptions,
                  confidence: conf.ConfidenceConfig, *, reward_norm, hidden: int = 32,
                  offline: PreferenceData | None = None) -> loop.OnlineTrace:
    """``loop.run_online`` of the registered algorithm ``name`` (its strategy, agent and options)."""
    algorithm = get(name)
    agent = AGENTS[algorithm.agent]
    return loop.run_online(key, instance, strategies.get(algorithm.strategy), agent, options, confidence,
                           reward_norm=reward_norm, hidden=hidden,
                           hyper=agent.hyper(algorithm.options, options, instance.kl_coef), offline=offline)
