"""The learnable general preference model of P2 (Ye et al., NeurIPS 2024; docs/theory.md §3.1-3.2).

Linear antisymmetric class [D, docs/theory.md §3.1 "function approximation"]:

    P_theta(x, a, b) = sigmoid(<theta, psi(x, a, b)>),
    psi(x, a, b) = [ phi(x,a) - phi(x,b) ;  (phi_i(x,a) phi_j(x,b) - phi_j(x,a) phi_i(x,b))_{i<j} ],

so ``psi(x, a, b) = -psi(x, b, a)`` and ``P_theta(x,a,b) + P_theta(x,b,a) = 1`` for every ``theta``.
``theta = [theta_r ; s]`` has ``D = d + d(d-1)/2`` entries: a Bradley-Terry block ``theta_r`` and the
upper triangle ``s`` of a skew-symmetric ``S`` (``S_ij = s_ij``, ``S_ji = -s_ij``), and

    <theta, psi(x, a, b)> = <theta_r, phi_a - phi_b> + phi_a^T S phi_b,

which is exactly the margin of the toolkit's general oracle (``bandits.preferences``): the class is
realizable for linear-reward instances, with ``theta* = [theta_star ; upper(S*)]``
(``true_parameter``). Bradley-Terry is ``s = 0``. A fitted ``theta`` is turned into an ``Instance``
whose reward is ``phi theta_r`` and skew block ``S`` (``model_instance``), so every exact evaluator
of ``bandits`` (payoff matrices, equilibrium, best response, gap) applies to the *estimated* game.

MLE: logistic regression without intercept on ``psi_i = psi(x_i, a1_i, a2_i)`` (docs/theory.md §3.2 step
1): ``l(theta) = sum_i softplus(-(2y_i - 1) <theta, psi_i>) + (lam/2) ||theta||^2``, solved by the
damped Newton of ``algorithms.core.bt_mle`` (``psi`` in place of ``z``). Confidence set:
``{theta : ||theta - theta_hat||_Sigma <= beta}`` with ``Sigma = lam I + sum_i psi_i psi_i^T`` and
``beta`` from ``algorithms.core.confidence.confidence_radius`` with ``dim = D`` (``mle_confidence_set``: fit,
Gram, radius and set in one call). Uncertainties:

- pointwise  ``Gamma(x, a, b) = ||psi(x, a, b)||_{Sigma^{-1}}`` (``pair_uncertainty``);
- of a policy pair ``Gamma(x, pi1, pi2) = ||E_{a~pi1, b~pi2} psi(x, a, b)||_{Sigma^{-1}}`` (docs/theory.md
  §3.2 step 2, linear case; ``policy_pair_uncertainty``). ``psi`` is bilinear in the two actions'
  features, so the expectation only needs the policies' feature means.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from algorithms.core import confidence as conf
from algorithms.core.bt_mle import MLEFit, bt_negative_log_likelihood, fit_bt_mle
from bandits import Instance, PreferenceData
from bandits import validation as v


def psi_dim(d: int) -> int:
    """``D = d + d(d-1)/2``."""
    return d + d * (d - 1) // 2


def _upper(d: int):
    return np.triu_indices(d, 1)


def pair_features(phi_a: jax.Array, phi_b: jax.Array) -> jax.Array:
    """``psi`` from the two actions' features ``[..., d]`` (any equal leading shape), shape ``[..., D]``."""
    i, j = _upper(phi_a.shape[-1])
    skew = phi_a[..., i] * phi_b[..., j] - phi_a[..., j] * phi_b[..., i]
    return jnp.concatenate([phi_a - phi_b, skew], axis=-1)


def context_pair_features(phi_x: jax.Array) -> jax.Array:
    """``psi(x, a, b)`` for all action pairs of one context ``phi_x [K, d]``, shape ``[K, K, D]``."""
    return pair_features(phi_x[:, None, :], phi_x[None, :, :])


def comparison_features(instance: Instance, data: PreferenceData) -> jax.Array:
    """``psi_i = psi(x_i, a1_i, a2_i)``, zero on masked rows, shape ``[n, D]``."""
    psi = pair_features(instance.phi[data.x, data.a1], instance.phi[data.x, data.a2])
    return jnp.where(data.mask[:, None], psi, 0.0)


def split_parameter(theta: jax.Array, d: int) -> tuple[jax.Array, jax.Array]:
    """``theta -> (theta_r [d], S [d, d])`` with ``S`` skew-symmetric."""
    i, j = _upper(d)
    s = jnp.zeros((d, d), theta.dtype).at[i, j].set(theta[d:])
    return theta[:d], s - s.T


def join_parameter(theta_r: jax.Array, skew: jax.Array) -> jax.Array:
    """``(theta_r, S) -> theta = [theta_r ; upper(S)]`` (``S`` assumed skew-symmetric)."""
    i, j = _upper(theta_r.shape[-1])
    return jnp.concatenate([theta_r, skew[i, j]])


