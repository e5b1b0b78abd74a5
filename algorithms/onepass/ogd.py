"""One-pass online gradient descent on the BT loss: the first-order baseline of P3 (docs/theory.md §4.8 item 1).

    theta_{t+1} = Proj_{||theta|| <= B}( theta_t - (lr / sqrt(t)) g_t(theta_t) ),
    g_t(theta) = (sigma(<theta, z_t>) - y_t) z_t,

with ``theta_1 = 0`` and Euclidean projection (``radius=None``: no projection). O(d) per round. The
state also carries ``V_t^{-1}``, ``V_t = lam I + sum_{i<t} z_i z_i^T`` (Sherman-Morrison, O(d^2)), so
bonus-based selection rules can be driven by this estimator too.

``projected_step`` (a step along a given direction, the projection and the ``V^{-1}`` update) is the
part shared with the HVP/CG estimator of ``algorithms.onepass.hvp_cg``, which only computes another direction.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from algorithms.onepass.omd import euclid_projection, logistic_gradient, sherman_morrison
from bandits import validation as v


class OGDState(NamedTuple):
    theta: jax.Array      # [d]
    gram_inv: jax.Array   # V_t^{-1}, [d, d]
    count: jax.Array      # rounds done


def first_order_init(state_type, dim: int, lam, dtype=None):
    """``state_type(theta = 0, gram_inv = I / lam, count = 0)`` for a first-order estimator's state."""
    v.check_int("dim", dim, 1)
    if v.is_concrete(lam):
        v.check_float("lam", lam, low=0.0, low_open=True)
    dtype = dtype or jnp.result_type(float)
    return state_type(jnp.zeros(dim, dtype), jnp.eye(dim, dtype=dtype) / jnp.asarray(lam, dtype),
                      jnp.asarray(0, jnp.int32))


def projected_step(state, direction: jax.Array, step, rows: jax.Array, radius=None):
    """``theta <- Proj_{||theta|| <= B}(theta - step direction)`` (Euclidean; ``radius=None``: none), then
    ``V^{-1} <- (V + sum_i z_i z_i^T)^{-1}`` by one Sherman-Morrison update per row of ``rows [m, d]`` and
    one more round; ``state`` is any NamedTuple with fields ``theta``, ``gram_inv``, ``count``."""
    theta = state.theta - step * direction
    if radius is not None:
        theta = euclid_projection(theta, radius)
    gram_inv = state.gram_inv
    for row in rows:
        gram_inv = sherman_morrison(gram_inv, row)
    return state._replace(theta=theta, gram_inv=gram_inv, count=state.count + 1)


def ogd_init(dim: int, lam, dtype=None) -> OGDState:
    return first_order_init(OGDState, dim, lam, dtype)


def ogd_step(state: OGDState, z: jax.Array, y, learning_rate, radius=None) -> OGDState:
    """One round: step ``learning_rate / sqrt(t)`` along ``-g_t``, then project (module docstring)."""
    if v.is_concrete(learning_rate):
        v.check_float("learning_rate", learning_rate, low=0.0, low_open=True)
    dtype = state.theta.dtype
    z = jnp.asarray(z, dtype)
    t = (state.count + 1).astype(dtype)
    grad = logistic_gradient(state.theta, z, jnp.asarray(y, dtype))
    return projected_step(state, grad, learning_rate / jnp.sqrt(t), z[None, :], radius)
