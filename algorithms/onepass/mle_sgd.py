"""The BT-MLE fitted by multi-epoch minibatch SGD, refitted every round: P3's cost model of the baseline
(Li et al., 2025; docs/theory.md §4.7-4.8, "the baseline fits the head by first-order training for several
epochs over every labelled comparison").

Round ``t`` appends ``(z_t, y_t)`` to a fixed-capacity buffer, then runs ``epochs`` passes of minibatch SGD,
warm-started at ``theta_t``, over the ``t`` rows stored, on the per-sample regularised loss

    L_t(theta) = (1/t) sum_{i <= t} softplus(-s_i <theta, z_i>) + (lam / (2t)) ||theta||^2,   s_i = 2 y_i - 1,

whose minimiser is the regularised MLE of ``algorithms.onepass.mle_refit``. A step on the minibatch ``M``
(its rows ``< t``) is

    theta <- Proj_{||theta|| <= B}( theta - lr ( (1/|M|) sum_{i in M} (sigma(<theta, z_i>) - y_i) z_i + (lam/t) theta ) ),

with the Euclidean projection (``radius=None``: none). Minibatches are the buffer's consecutive blocks of
``batch`` rows in storage order (incremental-gradient order, no shuffling, so a round is a deterministic
function of the data); blocks that start at or after row ``t`` are skipped. In P3's units a round costs
``epochs * t`` per-sample gradients (``grad_evals``), each ``O(d)``; memory is ``O(capacity d)``. Inside a
vectorised scan every round passes over the whole buffer (masked), as the Newton refit does. The state also
carries ``V_t^{-1}``, ``V_t = lam I + sum_i z_i z_i^T`` (Sherman-Morrison), the MLE's design.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from algorithms.onepass import mle_refit
from algorithms.onepass.omd import euclid_projection, sherman_morrison
from bandits import validation as v


class MLESGDState(NamedTuple):
    theta: jax.Array      # [d]
    z: jax.Array          # [capacity, d] buffer
    y: jax.Array          # [capacity]
    gram_inv: jax.Array   # V_t^{-1}, [d, d]
    count: jax.Array      # rows stored


def mle_sgd_init(capacity: int, dim: int, lam, dtype=None) -> MLESGDState:
    """Empty buffers of ``capacity`` rows, ``theta = 0``, ``V_0^{-1} = I / lam`` (``mle_refit.mle_init``'s)."""
    state = mle_refit.mle_init(capacity, dim, lam, dtype)
    return MLESGDState(state.theta, state.z, state.y, state.gram_inv, state.count)


def sgd_epochs(theta, z, y, count, lam, learning_rate, epochs: int, batch: int, radius=None):
    """``epochs`` passes of the minibatch steps of the module docstring over the rows ``< count`` of
    ``z [C, d]``, ``y [C]``, from ``theta``."""
    capacity = z.shape[0]
    blocks = -(-capacity // batch)
    pad = blocks * batch - capacity
    zb = jnp.pad(z, ((0, pad), (0, 0))).reshape(blocks, batch, -1)
    yb = jnp.pad(y, (0, pad)).reshape(blocks, batch)
    valid = (jnp.arange(blocks * batch) < count).reshape(blocks, batch).astype(z.dtype)
    t = jnp.maximum(count, 1).astype(z.dtype)

    def step(i, theta):
        j = i % blocks
        rows, labels, w = zb[j], yb[j], valid[j]
        residual = (jax.nn.sigmoid(rows @ theta) - labels) * w
        grad = residual @ rows / jnp.maximum(w.sum(), 1.0) + (lam / t) * theta
        new = theta - learning_rate * grad
        if radius is not None:
            new = euclid_projection(new, radius)
        return jnp.where(j * batch < count, new, theta)

    return jax.lax.fori_loop(0, epochs * blocks, step, theta)


def mle_sgd_step(state: MLESGDState, z: jax.Array, y, lam, learning_rate, epochs: int, batch: int,
                 radius=None) -> MLESGDState:
    """Append ``(z, y)`` (dropped if the buffer is full) and run ``epochs`` SGD passes over the data
    (module docstring)."""
    if v.is_concrete(learning_rate):
        v.check_float("learning_rate", learning_rate, low=0.0, low_open=True)
    z, zs, ys, count = mle_refit.append(state, z, y)
    theta = sgd_epochs(state.theta, zs, ys, count, lam, learning_rate, epochs, batch, radius)
    return MLESGDState(theta, zs, ys, sherman_morrison(state.gram_inv, z), count)
