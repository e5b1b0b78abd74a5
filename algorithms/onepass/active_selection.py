"""Active selection of comparisons by uncertainty (docs/theory.md §4.4; APO, Das et al. 2024; P3's active trainer).

Given the inverse design ``A^{-1}`` of the current estimator (``cH_t^{-1}`` for OMD, ``V_t^{-1}`` for MLE),
the uncertainty of a comparison with feature difference ``z = phi(x,a) - phi(x,a')`` is

    u(z) = ||z||_{A^{-1}} = sqrt(z^T A^{-1} z).

- ``select_max_uncertainty``: APO-style, the still-available pool candidate with the largest ``u``.
- ``max_uncertainty_triplet``: the same over every ``(x, a, a')`` of a set of contexts (all pairs),
  ``argmax_{x, a, a'} ||phi(x,a) - phi(x,a')||_{A^{-1}}``, using ``||f_a - f_b||^2 = q_a + q_b - 2 f_a^T A^{-1} f_b``.
- ``top_fraction``: P3's code (``rm_active_trainer_head_hvp.py``): score an incoming batch and keep its
  ``num_select`` highest-scoring comparisons (``len(batch) // 4`` there, score ``||dz||^2_{V^{-1}}``).
Ties go to the lowest index.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bandits import validation as v


def uncertainty(z: jax.Array, inverse: jax.Array) -> jax.Array:
    """``||z||_{A^{-1}}`` for ``z [..., d]``."""
    quad = jnp.einsum("...i,ij,...j->...", z, inverse, z)
    return jnp.sqrt(jnp.maximum(quad, 0.0))


def select_max_uncertainty(pool_z: jax.Array, inverse: jax.Array, available: jax.Array) -> jax.Array:
    """Index of the available row of ``pool_z [P, d]`` with the largest ``||z||_{A^{-1}}``."""
    scores = jnp.where(available, uncertainty(pool_z, inverse), -jnp.inf)
    return jnp.argmax(scores).astype(jnp.int32)


def pair_uncertainty(phi: jax.Array, inverse: jax.Array) -> jax.Array:
    """``W[a, b] = ||phi_a - phi_b||_{A^{-1}}`` for ``phi [..., K, d]``, shape ``[..., K, K]``."""
    cross = jnp.einsum("...ai,ij,...bj->...ab", phi, inverse, phi)
    q = jnp.diagonal(cross, axis1=-2, axis2=-1)
    return jnp.sqrt(jnp.maximum(q[..., :, None] + q[..., None, :] - 2.0 * cross, 0.0))


def max_uncertainty_triplet(phi: jax.Array, inverse: jax.Array, context_mask: jax.Array | None = None):
    """``(x, a, a')`` maximising ``||phi(x,a) - phi(x,a')||_{A^{-1}}`` over contexts of ``phi [n_x, K, d]``."""
    w = pair_uncertainty(phi, inverse)
    if context_mask is not None:
        w = jnp.where(context_mask[:, None, None], w, -jnp.inf)
    k = phi.shape[-2]
    flat = jnp.argmax(w.reshape(-1))
    return ((flat // (k * k)).astype(jnp.int32), ((flat // k) % k).astype(jnp.int32),
            (flat % k).astype(jnp.int32))


def top_fraction(scores: jax.Array, num_select: int, available: jax.Array | None = None) -> jax.Array:
    """Indices of the ``num_select`` largest ``scores`` (unavailable rows last), best first."""
    v.check_int("num_select", num_select, 1)
    if num_select > scores.shape[-1]:
        v.fail("num_select", num_select, f"at most the batch size {scores.shape[-1]}")
    if available is not None:
        scores = jnp.where(available, scores, -jnp.inf)
    return jax.lax.top_k(scores, num_select)[1].astype(jnp.int32)
