"""Gram matrices, confidence radii and elliptical uncertainties (docs/theory.md §1.4, §9.1 items 5-6).

- Gram matrix, **sum-normalised** by default: ``Sigma = lam I + sum_i z_i z_i^T``; the mean-normalised
  ``lam I + (1/n) sum_i z_i z_i^T`` is available and ``beta`` then uses the matching formula.
- Radius ``beta`` (Zhu et al. 2023 Lemma 3.1 as used by P1; docs/theory.md §1.4), modes:
  ``theory``: ``c_beta sqrt((d + log(1/delta)) / gamma^2 + lam B^2)`` (sum form; the mean form divides
  the first term by ``n``), with ``gamma = 1 / (2 + e^{2LB} + e^{-2LB})`` the smallest slope of the
  sigmoid on ``Theta_B`` (L = max feature norm = 1);
  ``sqrt_d``: ``c_beta sqrt(d)`` (the Guidebook's practical ``beta ≍ c sqrt(d)``; ``/ sqrt(n)`` in
  mean form); ``const``: ``c_beta``;
  ``curvature`` and ``laplace``: radii that cover ``theta*`` (docs/theory.md §1.4, "Radii that cover"),
  both from the Laplace (first-order) expansion of the ridge MLE's score: with ``H(theta) = lam I +
  sum_i sigma'(<theta, z_i>) z_i z_i^T`` and ``S = sum_i (y_i - sigma(<theta*, z_i>)) z_i`` (mean 0,
  covariance ``G = H(theta*) - lam I <= H``), ``theta_hat - theta* ≈ H^{-1} (S - lam theta*)``.
  ``curvature`` (data-free): ``c_beta (sqrt(chi2_{d, 1-delta}) + sqrt(lam) B) / sqrt(gamma)``, since
  ``||S||_{H^{-1}}^2 <= ||S||_{G^{-1}}^2 ≈ chi2_d``, ``||lam theta*||_{H^{-1}} <= sqrt(lam) B`` and
  ``H >= gamma Sigma`` (every slope is ``>= gamma``); the MLE's Sigma-norm error carries ``1 / sqrt(gamma)``,
  not the ``1 / gamma`` of ``theory``. ``laplace`` (needs the data, ``laplace_radius``): the Sigma-norm
  quantile itself with ``H = H(theta_hat)``: ``||Sigma^{1/2} H^{-1} S||^2`` has covariance
  ``<= W = Sigma^{1/2} H^{-1} Sigma^{1/2}`` and is matched in mean and variance by ``a chi2_k`` (Satterthwaite),
  ``a = tr W^2 / tr W``, ``k = (tr W)^2 / tr W^2``; the ridge bias adds ``lam B ||Sigma^{1/2} H^{-1}||_op``:
  ``c_beta (sqrt(a chi2_{k, 1-delta}) + lam B ||Sigma^{1/2} H^{-1}||_op)``. Both are asymptotic (the
  expansion, and ``H(theta_hat)`` for ``H(theta*)``), so their coverage is measured, not proved
  (tests/test_confidence_offline.py: ``>= 1 - delta - 0.02`` on 1024 seeds); ``sqrt_d`` stays the
  practical default although it covers ``theta*`` rarely (same test's report).
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
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import gammainc

from algorithms.core import spd_solve
from algorithms.core.bt_mle import bt_hessian, fit_bt_mle
from bandits import Instance
from bandits import validation as v

BETA_MODES = ("theory", "sqrt_d", "const", "curvature", "laplace")
DATA_MODES = ("laplace",)   # radii computed from the data (``laplace_radius``)
NORMALIZATIONS = ("sum", "mean")
REFERENCE_VECTORS = ("pi0", "pi0_context", "zero")


def _check_delta(delta, mode: str) -> None:
    """``0 < delta <= 1``; ``< 1`` for the chi-square radii (a quantile at level 0 is 0)."""
    v.check_float("delta", delta, low=0.0, high=1.0, low_open=True)
    if mode in ("curvature", "laplace") and float(delta) == 1.0:
        v.fail("delta", delta, f"a finite number in (0, 1) with beta_mode={mode!r}")


@dataclasses.dataclass(frozen=True)
class ConfidenceConfig:
    """The BT-MLE ridge and the confidence set (sum-normalised Gram), validated on creation.

    lam: ridge ``lam > 0`` of the MLE and of ``Sigma``; beta_mode: ``theory`` | ``sqrt_d`` | ``const`` |
    ``curvature`` | ``laplace`` (module docstring; ``curvature`` and ``laplace`` are the radii that cover
    ``theta*``, ``laplace`` computed from the data); c_beta: the radius multiplier ``> 0``; delta: the
    confidence level ``1 - delta`` of the ``theory``, ``curvature`` and ``laplace`` radii, ``0 < delta < 1``;
    reference_vector: ``nu`` (``pi0`` | ``pi0_context`` | ``zero``).
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
        _check_delta(self.delta, self.beta_mode)
        v.check_choice("reference_vector", self.reference_vector, REFERENCE_VECTORS)

    def radius(self, dim: int, n, reward_norm, *, z=None, mask=None, theta=None, gram=None) -> jax.Array:
        """``beta`` of this mode for ``n`` comparisons in dimension ``dim`` (``confidence_radius``); the
        ``laplace`` mode reads the data instead: ``z [n, d]``, ``mask``, the fit ``theta`` and the Gram
        ``gram`` of the set (``laplace_radius``)."""
        if self.beta_mode in DATA_MODES:
            if any(x is None for x in (z, mask, theta, gram)):
                v.fail("beta_mode", self.beta_mode, "a data-free mode (theory, sqrt_d, const, curvature) where the "
                       "caller passes no data (z, mask, theta, gram)")
            return laplace_radius(z, mask, theta, gram, self.lam, reward_norm, self.delta, self.c_beta)
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
    """``beta`` for the given data-free mode and normalisation (module docstring); ``n`` is the sample size.

    ``curvature`` (sum form only): ``c_beta (sqrt(chi2_{d, 1-delta}) + sqrt(lam) B) / sqrt(gamma)``.
    """
    v.check_choice("beta_mode", mode, BETA_MODES)
    if mode in DATA_MODES:
        v.fail("beta_mode", mode, "a data-free mode (theory, sqrt_d, const, curvature) here: 'laplace' reads the "
               "data (laplace_radius, ConfidenceConfig.radius with z, mask, theta, gram)")
    v.check_choice("normalization", normalization, NORMALIZATIONS)
    _check_delta(delta, mode)
    v.check_float("c_beta", c_beta, low=0.0, low_open=True)
    n = jnp.maximum(jnp.asarray(n, jnp.result_type(float)), 1.0)
    scale = 1.0 / n if normalization == "mean" else 1.0
    if mode == "theory":
        gamma = sigmoid_slope_lower_bound(reward_norm)
        return c_beta * jnp.sqrt((dim + math.log(1.0 / delta)) / gamma**2 * scale + lam * reward_norm**2)
    if mode == "curvature":
        if normalization == "mean":
            v.fail("normalization", normalization, "'sum' with beta_mode='curvature'")
        gamma = sigmoid_slope_lower_bound(reward_norm)
        chi = jnp.sqrt(chi2_quantile(float(dim), 1.0 - delta))
        return c_beta * (chi + jnp.sqrt(lam) * reward_norm) / jnp.sqrt(gamma) * jnp.ones_like(n)
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
    gram = gram_matrix(z, mask, config.lam)
    return confidence_set(theta, gram, config.radius(z.shape[-1], n, reward_norm, z=z, mask=mask, theta=theta,
                                                     gram=gram))


