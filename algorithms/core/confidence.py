"""Gram matrices, confidence radii and elliptical uncertainties (docs/theory.md §1.4, §9.1 items 5-6).

- Gram matrix, **sum-normalised** by default: ``Sigma = lam I + sum_i z_i z_i^T``; the mean-normalised
  ``lam I + (1/n) sum_i z_i z_i^T`` is available and ``beta`` then uses the matching formula.
- Radius ``beta`` (Zhu et al. 2023 Lemma 3.1 as used by P1; docs/theory.md §1.4), modes:
  ``theory``: ``c_beta sqrt((d + log(1/delta)) / gamma^2 + lam B^2)`` (sum form; the mean form divides
  the first term by ``n``), with ``gamma = 1 / (2 + e^{2LB} + e^{-2LB})`` the smallest slope of the
  sigmoid on ``Theta_B`` (L = max feature norm = 1);
  ``sqrt_d``: ``c_beta sqrt(d)`` (the Guidebook's practical ``beta ≍ c sqrt(d)``; ``/ sqrt(n)`` in
  mean form); ``const``: ``c_beta``.
- Uncertainties with a reference vector ``nu`` (BT identifies only differences):
  pointwise ``Gamma(x, a) = ||phi(x, a) - nu||_{Sigma^{-1}}`` and expected
  ``Gamma^e(pi) = ||E_{x~d0} phi(x, pi) - nu||_{Sigma^{-1}}``; ``nu`` options ``pi0`` (the exact
  ``E_{x~d0, a~pi0} phi``: our world is finite), ``pi0_context`` (per-context ``phi(x, pi0)``), ``zero``.
Norms use the Cholesky factor (through its triangular inverse, never an inverse of Sigma).

``ConfidenceConfig`` declares and validates the set's fields once (ridge ``lam``, radius mode and
multiplier, ``delta``, reference vector); ``mle_confidence_set`` is the whole pipeline (BT-MLE, Gram,
radius, set) that the offline and online learners share.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from algorithms.core import spd_solve
from algorithms.core.bt_mle import fit_bt_mle
from bandits import Instance
from bandits import validation as v

BETA_MODES = ("theory", "sqrt_d", "const")
NORMALIZATIONS = ("sum", "mean")
REFERENCE_VECTORS = ("pi0", "pi0_context", "zero")


@dataclasses.dataclass(frozen=True)
class ConfidenceConfig:
    """The BT-MLE ridge and the confidence set (sum-normalised Gram), validated on creation.

    lam: ridge ``lam > 0`` of the MLE and of ``Sigma``; beta_mode: ``theory`` | ``sqrt_d`` | ``const``
    (module docstring); c_beta: the radius multiplier ``> 0``; delta: the confidence level ``1 - delta``
    of the ``theory`` radius, ``0 < delta <= 1``; reference_vector: ``nu`` (``pi0`` | ``pi0_context`` | ``zero``).
    """

    lam: float = 1.0
    beta_mode: str = "sqrt_d"
    c_beta: float = 1.0
    delta: float = 0.05
    reference_vector: str = "pi0"

    def __post_init__(self):
        v.check_float("lam", self.lam, low=0.0, low_open=True)
        v.check_choice("beta_mode", self.beta_mode, BETA_MODES)
        v.check_float("c_beta", self.c_beta, low=0.0, low_open=True)
        v.check_float("delta", self.delta, low=0.0, high=1.0, low_open=True)
        v.check_choice("reference_vector", self.reference_vector, REFERENCE_VECTORS)

    def radius(self, dim: int, n, reward_norm) -> jax.Array:
        """``beta`` of this mode for ``n`` comparisons in dimension ``dim`` (``confidence_radius``)."""
        return confidence_radius(self.beta_mode, dim, n, self.lam, reward_norm, self.delta, self.c_beta)


class ConfidenceSet(NamedTuple):
    """``{theta : ||theta - center||_Sigma <= beta}`` with ``chol`` the lower Cholesky factor of Sigma."""

    center: jax.Array   # [d]
    gram: jax.Array     # [d, d]
    chol: jax.Array     # [d, d]
    beta: jax.Array     # scalar


def gram_matrix(z: jax.Array, mask: jax.Array, lam, normalization: str = "sum") -> jax.Array:
    """``lam I + sum_i z_i z_i^T`` (sum) or ``lam I + (1/n) sum_i z_i z_i^T`` (mean) over valid rows."""
    v.check_choice("normalization", normalization, NORMALIZATIONS)
    w = jnp.where(mask, 1.0, 0.0)
    outer = (z * w[:, None]).T @ z
    if normalization == "mean":
        outer = outer / jnp.maximum(jnp.sum(w), 1.0)
    return outer + lam * jnp.eye(z.shape[1], dtype=z.dtype)


def sigmoid_slope_lower_bound(reward_norm, feature_norm: float = 1.0):
    """``gamma = min sigma'(u)`` over ``|u| <= 2 L B``: ``1 / (2 + e^{2LB} + e^{-2LB})``."""
    u = 2.0 * feature_norm * reward_norm
    return 1.0 / (2.0 + jnp.exp(u) + jnp.exp(-u))


