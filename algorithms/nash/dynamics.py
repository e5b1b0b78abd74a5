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

Step-size condition [D] (docs/theory.md §6 "General-preference and Nash methods"). Let ``R = max_{x,a}
(max_b G(x,a,b) - min_b G(x,a,b))`` be the payoff's range (``payoff_range``; ``R <= 1`` for the
probability payoff, ``R <= 2 max |margin|`` for the logit payoff). INPO is the mirror step
``pi_{t+1} = argmax_pi eta <G pi_t, pi> - eta tau KL(pi||pi_ref) - (1 - eta tau) KL(pi||pi_t)``; its
three-point identity, the antisymmetry of ``G - c/2`` (``<G u, u> = 0`` for ``sum u = 0``), the bound
``|<G u, w>| <= (R/2) ||u||_1 ||w||_1`` for zero-sum ``u, w`` and Pinsker give, per context,

    KL(pi*||pi_{t+1}) <= rho KL(pi*||pi_t),   rho = 1 - eta tau + eta^2 R^2 / (4 (1 - eta tau)),

so ``rho <= 1`` iff ``eta (R^2 + 4 tau^2) <= 4 tau`` (``max_stable_step``), with linear convergence to
``pi*`` below it. Nash-MD's mixture ``m_t = pi_t^mu`` follows INPO exactly, with step ``eta (1 - eta tau)``
on the coefficient ``tau / (1 - eta tau)`` (``m_{t+1} ∝ m_t^{1 - eta tau} pi_ref^{eta tau} exp(eta (1 -
eta tau) G m_t)``), so the same bound holds for ``KL(m~||m_t)`` when ``eta R^2 (1 - eta tau) <= 4 tau``,
i.e. ``eta <= (R - sqrt(R^2 - 16 tau^2)) / (2 tau R)`` (any ``eta <= 1/tau`` when ``R <= 4 tau``; the
large-step branch near ``1/tau`` is also covered, but its fixed point is far from ``pi*``); its fixed
point ``m~`` is the equilibrium at ``tau / (1 - eta tau)`` and ``pi~ = log_softmax(log m~ + eta G m~)``
(``nash_md_fixed_point``). The condition is sufficient and scale-tight (``eta ~ tau / R^2`` for
small ``tau``; a cyclic game of range ``R`` loses stability at a constant times that), and conservative
on a given instance. SPPO (``tau = 0``) has no last-iterate contraction at any step (multiplicative
weights cycles on a cyclic game); its guarantee is Hedge's regret bound on the average iterate
``pi_bar_T = (1/T) sum_{t<T} pi_t``: ``max_a G(a, pi_bar_T) - c/2 <= max_a log(1/pi_0(a)) / (eta T) + eta (max G
- min G)^2 / 8`` (``log K / (eta T)`` from a uniform start) at every step, so it needs no cap
(``max_stable_step = inf``).

``step_rule`` of the trajectories (``run_exact``, ``run_sampled``): ``'stable'`` (default) uses
``min(step, max_stable_step)`` (``stable_step``), with the tensor's own ``R`` for the exact updates and
the a-priori ``R = 1`` for the sampled ones (they learn from labels of ``P`` in ``[0, 1]``); ``'fixed'``
is the papers' constant step as given (only ``step * kl_coef <= 1`` is checked).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from algorithms.core import spd_solve
from algorithms.nash.offline import solve_game
from bandits import Instance, PreferenceData, payoff_matrices, sample_preference_data
from bandits import validation as v

METHODS = ("sppo", "nash_md", "inpo", "ipo")
STEP_RULES = ("stable", "fixed")


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


def payoff_range(g: jax.Array) -> jax.Array:
    """``R = max_{x,a} (max_b G(x,a,b) - min_b G(x,a,b))`` (module docstring)."""
    return jnp.max(jnp.max(g, axis=-1) - jnp.min(g, axis=-1))


