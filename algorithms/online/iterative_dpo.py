"""The DPO agent of the online loop: iterative DPO with an optional likelihood bonus (docs/theory.md §2.5, §6).

A softmax policy with reference ``pi0`` is trained at every iteration on all data so far by ``steps``
full-batch Adam steps on

    L(pi) = mean_i softplus(-eta h_pi(x_i, a_w, a_l)) + coef E_{x~d0, y~pi_cal(.|x)} [log pi(y|x) - c log pi0(y|x)],

``h_pi = log pi(a_w)/pi0(a_w) - log pi(a_l)/pi0(a_l)`` (DPO; Rafailov et al. 2023). Policy classes
(``algorithms.core.direct_preference``): ``linear``, ``log pi = log_softmax(log pi0 + phi w)``, ``w [d]``
(the class of the main agent ``Gibbs(theta)`` with ``theta = eta w``, so DPO and MLE-Gibbs differ
only by the optimiser and the MLE's ridge), and ``tabular``, free logits ``[n_x, K]`` (no sharing
across actions: unseen actions keep their ``pi0`` logit). Training is either warm-started
from the previous iteration (RLHFlow's practice) or restarted from ``pi0`` (P1's Guidebook
pseudo-code), docs/theory.md §2.5. The bonus is the primitive of ``algorithms.core.preference_losses``
(``dpo_with_likelihood_bonus``) with its calibration expectation taken exactly over the finite
instance instead of over sampled responses:

- ``none``: iterative DPO (``coef = 0``);
- ``xpo`` (Xie et al. 2024): ``pi_cal = pi0``, ``c = 0``, ``coef = alpha``;
- ``vpo`` (Cen et al. 2024, optimistic sign): ``pi_cal = pi0``, ``c = 1``, ``coef = alpha * eta``;
- ``selm`` (Zhang et al. 2024): ``pi_cal = pi_{t-1}`` (the previous iteration's policy), ``c = 1``,
  ``coef = alpha * eta``.

With ``alpha = 0`` all four are DPO exactly (docs/theory.md §9.2 invariant 17).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from algorithms.core.direct_preference import comparison_log_probs, linear_softmax_policy
from algorithms.core.preference_losses import dpo_loss
from bandits import Instance, PreferenceData, context_mean
from bandits import validation as v

BONUSES = ("none", "xpo", "vpo", "selm")
POLICY_CLASSES = ("linear", "tabular")


def initial_params(policy: str, instance: Instance) -> jax.Array:
    """The ``pi0`` point of the class: ``w = 0`` (linear) or ``logits = log pi0`` (tabular)."""
    v.check_choice("dpo_policy", policy, POLICY_CLASSES)
    if policy == "linear":
        return jnp.zeros(instance.dim, instance.phi.dtype)
    return instance.log_pi0


def policy_log_probs(policy: str, params: jax.Array, instance: Instance) -> jax.Array:
    """``log pi`` ``[n_x, K]`` of the class's parameters."""
    if policy == "linear":
        return linear_softmax_policy(params, instance.phi, instance.log_pi0)
    return jax.nn.log_softmax(params, axis=-1)


def bonus_coefficients(bonus: str, alpha, kl_coef):
    """``(coef, c)`` of the named bonus (module docstring)."""
    v.check_choice("bonus", bonus, BONUSES)
    if bonus == "none":
        return 0.0 * kl_coef, 0.0
    if bonus == "xpo":
        return alpha + 0.0 * kl_coef, 0.0
    return alpha * kl_coef, 1.0


def calibration_policy(bonus: str, log_pi0: jax.Array, log_pi_previous: jax.Array) -> jax.Array:
    """``pi_cal``: ``pi_{t-1}`` for SELM, ``pi0`` otherwise."""
    return log_pi_previous if bonus == "selm" else log_pi0


def dpo_bonus_objective(log_pi: jax.Array, instance: Instance, data: PreferenceData, log_pi_cal: jax.Array,
                        coef, ref_coef: float) -> jax.Array:
    """``L(pi)`` of the module docstring."""
    chosen, rejected = comparison_log_probs(log_pi, data)
    ref_chosen, ref_rejected = comparison_log_probs(instance.log_pi0, data)
    loss = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, instance.kl_coef, mask=data.mask)
    cal = jax.lax.stop_gradient(jnp.exp(log_pi_cal))
    bonus = context_mean(instance, jnp.sum(cal * (log_pi - ref_coef * instance.log_pi0), axis=-1))
    return loss + coef * bonus


class AgentParams(NamedTuple):
    """The DPO agent's bonus as numbers (traceable: one compiled loop serves every bonus).

    ``coef`` and ``ref_coef`` as in ``bonus_coefficients``; ``previous_calibration``: 1 to calibrate on
    ``pi_{t-1}`` (SELM), 0 for ``pi0``; ``restart``: 1 to restart from ``pi0`` each iteration.
    """

    coef: jax.Array
    ref_coef: jax.Array
    previous_calibration: jax.Array
    restart: jax.Array


def agent_params(bonus: str, alpha, kl_coef, restart: bool) -> AgentParams:
    """``AgentParams`` of a named bonus: plain floats for float arguments (a static table of algorithms),
    arrays for traced ``alpha`` or ``kl_coef``."""
    if not isinstance(restart, bool):
        v.fail("restart", restart, "a boolean")
    coef, ref_coef = bonus_coefficients(bonus, alpha, kl_coef)
    return AgentParams(coef, ref_coef, float(bonus == "selm"), float(restart))


def train_dpo_agent(policy: str, init_params: jax.Array, instance: Instance, data: PreferenceData,
                    log_pi_cal: jax.Array, bonus: str, alpha, steps: int, learning_rate) -> jax.Array:
    """``steps`` Adam steps on ``L`` from ``init_params``; returns the parameters (traceable, no jit)."""
    coef, ref_coef = bonus_coefficients(bonus, alpha, instance.kl_coef)
    return train_dpo_agent_with(policy, init_params, instance, data, log_pi_cal, coef, ref_coef, steps,
                                learning_rate)


def train_dpo_agent_with(policy: str, init_params: jax.Array, instance: Instance, data: PreferenceData,
                         log_pi_cal: jax.Array, coef, ref_coef, steps: int, learning_rate) -> jax.Array:
    """``train_dpo_agent`` with the bonus given as (possibly traced) ``coef`` and ``ref_coef``."""
    objective = lambda w: dpo_bonus_objective(policy_log_probs(policy, w, instance), instance, data,
                                              log_pi_cal, coef, ref_coef)
    opt = optax.adam(learning_rate)

    def step(carry, _):
        w, state = carry
        grad = jax.grad(objective)(w)
        updates, state = opt.update(grad, state, w)
        return (optax.apply_updates(w, updates), state), None

    (params, _), _ = jax.lax.scan(step, (init_params, opt.init(init_params)), length=steps)
    return params
