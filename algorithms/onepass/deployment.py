"""Deployment-stage pair-selection rules (docs/theory.md §4.5 P3's rule; §6 dueling-bandit baselines).

Every rule sees one context: features ``phi [K, d]``, the estimate ``theta`` (so ``r_hat = phi theta``),
the inverse design ``A^{-1}`` of its estimator (``cH_t^{-1}`` for OMD, ``V_t^{-1}`` for MLE), a radius
``beta``, and returns the pair ``(a, a')`` to play and query. ``W[a,b] = ||phi_a - phi_b||_{A^{-1}}``.

- ``p3`` (P3 §4.5): ``a = argmax r_hat``; ``a' = argmax_b r_hat_b + beta W[b, a]`` (exploit, then an
  optimistic action far from ``a``).
- ``maxinp`` (Saha 2021): candidates ``C = {a : r_hat_a - r_hat_b + beta W[a,b] >= 0 for all b}``;
  ``(a, a') = argmax_{a, b in C} W[a, b]``.
- ``colstim`` (Bengs, Saha, Huellermeier 2022): ``a = argmax r_hat_a + colstim_c eps_a ||phi_a||_{A^{-1}}``
  with ``eps_a`` i.i.d. standard logistic (the BT link's noise); ``a' = argmax_b r_hat_b + beta W[b, a]``.
- ``maxpairucb`` (Di et al. 2023): ``argmax_{a,b} r_hat_a + r_hat_b + beta W[a,b]``.
- ``greedy`` (self-play): ``a, a'`` i.i.d. from ``Gibbs(r_hat)`` at ``kl_coef`` (docs/theory.md §6 "Greedy").
- ``random``: ``a, a'`` i.i.d. from ``pi0(.|x)``.
- ``best_worst``, ``best_second``, ``best_quartile`` (P3's ``--rm_strategy``): rank all K actions by
  ``r_hat``; the best against the worst, the second, or the action at rank ``round(quantile (K-1))``
  from the top (``quantile = 0.25``: the 75th percentile of ``r_hat``).
Ties go to the lowest index. All rules are pure and vmappable; ``key`` is used by the random ones.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from algorithms.onepass.active_selection import pair_uncertainty, uncertainty
from bandits import validation as v

RULES = ("p3", "maxinp", "colstim", "maxpairucb", "greedy", "random", "best_worst", "best_second",
         "best_quartile")


def optimistic_second(r_hat: jax.Array, distance: jax.Array, beta) -> jax.Array:
    """``argmax_b r_hat_b + beta distance_b``."""
    return jnp.argmax(r_hat + beta * distance).astype(jnp.int32)


def maxinp_candidates(r_hat: jax.Array, w: jax.Array, beta) -> jax.Array:
    """``C = {a : r_hat_a - r_hat_b + beta W[a,b] >= 0 for all b}`` as a boolean ``[K]`` (never empty:
    the argmax of ``r_hat`` is always in it)."""
    return jnp.all(r_hat[:, None] - r_hat[None, :] + beta * w >= 0.0, axis=1)


def _argmax2(scores: jax.Array):
    k = scores.shape[-1]
    flat = jnp.argmax(scores.reshape(-1))
    return (flat // k).astype(jnp.int32), (flat % k).astype(jnp.int32)


def select_pair(rule: str, key: jax.Array, phi: jax.Array, theta: jax.Array, inverse: jax.Array, beta,
                log_pi0: jax.Array, kl_coef=1.0, colstim_c=1.0, quantile: float = 0.25):
    """The pair ``(a, a')`` (int32 scalars) chosen by ``rule`` in ``RULES`` (module docstring)."""
    v.check_choice("rule", rule, RULES)
    v.check_float("quantile", quantile, low=0.0, high=1.0)
    k = phi.shape[-2]
    r_hat = phi @ theta
    if rule in ("p3", "colstim"):
        if rule == "p3":
            first = jnp.argmax(r_hat).astype(jnp.int32)
        else:
            eps = jax.random.logistic(key, (k,), dtype=phi.dtype)
            first = jnp.argmax(r_hat + colstim_c * eps * uncertainty(phi, inverse)).astype(jnp.int32)
        return first, optimistic_second(r_hat, uncertainty(phi - phi[first][None, :], inverse), beta)
    if rule == "maxinp":
        w = pair_uncertainty(phi, inverse)
        cand = maxinp_candidates(r_hat, w, beta)
        return _argmax2(jnp.where(cand[:, None] & cand[None, :], w, -jnp.inf))
    if rule == "maxpairucb":
        w = pair_uncertainty(phi, inverse)
        return _argmax2(r_hat[:, None] + r_hat[None, :] + beta * w)
    if rule in ("greedy", "random"):
        logits = log_pi0 + r_hat / kl_coef if rule == "greedy" else log_pi0
        k1, k2 = jax.random.split(key)
        return (jax.random.categorical(k1, logits).astype(jnp.int32),
                jax.random.categorical(k2, logits).astype(jnp.int32))
    order = jnp.argsort(-r_hat, stable=True).astype(jnp.int32)
    rank = {"best_worst": k - 1, "best_second": 1, "best_quartile": int(round(quantile * (k - 1)))}[rule]
    return order[0], order[rank]


def pair_regret(reward: jax.Array, a, b):
    """``(average, weak)`` one-round regret of the pair on reward row ``reward [K]`` (docs/theory.md §9.1 item 15):
    ``max r - (r_a + r_b) / 2`` and ``max r - max(r_a, r_b)``."""
    best = jnp.max(reward)
    return best - 0.5 * (reward[a] + reward[b]), best - jnp.maximum(reward[a], reward[b])
