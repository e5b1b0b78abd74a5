"""The "OMD/HVP" update of P3's official code (``rm_trainer_head_hvp.py``; docs/theory.md §4.7), for a linear head.

Per round (one mini-batch ``Z [m, d]``, ``y [m]``; the online loop passes ``m = 1``), with the mean BT
loss ``L(theta)`` of the batch, its gradient ``g`` and Hessian-vector products
``Hv = d/de grad L(theta + e v)`` (``jax.jvp`` of ``jax.grad``, as the code's double back-prop):

    if c_t < 1:   x ~= (H + c I)^{-1} g   by ``cg_steps`` conjugate-gradient steps from x = 0,
                  direction = c g + (1 - c) x
    else:         direction = g                                   (plain gradient)
    theta <- theta - lr * direction

``c = damping`` (0.8 in the paper's runs) is the HVP damping and the mixing weight; the schedule
``c_t = min(c + (1 - c) t / growth_steps, 1)`` ("linear", ``damping_growth_rate = 100``) switches to the
plain gradient after ``growth_steps`` rounds: the code's stand-in for a growing cumulative Hessian.
``cg_quirk=True`` reproduces the official CG exactly: its conjugation coefficient is
``r_norm_sq / r_norm_sq = 1`` rather than ``||r_new||^2 / ||r_old||^2``, and its step is
``||r||^2 / (p^T A p + 1e-8)``; ``False`` is textbook CG.
The step is constant (``lr``), no projection unless ``radius`` is given. The state also carries
``V_t^{-1}`` (Sherman-Morrison) for bonus-based rules; the step, projection and ``V^{-1}`` update are
``algorithms.onepass.ogd.projected_step``, shared with OGD.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from algorithms.onepass.ogd import first_order_init, projected_step
from bandits import validation as v


class HVPState(NamedTuple):
    theta: jax.Array      # [d]
    gram_inv: jax.Array   # V_t^{-1}, [d, d]
    count: jax.Array      # rounds done


def hvp_init(dim: int, lam, dtype=None) -> HVPState:
    return first_order_init(HVPState, dim, lam, dtype)


def batch_loss(theta: jax.Array, z: jax.Array, y: jax.Array) -> jax.Array:
    """Mean BT negative log-likelihood ``mean_i softplus(-s_i <theta, z_i>)``, ``s = 2y - 1``."""
    return jnp.mean(jax.nn.softplus(-(2.0 * y - 1.0) * (z @ theta)))


def conjugate_gradient(matvec: Callable, b: jax.Array, steps: int, quirk: bool = False) -> jax.Array:
    """``steps`` CG iterations for ``A x = b`` from ``x = 0`` (``quirk``: the official code's beta = 1)."""
    x = jnp.zeros_like(b)
    r = b
    p = r
    rs = r @ r
    for i in range(steps):
        ap = matvec(p)
        curv = p @ ap
        alpha = rs / (curv + 1e-8) if quirk else rs / jnp.maximum(curv, jnp.finfo(b.dtype).tiny)
        x = x + alpha * p
        if i == steps - 1:
            break
        r = r - alpha * ap
        rs_new = r @ r
        beta = 1.0 if quirk else rs_new / jnp.maximum(rs, jnp.finfo(b.dtype).tiny)
        p = r + beta * p
        rs = rs_new
    return x


def hvp_step(state: HVPState, z: jax.Array, y, learning_rate, damping=0.8, growth_steps=100,
             cg_steps: int = 3, cg_quirk: bool = True, radius=None) -> HVPState:
    """One round on the batch ``z [m, d]`` (or one comparison ``z [d]``), as in the module docstring."""
    if v.is_concrete(learning_rate):
        v.check_float("learning_rate", learning_rate, low=0.0, low_open=True)
    if v.is_concrete(damping):
        v.check_float("damping", damping, low=0.0, high=1.0, low_open=True)
    v.check_int("cg_steps", cg_steps, 1)
    dtype = state.theta.dtype
    zb = jnp.atleast_2d(jnp.asarray(z, dtype))
    yb = jnp.atleast_1d(jnp.asarray(y, dtype))
    theta = state.theta
    loss = lambda t: batch_loss(t, zb, yb)
    grad = jax.grad(loss)(theta)

    def hvp(vec):
        return jax.jvp(jax.grad(loss), (theta,), (vec,))[1] + damping * vec

    t = state.count.astype(dtype)
    current = jnp.minimum(damping + (1.0 - damping) * t / growth_steps, 1.0)
    solved = conjugate_gradient(hvp, grad, cg_steps, cg_quirk)
    mixed = damping * grad + (1.0 - damping) * solved if cg_steps > 1 else solved
    direction = jnp.where(current < 1.0, mixed, grad)
    return projected_step(state, direction, learning_rate, zb, radius)
