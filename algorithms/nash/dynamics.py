"""Tabular Nash-learning dynamics, exact and sampled (docs/theory.md §6 "General-preference / Nash methods").

Notation: ``G(x, a, pi) = sum_b pi(b|x) G(x, a, b)`` for a payoff tensor ``G [n_x, K, K]``
(``bandits.payoff_matrices``: ``P`` for 'identity', the log-odds for 'logit'), ``tau = kl_coef`` the KL
coefficient of the game, ``eta = step`` the mirror-descent step and ``pi_ref = pi0``. Exact updates
(all in log space, rows renormalised by ``log_softmax``):

- SPPO (Wu et al. 2024) = multiplicative weights: ``pi_{t+1} ∝ pi_t exp(eta G(., pi_t))``;
- Nash-MD (Munos et al. 2023): ``pi_t^mu ∝ pi_t^{1 - eta tau} pi_ref^{eta tau}``, then
  ``pi_{t+1} ∝ pi_t^mu exp(eta G(., pi_t^mu))``;
- INPO (Zhang et al. 2024): ``pi_{t+1} ∝ pi_t^{1 - eta tau} pi_ref^{eta tau} exp(eta G(., pi_t))``;
- IPO (Azar et al. 2023) as the best-response oracle: ``BR(mu) ∝ pi_ref exp(G(., mu) / tau)``, the
  maximiser of ``G(pi, mu) - tau KL(pi || pi_ref)``; iterating ``pi_{t+1} = BR(pi_t)`` is self-play IPO.

With ``tau = 0`` Nash-MD and INPO are SPPO (docs/theory.md §9.2 invariant 17). The tau-regularized
equilibrium ``pi* ∝ pi_ref exp(G(., pi*) / tau)`` is an exact fixed point of INPO and of BR; Nash-MD's
fixed point solves ``pi ∝ pi_ref exp(G(., pi^mu) / tau)`` and so differs from ``pi*`` by ``O(eta tau)``
[D]; SPPO (no KL to ``pi_ref``) targets the unregularized game.

Every update has the form ``log pi_{t+1} = log_softmax(anchor + scale G(., sampler))`` with

    method    anchor                                        sampler     scale
    sppo      log pi_t                                      pi_t        eta
    nash_md   log pi_t^mu                                   pi_t^mu     eta
    inpo      (1 - eta tau) log pi_t + eta tau log pi_ref   pi_t        eta
    ipo       log pi_ref                                    pi_t        1 / tau

Sampled, loss-based versions (identity payoff: only binary labels are observed). Each iteration
draws ``batch`` comparisons ``x ~ d0, a, b ~ sampler(.|x), I ~ Bernoulli(P*(x, a, b))`` from the true
oracle and minimises, over a tabular ``f [n_x, K]``, the empirical square loss of the method, then
sets ``log pi_{t+1} = log_softmax(anchor + f)``:

- Nash-MD, INPO, IPO (pairwise, INPO's loss; IPO's loss with ``h = f(a_w) - f(a_l)`` is the same):
  ``sum_i (f(x_i, a_i) - f(x_i, b_i) - scale (I_i - 1/2))^2 + ridge ||f||^2``;
- SPPO (pointwise, SPPO's loss with the one-opponent win-rate estimate ``P_hat(a_i > pi_t) = I_i``):
  ``sum_i (f(x_i, a_i) - eta (I_i - 1/2))^2 + (f(x_i, b_i) - eta (1/2 - I_i))^2 + ridge ||f||^2``.

For pairs ``a, b`` drawn i.i.d. from ``pi``, the population minimiser (``ridge -> 0``) of the pairwise
loss is ``f = scale (P(., pi) - 1/2) + c(x)`` (the least-squares projection of an antisymmetric
target onto differences ``f(a) - f(b)``) and that of the pointwise loss is ``eta (P(., pi) - 1/2)``, so
both reproduce the exact updates [D]; ``population_statistics`` makes this checkable. The minimisers
are solved exactly (one ``K x K`` linear system per context, the weighted graph Laplacian of the
compared pairs), not by gradient steps. ``ridge`` keeps ``f = 0`` (the anchor) on uncompared actions.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from algorithms.core import spd_solve
from bandits import Instance, PreferenceData, payoff_matrices, sample_preference_data
from bandits import validation as v

METHODS = ("sppo", "nash_md", "inpo", "ipo")


def payoff_against(g: jax.Array, log_pi: jax.Array) -> jax.Array:
    """``G(x, a, pi) = sum_b pi(b|x) G(x, a, b)``, shape ``[n_x, K]``."""
    return jnp.einsum("xab,xb->xa", g, jnp.exp(log_pi))


def geometric_mixture(log_pi: jax.Array, log_ref: jax.Array, weight) -> jax.Array:
    """``pi^mu ∝ pi^{1 - weight} ref^{weight}``."""
    return jax.nn.log_softmax((1.0 - weight) * log_pi + weight * log_ref, axis=-1)


def _check(method, step, kl_coef) -> None:
    v.check_choice("method", method, METHODS)
    if v.is_concrete(step):
        v.check_float("step", step, low=0.0, low_open=True)
    if v.is_concrete(kl_coef):
        v.check_float("kl_coef", kl_coef, low=0.0)
    if method in ("nash_md", "inpo") and v.is_concrete(step) and v.is_concrete(kl_coef) \
            and float(step) * float(kl_coef) > 1.0:
        v.fail("step", step, f"<= 1 / kl_coef = {1.0 / float(kl_coef):g} for method={method!r} (the "
                             "mixture weight step * kl_coef must lie in [0, 1])")
    if method == "ipo" and v.is_concrete(kl_coef):
        v.check_float("kl_coef", kl_coef, low=0.0, low_open=True)


def update_parts(method: str, log_pi: jax.Array, log_ref: jax.Array, step, kl_coef):
    """``(anchor, log_sampler, scale)`` of the module docstring's table."""
    if method == "sppo":
        return log_pi, log_pi, step
    if method == "nash_md":
        mix = geometric_mixture(log_pi, log_ref, step * kl_coef)
        return mix, mix, step
    if method == "inpo":
        w = step * kl_coef
        return (1.0 - w) * log_pi + w * log_ref, log_pi, step
    return log_ref, log_pi, 1.0 / kl_coef


