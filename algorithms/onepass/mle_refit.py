"""The "MLE refit every round" baseline of P3 (docs/theory.md §4.1 "computational issue", §9.1 item 4).

Round t stores ``(z_t, y_t)`` in a fixed-capacity buffer (storage O(capacity)) and re-solves the
regularised BT-MLE on the data so far (rows ``< t`` valid, the rest masked),

    theta_{t+1} = argmin_theta sum_{i <= t} softplus(-s_i <theta, z_i>) + (lam / 2) ||theta||^2
                  (optionally subject to ||theta|| <= B),

by damped Newton (``algorithms.core.bt_mle.fit_bt_mle``) warm-started at ``theta_t``: an honest re-solve, not an
incremental update, so a round costs O(n_rows d^2) per Newton iteration. Inside a vectorised scan the
buffer has the full capacity, so every round pays for the whole buffer; per-round wall-clock at
round t is therefore measured by the experiments with a buffer cut to the first t rows.
The state also carries ``V_t^{-1}``, ``V_t = lam I + sum_i z_i z_i^T`` (Sherman-Morrison), the design
whose norm the MLE-based bonuses use (docs/theory.md §1.4).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from algorithms.core.bt_mle import fit_bt_mle
from algorithms.onepass.omd import sherman_morrison
from bandits import validation as v


class MLEState(NamedTuple):
    theta: jax.Array      # [d]
    z: jax.Array          # [capacity, d] buffer
    y: jax.Array          # [capacity]
    gram_inv: jax.Array   # V_t^{-1}, [d, d]
    count: jax.Array      # rows stored
    iterations: jax.Array  # Newton iterations of the last refit


def mle_init(capacity: int, dim: int, lam, dtype=None) -> MLEState:
    v.check_int("capacity", capacity, 1)
    v.check_int("dim", dim, 1)
    if v.is_concrete(lam):
        v.check_float("lam", lam, low=0.0, low_open=True)
    dtype = dtype or jnp.result_type(float)
    return MLEState(jnp.zeros(dim, dtype), jnp.zeros((capacity, dim), dtype), jnp.zeros(capacity, dtype),
                    jnp.eye(dim, dtype=dtype) / jnp.asarray(lam, dtype), jnp.asarray(0, jnp.int32),
                    jnp.asarray(0, jnp.int32))


def append(state, z: jax.Array, y):
    """``(z, z buffer, y buffer, count)`` after storing ``(z, y)`` at row ``count`` of the state's buffers
    (dropped if they are full); ``state`` is any NamedTuple with ``theta``, ``z``, ``y``, ``count``."""
    dtype = state.theta.dtype
    z = jnp.asarray(z, dtype)
    zs = state.z.at[state.count].set(z, mode="drop")
    ys = state.y.at[state.count].set(jnp.asarray(y, dtype), mode="drop")
    return z, zs, ys, jnp.minimum(state.count + 1, state.z.shape[0])


def mle_step(state: MLEState, z: jax.Array, y, lam, radius=None, max_iter: int = 50) -> MLEState:
    """Append ``(z, y)`` (dropped if the buffer is full) and refit warm-started (module docstring)."""
    z, zs, ys, count = append(state, z, y)
    mask = jnp.arange(state.z.shape[0]) < count
    fit = fit_bt_mle(zs, ys, mask, lam, theta0=state.theta, radius=radius, max_iter=max_iter)
    return MLEState(fit.theta, zs, ys, sherman_morrison(state.gram_inv, z), count,
                    fit.iterations.astype(jnp.int32))
