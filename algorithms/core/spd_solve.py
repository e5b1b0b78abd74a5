"""Small SPD systems (d <= ~64) in plain XLA ops: Cholesky factor, triangular solves, inverse factor.

``A = L L^T`` column by column (the Cholesky-Crout recursion, Golub & Van Loan §4.2)::

    v = A[:, j] - L[:, :j] L[j, :j]^T,     L[:, j] = v / sqrt(v_j)  on rows i >= j  (0 above),

then ``L y = b`` by forward and ``L^T x = y`` by backward substitution, each a ``lax.fori_loop`` of
``d`` rank-one steps. A non-positive-definite ``A`` gives NaN, as ``jnp.linalg.cholesky`` does.

Why not ``jax.scipy.linalg.cho_factor/cho_solve``: under ``vmap`` those become jaxlib's batched LAPACK
kernels, which split their batch over XLA's intra-op thread pool and wait on it; with the seed axis
sharded over 2 CPU devices of a 2-core machine both pool threads ended up waiting and the run hung
(jax/jaxlib 0.10.2; ``benchmarks/README.md``). These loops are ordinary fused XLA ops with no custom
call, so sharded runs cannot deadlock on them, and at ``d = 8`` they cost no more than the LAPACK call.

The three loops are jitted: called outside a trace (tests, eager user code), a ``fori_loop`` whose body is
a closure made afresh on every call is recompiled on every call (about 200 XLA compilations in one property
test); jitted, each shape compiles once. Inside another trace the jit is inlined.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.jit
def cholesky(a: jax.Array) -> jax.Array:
    """Lower-triangular ``L`` with ``L L^T = a`` for one SPD ``a [d, d]`` (only its lower triangle is read)."""
    d = a.shape[-1]
    rows = jnp.arange(d)

    def column(j, chol):
        v = a[:, j] - chol @ chol[j, :]
        col = jnp.where(rows >= j, v / jnp.sqrt(v[j]), 0.0)
        return chol.at[:, j].set(col)

    return jax.lax.fori_loop(0, d, column, jnp.zeros_like(a))


@jax.jit
def solve_lower(chol: jax.Array, b: jax.Array) -> jax.Array:
    """``y = L^{-1} b`` by forward substitution; ``b`` is ``[d]`` or ``[d, k]``."""
    d = chol.shape[-1]

    def row(i, y):
        return y.at[i].set((b[i] - chol[i, :] @ y) / chol[i, i])

    return jax.lax.fori_loop(0, d, row, jnp.zeros_like(b))


@jax.jit
def solve_upper_transposed(chol: jax.Array, y: jax.Array) -> jax.Array:
    """``x = L^{-T} y`` by backward substitution; ``y`` is ``[d]`` or ``[d, k]``."""
    d = chol.shape[-1]

    def row(step, x):
        i = d - 1 - step
        return x.at[i].set((y[i] - chol[:, i] @ x) / chol[i, i])

    return jax.lax.fori_loop(0, d, row, jnp.zeros_like(y))


def cho_solve(chol: jax.Array, b: jax.Array) -> jax.Array:
    """``x = A^{-1} b`` given ``L`` with ``A = L L^T``; ``b`` is ``[d]`` or ``[d, k]``."""
    return solve_upper_transposed(chol, solve_lower(chol, b))


def spd_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """``x = a^{-1} b`` for SPD ``a [d, d]`` through its Cholesky factor."""
    return cho_solve(cholesky(a), b)


def lower_inverse(chol: jax.Array) -> jax.Array:
    """``L^{-1}`` (lower triangular), so that ``||L^{-1} h||`` is the dual norm ``||h||_{A^{-1}}``."""
    return solve_lower(chol, jnp.eye(chol.shape[-1], dtype=chol.dtype))