def exact_step(method: str, g: jax.Array, log_pi: jax.Array, log_ref: jax.Array, step, kl_coef) -> jax.Array:
    """One exact update of ``method`` on the payoff tensor ``g``."""
    _check(method, step, kl_coef)
    anchor, sampler, scale = update_parts(method, log_pi, log_ref, step, kl_coef)
    return jax.nn.log_softmax(anchor + scale * payoff_against(g, sampler), axis=-1)


def sppo_step(g, log_pi, step):
    """Multiplicative weights ``pi ∝ pi exp(eta G(., pi))`` (SPPO's exact update)."""
    return exact_step("sppo", g, log_pi, log_pi, step, 0.0)


def nash_md_step(g, log_pi, log_ref, step, kl_coef):
    return exact_step("nash_md", g, log_pi, log_ref, step, kl_coef)


def inpo_step(g, log_pi, log_ref, step, kl_coef):
    return exact_step("inpo", g, log_pi, log_ref, step, kl_coef)


def ipo_best_response(g: jax.Array, log_mu: jax.Array, log_ref: jax.Array, kl_coef) -> jax.Array:
    """``argmax_pi G(pi, mu) - tau KL(pi || ref) = log_softmax(log ref + G(., mu) / tau)``."""
    return exact_step("ipo", g, log_mu, log_ref, 1.0, kl_coef)


def run_exact(method: str, g: jax.Array, log_ref: jax.Array, step, kl_coef, iterations: int,
              init: jax.Array | None = None) -> jax.Array:
    """``iterations`` exact updates from ``init`` (default ``log_ref``); the trajectory
    ``[iterations, n_x, K]`` (entry ``t`` is ``pi_{t+1}``)."""
    _check(method, step, kl_coef)
    v.check_int("iterations", iterations, 1)
    start = log_ref if init is None else init

    def body(log_pi, _):
        nxt = exact_step(method, g, log_pi, log_ref, step, kl_coef)
        return nxt, nxt

    return jax.lax.scan(body, start, length=iterations)[1]


# ---- sampled, loss-based versions ----

class PairStatistics(NamedTuple):
    """Sufficient statistics of the square losses: ``weight[x, a, b]`` (number of comparisons of
    ``(a, b)`` in context ``x``) and ``target[x, a, b]`` (sum of their targets)."""

    weight: jax.Array
    target: jax.Array


def sample_statistics(x, a, b, target, mask, n_x: int, n_actions: int) -> PairStatistics:
    """Scatter-add comparisons ``(x_i, a_i, b_i, target_i)`` (valid rows only) into ``PairStatistics``."""
    w = jnp.where(mask, 1.0, 0.0).astype(target.dtype)
    zeros = jnp.zeros((n_x, n_actions, n_actions), target.dtype)
    return PairStatistics(zeros.at[x, a, b].add(w), zeros.at[x, a, b].add(w * target))


def population_statistics(p: jax.Array, log_sampler: jax.Array, d0: jax.Array, scale, batch) -> PairStatistics:
    """Expected statistics of ``batch`` comparisons ``a, b ~ sampler`` i.i.d. with targets
    ``scale (I - 1/2)``, ``I ~ Bernoulli(p[x, a, b])``: weight ``batch d0(x) pi(a) pi(b)``."""
    pi = jnp.exp(log_sampler)
    weight = batch * d0[:, None, None] * pi[:, :, None] * pi[:, None, :]
    return PairStatistics(weight, weight * scale * (p - 0.5))


