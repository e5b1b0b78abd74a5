"""P2's policy-level pessimism (Ye et al., NeurIPS 2024, §3.2 reconstructed; docs/theory.md §3.2 step 3).

The pessimistic game of the max-player ``p = pi1`` against the min-player ``q = pi2``, per context ``x``:

    f_x(p, q) = p^T G_hat q - r ||psi_bar(x, p, q)||_{Sigma^{-1}} - eta KL(p || pi0) + eta KL(q || pi0),
    psi_bar(x, p, q) = E_{a~p, b~q} psi(x, a, b) = psi(phi(x, p), phi(x, q))   (psi is bilinear),

with ``G_hat = g(sigmoid(<theta_hat, psi>))`` the estimated payoff and ``r = L_g beta`` (``L_g`` = 1 for
the logit payoff, 1/4 for the probability payoff), and P2's policy ``pi_hat = argmax_p E_x min_q f_x(p, q)``.

Which form [D]: with the logit payoff ``G_theta = <theta, psi>`` is linear in ``theta`` and so is its
policy-pair value ``<theta, psi_bar>``; hence ``f_x`` is exactly ``min_{theta in C} <theta, psi_bar> - ...``
(``C = {||theta - theta_hat||_Sigma <= beta}``), a lower bound on the true game value on the event
``theta* in C`` for every pair. P2 writes ``P_hat(pi1, pi2) - beta Gamma(pi1, pi2)`` with the
probability payoff; there we take the same form with ``r = beta / 4`` (the sigmoid's largest slope), so
one ``beta`` is one margin radius in both payoffs and in the pointwise variant. It is P2's form, a
lower bound to first order in ``theta - theta_hat`` only (the sigmoid's slope varies across pairs).

Solver [D]. ``f_x(., q)`` is concave in ``p`` (a norm of a linear map of ``p``, negated, plus the
entropy), so ``h_x(p) = min_q f_x(p, q)`` is concave (a minimum of concave functions) and the outer
problem is a concave maximisation; ``f_x(p, .)`` is *not* convex in ``q`` (the negated norm is concave,
with a kink at ``psi_bar = 0``, e.g. ``q = p``), so there is no saddle point to find by extragradient
and ``max min`` may exceed ``min max``.

- Min-player (``best_response``): minimise ``c^T q - r ||B^T q|| + eta KL(q || pi0)`` (``c = G_hat^T p``,
  rows of ``B`` = ``L^{-1} psi(phi(x, p), phi(x, b))``, ``Sigma = L L^T``) by majorize-minimize: the
  concave term lies below its linearisation at ``q_k``, so ``q_{k+1} = softmax(log pi0 - (c - r B B^T
  q_k / ||B^T q_k||) / eta)`` (the best response in the world ``theta_k`` on the sphere of ``C`` worst for
  ``q_k``) never increases the objective. It stops at a stationary point, so it is run from ``K + 2``
  starts (the previous minimiser, the plug-in best response ``u = 0``, and each action's vertex mixed
  with ``pi0``) and the lowest end value is kept. It is written with the Gram matrix ``B B^T`` (``K x K``:
  ``B B^T q / sqrt(q^T B B^T q)`` is the same step).
- Max-player: pairwise Frank-Wolfe on the dual. For any min-player response ``q_j`` against ``p_j``, with
  ``y_j = G_hat q_j - r B_j^T u_j`` (``u_j`` the unit vector of ``psi_bar(p_j, q_j)``, so ``y_j`` is a
  supergradient, Danskin) and ``c_j = eta KL(q_j || pi0)``, ``u^T v <= ||v||`` gives, for every ``p``,

      h_x(p) <= f_x(p, q_j) <= p^T y_j + c_j - eta KL(p || pi0),

  so for weights ``lambda`` on the atoms ``Psi(lambda) = eta log E_{pi0} exp(y_bar / eta) + c_bar >= max_p
  h_x(p)`` (``y_bar, c_bar`` the weighted averages), with maximiser ``p = softmax(log pi0 + y_bar / eta)``.
  Each of the ``outer`` steps adds the atom of the current ``p``, found by ``inner`` MM steps per start,
  and moves weight from the active atom worst against ``p`` onto it by an exact line search on ``Psi``
  (bisection on its increasing derivative). ``certificate = E_x[Psi(lambda) - h_x(pi_hat)]`` bounds the
  suboptimality of ``pi_hat``, whichever responses the atoms hold.
- Restarts: since the bound holds for any atoms, only every ``restart_every``-th step (and the final
  evaluation of ``h(pi_hat)``) runs all ``K + 2`` starts for ``inner`` MM steps; the others run ``warm_inner``
  MM steps from the previous minimiser and the plug-in response. Consecutive atoms then stay in one basin
  of the min-player's problem, and atoms that are not fully converged minimisers are still valid (the
  bound above holds for any ``q_j``). On the nash-intransitive paper shape every-10th with 30 warm steps ran
  2.6-2.9x faster than every step, and the default every-25th with 5 warm steps a further 2x, each time at a
  higher value and a smaller certificate (benchmarks/RESULTS.md, "P2's pessimistic solver").

``solve`` returns ``pi_hat``, the min-player's minimiser against it, ``h(pi_hat)`` and the per-context
values; tested against a brute-force max-min over dense simplex grids (tests/test_nash_pessimism.py).
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from algorithms.core import spd_solve
from algorithms.nash import preference_model as gp
from bandits import PAYOFFS, Instance
from bandits import validation as v
from bandits.policy import kl_divergence

LIPSCHITZ = {"identity": 0.25, "logit": 1.0}
_TINY = 1e-30


class PolicyPessimisticSolution(NamedTuple):
    log_pi: jax.Array        # the max-player's policy pi_hat [n_x, K]
    log_q: jax.Array         # the min-player's minimiser against pi_hat [n_x, K]
    value: jax.Array         # E_x h_x(pi_hat)
    context_value: jax.Array  # h_x(pi_hat) [n_x]
    certificate: jax.Array   # E_x [Psi_x(nu) - h_x(pi_hat)] >= the suboptimality of pi_hat (exact inner minimiser)


def _rows(chol_inv, mean, phi_x, first: bool):
    """``L^{-1} psi(mean, phi_b)`` (``first``) or ``L^{-1} psi(phi_a, mean)`` as rows ``[K, D]``."""
    m = jnp.broadcast_to(mean, phi_x.shape)
    psi = gp.pair_features(m, phi_x) if first else gp.pair_features(phi_x, m)
    return psi @ chol_inv.T


def _norm(vec):
    n = jnp.sqrt(jnp.sum(vec**2))
    return n, jnp.where(n > _TINY, vec / jnp.where(n > _TINY, n, 1.0), 0.0)


def objective(g_x, phi_x, log_pi0_x, chol_inv, radius, eta, log_p, log_q):
    """``f_x(p, q)`` of the module docstring for one context."""
    p, q = jnp.exp(log_p), jnp.exp(log_q)
    psi_bar = gp.pair_features(p @ phi_x, q @ phi_x) @ chol_inv.T
    return (p @ g_x @ q - radius * jnp.sqrt(jnp.sum(psi_bar**2))
            - eta * kl_divergence(log_p, log_pi0_x) + eta * kl_divergence(log_q, log_pi0_x))


def best_response(g_x, phi_x, log_pi0_x, chol_inv, radius, eta, log_p, log_q_prev, inner: int, full: bool = True):
    """The min-player's multi-start majorize-minimize (module docstring): ``(log q, f_x(p, q))``; ``full``:
    from all ``K + 2`` starts, else from the previous minimiser and the plug-in best response only."""
    p = jnp.exp(log_p)
    c = p @ g_x
    rows = _rows(chol_inv, p @ phi_x, phi_x, first=True)   # psi_bar = rows^T q
    gram = rows @ rows.T                                     # ||psi_bar||^2 = q^T gram q
    k = g_x.shape[-1]
    plug_in = jax.nn.log_softmax(log_pi0_x - c / eta)
    starts = jnp.stack([log_q_prev, plug_in])
    if full:
        vertices = jnp.log(0.9 * jnp.eye(k, dtype=g_x.dtype) + 0.1 * jnp.exp(log_pi0_x)[None])
        starts = jnp.concatenate([starts, vertices])

    def mm(logits, _):
        q = jax.nn.softmax(logits)
        gq = jnp.sum(gram * q[None, :], axis=-1)   # gram @ q as a fused loop: XLA:CPU's dot is slow at these sizes
        n = jnp.sqrt(jnp.maximum(q @ gq, 0.0))
        pull = jnp.where(n > _TINY, gq / jnp.where(n > _TINY, n, 1.0), 0.0)   # rows @ (rows^T q / ||rows^T q||)
        return log_pi0_x - (c - radius * pull) / eta, None

    # the iterates are carried as logits, normalised once at the end: one exponential per entry and step
    ends = jax.nn.log_softmax(jax.vmap(lambda s: jax.lax.scan(mm, s, length=inner)[0])(starts))
    values = jax.vmap(lambda lq: objective(g_x, phi_x, log_pi0_x, chol_inv, radius, eta, log_p, lq))(ends)
    best = jnp.argmin(values)
    return ends[best], values[best]


def supergradient(g_x, phi_x, chol_inv, radius, log_p, log_q):
    """``s = G_hat q - r d/dp ||psi_bar(p, q)||_{Sigma^{-1}}`` (the entropy part is in the prox)."""
    p, q = jnp.exp(log_p), jnp.exp(log_q)
    rows = _rows(chol_inv, q @ phi_x, phi_x, first=False)  # psi_bar = rows^T p
    _, unit = _norm(rows.T @ p)
    return g_x @ q - radius * rows @ unit


def _fw_value(log_pi0_x, y_bar, c_bar, eta):
    """``Psi(nu) = eta log E_{pi0} exp(y_bar / eta) + c_bar``: the min-player's guaranteed value of a mixture."""
    return eta * jax.nn.logsumexp(log_pi0_x + y_bar / eta) + c_bar


