"""Bradley-Terry maximum likelihood for linear rewards (docs/theory.md §1.4, §9.1 item 4; P1 §2).

With ``z_i = phi(x_i, a1_i) - phi(x_i, a2_i)``, labels ``y_i`` and ``s_i = 2 y_i - 1``:

    l(theta) = sum_i mask_i softplus(-s_i <theta, z_i>) + (lam / 2) ||theta||^2,

(``-log sigmoid(u) = softplus(-u)``), the regularised negative log-likelihood; ``lam > 0`` keeps the
minimiser finite on separable data. Solved by damped Newton with Cholesky solves and a vectorised
backtracking line search (fixed shapes, ``lax.while_loop``, vmappable over seeds), from a warm start.

Optional constraint ``||theta|| <= B`` (``radius``): solved *exactly* through its Lagrangian: the
minimiser of ``l(theta) + (mu/2)||theta||^2`` has norm decreasing in ``mu >= 0``, so ``mu`` is
found by bisection on ``log mu`` (each step a few warm-started Newton iterations).
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from algorithms.core.newton import damped_newton, default_tol
from bandits import validation as v


class MLEFit(NamedTuple):
    theta: jax.Array        # [d]
    iterations: jax.Array   # Newton iterations used
    grad_norm: jax.Array    # ||grad l(theta)|| at the returned point


def bt_negative_log_likelihood(theta, z, y, mask, lam=0.0) -> jax.Array:
    """``l(theta)`` above (``lam = 0``: the plain negative log-likelihood)."""
    signs = 2.0 * y - 1.0
    nll = jnp.sum(jnp.where(mask, jax.nn.softplus(-signs * (z @ theta)), 0.0))
    return nll + 0.5 * lam * jnp.dot(theta, theta)


def _grad_hess(theta, z, y, mask, lam):
    u = z @ theta
    w = jnp.where(mask, 1.0, 0.0)
    grad = z.T @ (w * (jax.nn.sigmoid(u) - y)) + lam * theta
    curvature = w * jax.nn.sigmoid(u) * jax.nn.sigmoid(-u)
    hess = (z * curvature[:, None]).T @ z + lam * jnp.eye(z.shape[1], dtype=z.dtype)
    return grad, hess


def bt_hessian(theta, z, mask, lam) -> jax.Array:
    """``lam I + sum_i mask_i sigma'(<theta, z_i>) z_i z_i^T``: the Hessian of ``l`` (the Laplace precision)."""
    return _grad_hess(theta, z, jnp.zeros(z.shape[0], z.dtype), mask, lam)[1]


def _newton(theta0, z, y, mask, lam, max_iter, tol):
    return damped_newton(lambda t: bt_negative_log_likelihood(t, z, y, mask, lam),
                         lambda t: _grad_hess(t, z, y, mask, lam), theta0, max_iter, tol)


def fit_bt_mle(z: jax.Array, y: jax.Array, mask: jax.Array, lam, theta0: jax.Array | None = None,
               radius=None, max_iter: int = 100, tol: float | None = None,
               bisection_steps: int = 40) -> MLEFit:
    """Regularised BT-MLE ``argmin_{||theta|| <= radius} l(theta)`` (no constraint if ``radius`` is None).

    z: ``[n, d]`` feature differences; y: ``[n]`` labels in {0, 1}; mask: ``[n]`` valid rows; lam > 0;
    theta0: warm start (default 0). Stops when the Newton decrement ``g^T H^{-1} g / 2 < tol``
    (default 1e-20 in float64, 1e-10 in float32).
    """
    if v.is_concrete(lam):
        v.check_float("lam", lam, low=0.0, low_open=True)
    if radius is not None and v.is_concrete(radius):
        v.check_float("radius", radius, low=0.0, low_open=True)
    v.check_int("max_iter", max_iter, 1)
    dtype = z.dtype
    tol = default_tol(dtype) if tol is None else tol
    theta0 = jnp.zeros(z.shape[1], dtype) if theta0 is None else theta0.astype(dtype)
    return _fit(z, y.astype(dtype), mask, jnp.asarray(lam, dtype), theta0,
                None if radius is None else jnp.asarray(radius, dtype), jnp.asarray(tol, dtype),
                max_iter, bisection_steps)


@partial(jax.jit, static_argnums=(7, 8))
def _fit(z, y, mask, lam, theta0, radius, tol, max_iter, bisection_steps):
    theta, _, iters = _newton(theta0, z, y, mask, lam, max_iter, tol)
    if radius is not None:
        theta, iters = _constrained(theta, z, y, mask, lam, radius, max_iter, tol, bisection_steps, iters)
    grad, _ = _grad_hess(theta, z, y, mask, lam)
    return MLEFit(theta, iters, jnp.linalg.norm(grad))


def _constrained(theta_free, z, y, mask, lam, radius, max_iter, tol, steps, iters):
    """Exact ``||theta|| <= radius`` solution by bisection on the multiplier (see module docstring)."""
    inner = 8

    def solve(log_mu, start):
        return _newton(start, z, y, mask, lam + jnp.exp(log_mu), inner, tol)[0]

    def bisect(i, state):
        lo, hi, theta = state
        mid = 0.5 * (lo + hi)
        cand = solve(mid, theta)
        too_long = jnp.linalg.norm(cand) > radius
        return jnp.where(too_long, mid, lo), jnp.where(too_long, hi, mid), cand

    dtype = z.dtype
    lo, hi = jnp.asarray(-30.0, dtype), jnp.asarray(15.0, dtype)
    lo, hi, theta = jax.lax.fori_loop(0, steps, bisect, (lo, hi, theta_free))
    theta, _, extra = _newton(theta, z, y, mask, lam + jnp.exp(hi), max_iter, tol)
    outside = jnp.linalg.norm(theta_free) > radius
    theta = jnp.where(outside, theta, theta_free)
    return theta, iters + jnp.where(outside, steps * inner + extra, 0)