def true_parameter(instance: Instance) -> jax.Array:
    """``theta* = [theta_star ; upper(S*)]`` of a linear-reward instance (the model is then exact)."""
    return join_parameter(instance.theta_star, instance.skew)


def model_instance(instance: Instance, theta: jax.Array) -> Instance:
    """The instance whose oracle is ``P_theta``: reward ``phi theta_r``, skew ``S(theta)``; same
    ``phi``, ``pi0``, ``d0`` and ``kl_coef`` (so ``bandits.nash_equilibrium(model_instance(...))`` is the
    equilibrium of the estimated game)."""
    theta_r, skew = split_parameter(theta, instance.dim)
    return instance._replace(reward=instance.phi @ theta_r, skew=skew)


def model_margins(instance: Instance, theta: jax.Array) -> jax.Array:
    """``<theta, psi(x, a, b)>`` for all ``x, a, b``, shape ``[n_x, K, K]``."""
    theta_r, skew = split_parameter(theta, instance.dim)
    r = instance.phi @ theta_r
    return r[:, :, None] - r[:, None, :] + jnp.einsum("xai,ij,xbj->xab", instance.phi, skew, instance.phi)


def negative_log_likelihood(theta, psi, y, mask, lam=0.0) -> jax.Array:
    """``l(theta)`` of the module docstring (``lam = 0``: the plain negative log-likelihood)."""
    return bt_negative_log_likelihood(theta, psi, y, mask, lam)


def fit_general_preference(instance: Instance, data: PreferenceData, lam, theta0: jax.Array | None = None,
                           max_iter: int = 100, tol: float | None = None) -> MLEFit:
    """Regularised MLE of ``theta`` (``lam > 0``) on ``data``; warm start ``theta0`` (default 0)."""
    psi = comparison_features(instance, data)
    return fit_bt_mle(psi, data.y, data.mask, lam, theta0=theta0, max_iter=max_iter, tol=tol)


def confidence_set(instance: Instance, data: PreferenceData, theta_hat: jax.Array, lam, beta
                   ) -> conf.ConfidenceSet:
    """``{theta : ||theta - theta_hat||_Sigma <= beta}``, ``Sigma = lam I + sum_i psi_i psi_i^T``."""
    psi = comparison_features(instance, data)
    return conf.confidence_set(theta_hat, conf.gram_matrix(psi, data.mask, lam), beta)


def mle_confidence_set(instance: Instance, data: PreferenceData, n, reward_norm, config: conf.ConfidenceConfig,
                       theta0: jax.Array | None = None) -> conf.ConfidenceSet:
    """The whole psi-space pipeline (docs/theory.md §3.2 step 1): the MLE ``theta_hat`` on ``data`` (warm start
    ``theta0``), ``Sigma = lam I + sum_i psi_i psi_i^T`` and ``beta = config.radius(D, n, reward_norm)`` for
    ``n`` comparisons, as ``{theta : ||theta - theta_hat||_Sigma <= beta}``: the BT pipeline
    ``algorithms.core.confidence.mle_confidence_set`` with ``psi`` in place of ``z`` (the same fit as
    ``fit_general_preference``, the same set as ``confidence_set``)."""
    return conf.mle_confidence_set(comparison_features(instance, data), data.y, data.mask, n, reward_norm, config,
                                   theta0=theta0)


def pair_uncertainty(instance: Instance, chol: jax.Array) -> jax.Array:
    """``Gamma(x, a, b) = ||psi(x, a, b)||_{Sigma^{-1}}``, shape ``[n_x, K, K]`` (one context at a
    time, so the ``[K, K, D]`` feature block is never materialised for all contexts)."""
    if chol.shape[-1] != psi_dim(instance.dim):
        raise ValueError(f"chol has shape {tuple(chol.shape)}, which is not allowed: the Cholesky factor "
                         f"must be [D, D] with D = {psi_dim(instance.dim)} for dim {instance.dim}.")
    return jax.lax.map(lambda phi_x: conf.dual_norm(chol, context_pair_features(phi_x)), instance.phi)


def policy_pair_features(instance: Instance, log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """``E_{a~p(.|x), b~q(.|x)} psi(x, a, b) = psi-map of the feature means``, shape ``[n_x, D]``."""
    return pair_features(conf.policy_feature_mean(instance, log_p), conf.policy_feature_mean(instance, log_q))


def policy_pair_uncertainty(instance: Instance, chol: jax.Array, log_p: jax.Array, log_q: jax.Array
                            ) -> jax.Array:
    """``Gamma(x, pi1, pi2) = ||E_{a~pi1, b~pi2} psi(x, a, b)||_{Sigma^{-1}}``, shape ``[n_x]``."""
    return conf.dual_norm(chol, policy_pair_features(instance, log_p, log_q))


def check_parameter(field: str, theta, d: int) -> None:
    """``theta`` must be a vector of length ``D = psi_dim(d)``."""
    v.check_shape(field, theta, (psi_dim(d),))