def _line_search(log_pi0_x, y_bar, c_bar, dy, dc, top, eta, steps: int = 40):
    """``argmin_{gamma in [0, top]} Psi(y_bar + gamma dy, c_bar + gamma dc)`` by bisection on the
    (increasing) derivative ``<p_gamma, dy> + dc``."""
    def slope(gamma):
        return jax.nn.softmax(log_pi0_x + (y_bar + gamma * dy) / eta) @ dy + dc

    def bisect(bounds, _):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        up = slope(mid) > 0
        return (jnp.where(up, lo, mid), jnp.where(up, mid, hi)), None

    (lo, hi), _ = jax.lax.scan(bisect, (jnp.zeros_like(top), top), length=steps)
    return jnp.where(slope(top) <= 0, top, 0.5 * (lo + hi))


@partial(jax.jit, static_argnums=(7, 8, 9, 10))
def _solve(g, phi, log_pi0, d0, chol, radius, eta, outer: int, inner: int, restart_every: int, warm_inner: int):
    chol_inv = spd_solve.lower_inverse(chol)

    def context(g_x, phi_x, log_pi0_x):
        def atom(log_p, log_q_prev, full=True):
            log_q, _ = best_response(g_x, phi_x, log_pi0_x, chol_inv, radius, eta, log_p, log_q_prev,
                                     inner if full else warm_inner, full)
            y = supergradient(g_x, phi_x, chol_inv, radius, log_p, log_q)
            return log_q, y, eta * kl_divergence(log_q, log_pi0_x)

        def step(state, k):
            ys, cs, lam, log_q, y_bar, c_bar = state
            log_p = jax.nn.log_softmax(log_pi0_x + y_bar / eta)
            if restart_every == 1:
                log_q, y, c = atom(log_p, log_q)
            else:
                log_q, y, c = jax.lax.cond((k + 1) % restart_every == 0, lambda: atom(log_p, log_q),
                                           lambda: atom(log_p, log_q, full=False))
            # The new atom is stored first (its weight is still 0, so it is never the away atom): reading the
            # buffer after the write lets XLA update it in place instead of copying it every step.
            ys, cs = ys.at[k + 1].set(y), cs.at[k + 1].set(c)
            # pairwise step: weight moves from the active atom worst against p to the new one
            scores = jnp.where(lam > 0, jnp.sum(ys * jnp.exp(log_p)[None, :], axis=-1) + cs, -jnp.inf)
            away = jnp.argmax(scores)
            dy, dc = y - ys[away], c - cs[away]
            gamma = _line_search(log_pi0_x, y_bar, c_bar, dy, dc, lam[away], eta)
            lam = lam.at[away].add(-gamma).at[k + 1].add(gamma)
            # the mixture is updated in place: recomputing lam @ ys reads all atoms again every step
            return (ys, cs, lam, log_q, y_bar + gamma * dy, c_bar + gamma * dc), None

        log_q0, y0, c0 = atom(log_pi0_x, log_pi0_x)
        ys = jnp.zeros((outer + 1, y0.shape[0]), y0.dtype).at[0].set(y0)
        cs = jnp.zeros(outer + 1, y0.dtype).at[0].set(c0)
        lam = jnp.zeros(outer + 1, y0.dtype).at[0].set(1.0)
        ys, cs, lam, log_q, _, _ = jax.lax.scan(step, (ys, cs, lam, log_q0, y0, c0), jnp.arange(outer))[0]
        y_bar, c_bar = lam @ ys, lam @ cs
        log_p = jax.nn.log_softmax(log_pi0_x + y_bar / eta)
        log_q, value = best_response(g_x, phi_x, log_pi0_x, chol_inv, radius, eta, log_p, log_q, inner)
        return log_p, log_q, value, _fw_value(log_pi0_x, y_bar, c_bar, eta)

    log_p, log_q, values, upper = jax.vmap(context)(g, phi, log_pi0)
    return PolicyPessimisticSolution(log_p, log_q, jnp.sum(d0 * values), values, jnp.sum(d0 * (upper - values)))