def confidence_radius(mode: str, dim: int, n, lam, reward_norm, delta: float = 0.05,
                      c_beta: float = 1.0, normalization: str = "sum") -> jax.Array:
    """``beta`` for the given mode and normalisation (module docstring); ``n`` is the sample size."""
    v.check_choice("beta_mode", mode, BETA_MODES)
    v.check_choice("normalization", normalization, NORMALIZATIONS)
    v.check_float("delta", delta, low=0.0, high=1.0, low_open=True)
    v.check_float("c_beta", c_beta, low=0.0, low_open=True)
    n = jnp.maximum(jnp.asarray(n, jnp.result_type(float)), 1.0)
    scale = 1.0 / n if normalization == "mean" else 1.0
    if mode == "theory":
        gamma = sigmoid_slope_lower_bound(reward_norm)
        return c_beta * jnp.sqrt((dim + math.log(1.0 / delta)) / gamma**2 * scale + lam * reward_norm**2)
    if mode == "sqrt_d":
        return c_beta * jnp.sqrt(dim * scale)
    return c_beta * jnp.ones_like(n)


def confidence_set(center: jax.Array, gram: jax.Array, beta) -> ConfidenceSet:
    return ConfidenceSet(center, gram, spd_solve.cholesky(gram), jnp.asarray(beta, gram.dtype))


def mle_confidence_set(z: jax.Array, y: jax.Array, mask: jax.Array, n, reward_norm, config: ConfidenceConfig,
                       theta0: jax.Array | None = None) -> ConfidenceSet:
    """The BT-MLE ``theta_hat`` on the valid rows (warm start ``theta0``) and its set
    ``{theta : ||theta - theta_hat||_Sigma <= beta}``, ``Sigma = lam I + sum_i z_i z_i^T``, ``beta`` from
    ``config`` for ``n`` comparisons (docs/theory.md §1.4)."""
    theta = fit_bt_mle(z, y, mask, config.lam, theta0=theta0).theta
    return confidence_set(theta, gram_matrix(z, mask, config.lam), config.radius(z.shape[-1], n, reward_norm))


def dual_norm(chol: jax.Array, vectors: jax.Array) -> jax.Array:
    """``||v||_{Sigma^{-1}} = ||L^{-1} v||`` for ``vectors [..., d]`` (batched over leading axes)."""
    # L^{-1} once ([d, d]), then one matmul: a triangular solve with thousands of right-hand sides,
    # vmapped over seeds sharded on 2 CPU devices, hung inside jaxlib's LAPACK kernel on a 2-core
    # machine (benchmarks/README.md); Sigma >= lam I keeps the explicit factor inverse accurate.
    flat = vectors.reshape(-1, vectors.shape[-1])
    chol_inv = spd_solve.lower_inverse(chol)
    white = chol_inv @ flat.T
    return jnp.sqrt(jnp.sum(white**2, axis=0)).reshape(vectors.shape[:-1])


def primal_norm(gram: jax.Array, vector: jax.Array) -> jax.Array:
    """``||v||_Sigma = sqrt(v^T Sigma v)``."""
    return jnp.sqrt(jnp.maximum(vector @ gram @ vector, 0.0))


def contains(cs: ConfidenceSet, theta: jax.Array) -> jax.Array:
    """``||theta - center||_Sigma <= beta``."""
    return primal_norm(cs.gram, theta - cs.center) <= cs.beta


def policy_feature_mean(instance: Instance, log_pi: jax.Array) -> jax.Array:
    """``phi(x, pi) = E_{a~pi(.|x)} phi(x, a)``, shape ``[n_x, d]``."""
    return jnp.einsum("xa,xad->xd", jnp.exp(log_pi), instance.phi)


def expected_feature(instance: Instance, log_pi: jax.Array) -> jax.Array:
    """``phi_bar(pi) = E_{x~d0} phi(x, pi)``, shape ``[d]``."""
    return instance.d0 @ policy_feature_mean(instance, log_pi)


def reference_vector(instance: Instance, mode: str = "pi0") -> jax.Array:
    """``nu`` as ``[n_x, d]`` (constant rows unless ``pi0_context``)."""
    v.check_choice("reference_vector", mode, REFERENCE_VECTORS)
    n_x, d = instance.n_contexts, instance.dim
    if mode == "zero":
        return jnp.zeros((n_x, d), instance.phi.dtype)
    per_context = policy_feature_mean(instance, instance.log_pi0)
    if mode == "pi0_context":
        return per_context
    return jnp.broadcast_to((instance.d0 @ per_context)[None, :], (n_x, d))


def pointwise_uncertainty(instance: Instance, chol: jax.Array, nu: jax.Array) -> jax.Array:
    """``Gamma(x, a) = ||phi(x, a) - nu(x)||_{Sigma^{-1}}``, shape ``[n_x, K]``."""
    return dual_norm(chol, instance.phi - nu[:, None, :])


def expected_uncertainty(instance: Instance, chol: jax.Array, nu: jax.Array, log_pi: jax.Array) -> jax.Array:
    """``Gamma^e(pi) = ||E_{x~d0}[phi(x, pi) - nu(x)]||_{Sigma^{-1}}``."""
    return dual_norm(chol, instance.d0 @ (policy_feature_mean(instance, log_pi) - nu))
