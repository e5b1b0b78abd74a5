"""P3's synthetic instance family and the metrics of one estimate (docs/theory.md §4.1-4.3; E8-E10).

- ``scaled_instance``: ``theta* = B u``, a linear BT instance drawn at ``B = 1`` whose ``theta*`` and reward
  table are then scaled by ``B``, so every ``B`` of a sweep shares the features, the direction ``u`` and
  ``pi0``, and only ``kappa = 2 + e^{2B} + e^{-2B}`` (``kappa``) changes;
- ``heldout_set`` / ``heldout_metrics``: fresh logging-policy comparisons, and the accuracy and
  cross-entropy of an estimate on them *in expectation over the BT label* (no label noise is added);
- ``estimate_metrics``: the ``METRICS`` of one estimate ``theta_t`` with its inverse design ``A_t^{-1}``
  (``algorithms.onepass.estimators``): ``estimation_error = ||theta_t - theta*||_2``, ``error_local =
  ||theta_t - theta*||_{A_t}``, the held-out pair, and the suboptimality of the plug-in (``subopt``) and of
  P3's pessimistic output (``subopt_pess``, radius ``beta_t`` of ``OnePassOptions.beta``) under an
  ``objective`` of ``algorithms.onepass.policies``;
- ``population_metrics`` (``POPULATION_METRICS``): quantities that can still differ when the accuracy sits at
  its Bayes ceiling, exact over the finite logging law (``logging_pair_weights``): the error in the norm of
  ``Sigma = E[z z^T]`` (``difference_covariance``), the excess log-loss over ``theta*`` (a mean KL), and the
  accuracy with its ceiling, the accuracy of ``theta*``.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

import bandits as b
from algorithms.onepass import policies
from algorithms.onepass.estimators import OnePassOptions
from bandits import validation as v

METRICS = ("estimation_error", "error_local", "heldout_accuracy", "heldout_logloss", "subopt", "subopt_pess")


def kappa(reward_norm: float) -> float:
    """``kappa = 2 + e^{2B} + e^{-2B}`` (unit features): the inverse of the smallest sigmoid slope on
    ``||theta|| <= B`` (docs/theory.md §1.4), the quantity OMD's local norm is meant to improve on."""
    return 2.0 + math.exp(2 * reward_norm) + math.exp(-2 * reward_norm)


def scaled_instance(key, config: b.InstanceConfig, reward_norm) -> b.Instance:
    """``make_instance`` of ``config`` at ``B = 1`` with ``theta*`` (and the reward table) scaled by
    ``reward_norm`` (may be traced): ``theta* = B u`` (module docstring). ``config.reward_norm`` is not
    read; the reward must be linear."""
    v.check_choice("reward", config.reward, ("linear",))
    inst = b.make_instance(key, dataclasses.replace(config, reward_norm=1.0))
    return inst._replace(reward=reward_norm * inst.reward, params=b.LinearReward(reward_norm * inst.theta_star))


def heldout_set(key, inst: b.Instance, n: int):
    """``n`` fresh logging-policy comparisons: feature differences and their BT probabilities."""
    data = b.sample_preference_data(key, inst, inst.log_pi0, inst.log_pi0, n)
    return b.feature_differences(inst, data), b.preference_probability(inst, data.x, data.a1, data.a2)


def heldout_metrics(theta, z, p):
    """Accuracy ``p 1{<theta,z> > 0} + (1 - p) 1{< 0}`` (ties 1/2) and cross-entropy
    ``-p log sigma(<theta,z>) - (1 - p) log sigma(-<theta,z>)``, averaged over the rows of ``z``."""
    u = z @ theta
    acc = jnp.where(u > 0, p, jnp.where(u < 0, 1.0 - p, 0.5))
    loss = p * jax.nn.softplus(-u) + (1.0 - p) * jax.nn.softplus(u)
    return jnp.mean(acc), jnp.mean(loss)


def estimate_metrics(inst: b.Instance, theta, inverse, t, z_held, p_held, nu, options: OnePassOptions,
                     objective: str, beta=None) -> dict:
    """The ``METRICS`` of ``theta`` after ``t`` comparisons (module docstring); ``nu [n_x, d]`` is the
    reference vector of the pessimistic output (docs/theory.md §4.3); ``beta``: its radius (default the shared
    ``options.beta``; ``algorithms.onepass.radii.estimator_radius`` gives the estimator's own)."""
    err = theta - inst.theta_star
    chol = jnp.linalg.cholesky(inverse)
    local = jnp.linalg.norm(jax.scipy.linalg.solve_triangular(chol, err, lower=True))
    acc, loss = heldout_metrics(theta, z_held, p_held)
    beta = options.beta(theta.shape[-1], t) if beta is None else beta
    return {"estimation_error": jnp.linalg.norm(err), "error_local": local, "heldout_accuracy": acc,
            "heldout_logloss": loss,
            "subopt": policies.output_suboptimality(inst, inst.phi @ theta, objective),
            "subopt_pess": policies.output_suboptimality(
                inst, policies.pessimistic_reward(inst, theta, inverse, beta, nu), objective)}