def solve(g: jax.Array, phi: jax.Array, log_pi0: jax.Array, d0: jax.Array, chol: jax.Array, radius, kl_coef,
          outer: int = 400, inner: int = 30, restart_every: int = 25, warm_inner: int = 5
          ) -> PolicyPessimisticSolution:
    """``argmax_p E_x min_q f_x(p, q)`` for the estimated payoff ``g [n_x, K, K]``, features ``phi
    [n_x, K, d]``, the Cholesky factor ``chol [D, D]`` of ``Sigma`` and ``radius = L_g beta`` (module
    docstring): ``outer`` Frank-Wolfe steps, ``inner`` MM steps per start where all starts run (every
    ``restart_every``-th step and the final evaluation), ``warm_inner`` where only the warm starts run.
    ``jit``/``vmap``-able (the four counts static)."""
    v.check_int("outer", outer, 1)
    v.check_int("inner", inner, 1)
    v.check_int("restart_every", restart_every, 1)
    v.check_int("warm_inner", warm_inner, 1)
    if chol.shape[-1] != gp.psi_dim(phi.shape[-1]):
        v.fail("chol", tuple(chol.shape), f"a [D, D] Cholesky factor with D = {gp.psi_dim(phi.shape[-1])}")
    dtype = g.dtype
    return _solve(g, phi, log_pi0, d0, chol, jnp.asarray(radius, dtype), jnp.asarray(kl_coef, dtype), outer, inner,
                  restart_every, warm_inner)


