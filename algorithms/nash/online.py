"""Online Nash learning of P2 (Ye et al., NeurIPS 2024, §3.3 reconstructed; docs/theory.md §3.3): the main
agent plays the equilibrium of the estimated game, a second policy chooses whom it is compared with.

Round ``t = 0 .. T-1`` (one ``lax.scan`` step; fixed-shape buffers of ``T * batch`` comparisons):

1. draw ``batch`` comparisons ``x ~ d0, a1 ~ pi1_t, a2 ~ pi2_t``, ``y ~ Bernoulli(P*(x, a1, a2))`` and
   append their ``psi`` features (``algorithms.nash.preference_model``);
2. ``theta_{t+1}`` = general-preference MLE on all data so far (warm start ``theta_t``), Gram matrix
   ``Sigma = lam I + sum psi psi^T``, ``Gamma(x,a,b) = ||psi(x,a,b)||_{Sigma^{-1}}``;
3. MAIN AGENT ``pi1_{t+1}`` = the symmetric equilibrium of the estimated game ``P_theta_{t+1}``
   (``bandits.nash_equilibrium`` on ``model_instance``);
4. pairing ``pi2_{t+1}`` by ``method``:

   - ``'enhancer'`` (P2's enhancer, docs/theory.md §3.3): among the plausible best responses to the main
     agent, ``Pi_t = {BR_theta(pi1) : ||theta - theta_t||_Sigma <= beta}`` with ``BR_theta(pi1) ∝ pi0
     exp(-G_theta(x, pi1, .) / eta)`` (the min-player's best response in the world ``theta``, ``G_theta =
     g(sigmoid(<theta, psi>))``), the one of largest uncertainty against ``pi1``,
     ``pi2 = argmax_{pi in Pi_t} E_x ||E_{a~pi1, b~pi} psi(x, a, b)||_{Sigma^{-1}}``
     (``max_uncertainty_enhancer``). One ``theta`` serves all contexts (it is a world). The objective is
     not concave in ``theta``: it is maximised by projected normalised gradient ascent over
     ``theta = theta_t + beta L^{-T} u``, ``||u|| <= 1`` (``Sigma = L L^T``), from ``K + 1`` starts (``u = 0``,
     the plug-in best response, and for each action ``b`` the world that makes ``b`` cheapest for the
     min-player), keeping the best point visited. With ``beta = 0`` it is the estimated game's best
     response, which for the symmetric equilibrium is ``pi1`` itself;
   - ``'enhancer_optimistic'`` [D, variant]: the optimistic best response, best against the main agent
     in the *most favourable plausible* world for the opponent, ``pi2 ∝ pi0 exp(-E_{a~pi1} G_lcb(x, a, .)
     / eta)`` with ``G_lcb = g(sigmoid(<theta, psi> - beta Gamma))`` (``optimistic_enhancer``): self-play
     plus a tilt of order ``beta Gamma / eta``;
   - ``'self_play'``: ``pi2 = pi1`` (greedy; docs/theory.md §6 "Greedy / self-play");
   - ``'uniform'``: both actions uniform over ``K`` (random pairs, independent of learning).

Round 0 starts from ``theta = 0`` (``P = 1/2``), whose equilibrium is ``pi0``. Every round's policies
are returned, so the main agent after ``(t + 1) * batch`` queries is ``log_pi[t]``, with ``pair_kl[t] =
E_x KL(pi2_t || pi1_t)`` (0 for self-play; for ``'uniform'`` the KL of the uniform pairing policy).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from algorithms.nash import preference_model as gp
from algorithms.core import spd_solve
from algorithms.core.bt_mle import fit_bt_mle
from algorithms.core.confidence import gram_matrix
from algorithms.nash.offline import transform
from bandits import PAYOFFS, Instance, kl_divergence, nash_equilibrium, sample_preference_data, uniform_policy
from bandits import validation as v

METHODS = ("enhancer", "enhancer_optimistic", "self_play", "uniform")
ENHANCER_STEPS = 60


class OnlineTrace(NamedTuple):
    log_pi: jax.Array        # [T, n_x, K] main agent after round t
    log_pair: jax.Array      # [T, n_x, K] pairing policy chosen after round t (used in round t + 1)
    theta: jax.Array         # [T, D] MLE after round t
    solver_gap: jax.Array    # [T] equilibrium solver's gap on the estimated game
    pair_kl: jax.Array       # [T] E_x KL(pi2_t || pi1_t): how far the pairing policy is from the main agent


def plausible_best_response(instance: Instance, theta: jax.Array, chol: jax.Array, beta, log_pi1: jax.Array,
                            payoff: str, u: jax.Array) -> jax.Array:
    """``BR_theta'(pi1) = log_softmax(log pi0 - G_theta'(x, pi1, .) / eta)`` in the world ``theta' = theta + beta
    L^{-T} u`` (``||u|| <= 1``: ``||theta' - theta||_Sigma <= beta``)."""
    return _best_response_in(instance, theta + beta * spd_solve.solve_upper_transposed(chol, u), log_pi1, payoff)


def _best_response_in(instance: Instance, world: jax.Array, log_pi1: jax.Array, payoff: str) -> jax.Array:
    g = transform(gp.model_margins(instance, world), payoff)
    return jax.nn.log_softmax(instance.log_pi0 - jnp.einsum("xa,xab->xb", jnp.exp(log_pi1), g) / instance.kl_coef,
                              axis=-1)


def pair_uncertainty_of(instance: Instance, chol_inv: jax.Array, log_pi1: jax.Array, log_pi2: jax.Array) -> jax.Array:
    """``E_x ||E_{a~pi1, b~pi2} psi(x, a, b)||_{Sigma^{-1}}`` (``chol_inv = L^{-1}``; smooth at 0)."""
    psi_bar = gp.policy_pair_features(instance, log_pi1, log_pi2) @ chol_inv.T
    return jnp.sum(instance.d0 * jnp.sqrt(jnp.sum(psi_bar**2, axis=-1) + 1e-30))


def max_uncertainty_enhancer(instance: Instance, theta: jax.Array, chol: jax.Array, beta, log_pi1: jax.Array,
                             payoff: str, steps: int = ENHANCER_STEPS):
    """P2's enhancer (module docstring): ``(log pi2, its uncertainty, u)``, ``pi2 = BR_{theta + beta L^{-T} u}
    (pi1)`` the plausible best response of largest ``E_x Gamma(x, pi1, pi2)`` found."""
    chol_inv = spd_solve.lower_inverse(chol)
    to_world = beta * chol_inv.T   # theta' = theta + beta L^{-T} u, one product per evaluation instead of a solve

    def value(u):
        return pair_uncertainty_of(instance, chol_inv, log_pi1, _best_response_in(instance, theta + to_world @ u,
                                                                                    log_pi1, payoff))

    value_and_grad = jax.value_and_grad(value)
    # the world in which b is cheapest for the min-player: the margin G_theta(x, pi1, b) falls fastest along
    # -L^{-1} E_x E_{a~pi1} psi(x, a, b) (exactly so for the logit payoff)
    mean = jnp.einsum("xa,xad->xd", jnp.exp(log_pi1), instance.phi)
    psi_b = gp.pair_features(jnp.broadcast_to(mean[:, None, :], instance.phi.shape), instance.phi)   # [n_x, K, D]
    per_action = jnp.einsum("x,xbD->bD", instance.d0, psi_b) @ chol_inv.T                            # [K, D]
    norms = jnp.linalg.norm(per_action, axis=-1, keepdims=True)
    starts = jnp.concatenate([jnp.zeros((1, per_action.shape[-1]), per_action.dtype),
                              -per_action / jnp.where(norms > 0, norms, 1.0)])

    def keep(best_u, best, u, val):
        better = val > best
        return jnp.where(better, u, best_u), jnp.where(better, val, best)

    def ascend(u0):
        # every iterate u_0 .. u_steps is evaluated once: the value at u_i comes with its gradient
        def step(state, i):
            u, best_u, best = state
            val, gu = value_and_grad(u)
            best_u, best = keep(best_u, best, u, val)
            size = 0.5 * 0.02 ** (i / steps)   # geometric from 0.5 to 0.01
            u = u + size * gu / (jnp.linalg.norm(gu) + 1e-30)
            u = u / jnp.maximum(1.0, jnp.linalg.norm(u))
            return (u, best_u, best), None

        u, best_u, best = jax.lax.scan(step, (u0, u0, jnp.asarray(-jnp.inf, u0.dtype)), jnp.arange(steps))[0]
        return keep(best_u, best, u, value(u))

    best_u, best = jax.vmap(ascend)(starts)
    u = best_u[jnp.argmax(best)]
    return plausible_best_response(instance, theta, chol, beta, log_pi1, payoff, u), jnp.max(best), u


def optimistic_enhancer(instance: Instance, theta: jax.Array, chol: jax.Array, beta, log_pi1: jax.Array,
                        payoff: str) -> jax.Array:
    """``log pi2 = log_softmax(log pi0 - E_{a~pi1} G_lcb(x, a, .) / eta)`` (module docstring, the variant)."""
    gamma = gp.pair_uncertainty(instance, chol)
    g_lcb = transform(gp.model_margins(instance, theta) - beta * gamma, payoff)
    against = jnp.einsum("xa,xab->xb", jnp.exp(log_pi1), g_lcb)
    return jax.nn.log_softmax(instance.log_pi0 - against / instance.kl_coef, axis=-1)


def _pairing(method, instance, theta, chol, beta, log_pi1, payoff):
    if method == "enhancer":
        return max_uncertainty_enhancer(instance, theta, chol, beta, log_pi1, payoff)[0]
    if method == "enhancer_optimistic":
        return optimistic_enhancer(instance, theta, chol, beta, log_pi1, payoff)
    if method == "self_play":
        return log_pi1
    return uniform_policy(instance.n_contexts, instance.n_actions, log_pi1.dtype)


def run_online(key: jax.Array, instance: Instance, method: str, iterations: int, batch: int, lam=1.0,
               beta=1.0, payoff: str = "identity", tol=None, max_iter: int = 20000) -> OnlineTrace:
    """``iterations`` rounds of ``batch`` comparisons (module docstring); round ``t`` uses ``fold_in(key, t)``."""
    v.check_choice("method", method, METHODS)
    v.check_choice("payoff", payoff, PAYOFFS)
    v.check_int("iterations", iterations, 1)
    v.check_int("batch", batch, 1)
    if v.is_concrete(lam):
        v.check_float("lam", lam, low=0.0, low_open=True)
    if v.is_concrete(beta):
        v.check_float("beta", beta, low=0.0)
    dtype = instance.phi.dtype
    dim = gp.psi_dim(instance.dim)
    capacity = iterations * batch
    lam = jnp.asarray(lam, dtype)
    uniform = uniform_policy(instance.n_contexts, instance.n_actions, dtype)

    def pair_policies(log_pi1, log_pi2):
        return (uniform, uniform) if method == "uniform" else (log_pi1, log_pi2)

    theta0 = jnp.zeros(dim, dtype)
    chol0 = jnp.sqrt(lam) * jnp.eye(dim, dtype=dtype)
    pi1_0 = instance.log_pi0
    pi2_0 = _pairing(method, instance, theta0, chol0, beta, pi1_0, payoff)
    init = (jnp.zeros((capacity, dim), dtype), jnp.zeros(capacity, jnp.int32), jnp.zeros(capacity, bool),
            theta0, pi1_0, pi2_0)

    def body(state, t):
        psi_buf, y_buf, mask_buf, theta, log_pi1, log_pi2 = state
        first, second = pair_policies(log_pi1, log_pi2)
        data = sample_preference_data(jax.random.fold_in(key, t), instance, first, second, batch)
        start = t * batch
        psi_buf = jax.lax.dynamic_update_slice(psi_buf, gp.comparison_features(instance, data), (start, 0))
        y_buf = jax.lax.dynamic_update_slice(y_buf, data.y, (start,))
        mask_buf = jax.lax.dynamic_update_slice(mask_buf, data.mask, (start,))
        theta = fit_bt_mle(psi_buf, y_buf, mask_buf, lam, theta0=theta).theta
        chol = spd_solve.cholesky(gram_matrix(psi_buf, mask_buf, lam))
        sol = nash_equilibrium(gp.model_instance(instance, theta), payoff, tol, max_iter)
        log_pi2 = _pairing(method, instance, theta, chol, beta, sol.log_pi, payoff)
        pair_kl = jnp.sum(instance.d0 * kl_divergence(log_pi2, sol.log_pi))
        return (psi_buf, y_buf, mask_buf, theta, sol.log_pi, log_pi2), (sol.log_pi, log_pi2, theta, sol.gap, pair_kl)

    _, out = jax.lax.scan(body, init, jnp.arange(iterations))
    return OnlineTrace(*out)