# Quantities of an estimate that can differ below the Bayes ceiling of the accuracy (E9; issue 17 item 6).
POPULATION_METRICS = ("estimation_error_sigma", "excess_logloss", "accuracy", "bayes_accuracy")


def logging_pair_weights(inst: b.Instance) -> jax.Array:
    """``w[x, a, a'] = d0(x) pi0(a|x) pi0(a'|x)`` ``[n_x, K, K]``: the law of one comparison of P3's logging
    process ``(pi0, pi0)``, identical pairs ``a = a'`` included (they carry ``z = 0``)."""
    pi0 = jnp.exp(inst.log_pi0)
    pi0 = pi0 / jnp.sum(pi0, axis=-1, keepdims=True)
    return inst.d0[:, None, None] * pi0[:, :, None] * pi0[:, None, :]


def pair_margins(inst: b.Instance, scores: jax.Array) -> jax.Array:
    """``u[x, a, a'] = s(x, a) - s(x, a')`` for a score table ``s [n_x, K]`` (``phi @ theta`` gives
    ``<theta, z>`` of every comparison without forming ``z``)."""
    return scores[:, :, None] - scores[:, None, :]


def difference_covariance(inst: b.Instance) -> jax.Array:
    """``Sigma = E[z z^T]`` over ``logging_pair_weights``, exactly: with ``a, a'`` independent draws of
    ``pi0(.|x)``, ``E[z z^T | x] = 2 (E[phi phi^T | x] - m_x m_x^T)``, ``m_x = E[phi | x]``, so
    ``Sigma = 2 sum_x d0(x) Cov_{pi0(.|x)}(phi(x, .))`` ``[d, d]``. It is the design of one random
    comparison and, up to the curvature ``sigma'``, the Hessian of the expected log-loss."""
    pi0 = jnp.exp(inst.log_pi0)
    pi0 = pi0 / jnp.sum(pi0, axis=-1, keepdims=True)
    mean = jnp.einsum("xa,xad->xd", pi0, inst.phi)
    second = jnp.einsum("xa,xad,xae->xde", pi0, inst.phi, inst.phi)
    cov = second - mean[:, :, None] * mean[:, None, :]
    return 2.0 * jnp.einsum("x,xde->de", inst.d0, cov)


def population_metrics(inst: b.Instance, theta, sigma=None) -> dict:
    """``POPULATION_METRICS`` of ``theta``, exact over the finite logging law ``w = logging_pair_weights``
    (BT instances: the true preference is ``p = sigma(r*(x,a) - r*(x,a'))``, ``r* = inst.reward``; with
    ``u = <theta, z>``, ``u* = r*(x,a) - r*(x,a')``):

    - ``estimation_error_sigma = ||theta - theta*||_Sigma = sqrt(e^T Sigma e)``, ``Sigma = E[z z^T]``
      (``difference_covariance``; pass it as ``sigma`` to compute it once);
    - ``excess_logloss = E[l(theta)] - E[l(theta*)] = sum w KL(Bern(p) || Bern(sigma(u)))``, with
      ``l`` the BT cross-entropy of ``heldout_metrics``: per pair ``p (softplus(-u) - softplus(-u*)) +
      (1 - p) (softplus(u) - softplus(u*))``, which is ``>= 0`` and zero at ``u = u*``; the sum is
      clipped at 0 (rounding near ``theta*``);
    - ``accuracy = sum w (p 1{u > 0} + (1 - p) 1{u < 0} + 1{u = 0} / 2)``, the expected agreement with
      the BT label (``heldout_metrics``' formula on the whole law instead of a sample);
    - ``bayes_accuracy``: ``accuracy`` of ``theta*`` (of ``u*``), the ceiling no estimate exceeds.
    """
    w = logging_pair_weights(inst)
    u = pair_margins(inst, inst.phi @ theta)
    u_star = pair_margins(inst, inst.reward)
    p = jax.nn.sigmoid(u_star)

    def accuracy(m):
        return jnp.sum(w * jnp.where(m > 0, p, jnp.where(m < 0, 1.0 - p, 0.5)))

    kl = p * (jax.nn.softplus(-u) - jax.nn.softplus(-u_star)) + (1.0 - p) * (jax.nn.softplus(u)
                                                                             - jax.nn.softplus(u_star))
    sigma = difference_covariance(inst) if sigma is None else sigma
    err = theta - inst.theta_star
    return {"estimation_error_sigma": jnp.sqrt(jnp.maximum(err @ sigma @ err, 0.0)),
            "excess_logloss": jnp.maximum(jnp.sum(w * kl), 0.0),
            "accuracy": accuracy(u), "bayes_accuracy": accuracy(u_star)}
