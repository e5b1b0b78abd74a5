"""Damped Newton for small smooth convex problems (d <= ~64): Cholesky solves, vectorised line search.

Shared by the BT-MLE and the pessimistic (Option I) solver. Fixed shapes and ``lax.while_loop``, so
it runs unchanged under ``jit`` and ``vmap`` (a vmapped loop runs until every member converged).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_factor, cho_solve

_STEPS = 2.0 ** -jnp.arange(12)  # backtracking candidates 1, 1/2, ..., 1/2048, evaluated at once


def newton_step(value_fn: Callable, grad_hess_fn: Callable, x: jax.Array):
    """One damped step ``x - t H^{-1} g`` with Armijo backtracking; returns (x_new, decrement, step).

    ``decrement = g^T H^{-1} g / 2`` (half the squared Newton decrement) measures optimality. The
    Armijo test allows a few ulps of ``f`` of slack: near the optimum the predicted decrease is below
    the rounding of ``f`` and an exact test would reject the (then excellent) full step.
    """
    grad, hess = grad_hess_fn(x)
    direction = -cho_solve(cho_factor(hess, lower=True), grad)
    decrement = -0.5 * jnp.dot(grad, direction)
    steps = _STEPS.astype(x.dtype)
    f0 = value_fn(x)
    slack = 64.0 * jnp.finfo(x.dtype).eps * jnp.abs(f0)
    trial = jax.vmap(lambda t: value_fn(x + t * direction))(steps)
    armijo = trial <= f0 - 0.5 * steps * decrement + slack
    step = jnp.where(jnp.any(armijo), steps[jnp.argmax(armijo)], 0.0)
    return x + step * direction, decrement, step


def damped_newton(value_fn: Callable, grad_hess_fn: Callable, x0: jax.Array, max_iter: int, tol):
    """Iterate ``newton_step`` until ``decrement <= tol``, no step is accepted (the numerical optimum),
    or ``max_iter``; returns (x, decrement, iterations)."""
    def cond(state):
        _, decrement, stalled, it = state
        return (decrement > tol) & ~stalled & (it < max_iter)

    def body(state):
        x, _, _, it = state
        x, decrement, step = newton_step(value_fn, grad_hess_fn, x)
        return x, decrement, step == 0.0, it + 1

    init = (x0, jnp.asarray(jnp.inf, x0.dtype), jnp.asarray(False), jnp.asarray(0))
    x, decrement, _, it = jax.lax.while_loop(cond, body, init)
    return x, decrement, it


def default_tol(dtype) -> float:
    return 1e-20 if dtype == jnp.float64 else 1e-10
