"""Offline policies of P1 (Xiong et al., ICML 2024, offline GSHF; docs/theory.md §2.2) and their bounds.

Given the MLE ``theta_hat``, the confidence set ``C = {theta : ||theta - theta_hat||_Sigma <= beta}``
and a reference vector ``nu``:

- MLE-Gibbs (no pessimism): ``pi_hat = Gibbs(<theta_hat, phi>)``.
- Option II (pointwise pessimism): ``r_hat(x,a) = <theta_hat, phi(x,a)> - beta ||phi(x,a) - nu||_{Sigma^{-1}}``,
  ``pi_hat = Gibbs(r_hat)``.
- Option I (expected-uncertainty pessimism):
  ``pi_hat = argmax_pi <theta_hat, phi_bar(pi) - nu> - beta ||phi_bar(pi) - nu||_{Sigma^{-1}} - eta E KL(pi||pi0)``.
  Solved exactly through the ellipsoid dual (docs/theory.md §2.2): the objective equals
  ``max_pi min_{theta in C} [<theta, phi_bar(pi) - nu> - eta E KL]``; by the minimax theorem
  ``pi_hat = Gibbs(<theta_pess, phi>)`` with ``theta_pess = argmin_{theta in C} F(theta)``,
  ``F(theta) = eta E_x log Z_theta(x) - <theta, nu>`` (convex, ``grad F = phi_bar(pi_theta) - nu``).
  The constrained minimiser is found by bisection on the multiplier ``mu`` of
  ``F(theta) + (mu/2) ||theta - theta_hat||_Sigma^2`` (damped Newton inside), exactly as for a
  trust-region subproblem.

Bounds on the event ``theta* in C`` (docs/theory.md §2.2; §9.2 invariant 7), for any comparator ``pi``:

- Option II: ``eta E KL(pi||pi_hat) + J(pi) - J(pi_hat) <= 2 beta E_{x, a~pi} ||phi(x,a) - nu||_{Sigma^{-1}}``;
- Option I: ``J(pi) - J(pi_hat) <= 2 beta ||phi_bar(pi) - nu||_{Sigma^{-1}}``;
- MLE-Gibbs (plug-in, derived here [D]: the three-term split of §2.2 with ``pi_hat`` Gibbs of
  ``theta_hat``): ``eta E KL(pi||pi_hat) + J(pi) - J(pi_hat) <= beta ||phi_bar(pi) - phi_bar(pi_hat)||_{Sigma^{-1}}``.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from algorithms.core.confidence import (ConfidenceSet, dual_norm, expected_feature, expected_uncertainty,
                                   pointwise_uncertainty, primal_norm)
from algorithms.core.newton import damped_newton, default_tol
from bandits import Instance, context_mean, gibbs_policy, log_partition


def linear_gibbs(instance: Instance, theta: jax.Array) -> jax.Array:
    """``Gibbs(<theta, phi>)``: the policy of the KL-regularized problem with a linear reward."""
    return gibbs_policy(instance.log_pi0, instance.phi @ theta, instance.kl_coef)


def option_ii_reward(instance: Instance, cs: ConfidenceSet, nu: jax.Array) -> jax.Array:
    """``r_hat(x, a) = <theta_hat, phi(x,a)> - beta Gamma(x, a)``, shape ``[n_x, K]``."""
    return instance.phi @ cs.center - cs.beta * pointwise_uncertainty(instance, cs.chol, nu)


def option_ii_policy(instance: Instance, cs: ConfidenceSet, nu: jax.Array) -> jax.Array:
    return gibbs_policy(instance.log_pi0, option_ii_reward(instance, cs, nu), instance.kl_coef)


def option_i_objective(instance: Instance, theta: jax.Array, nu: jax.Array) -> jax.Array:
    """``F(theta) = eta E_x log Z_theta(x) - <theta, E_x nu(x)>``."""
    log_z = log_partition(instance.log_pi0, instance.phi @ theta, instance.kl_coef)
    return instance.kl_coef * context_mean(instance, log_z) - jnp.dot(theta, instance.d0 @ nu)


def _option_i_grad_hess(instance: Instance, theta: jax.Array, nu_bar: jax.Array):
    """Analytic ``grad F = phi_bar(pi_theta) - nu_bar`` and ``hess F = (1/eta) E_x Cov_{pi_theta}(phi)``."""
    p = jnp.exp(linear_gibbs(instance, theta))
    mean = jnp.einsum("xa,xad->xd", p, instance.phi)
    second = jnp.einsum("x,xa,xad,xae->de", instance.d0, p, instance.phi, instance.phi)
    cov = second - jnp.einsum("x,xd,xe->de", instance.d0, mean, mean)
    return instance.d0 @ mean - nu_bar, cov / instance.kl_coef


@partial(jax.jit, static_argnames=("bisection_steps", "inner_steps", "max_iter"))
def option_i_theta(instance: Instance, cs: ConfidenceSet, nu: jax.Array, bisection_steps: int = 24,
                   inner_steps: int = 3, max_iter: int = 50) -> jax.Array:
    """``theta_pess = argmin_{theta in C} F(theta)`` (module docstring)."""
    dtype = cs.center.dtype
    tol = default_tol(dtype)
    nu_bar = instance.d0 @ nu

    def solve(log_mu, start, iters):
        mu = jnp.exp(log_mu)

        def value(t):
            return option_i_objective(instance, t, nu) + 0.5 * mu * ((t - cs.center) @ cs.gram @ (t - cs.center))

        def grad_hess(t):
            g, h = _option_i_grad_hess(instance, t, nu_bar)
            return g + mu * cs.gram @ (t - cs.center), h + mu * cs.gram

        return damped_newton(value, grad_hess, start, iters, tol)[0]

    def bisect(_, state):
        lo, hi, theta = state
        mid = 0.5 * (lo + hi)
        cand = solve(mid, theta, inner_steps)
        outside = primal_norm(cs.gram, cand - cs.center) > cs.beta
        return jnp.where(outside, mid, lo), jnp.where(outside, hi, mid), cand

    # log mu in [-20, 12]: the upper end pins theta to the centre, the lower end is (numerically) the
    # unconstrained minimiser when that lies inside C; 24 halvings give log mu to ~2e-6 (then an exact solve).
    lo, hi = jnp.asarray(-20.0, dtype), jnp.asarray(12.0, dtype)
    lo, hi, theta = jax.lax.fori_loop(0, bisection_steps, bisect, (lo, hi, cs.center))
    return solve(hi, theta, max_iter)


def option_i_policy(instance: Instance, cs: ConfidenceSet, nu: jax.Array) -> jax.Array:
    return linear_gibbs(instance, option_i_theta(instance, cs, nu))


def option_ii_bound(instance: Instance, cs: ConfidenceSet, nu: jax.Array, log_pi: jax.Array) -> jax.Array:
    """``2 beta E_{x~d0, a~pi} ||phi(x,a) - nu||_{Sigma^{-1}}``."""
    gamma = pointwise_uncertainty(instance, cs.chol, nu)
    return 2.0 * cs.beta * context_mean(instance, jnp.sum(jnp.exp(log_pi) * gamma, axis=-1))


def option_i_bound(instance: Instance, cs: ConfidenceSet, nu: jax.Array, log_pi: jax.Array) -> jax.Array:
    """``2 beta ||phi_bar(pi) - nu||_{Sigma^{-1}}``."""
    return 2.0 * cs.beta * expected_uncertainty(instance, cs.chol, nu, log_pi)


def plug_in_bound(instance: Instance, cs: ConfidenceSet, log_pi: jax.Array, log_pi_hat: jax.Array) -> jax.Array:
    """``beta ||phi_bar(pi) - phi_bar(pi_hat)||_{Sigma^{-1}}`` (MLE-Gibbs; module docstring)."""
    return cs.beta * dual_norm(cs.chol, expected_feature(instance, log_pi) - expected_feature(instance, log_pi_hat))