def policy_pessimistic_policy(instance: Instance, cs, payoff: str = "identity", outer: int = 400,
                              inner: int = 30, restart_every: int = 25, warm_inner: int = 5
                              ) -> PolicyPessimisticSolution:
    """P2's policy-level pessimistic max-min policy for the confidence set ``cs`` on ``theta`` (module
    docstring): ``G_hat = g(sigmoid(<theta_hat, psi>))``, ``r = L_g beta``."""
    v.check_choice("payoff", payoff, PAYOFFS)
    margins = gp.model_margins(instance, cs.center)
    g = jax.nn.sigmoid(margins) if payoff == "identity" else margins
    return solve(g, instance.phi, instance.log_pi0, instance.d0, cs.chol, LIPSCHITZ[payoff] * cs.beta,
                 instance.kl_coef, outer, inner, restart_every, warm_inner)


def policy_unilateral_coverage(instance: Instance, chol: jax.Array, log_pi: jax.Array) -> jax.Array:
    """``sup_{pi2} E_x ||psi_bar(x, pi, pi2)||_{Sigma^{-1}} = E_x max_b ||E_{a~pi} psi(x, a, b)||_{Sigma^{-1}}``
    (a convex function of ``pi2`` is largest at a vertex)."""
    chol_inv = spd_solve.lower_inverse(chol)
    per_x = jax.vmap(lambda phi_x, lp: jnp.max(jnp.linalg.norm(
        _rows(chol_inv, jnp.exp(lp) @ phi_x, phi_x, first=True), axis=-1)))(instance.phi, log_pi)
    return jnp.sum(instance.d0 * per_x)
