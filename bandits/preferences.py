"""Preference oracles: Bradley-Terry from any reward, and a general (possibly intransitive) oracle.

General oracle (docs/theory.md §8.1(iii), P2 §3.1):

    P(x, a, b) = sigmoid( r(x,a) - r(x,b) + phi(x,a)^T S phi(x,b) ),   S = -S^T,

which is Bradley-Terry when ``S = 0``. Because the margin ``m(x,a,b)`` is antisymmetric
(``m(x,b,a) = -m(x,a,b)`` for skew ``S``), ``P(x,a,b) + P(x,b,a) = 1`` holds exactly. The logit payoff of
P2's game, ``log P / (1 - P)``, is the margin itself.

Labels: ``y = 1{a1 preferred to a2}``. With ``u ~ U(0,1)`` drawn per comparison, ``y = 1{u < P}`` (noisy)
or ``y = 1{P > 1/2}`` with ties broken by ``u < 1/2`` (deterministic, noise-free); the shared uniform
gives common random numbers across policies compared on one seed.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def random_skew_matrix(key: jax.Array, d: int, strength: float, dtype=None) -> jax.Array:
    """A random skew-symmetric ``S`` with spectral norm ``strength`` (so ``|phi_a^T S phi_b| <= strength``
    on unit features). ``d = 1`` admits only ``S = 0``.

    A concrete ``strength = 0`` (every Bradley-Terry instance) returns zeros without the spectral norm:
    its SVD is a batched LAPACK call under ``vmap``, which hung sharded runs on 2 CPU devices
    (``algorithms.core.spd_solve``; ``benchmarks/README.md``)."""
    if isinstance(strength, (int, float)) and strength == 0:
        return jnp.zeros((d, d), dtype=dtype if dtype is not None else jnp.result_type(float))
    a = jax.random.normal(key, (d, d), dtype=dtype)
    s = a - a.T
    norm = jnp.linalg.norm(s, ord=2)
    return jnp.where(norm > 0, strength * s / jnp.where(norm > 0, norm, 1.0), 0.0)


def preference_margin(reward: jax.Array, phi: jax.Array, skew: jax.Array,
                      a: jax.Array, b: jax.Array) -> jax.Array:
    """Margin ``m = r_a - r_b + phi_a^T S phi_b`` for one context's ``reward [K]``, ``phi [K, d]``
    and action indices ``a``, ``b`` of equal shape."""
    bilinear = jnp.einsum("...i,ij,...j->...", phi[a], skew, phi[b])
    return reward[a] - reward[b] + bilinear


def margin_matrix(reward: jax.Array, phi: jax.Array, skew: jax.Array) -> jax.Array:
    """All margins of one context: ``M[a, b] = r_a - r_b + phi_a^T S phi_b``, shape ``[K, K]``."""
    return reward[:, None] - reward[None, :] + phi @ skew @ phi.T


def preference_matrix(reward: jax.Array, phi: jax.Array, skew: jax.Array) -> jax.Array:
    """All preference probabilities of one context, ``P[a, b] = sigmoid(M[a, b])``, shape ``[K, K]``."""
    return jax.nn.sigmoid(margin_matrix(reward, phi, skew))


def labels_from_probability(prob: jax.Array, uniform: jax.Array, deterministic: bool = False) -> jax.Array:
    """``y = 1{u < P}`` (Bernoulli(P)) or, when ``deterministic``, ``1{P > 1/2}`` with ties ``1{u < 1/2}``."""
    if deterministic:
        y = jnp.where(prob == 0.5, uniform < 0.5, prob > 0.5)
    else:
        y = uniform < prob
    return y.astype(jnp.int32)
