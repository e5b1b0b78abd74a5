"""Output policies of P3's training stage and their exact suboptimality (docs/theory.md §4.1, §4.3, §1.3).

From an estimate ``theta`` and the inverse design ``A^{-1}`` of its estimator (``cH^{-1}`` for OMD,
``V^{-1}`` for the MLE), with a reference vector ``nu(x)`` (docs/theory.md §1.4, §9.1 item 6):

- plug-in reward ``r_hat(x,a) = <theta, phi(x,a)>``;
- pessimistic reward (P3's ``J~ = Phi^T theta - beta ||Phi||_{cH^{-1}}``, pointwise variant of §4.3)
  ``r_pess(x,a) = <theta, phi(x,a)> - beta ||phi(x,a) - nu(x)||_{A^{-1}}``.

Two objectives, selectable with ``objective``:

- ``unregularized`` (P3's theory): the policy is ``argmax_a r(x,a)`` and
  ``SubOpt = E_{x~d0}[max_a r*(x,a) - r*(x, argmax_a r(x,a))]`` (exact ties averaged uniformly);
- ``kl``: the policy is ``Gibbs(r) = pi0 exp(r / kl_coef) / Z`` and
  ``SubOpt = J(pi*) - J(Gibbs(r))`` with ``J`` the KL-regularized value (docs/theory.md §1.2-1.3).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bandits import Instance, context_mean, gibbs_policy, suboptimality as kl_suboptimality
from bandits import validation as v

OBJECTIVES = ("unregularized", "kl")


def pessimistic_reward(instance: Instance, theta: jax.Array, inverse: jax.Array, beta, nu: jax.Array) -> jax.Array:
    """``<theta, phi> - beta ||phi - nu(x)||_{A^{-1}}``, shape ``[n_x, K]`` (``nu [n_x, d]``)."""
    diff = instance.phi - nu[:, None, :]
    width = jnp.sqrt(jnp.maximum(jnp.einsum("xai,ij,xaj->xa", diff, inverse, diff), 0.0))
    return instance.phi @ theta - beta * width


def greedy_suboptimality(instance: Instance, reward_hat: jax.Array) -> jax.Array:
    """``E_x[max_a r*(x,a) - r*(x, argmax_a r_hat(x,a))]``, exact ties averaged uniformly."""
    tied = reward_hat == jnp.max(reward_hat, axis=-1, keepdims=True)
    chosen = jnp.sum(jnp.where(tied, instance.reward, 0.0), axis=-1) / jnp.sum(tied, axis=-1)
    return context_mean(instance, jnp.max(instance.reward, axis=-1) - chosen)


def output_suboptimality(instance: Instance, reward_hat: jax.Array, objective: str) -> jax.Array:
    """SubOpt of the output policy of ``reward_hat [n_x, K]`` under ``objective`` (module docstring)."""
    v.check_choice("objective", objective, OBJECTIVES)
    if objective == "unregularized":
        return greedy_suboptimality(instance, reward_hat)
    return kl_suboptimality(instance, gibbs_policy(instance.log_pi0, reward_hat, instance.kl_coef))
