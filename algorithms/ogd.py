"""One-pass online gradient descent on the BT loss: the first-order baseline of P3 (THEORY.md §4.8 item 1).

    theta_{t+1} = Proj_{||theta|| <= B}( theta_t - (lr / sqrt(t)) g_t(theta_t) ),
    g_t(theta) = (sigma(<theta, z_t>) - y_t) z_t,

with ``theta_1 = 0`` and Euclidean projection (``radius=None``: no projection). O(d) per round. The
state also carries ``V_t^{-1}``, ``V_t = lam I + sum_{i<t} z_i z_i^T`` (Sherman-Morrison, O(d^2)), so
bonus-based selection rules can be driven by this estimator too.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from algorithms.omd import euclid_projection, logistic_gradient, sherman_morrison
from bandits import validation as v


class OGDState(NamedTuple):
    theta: jax.Array      # [d]
    gram_inv: jax.Array   # V_t^{-1}, [d, d]
    count: jax.Array      # rounds done


def ogd_init(dim: int, lam, dtype=None) -> OGDState:
    v.check_int("dim", dim, 1)
    if v.is_concrete(lam):
        v.check_float("lam", lam, low=0.0, low_open=True)
    dtype = dtype or jnp.result_type(float)
    return OGDState(jnp.zeros(dim, dtype), jnp.eye(dim, dtype=dtype) / jnp.asarray(lam, dtype),
                    jnp.asarray(0, jnp.int32))


def ogd_step(state: OGDState, z: jax.Array, y, learning_rate, radius=None) -> OGDState:
    """One round: step ``learning_rate / sqrt(t)`` along ``-g_t``, then project (module docstring)."""
    if v.is_concrete(learning_rate):
        v.check_float("learning_rate", learning_rate, low=0.0, low_open=True)
    dtype = state.theta.dtype
    z = jnp.asarray(z, dtype)
    t = (state.count + 1).astype(dtype)
    theta = state.theta - learning_rate / jnp.sqrt(t) * logistic_gradient(state.theta, z, jnp.asarray(y, dtype))
    if radius is not None:
        theta = euclid_projection(theta, radius)
    return OGDState(theta, sherman_morrison(state.gram_inv, z), state.count + 1)
