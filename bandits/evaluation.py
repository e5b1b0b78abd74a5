"""Exact evaluation of policies on a finite instance (docs/theory.md §1.2-1.3, §9.1 item 16).

With ``eta = kl_coef`` and policies as log-probabilities ``[n_x, K]``:

- ``J(pi) = E_{x~d0}[ E_{a~pi} r*(x,a) - eta KL(pi(.|x) || pi0(.|x)) ]`` (P1 §2, eq. of the objective);
- ``pi* = pi_{r*}`` (Gibbs), ``J(pi*) = eta E_x log Z_{r*}(x)`` (docs/theory.md §1.3(i));
- ``subopt(pi) = J(pi*) - J(pi)``, which equals ``eta E_x KL(pi || pi*)`` exactly (§1.3(ii));
- the P1 form ``subopt_kl(pi) = J(pi*) - J(pi) + eta E_x KL(pi* || pi)`` bounded in P1's theorems;
- the win rate ``E_x E_{a~pi1, b~pi2} P(x, a, b)`` under the instance's true preference oracle.

No Monte Carlo anywhere: every quantity is a finite sum.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bandits.instance import Instance
from bandits.policy import gibbs_policy, kl_divergence, log_partition
from bandits.preferences import preference_matrix


def context_mean(instance: Instance, per_context: jax.Array) -> jax.Array:
    """``E_{x~d0}[f(x)] = sum_x d0(x) f(x)``."""
    return jnp.sum(instance.d0 * per_context, axis=-1)


def optimal_policy(instance: Instance) -> jax.Array:
    """``log pi*`` = Gibbs policy of the true reward."""
    return gibbs_policy(instance.log_pi0, instance.reward, instance.kl_coef)


def optimal_value(instance: Instance) -> jax.Array:
    """``J(pi*) = eta E_x log Z_{r*}(x)``."""
    return instance.kl_coef * context_mean(
        instance, log_partition(instance.log_pi0, instance.reward, instance.kl_coef))


def expected_reward(instance: Instance, log_pi: jax.Array, reward: jax.Array | None = None) -> jax.Array:
    """``E_{x~d0} E_{a~pi} r(x, a)`` (true reward unless ``reward`` is given)."""
    r = instance.reward if reward is None else reward
    return context_mean(instance, jnp.sum(jnp.exp(log_pi) * r, axis=-1))


def kl_to_reference(instance: Instance, log_pi: jax.Array) -> jax.Array:
    """``E_{x~d0} KL(pi(.|x) || pi0(.|x))``."""
    return context_mean(instance, kl_divergence(log_pi, instance.log_pi0))


def expected_kl(instance: Instance, log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """``E_{x~d0} KL(p(.|x) || q(.|x))``."""
    return context_mean(instance, kl_divergence(log_p, log_q))


def value(instance: Instance, log_pi: jax.Array, reward: jax.Array | None = None) -> jax.Array:
    """``J_r(pi) = E_x [E_pi r - eta KL(pi || pi0)]`` (true reward unless ``reward`` is given)."""
    return expected_reward(instance, log_pi, reward) - instance.kl_coef * kl_to_reference(instance, log_pi)


def suboptimality(instance: Instance, log_pi: jax.Array) -> jax.Array:
    """``J(pi*) - J(pi)`` computed as the difference of the two exact values."""
    return optimal_value(instance) - value(instance, log_pi)


def suboptimality_kl(instance: Instance, log_pi: jax.Array) -> jax.Array:
    """P1's bounded quantity ``J(pi*) - J(pi) + eta E_x KL(pi* || pi)`` (docs/theory.md §9.1 item 16)."""
    return suboptimality(instance, log_pi) + instance.kl_coef * expected_kl(
        instance, optimal_policy(instance), log_pi)


def preference_matrices(instance: Instance) -> jax.Array:
    """True ``P(x, a, b)`` for all contexts, shape ``[n_x, K, K]``."""
    return jax.vmap(preference_matrix, in_axes=(0, 0, None))(instance.reward, instance.phi, instance.skew)


def win_rate(instance: Instance, log_pi1: jax.Array, log_pi2: jax.Array) -> jax.Array:
    """``E_{x~d0} E_{a~pi1(.|x), b~pi2(.|x)} P(x, a, b)``: the probability that pi1's response is preferred."""
    p = preference_matrices(instance)
    per_x = jnp.einsum("xa,xab,xb->x", jnp.exp(log_pi1), p, jnp.exp(log_pi2))
    return context_mean(instance, per_x)
