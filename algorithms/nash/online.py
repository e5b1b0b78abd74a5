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

   - ``'enhancer'`` [D, the optimistic best response of docs/theory.md §3.3]: the opponent that is best
     against the main agent in the *most favourable plausible* world for the opponent,
     ``pi2 ∝ pi0 exp(-E_{a~pi1} G_lcb(x, a, .) / eta)`` with ``G_lcb = g(sigmoid(<theta, psi> - beta Gamma))``;
     it seeks out opponents that might beat ``pi1`` and whose comparisons with ``pi1`` are uncertain;
   - ``'self_play'``: ``pi2 = pi1`` (greedy; docs/theory.md §6 "Greedy / self-play");
   - ``'uniform'``: both actions uniform over ``K`` (random pairs, independent of learning).

Round 0 starts from ``theta = 0`` (``P = 1/2``), whose equilibrium is ``pi0``. Every round's policies
are returned, so the main agent after ``(t + 1) * batch`` queries is ``log_pi[t]``.
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
from bandits import PAYOFFS, Instance, nash_equilibrium, sample_preference_data, uniform_policy
from bandits import validation as v

METHODS = ("enhancer", "self_play", "uniform")


class OnlineTrace(NamedTuple):
    log_pi: jax.Array        # [T, n_x, K] main agent after round t
    log_pair: jax.Array      # [T, n_x, K] pairing policy chosen after round t (used in round t + 1)
    theta: jax.Array         # [T, D] MLE after round t
    solver_gap: jax.Array    # [T] equilibrium solver's gap on the estimated game


def enhancer_policy(instance: Instance, theta: jax.Array, chol: jax.Array, beta, log_pi1: jax.Array,
                    payoff: str) -> jax.Array:
    """``log pi2 = log_softmax(log pi0 - E_{a~pi1} G_lcb(x, a, .) / eta)`` (module docstring)."""
    gamma = gp.pair_uncertainty(instance, chol)
    g_lcb = transform(gp.model_margins(instance, theta) - beta * gamma, payoff)
    against = jnp.einsum("xa,xab->xb", jnp.exp(log_pi1), g_lcb)
    return jax.nn.log_softmax(instance.log_pi0 - against / instance.kl_coef, axis=-1)


def _pairing(method, instance, theta, chol, beta, log_pi1, payoff):
    if method == "enhancer":
        return enhancer_policy(instance, theta, chol, beta, log_pi1, payoff)
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
        return (psi_buf, y_buf, mask_buf, theta, sol.log_pi, log_pi2), (sol.log_pi, log_pi2, theta, sol.gap)

    _, out = jax.lax.scan(body, init, jnp.arange(iterations))
    return OnlineTrace(*out)