def pairwise_regression(stats: PairStatistics, ridge) -> jax.Array:
    """``argmin_f sum (f(a) - f(b) - target)^2 + ridge ||f||^2`` per context: ``(L + ridge I) f = r``
    with the graph Laplacian ``L = diag(W 1 + W^T 1) - W - W^T`` and ``r = T 1 - T^T 1``."""
    w, t = stats
    k = w.shape[-1]
    lap = jax.vmap(jnp.diag)(w.sum(-1) + w.sum(-2)) - w - jnp.swapaxes(w, -1, -2)
    rhs = t.sum(-1) - t.sum(-2)
    return jax.vmap(spd_solve.spd_solve)(lap + ridge * jnp.eye(k, dtype=w.dtype)[None], rhs)


def pointwise_regression(stats: PairStatistics, ridge) -> jax.Array:
    """``argmin_f sum_i (f(a_i) - target_i)^2 + (f(b_i) + target_i)^2 + ridge ||f||^2``:
    ``f = (T 1 - T^T 1) / (W 1 + W^T 1 + ridge)``."""
    w, t = stats
    return (t.sum(-1) - t.sum(-2)) / (w.sum(-1) + w.sum(-2) + ridge)


def update_from_statistics(method: str, stats: PairStatistics, log_pi: jax.Array, log_ref: jax.Array,
                           step, kl_coef, ridge) -> jax.Array:
    """``log_softmax(anchor + f)`` with ``f`` the method's loss minimiser on ``stats``."""
    anchor, _, _ = update_parts(method, log_pi, log_ref, step, kl_coef)
    f = pointwise_regression(stats, ridge) if method == "sppo" else pairwise_regression(stats, ridge)
    return jax.nn.log_softmax(anchor + f, axis=-1)


def update_from_data(method: str, instance: Instance, data: PreferenceData, log_pi: jax.Array, step,
                     ridge=1e-3) -> jax.Array:
    """``log_softmax(anchor + f)`` with ``f`` the method's square-loss minimiser on the comparisons ``data``
    (targets ``scale (I_i - 1/2)``, ``I_i = data.y``; reference ``instance.log_pi0``, ``tau =
    instance.kl_coef``). ``sampled_step`` feeds it fresh comparisons from the method's sampler; with
    ``method='ipo'`` and ``log_pi = pi0`` on a fixed data set it is offline IPO, the exact tabular minimiser
    of IPO's loss on those pairs (Azar et al. 2023)."""
    _check(method, step, instance.kl_coef)
    _, _, scale = update_parts(method, log_pi, instance.log_pi0, step, instance.kl_coef)
    target = scale * (data.y.astype(log_pi.dtype) - 0.5)
    stats = sample_statistics(data.x, data.a1, data.a2, target, data.mask, *log_pi.shape)
    return update_from_statistics(method, stats, log_pi, instance.log_pi0, step, instance.kl_coef, ridge)


def sampled_step(key: jax.Array, instance: Instance, method: str, log_pi: jax.Array, step, batch: int,
                 ridge=1e-3) -> jax.Array:
    """One sampled update: ``batch`` fresh comparisons from the sampler, labels from the true oracle
    of ``instance`` (reference ``instance.log_pi0``, ``tau = instance.kl_coef``; ``update_from_data``)."""
    _check(method, step, instance.kl_coef)
    v.check_int("batch", batch, 1)
    _, sampler, _ = update_parts(method, log_pi, instance.log_pi0, step, instance.kl_coef)
    data = sample_preference_data(key, instance, sampler, sampler, batch)
    return update_from_data(method, instance, data, log_pi, step, ridge)


def run_sampled(key: jax.Array, instance: Instance, method: str, step, iterations: int, batch: int,
                ridge=1e-3, init: jax.Array | None = None) -> jax.Array:
    """``iterations`` sampled updates (iteration ``t`` uses ``fold_in(key, t)``); the trajectory
    ``[iterations, n_x, K]``, entry ``t`` after ``(t + 1) batch`` queries."""
    _check(method, step, instance.kl_coef)
    v.check_int("iterations", iterations, 1)
    v.check_int("batch", batch, 1)
    start = instance.log_pi0 if init is None else init

    def body(log_pi, t):
        nxt = sampled_step(jax.random.fold_in(key, t), instance, method, log_pi, step, batch, ridge)
        return nxt, nxt

    return jax.lax.scan(body, start, jnp.arange(iterations))[1]


def exact_trajectory(instance: Instance, method: str, step, iterations: int, payoff: str = "identity"
                     ) -> jax.Array:
    """``run_exact`` on the instance's true payoff tensor, from ``pi0``."""
    return run_exact(method, payoff_matrices(instance, payoff), instance.log_pi0, step, instance.kl_coef,
                     iterations)