@functools.partial(jax.jit, static_argnames="steps")
def chi2_quantile(k, p, steps: int = 80) -> jax.Array:
    """The ``p``-quantile of ``chi2_k`` for real ``k > 0`` (traced): bisection on the CDF
    ``P(k/2, x/2)`` (regularised lower incomplete gamma) over ``[0, k + 2 sqrt(k t) + 2 t]``, ``t = log(1/(1-p))``,
    an interval that contains it (Laurent and Massart 2000, Lemma 1)."""
    k = jnp.asarray(k, jnp.result_type(float))
    t = -jnp.log1p(-jnp.asarray(p, k.dtype))
    hi = k + 2.0 * jnp.sqrt(k * t) + 2.0 * t

    def step(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = gammainc(0.5 * k, 0.5 * mid) < p
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, steps, step, (jnp.zeros_like(hi), hi))
    return 0.5 * (lo + hi)


def _lambda_max_upper(a: jax.Array, squarings: int = 5) -> jax.Array:
    """An upper bound on the largest eigenvalue of a PSD ``a``: ``tr(a^p)^{1/p}`` with ``p = 2^squarings``
    (at most ``d^{1/p}`` times too large; matrix products only, no LAPACK kernel under vmap)."""
    log_c = jnp.zeros((), a.dtype)
    for _ in range(squarings):
        t = jnp.trace(a)
        a = a / t
        log_c = 2.0 * (log_c + jnp.log(t))
        a = a @ a
    return jnp.exp((log_c + jnp.log(jnp.trace(a))) / 2**squarings)


def laplace_radius(z: jax.Array, mask: jax.Array, theta: jax.Array, gram: jax.Array, lam, reward_norm,
                   delta: float = 0.05, c_beta: float = 1.0) -> jax.Array:
    """The ``laplace`` radius (module docstring): ``c_beta (sqrt(a chi2_{k, 1-delta}) + lam B ||Sigma^{1/2}
    H^{-1}||_op)`` with ``H = lam I + sum_i mask_i sigma'(<theta, z_i>) z_i z_i^T`` (the ridge MLE's Hessian at
    ``theta``), ``W = L^T H^{-1} L`` for ``Sigma = gram = L L^T``, ``a = tr W^2 / tr W``, ``k = (tr W)^2 / tr W^2``.

    ``||Sigma^{1/2} H^{-1}||_op^2 = lambda_max(L^T H^{-2} L)`` is bounded above by ``_lambda_max_upper``.
    """
    _check_delta(delta, "laplace")
    v.check_float("c_beta", c_beta, low=0.0, low_open=True)
    return _laplace_radius(z, mask, theta, gram, lam, reward_norm, delta, c_beta)


@jax.jit
def _laplace_radius(z, mask, theta, gram, lam, reward_norm, delta, c_beta):
    hess = bt_hessian(theta, z, mask, lam)
    chol = spd_solve.cholesky(gram)
    h_inv_l = spd_solve.spd_solve(hess, chol)            # H^{-1} L
    w = chol.T @ h_inv_l
    w = 0.5 * (w + w.T)
    tr1, tr2 = jnp.trace(w), jnp.sum(w * w)
    quantile = tr2 / tr1 * chi2_quantile(tr1**2 / tr2, 1.0 - delta)
    bias = lam * reward_norm * jnp.sqrt(_lambda_max_upper(h_inv_l.T @ h_inv_l))
    return c_beta * (jnp.sqrt(quantile) + bias)


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
