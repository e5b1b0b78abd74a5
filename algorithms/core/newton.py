"""Damped Newton for small smooth convex problems (d <= ~64): Cholesky solves (``algorithms.core.spd_solve``,
plain XLA ops, so sharded runs cannot hang in a batched LAPACK kernel), Armijo backtracking.

Shared by the BT-MLE and the pessimistic (Option I) solver. Fixed shapes and ``lax.while_loop``, so
it runs unchanged under ``jit`` and ``vmap`` (a vmapped loop runs until every member converged).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from algorithms.core.spd_solve import spd_solve

_STEPS = 2.0 ** -jnp.arange(12)  # backtracking candidates 1, 1/2, ..., 1/2048, tried in this order


def newton_step(value_fn: Callable, grad_hess_fn: Callable, x: jax.Array, f0: jax.Array | None = None):
    """One damped step ``x - t H^{-1} g`` with Armijo backtracking; returns (x_new, decrement, step, f_new).

    ``decrement = g^T H^{-1} g / 2`` (half the squared Newton decrement) measures optimality. ``t`` is
    the first of 1, 1/2, ..., 1/2048 with ``f(x + t dx) <= f(x) - t decrement + slack`` (0 if none),
    tried one at a time: near the optimum the full step is accepted at the cost of one evaluation of
    ``f``. The test allows a few ulps of ``f`` of slack: near the optimum the predicted decrease is
    below the rounding of ``f`` and an exact test would reject the (then excellent) full step.
    ``f0 = f(x)`` may be passed in (``damped_newton`` carries it from the previous step).
    """
    grad, hess = grad_hess_fn(x)
    direction = -spd_solve(hess, grad)
    decrement = -0.5 * jnp.dot(grad, direction)
    steps = _STEPS.astype(x.dtype)
    f0 = value_fn(x) if f0 is None else f0
    slack = 64.0 * jnp.finfo(x.dtype).eps * jnp.abs(f0)

    def accepted(i, f_trial):
        return f_trial <= f0 - 0.5 * steps[i] * decrement + slack

    def cond(state):
        i, f_trial = state
        return ~accepted(i, f_trial) & (i < steps.shape[0] - 1)

    def body(state):
        i, _ = state
        return i + 1, value_fn(x + steps[i + 1] * direction)

    i, f_trial = jax.lax.while_loop(cond, body, (jnp.asarray(0), value_fn(x + steps[0] * direction)))
    ok = accepted(i, f_trial)
    step = jnp.where(ok, steps[i], 0.0)
    return x + step * direction, decrement, step, jnp.where(ok, f_trial, f0)


def damped_newton(value_fn: Callable, grad_hess_fn: Callable, x0: jax.Array, max_iter: int, tol):
    """Iterate ``newton_step`` until ``decrement <= tol``, no step is accepted (the numerical optimum),
    or ``max_iter``; returns (x, decrement, iterations)."""
    def cond(state):
        _, _, decrement, stalled, it = state
        return (decrement > tol) & ~stalled & (it < max_iter)

    def body(state):
        x, f, _, _, it = state
        x, decrement, step, f = newton_step(value_fn, grad_hess_fn, x, f)
        return x, f, decrement, step == 0.0, it + 1

    init = (x0, value_fn(x0), jnp.asarray(jnp.inf, x0.dtype), jnp.asarray(False), jnp.asarray(0))
    x, _, decrement, _, it = jax.lax.while_loop(cond, body, init)
    return x, decrement, it


def default_tol(dtype) -> float:
    return 1e-20 if dtype == jnp.float64 else 1e-10