def max_stable_step(method: str, kl_coef, payoff_range):
    """The largest step of the contraction condition (module docstring): ``4 tau / (R^2 + 4 tau^2)`` for
    INPO, ``(R - sqrt(R^2 - 16 tau^2)) / (2 tau R)`` for Nash-MD (``1 / tau`` when ``R <= 4 tau``),
    ``inf`` for SPPO, IPO (a best response, no step) and ``tau = 0`` (Nash-MD and INPO are then SPPO).
    ``jit``-able in ``kl_coef`` and ``payoff_range``."""
    v.check_choice("method", method, METHODS)
    tau = jnp.asarray(kl_coef, jnp.result_type(float))
    r = jnp.asarray(payoff_range, tau.dtype)
    positive = tau > 0
    safe_tau = jnp.where(positive, tau, 1.0)
    if method == "inpo":
        bound = 4.0 * safe_tau / (r**2 + 4.0 * safe_tau**2)
    elif method == "nash_md":
        disc = r**2 - 16.0 * safe_tau**2
        small = (r - jnp.sqrt(jnp.maximum(disc, 0.0))) / (2.0 * safe_tau * jnp.where(disc > 0, r, 1.0))
        bound = jnp.where(disc > 0, small, 1.0 / safe_tau)
    else:
        return jnp.asarray(jnp.inf, tau.dtype)
    return jnp.where(positive, bound, jnp.inf)


def contraction_factor(step, kl_coef, payoff_range):
    """INPO's ``rho = 1 - eta tau + eta^2 R^2 / (4 (1 - eta tau))`` (module docstring; ``eta tau < 1``)."""
    w = step * kl_coef
    return 1.0 - w + step**2 * payoff_range**2 / (4.0 * (1.0 - w))


def stable_step(method: str, step, kl_coef, payoff_range, step_rule: str = "stable"):
    """The step a trajectory uses: ``min(step, max_stable_step)`` (``'stable'``) or ``step`` (``'fixed'``)."""
    if v.check_choice("step_rule", step_rule, STEP_RULES) == "fixed":
        return step
    return jnp.minimum(step, max_stable_step(method, kl_coef, payoff_range))


def nash_md_fixed_point(g: jax.Array, log_ref: jax.Array, d0: jax.Array, step, kl_coef, tol=None,
                        max_iter: int = 20000) -> jax.Array:
    """Nash-MD's fixed point ``pi~ = log_softmax(log m~ + eta G m~)`` with ``m~`` the equilibrium of the game
    ``g`` at KL coefficient ``tau / (1 - eta tau)`` (module docstring; ``eta tau < 1``)."""
    w = step * kl_coef
    mix = solve_game(g, log_ref, d0, kl_coef / (1.0 - w), tol, max_iter).log_p
    return jax.nn.log_softmax(mix + step * payoff_against(g, mix), axis=-1)


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
              init: jax.Array | None = None, step_rule: str = "stable") -> jax.Array:
    """``iterations`` exact updates from ``init`` (default ``log_ref``); the trajectory
    ``[iterations, n_x, K]`` (entry ``t`` is ``pi_{t+1}``). ``step_rule='stable'`` caps the step at
    ``max_stable_step`` for the range of ``g`` (module docstring)."""
    _check(method, step, kl_coef)
    v.check_int("iterations", iterations, 1)
    step = stable_step(method, step, kl_coef, payoff_range(g), step_rule)
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
                ridge=1e-3, init: jax.Array | None = None, step_rule: str = "stable") -> jax.Array:
    """``iterations`` sampled updates (iteration ``t`` uses ``fold_in(key, t)``); the trajectory
    ``[iterations, n_x, K]``, entry ``t`` after ``(t + 1) batch`` queries. ``step_rule='stable'`` caps the
    step at ``max_stable_step`` for the a-priori range ``R = 1`` of a probability (module docstring)."""
    _check(method, step, instance.kl_coef)
    v.check_int("iterations", iterations, 1)
    v.check_int("batch", batch, 1)
    step = stable_step(method, step, instance.kl_coef, 1.0, step_rule)
    start = instance.log_pi0 if init is None else init

    def body(log_pi, t):
        nxt = sampled_step(jax.random.fold_in(key, t), instance, method, log_pi, step, batch, ridge)
        return nxt, nxt

    return jax.lax.scan(body, start, jnp.arange(iterations))[1]


def exact_trajectory(instance: Instance, method: str, step, iterations: int, payoff: str = "identity",
                     step_rule: str = "stable") -> jax.Array:
    """``run_exact`` on the instance's true payoff tensor, from ``pi0``."""
    return run_exact(method, payoff_matrices(instance, payoff), instance.log_pi0, step, instance.kl_coef,
                     iterations, step_rule=step_rule)
