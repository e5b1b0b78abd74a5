"""A small built-in demo: build an instance and print its exact values, KLs, win rates and Nash gap."""
from __future__ import annotations

import jax
import jax.numpy as jnp

import bandits as b


def run_demo(seed: int = 0, config: b.InstanceConfig | None = None) -> dict[str, float]:
    """Exact quantities of one instance (float64): returned as a dict and printed by the CLI."""
    jax.config.update("jax_enable_x64", True)
    config = config or b.InstanceConfig(n_contexts=128, n_actions=32, dim=8, reward_norm=2.0,
                                        kl_coef=1.0, coverage=-0.5, temperature=5.0, skew_strength=1.0)
    inst = b.make_instance(jax.random.key(seed), config, dtype=jnp.float64)
    pi_star = b.optimal_policy(inst)
    greedy = jnp.log(jax.nn.one_hot(jnp.argmax(inst.reward, -1), config.n_actions) + 1e-300)
    uniform = b.uniform_policy(config.n_contexts, config.n_actions, jnp.float64)
    nash = b.nash_equilibrium(inst)
    out = {
        "optimal_value J(pi*)": b.optimal_value(inst),
        "J(pi0)": b.value(inst, inst.log_pi0),
        "subopt(pi0)": b.suboptimality(inst, inst.log_pi0),
        "subopt_kl(pi0)": b.suboptimality_kl(inst, inst.log_pi0),
        "E KL(pi*||pi0)": b.kl_to_reference(inst, pi_star),
        "E r*(pi*)": b.expected_reward(inst, pi_star),
        "E r*(greedy)": b.expected_reward(inst, greedy),
        "win_rate(pi* vs pi0)": b.win_rate(inst, pi_star, inst.log_pi0),
        "win_rate(pi* vs uniform)": b.win_rate(inst, pi_star, uniform),
        "nash_gap(pi*)": b.duality_gap(inst, pi_star),
        "nash_gap(nash)": nash.gap,
        "win_rate(nash vs pi*)": b.win_rate(inst, nash.log_pi, pi_star),
    }
    return {k: float(v) for k, v in out.items()}
