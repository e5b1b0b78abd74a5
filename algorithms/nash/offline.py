"""Offline Nash learning of P2 (Ye et al., NeurIPS 2024, §3.2 reconstructed; docs/theory.md §3.2) and the
reward-based baseline it should beat on intransitive preferences.

Given offline comparisons, the general-preference MLE ``theta_hat`` and its confidence set
``C = {theta : ||theta - theta_hat||_Sigma <= beta}`` (``algorithms.nash.preference_model``):

- plug-in equilibrium (``plug_in_nash``): the symmetric equilibrium of the estimated game ``P_theta_hat``;
- P2's policy-level pessimistic max-min policy: ``algorithms.nash.pessimism`` (method ``p2_pessimistic``);
- pointwise pessimistic max-min policy (``pessimistic_policy``, method ``p2_pessimistic_pointwise``) [D, a
  variant: the pointwise form of docs/theory.md §3.2, looser by Jensen's inequality]: the
  max-player's policy of the KL-regularized game with the *lower-confidence* payoff

      G_pess(x, a, b) = g( sigmoid( <theta_hat, psi(x,a,b)> - beta Gamma(x,a,b) ) ),
      Gamma(x, a, b) = ||psi(x,a,b)||_{Sigma^{-1}},   g in {identity, logit},

  i.e. ``pi_hat = argmax_pi min_pi2 E_x[ E_{a~pi, b~pi2} G_pess - eta KL(pi||pi0) + eta KL(pi2||pi0) ]``.
  Since ``g o sigmoid`` is increasing, ``G_pess <= G*`` on the event ``theta* in C``. The game is no
  longer symmetric, so it is solved by two-sequence KL-regularized extragradient (``solve_game``;
  docs/theory.md §3.3), stopped on its exact duality gap.
- Guarantee [D]: on ``theta* in C``, with ``L_g = 1/4`` (identity) or 1 (logit),

      Gap(pi_hat) <= sup_{pi2} E_x E_{a~pi*, b~pi2}[G* - G_pess] + eps_solver
                  <= 2 L_g beta E_x max_b E_{a~pi*} Gamma(x, a, b) + eps_solver,

  (``pessimistic_bound``). The right side is small only when the data cover ``(pi*, b)`` for *every*
  opponent action ``b``: P2's unilateral coverage. ``unilateral_coverage`` and ``diagonal_coverage``
  (``E_x E_{a,b~pi*} Gamma``, what data concentrated on ``(pi*, pi*)`` controls) are the diagnostics.
- Why the plug-in equilibrium needs no pessimism here [D]: any estimate from the antisymmetric class
  has ``G_hat(a,b) + G_hat(b,a) = c`` like the truth, so ``E = G_hat - G*`` is antisymmetric and the
  symmetric equilibrium ``pi_hat`` of the estimated game satisfies, exactly (``plug_in_gap``),

      Gap(pi_hat) = eta E_x log E_{a~pi_hat} exp(-E(x, a, pi_hat) / eta)  ~  E_x Var_{a~pi_hat}[E(x,a,pi_hat)] / (2 eta),
      KL(pi_hat||pi*) + KL(pi*||pi_hat) = -(1/eta) E_x E_{a~pi*, b~pi_hat} E(x, a, b),

  with ``E(x, a, pi) = E_{b~pi} E(x, a, b)``. The gap is second order in the estimation error on the
  pairs ``(., pi_hat)`` while ``eta`` exceeds that error (its rate is then about ``1/n``, not ``1/sqrt n``),
  and the second identity ties ``pi_hat`` to ``pi*`` through the errors on ``(pi*, .)``, P2's unilateral
  quantity. A pessimistic payoff instead moves every uncertain entry by ``~ beta Gamma`` (first order).
  Pessimism can only pay off when the errors are large against ``eta`` (small ``kl_coef``, small ``n``,
  little generalisation across pairs); measured in paper_repro.md (nash-offline).

Baseline (docs/theory.md §3.4 target 1): reward-based RLHF, the Bradley-Terry MLE on
``z = phi(a1) - phi(a2)`` followed by its Gibbs policy (``bt_gibbs_policy``); DPO lives in
``algorithms.core.direct_preference``.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from algorithms.nash import preference_model as gp
from algorithms.core.bt_mle import fit_bt_mle
from algorithms.core.confidence import ConfidenceSet
from algorithms.offline.gshf import linear_gibbs
from bandits import (PAYOFFS, Instance, NashSolution, PreferenceData, context_mean, feature_differences,
                     kl_divergence, nash_equilibrium, payoff_matrices)
from bandits import validation as v

LIPSCHITZ = {"identity": 0.25, "logit": 1.0}


class GameSolution(NamedTuple):
    log_p: jax.Array        # max-player [n_x, K]
    log_q: jax.Array        # min-player [n_x, K]
    gap: jax.Array          # exact duality gap of (p, q)
    iterations: jax.Array


def _default_tol(dtype):
    return 1e-10 if dtype == jnp.float64 else 1e-5


def game_duality_gap(g: jax.Array, log_pi0: jax.Array, d0: jax.Array, kl_coef, log_p: jax.Array,
                     log_q: jax.Array) -> jax.Array:
    """``max_p' Phi(p', q) - min_q' Phi(p, q') >= 0`` for ``Phi(p, q) = E_x[p^T G q - eta KL(p) + eta KL(q)]``:

        max_p' Phi(p', q) = E_x[ eta log E_{pi0} exp(G q / eta) + eta KL(q || pi0) ],
        min_q' Phi(p, q') = E_x[ -eta log E_{pi0} exp(-G^T p / eta) - eta KL(p || pi0) ].
    """
    eta = kl_coef
    gq = jnp.einsum("xab,xb->xa", g, jnp.exp(log_q))
    gp_ = jnp.einsum("xa,xab->xb", jnp.exp(log_p), g)
    best_p = eta * jax.nn.logsumexp(log_pi0 + gq / eta, axis=-1) + eta * kl_divergence(log_q, log_pi0)
    best_q = -eta * jax.nn.logsumexp(log_pi0 - gp_ / eta, axis=-1) - eta * kl_divergence(log_p, log_pi0)
    return jnp.sum(d0 * (best_p - best_q), axis=-1)


def max_min_value_of(g: jax.Array, log_pi0: jax.Array, d0: jax.Array, kl_coef, log_p: jax.Array) -> jax.Array:
    """``min_q Phi(p, q)`` in closed form (the max-player's guaranteed value under payoff ``g``)."""
    eta = kl_coef
    gp_ = jnp.einsum("xa,xab->xb", jnp.exp(log_p), g)
    per_x = -eta * jax.nn.logsumexp(log_pi0 - gp_ / eta, axis=-1) - eta * kl_divergence(log_p, log_pi0)
    return jnp.sum(d0 * per_x, axis=-1)


def solve_game(g: jax.Array, log_pi0: jax.Array, d0: jax.Array, kl_coef, tol=None,
               max_iter: int = 20000) -> GameSolution:
    """Saddle point of ``max_p min_q Phi(p, q)`` (any payoff tensor ``g [n_x, K, K]``) by KL-regularized
    extragradient (Cen, Wei & Chi 2021; docs/theory.md §3.3) with ``alpha = 1 / (eta + 2 max|G|)``:

        log p_half ∝ (1 - alpha eta) log p + alpha eta log pi0 + alpha G q
        log q_half ∝ (1 - alpha eta) log q + alpha eta log pi0 - alpha G^T p
        log p_next ∝ (1 - alpha eta) log p + alpha eta log pi0 + alpha G q_half
        log q_next ∝ (1 - alpha eta) log q + alpha eta log pi0 - alpha G^T p_half

    from ``(pi0, pi0)``, stopped when ``game_duality_gap < tol`` (default 1e-10 in float64, 1e-5 in
    float32) or after ``max_iter`` steps. ``jit``/``vmap``-able (``max_iter`` static).
    """
    v.check_int("max_iter", max_iter, 1)
    tol = _default_tol(g.dtype) if tol is None else tol
    return _solve_game(g, log_pi0, d0, jnp.asarray(kl_coef, g.dtype), jnp.asarray(tol, g.dtype), max_iter)


@partial(jax.jit, static_argnums=(5,))
def _solve_game(g, log_pi0, d0, eta, tol, max_iter):
    alpha = 1.0 / (eta + 2.0 * jnp.max(jnp.abs(g)))
    anchor = alpha * eta * log_pi0
    keep = 1.0 - alpha * eta

    def step(log_p, log_q, lead_p, lead_q):
        new_p = jax.nn.log_softmax(keep * log_p + anchor + alpha * jnp.einsum("xab,xb->xa", g, jnp.exp(lead_q)), -1)
        new_q = jax.nn.log_softmax(keep * log_q + anchor - alpha * jnp.einsum("xa,xab->xb", jnp.exp(lead_p), g), -1)
        return new_p, new_q

    def gap_of(log_p, log_q):
        return game_duality_gap(g, log_pi0, d0, eta, log_p, log_q)

    def cond(state):
        return (state[2] > tol) & (state[3] < max_iter)

    def body(state):
        log_p, log_q, _, it = state
        half_p, half_q = step(log_p, log_q, log_p, log_q)
        log_p, log_q = step(log_p, log_q, half_p, half_q)
        return log_p, log_q, gap_of(log_p, log_q), it + 1

    init = (log_pi0, log_pi0, gap_of(log_pi0, log_pi0), jnp.asarray(0))
    log_p, log_q, gap, it = jax.lax.while_loop(cond, body, init)
    return GameSolution(log_p, log_q, gap, it)


def transform(prob_margin: jax.Array, payoff: str) -> jax.Array:
    """``g(sigmoid(u))`` from margins ``u``: ``sigmoid(u)`` (identity) or ``u`` (logit)."""
    v.check_choice("payoff", payoff, PAYOFFS)
    return jax.nn.sigmoid(prob_margin) if payoff == "identity" else prob_margin


def pessimistic_payoff(instance: Instance, theta_hat: jax.Array, gamma: jax.Array, beta, payoff: str
                       ) -> jax.Array:
    """``G_pess(x, a, b) = g(sigmoid(<theta_hat, psi> - beta Gamma))``, shape ``[n_x, K, K]``."""
    return transform(gp.model_margins(instance, theta_hat) - beta * gamma, payoff)


class PessimisticSolution(NamedTuple):
    log_pi: jax.Array        # the max-player's policy pi_hat
    gamma: jax.Array         # Gamma(x, a, b) [n_x, K, K]
    solver_gap: jax.Array    # duality gap of the pessimistic game at the returned pair
    iterations: jax.Array


def pessimistic_policy(instance: Instance, cs: ConfidenceSet, payoff: str = "identity", tol=None,
                       max_iter: int = 20000) -> PessimisticSolution:
    """P2's pessimistic max-min policy (module docstring) for the confidence set ``cs`` on ``theta``."""
    gamma = gp.pair_uncertainty(instance, cs.chol)
    g = pessimistic_payoff(instance, cs.center, gamma, cs.beta, payoff)
    sol = solve_game(g, instance.log_pi0, instance.d0, instance.kl_coef, tol, max_iter)
    return PessimisticSolution(sol.log_p, gamma, sol.gap, sol.iterations)


def plug_in_nash(instance: Instance, theta_hat: jax.Array, payoff: str = "identity", tol=None,
                 max_iter: int = 20000) -> NashSolution:
    """The equilibrium of the estimated game ``P_theta_hat`` (no pessimism)."""
    return nash_equilibrium(gp.model_instance(instance, theta_hat), payoff, tol, max_iter)


def plug_in_gap(instance: Instance, g_hat: jax.Array, log_pi_hat: jax.Array, payoff: str = "identity"
                ) -> jax.Array:
    """``eta E_x log E_{a~pi_hat} exp(-(G_hat - G*)(x, a, pi_hat) / eta)`` (module docstring): equal to the
    true duality gap of ``pi_hat`` when ``pi_hat`` is the symmetric equilibrium of the antisymmetric payoff
    ``g_hat [n_x, K, K]`` (``G_hat(a,b) + G_hat(b,a) = c``, e.g. any ``P_theta``) [D].

    Proof: ``pi_hat ∝ pi0 exp(G_hat(., pi_hat)/eta)`` and ``pi_hat^T (G_hat - c/2) pi_hat = 0`` give
    ``eta KL(pi_hat||pi0) = -eta log E_{pi0} exp(G_hat(., pi_hat)/eta) + c/2``; insert it in
    ``Gap = c/2 + eta KL(pi_hat||pi0) + eta log E_{pi0} exp(-G*(pi_hat, .)/eta)`` and use
    ``G*(pi_hat, b) = c - G*(b, pi_hat)``.
    """
    eta = instance.kl_coef
    error = jnp.einsum("xab,xb->xa", g_hat - payoff_matrices(instance, payoff), jnp.exp(log_pi_hat))
    return context_mean(instance, eta * jax.nn.logsumexp(log_pi_hat - error / eta, axis=-1))


def unilateral_coverage(instance: Instance, gamma: jax.Array, log_pi: jax.Array) -> jax.Array:
    """``sup_{pi2} E_x E_{a~pi, b~pi2} Gamma(x,a,b) = E_x max_b E_{a~pi} Gamma(x, a, b)``."""
    return context_mean(instance, jnp.max(jnp.einsum("xa,xab->xb", jnp.exp(log_pi), gamma), axis=-1))


def diagonal_coverage(instance: Instance, gamma: jax.Array, log_pi: jax.Array) -> jax.Array:
    """``E_x E_{a, b ~ pi} Gamma(x, a, b)``."""
    p = jnp.exp(log_pi)
    return context_mean(instance, jnp.einsum("xa,xab,xb->x", p, gamma, p))


def pessimistic_bound(instance: Instance, gamma: jax.Array, beta, log_pi_star: jax.Array, payoff: str
                      ) -> jax.Array:
    """``2 L_g beta E_x max_b E_{a~pi*} Gamma(x,a,b)`` (module docstring)."""
    v.check_choice("payoff", payoff, PAYOFFS)
    return 2.0 * LIPSCHITZ[payoff] * beta * unilateral_coverage(instance, gamma, log_pi_star)


def bt_gibbs_policy(instance: Instance, data: PreferenceData, lam, theta0: jax.Array | None = None):
    """Reward-based RLHF: BT-MLE ``theta`` on ``z = phi(a1) - phi(a2)``, then ``Gibbs(<theta, phi>)``;
    returns ``(log_pi, theta)``."""
    theta = fit_bt_mle(feature_differences(instance, data), data.y, data.mask, lam, theta0=theta0).theta
    return linear_gibbs(instance, theta), theta
