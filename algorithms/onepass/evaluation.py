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
  ``objective`` of ``algorithms.onepass.policies``.
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
