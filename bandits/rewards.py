"""True reward models of the bandit world: linear and neural (MLP) Bradley-Terry rewards.

Linear: ``r*(x, a) = <theta*, phi(x, a)>`` with ``theta* = B u``, ``u`` uniform on the unit sphere
(docs/theory.md §1.1, §8.1). Neural: ``r*(x, a) = w2^T tanh(W1 phi(x, a) + b1)``, a one-hidden-layer MLP
with random parameters (docs/theory.md §8.1(ii)), rescaled at construction so that the reward table has
the same spread as a linear reward of norm ``B`` on unit features (std ``B / sqrt(d)``).
Parameters are plain NamedTuple pytrees; ``reward_table`` dispatches on their type.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LinearReward(NamedTuple):
    """``r(x, a) = <theta, phi(x, a)>``; ``theta`` has shape ``[d]``."""

    theta: jax.Array


class MLPReward(NamedTuple):
    """``r(x, a) = w2 . tanh(w1 @ phi(x, a) + b1)``; shapes ``[h, d]``, ``[h]``, ``[h]``."""

    w1: jax.Array
    b1: jax.Array
    w2: jax.Array


def random_unit_vector(key: jax.Array, d: int, dtype=None) -> jax.Array:
    """A vector uniform on the unit sphere of R^d (normalised Gaussian)."""
    g = jax.random.normal(key, (d,), dtype=dtype)
    return g / jnp.linalg.norm(g)


def init_linear_reward(key: jax.Array, d: int, norm: float, dtype=None) -> LinearReward:
    """``theta* = norm * u`` with ``u`` uniform on the sphere (docs/theory.md §8.1)."""
    return LinearReward(norm * random_unit_vector(key, d, dtype))


def mlp_features(params: MLPReward, phi: jax.Array) -> jax.Array:
    """Hidden activations ``tanh(W1 phi + b1)``, shape ``phi.shape[:-1] + (h,)``."""
    bias = params.b1.reshape((1,) * (phi.ndim - 1) + params.b1.shape)
    return jnp.tanh(phi @ params.w1.T + bias)


def reward_table(params, phi: jax.Array) -> jax.Array:
    """The reward of every (context, action): ``phi [..., d] -> r [...]``."""
    if isinstance(params, LinearReward):
        return phi @ params.theta
    if isinstance(params, MLPReward):
        return mlp_features(params, phi) @ params.w2
    raise TypeError(f"unknown reward parameters of type {type(params).__name__}")


def init_mlp_reward(key: jax.Array, phi: jax.Array, hidden: int, norm: float) -> MLPReward:
    """A random MLP reward whose table over ``phi`` has standard deviation ``norm / sqrt(d)``.

    ``W1`` entries ``~ N(0, 4)`` (pre-activations of std 2 on unit features, so the tanh units are
    in their nonlinear range: on the default family about 20% of the reward variance is not
    explained by the best linear fit), ``b1 ~ N(0, 1)``, ``w2 ~ N(0, 1/h)``; then ``w2`` is rescaled
    (a deterministic function of the table, so the parameters alone define the reward function).
    """
    d = phi.shape[-1]
    k1, k2, k3 = jax.random.split(key, 3)
    w1 = 2.0 * jax.random.normal(k1, (hidden, d), phi.dtype)
    b1 = jax.random.normal(k2, (hidden,), phi.dtype)
    w2 = jax.random.normal(k3, (hidden,), phi.dtype) / jnp.sqrt(hidden)
    raw = MLPReward(w1, b1, w2)
    spread = jnp.std(reward_table(raw, phi))
    w2 = w2 * (norm / jnp.sqrt(d)) / jnp.maximum(spread, jnp.finfo(phi.dtype).tiny)
    return MLPReward(w1, b1, w2)
