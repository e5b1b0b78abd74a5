"""Policies as log-probabilities ``[n_x, K]``: the Gibbs oracle, the exact KL, and helpers.

Gibbs / policy-improvement oracle (P1 §3 "computational oracle O(r, pi0, eta)"; docs/theory.md §1.3):

    pi_r(a|x) = pi0(a|x) exp(r(x,a) / kl_coef) / Z_r(x),   log Z_r(x) = logsumexp_a(log pi0 + r / kl_coef).

Everything is computed in log space (docs/theory.md §9.1 items 1-2) so that tiny ``kl_coef`` and large
``K`` stay finite.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def gibbs_policy(log_pi0: jax.Array, reward: jax.Array, kl_coef) -> jax.Array:
    """``log pi_r = log_softmax(log pi0 + r / kl_coef)`` along the action axis."""
    return jax.nn.log_softmax(log_pi0 + reward / kl_coef, axis=-1)


def log_partition(log_pi0: jax.Array, reward: jax.Array, kl_coef) -> jax.Array:
    """``log Z_r(x) = log sum_a pi0(a|x) exp(r(x,a) / kl_coef)``, shape ``[n_x]``."""
    return jax.nn.logsumexp(log_pi0 + reward / kl_coef, axis=-1)


def kl_divergence(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """Exact ``KL(p || q) = sum_a p(a) (log p(a) - log q(a))`` per context (last axis summed).

    Terms with ``p(a) = 0`` contribute 0; ``q(a) = 0 < p(a)`` gives ``+inf``, as it should.
    """
    support = log_p > -jnp.inf
    safe_p = jnp.where(support, log_p, 0.0)
    terms = jnp.where(support, jnp.exp(safe_p) * (safe_p - log_q), 0.0)
    return jnp.sum(terms, axis=-1)


def probabilities(log_pi: jax.Array) -> jax.Array:
    return jnp.exp(log_pi)


def uniform_policy(n_x: int, n_actions: int, dtype=None) -> jax.Array:
    """``log pi = -log K`` everywhere."""
    return jnp.full((n_x, n_actions), -jnp.log(n_actions), dtype=dtype)


def normalize_logits(logits: jax.Array) -> jax.Array:
    """Turn arbitrary logits ``[n_x, K]`` into a policy (log-probabilities)."""
    return jax.nn.log_softmax(logits, axis=-1)
