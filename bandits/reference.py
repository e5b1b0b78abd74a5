"""The reference (SFT) policy ``pi0`` with a coverage knob (docs/theory.md §8.1).

    logits pi0(.|x) = s * ( c * rho(x, .) + sqrt(1 - c^2) * xi(x, .) ),

where ``rho = r* / B`` is the true reward in units of its scale (for a linear reward,
``rho = <theta*/||theta*||, phi>``), ``xi = <u_perp, phi>`` a random direction orthogonal to ``theta*``
(any random direction for a neural reward), ``c in [-1, 1]`` the coverage knob and ``s >= 0`` the
temperature (peakedness). ``c > 0`` puts pi0 mass on high-reward actions (good coverage of pi*),
``c < 0`` on low-reward ones; ``s = 0`` is the uniform policy. Since the logits are bounded by ``s``
on unit features, every action keeps positive mass (full support, so every KL is finite).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bandits.rewards import random_unit_vector


def orthogonal_unit_vector(key: jax.Array, direction: jax.Array) -> jax.Array:
    """A random unit vector orthogonal to ``direction`` (zero vector when ``d = 1``)."""
    d = direction.shape[0]
    g = random_unit_vector(key, d, direction.dtype)
    u = direction / jnp.linalg.norm(direction)
    g = g - jnp.dot(g, u) * u
    norm = jnp.linalg.norm(g)
    return jnp.where(norm > 1e-8, g / jnp.where(norm > 1e-8, norm, 1.0), 0.0)


def coverage_logits(rho: jax.Array, xi: jax.Array, coverage, temperature) -> jax.Array:
    """``s * (c * rho + sqrt(1 - c^2) * xi)``, unnormalised logits ``[n_x, K]``."""
    return temperature * (coverage * rho + jnp.sqrt(1.0 - coverage**2) * xi)


def reference_policy(rho: jax.Array, xi: jax.Array, coverage, temperature) -> jax.Array:
    """``log pi0`` with the coverage knob; uniform when ``temperature = 0``."""
    return jax.nn.log_softmax(coverage_logits(rho, xi, coverage, temperature), axis=-1)
