"""Best-of-n, statistical rejection sampling (RSO) and P1's multi-step rejection sampling, exactly.

All three turn draws from a proposal into (approximate) draws from a reward-tilted policy. On a finite
action set every law involved is computed exactly, and the samplers simulate the actual mechanism so
the two can be checked against each other (docs/theory.md §2.5 item 2, §6, §9.1 item 12, §9.2 invariant 12).

**Best-of-n** (RAFT / BoN; docs/theory.md §6). Draw ``a_1..a_n ~ pi0(.|x)`` i.i.d. and keep the one with the
highest reward. Ties are broken by the *lowest action index*, i.e. actions are totally ordered by
``(r(x,a), -a)`` and BoN returns the maximum of the draws in that order. With
``F(a) = pi0({b : b ⪯ a})`` and ``F_<(a) = F(a) - pi0(a)`` the exact law is

    P_BoN(a|x) = F(a)^n - F_<(a)^n.

**Statistical rejection sampling** (RSO; Liu et al. 2024, "Statistical Rejection Sampling Improves
Preference Optimization", ICLR 2024). Draw ``n`` candidates from the proposal ``pi0`` and accept each
independently with probability ``exp((r(x,a) - M(x)) / kl_coef)``:

- ``max_reward="exact"``: ``M(x) = max_{a in supp pi0} r(x,a)``. Accepted samples are i.i.d. from the
  Gibbs policy ``pi0 exp(r/kl_coef) / Z`` and each candidate is accepted with probability
  ``E_{pi0} exp((r - M)/kl_coef) = Z(x) exp(-M(x)/kl_coef)`` (``exact_acceptance_rate``).
- ``max_reward="empirical"``: ``M(x) = max_j r(x, a_j)`` over the drawn candidates (RSO's practical
  rule; at least one candidate is always accepted). The pooled accepted law
  ``E[N_a] / E[N]`` (``N_a`` = accepted copies of ``a``) is then only approximately Gibbs:

      E[N_a] / n = pi0(a) c(a),   c(a) = E[ exp( min(0, r(a) - M') / kl_coef ) ],

  where ``M'`` is the maximum reward of the other ``n - 1`` candidates, whose law is the best-of-(n-1)
  law. Since ``c(a) exp(-(r(a) - M)/kl_coef) = E exp((M - max(r(a), M'))/kl_coef)`` is non-increasing
  in ``r(a)``, the empirical-M law is the Gibbs policy reweighted towards *low*-reward actions: its
  expected reward is at most Gibbs's (Chebyshev's association inequality), it equals ``pi0`` at
  ``n = 1`` and tends to Gibbs as ``n -> inf``. ``accepted_law`` computes it exactly.

**Multi-step rejection sampling** (P1 = Xiong et al., ICML 2024, §2.5 "multi-step rejection
sampling"; docs/theory.md §2.5 item 2). For a schedule ``kl_coefs = (eta_1 > eta_2 > ... > eta_N = eta)``
and ``1/eta_0 := 0``, stage ``k`` proposes from the previous stage's exact accepted law ``pi_{k-1}``
(``pi_0 = pi0``) and accepts with probability ``exp((r - M) (1/eta_k - 1/eta_{k-1}))``, targeting

    pi_k ∝ pi_{k-1} exp(r (1/eta_k - 1/eta_{k-1})).

With exact ``M``, ``pi_k`` is the Gibbs policy at ``eta_k`` and the stage acceptance rates telescope:
``prod_k alpha_k = E_{pi0} exp((r - M)/eta)`` (the one-step rate) and every ``alpha_k`` is at least
that (invariant 12). With empirical ``M``, ``pi_{k-1}`` is the previous stage's exact (biased)
empirical-M law, i.e. the model a perfectly trained stage would produce, so the bias compounds the
way it would in practice.

Every function works on one instance (``[n_x, K]`` arrays) and one key; batch with ``jax.vmap``.
Sample counts are static (they fix shapes); ``kl_coef``/``kl_coefs`` may be traced. Acceptance is
decided in log space, ``log u < (r - M) / kl_coef`` (docs/theory.md §9.1 item 12), so a tiny ``kl_coef``
never overflows. Bad arguments raise ``ValueError`` naming the field, the value and what is allowed;
value checks run on concrete (non-traced) inputs only.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bandits import validation as v

MAX_REWARD_MODES = ("exact", "empirical")


class RejectionSample(NamedTuple):
    """One-step rejection sampling output (one instance, one key).

    actions ``[n_x, n]`` int32 candidates; accepted ``[n_x, n]`` bool; acceptance_rate ``[n_x]``
    fraction of candidates accepted; max_reward ``[n_x]`` the ``M`` used; n_proposals: total number
    of candidates drawn over all contexts (``n_x * n``, int32 scalar).
    """

    actions: jax.Array
    accepted: jax.Array
    acceptance_rate: jax.Array
    max_reward: jax.Array
    n_proposals: jax.Array


class MultiStepSample(NamedTuple):
    """Multi-step rejection sampling output (one instance, one key), ``N`` stages.

    actions / accepted ``[n_x, n_N]``: the last stage's candidates and accept mask (the output
    samples); stage_acceptance_rate ``[N, n_x]``: empirical fraction accepted per stage;
    stage_expected_acceptance_rate ``[N, n_x]``: the exact expected rate of each stage;
    stage_max_reward ``[N, n_x]``: the ``M`` used per stage; n_proposals: total number of candidates
    drawn over all contexts and stages (``n_x * sum_k n_k``, int32 scalar).
    """

    actions: jax.Array
    accepted: jax.Array
    stage_acceptance_rate: jax.Array
    stage_expected_acceptance_rate: jax.Array
    stage_max_reward: jax.Array
    n_proposals: jax.Array


class AcceptedLaw(NamedTuple):
    """Exact law of the pooled accepted samples, ``log_law [..., n_x, K]``, and the expected
    per-candidate acceptance rate ``acceptance_rate [..., n_x]``."""

    log_law: jax.Array
    acceptance_rate: jax.Array


# ---------------------------------------------------------------------------------------------
# Validation (concrete values only; shapes always)


def _check_policy_and_reward(log_pi0, reward) -> tuple[jax.Array, jax.Array]:
    log_pi0, reward = jnp.asarray(log_pi0), jnp.asarray(reward)
    if log_pi0.ndim != 2:
        raise ValueError(f"log_pi0 has shape {tuple(log_pi0.shape)}, which is not allowed: log_pi0 must "
                         "have shape [n_x, K] (one instance; vmap for batches).")
    v.check_shape("reward", reward, log_pi0.shape)
    if v.is_concrete(reward) and not np.all(np.isfinite(np.asarray(reward))):
        raise ValueError("reward contains non-finite values, which is not allowed: rewards must be finite.")
    if v.is_concrete(log_pi0):
        lp = np.asarray(log_pi0)
        if np.any(np.isnan(lp)) or np.any(lp == np.inf):
            raise ValueError("log_pi0 contains NaN or +inf, which is not allowed: log_pi0 must hold "
                             "log-probabilities (-inf marks an action outside the support).")
        v.check_normalized_rows("log_pi0", lp)
    return log_pi0, reward


def _check_count(field: str, value: Any, static: bool) -> None:
    """A count >= 1: a Python int when it fixes a shape (``static``), else possibly a traced array."""
    if static:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            v.fail(field, value, "a Python integer >= 1 (static: it fixes the number of samples)")
        return
    if not isinstance(value, (jax.Array, np.ndarray)):
        v.check_int(field, value, 1)
        return
    if v.is_concrete(value):
        arr = np.asarray(value)
        if arr.ndim != 0 or not np.issubdtype(arr.dtype, np.integer) or arr < 1:
            v.fail(field, value, "an integer >= 1")


def _check_kl_coef(kl_coef) -> None:
    if v.is_concrete(kl_coef):
        if np.ndim(kl_coef) != 0:
            v.fail("kl_coef", kl_coef, "a scalar (one instance; vmap for sweeps)")
        v.check_float("kl_coef", kl_coef, low=0.0, low_open=True)


def _check_schedule(kl_coefs) -> jax.Array:
    allowed = ("a non-empty 1-D sequence of finite positive numbers, strictly decreasing "
               "(eta_1 > eta_2 > ... > eta_N = eta)")
    if all(v.is_concrete(leaf) for leaf in jax.tree_util.tree_leaves(kl_coefs)):
        arr = np.asarray(kl_coefs)
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.number):
            v.fail("kl_coefs", kl_coefs, allowed)
        arr = arr.astype(float)
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0) or np.any(np.diff(arr) >= 0):
            v.fail("kl_coefs", kl_coefs, allowed)
    kl_coefs = jnp.asarray(kl_coefs)
    if kl_coefs.ndim != 1 or kl_coefs.shape[0] == 0:
        raise ValueError(f"kl_coefs has shape {tuple(kl_coefs.shape)}, which is not allowed: kl_coefs "
                         f"must be {allowed}.")
    return kl_coefs


def _stage_counts(n_candidates, n_stages: int) -> tuple[int, ...]:
    if isinstance(n_candidates, (tuple, list)):
        if len(n_candidates) != n_stages:
            v.fail("n_candidates", n_candidates,
                   f"one integer >= 1 per stage ({n_stages} stages, the length of kl_coefs), or one integer")
        for n in n_candidates:
            v.check_int("n_candidates", n, 1)
        return tuple(int(n) for n in n_candidates)
    v.check_int("n_candidates", n_candidates, 1)
    return (int(n_candidates),) * n_stages


# ---------------------------------------------------------------------------------------------
# Helpers


def _log1mexp(x: jax.Array) -> jax.Array:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate at both ends (Maechler 2012)."""
    x = jnp.minimum(x, 0.0)
    near_zero = x > -math.log(2.0)
    safe_small = jnp.where(near_zero, x, -1.0)
    safe_large = jnp.where(near_zero, -1.0, x)
    return jnp.where(near_zero, jnp.log(-jnp.expm1(safe_small)), jnp.log1p(-jnp.exp(safe_large)))


def _support_max(log_q: jax.Array, reward: jax.Array) -> jax.Array:
    """Exact ``M(x) = max_{a in supp q} r(x, a)``, shape ``[n_x]``."""
    return jnp.max(jnp.where(log_q > -jnp.inf, reward, -jnp.inf), axis=-1)


def _inverse_cdf(log_q: jax.Array, u: jax.Array) -> jax.Array:
    """Actions ``[n_x, n]`` int32 with ``P(a) = q(a)`` from uniforms ``u [n_x, n]`` (inverse CDF).

    One uniform per draw (Gumbel-max needs K) and a much cheaper compile than ``random.categorical``.
    The CDF is pinned to +inf from the last supported action on, so rounding in the cumulative sum
    can never select an action outside the support.
    """
    index = jnp.broadcast_to(jnp.arange(log_q.shape[-1]), log_q.shape)
    last = jnp.max(jnp.where(log_q > -jnp.inf, index, 0), axis=-1, keepdims=True)
    cdf = jnp.cumsum(jnp.exp(log_q - jax.nn.logsumexp(log_q, axis=-1, keepdims=True)), axis=-1)
    cdf = jnp.where(index >= last, jnp.inf, cdf)
    return jnp.sum(cdf[:, None, :] <= u[:, :, None], axis=-1, dtype=jnp.int32)


def _draw(key: jax.Array, log_q: jax.Array, n: int) -> jax.Array:
    """``n`` i.i.d. actions per context from ``q``, shape ``[n_x, n]`` int32."""
    # Flat draws: XLA:CPU compiles 1-D threefry several times faster than 2-D or 3-D shapes.
    u = jax.random.uniform(key, (log_q.shape[0] * n,), dtype=log_q.dtype)
    return _inverse_cdf(log_q, u.reshape(log_q.shape[0], n))


def _best_of_n_log_law(log_q: jax.Array, reward: jax.Array, n) -> jax.Array:
    k = reward.shape[-1]
    neg_index = jnp.broadcast_to(-jnp.arange(k), reward.shape)
    # Ascending in the total order (reward, -index): worst first, so cumulative sums give F.
    order = jnp.lexsort((neg_index, reward), axis=-1)
    log_f = jax.lax.cumlogsumexp(jnp.take_along_axis(log_q, order, axis=-1), axis=log_q.ndim - 1)
    log_f_prev = jnp.concatenate([jnp.full_like(log_f[..., :1], -jnp.inf), log_f[..., :-1]], axis=-1)
    # F_< is the previous cumulative sum, not F - pi0: no cancellation.
    ratio = jnp.where(log_f > -jnp.inf, log_f_prev - jnp.where(log_f > -jnp.inf, log_f, 0.0), -jnp.inf)
    sorted_law = n * log_f + _log1mexp(n * ratio)
    return jnp.take_along_axis(sorted_law, jnp.argsort(order, axis=-1), axis=-1)


def _accepted_law(log_q, reward, inv_temp, n, empirical: bool) -> tuple[jax.Array, jax.Array]:
    """Exact pooled accepted law and log acceptance rate of one stage with proposal ``q``, tilt
    ``exp((r - M) inv_temp)`` and ``n`` candidates (``n`` matters only for the empirical ``M``)."""
    if empirical:
        log_max_law = _best_of_n_log_law(log_q, reward, jnp.maximum(n - 1, 1))
        gap = jnp.minimum(reward[:, :, None] - reward[:, None, :], 0.0)
        log_c = jax.nn.logsumexp(log_max_law[:, None, :] + gap * inv_temp, axis=-1)
        log_w = log_q + jnp.where(n > 1, log_c, 0.0)
    else:
        log_w = log_q + (reward - _support_max(log_q, reward)[:, None]) * inv_temp
    log_rate = jax.nn.logsumexp(log_w, axis=-1)
    return log_w - log_rate[:, None], log_rate


def _stage(key, log_q, reward, inv_temp, n: int, empirical: bool):
    # One flat uniform draw for proposals and acceptance: a single (cheaply compiled) RNG call.
    n_x = log_q.shape[0]
    u = jax.random.uniform(key, (2 * n_x * n,), dtype=reward.dtype).reshape(2, n_x, n)
    actions = _inverse_cdf(log_q, u[0])
    r = jnp.take_along_axis(reward, actions, axis=-1)
    m = jnp.max(r, axis=-1) if empirical else _support_max(log_q, reward)
    accepted = jnp.log(u[1]) < (r - m[:, None]) * inv_temp
    return actions, accepted, jnp.mean(accepted, axis=-1, dtype=r.dtype), m


def _inverse_temperature_increments(kl_coefs: jax.Array) -> jax.Array:
    inv = 1.0 / kl_coefs
    return jnp.concatenate([inv[:1], inv[1:] - inv[:-1]])


def _is_empirical(max_reward: str) -> bool:
    return v.check_choice("max_reward", max_reward, MAX_REWARD_MODES) == "empirical"


# ---------------------------------------------------------------------------------------------
# Best-of-n


def best_of_n_law(log_pi0: jax.Array, reward: jax.Array, n) -> jax.Array:
    """Exact log-law ``[n_x, K]`` of best-of-``n`` from ``pi0`` (docs/theory.md §6, "Best-of-n / RAFT").

    ``P(a|x) = F(a)^n - F_<(a)^n`` with ``F(a) = pi0({b : b ⪯ a})``, ``F_<(a) = F(a) - pi0(a)`` in
    the total order ``b ⪯ a  iff  r(b) < r(a), or r(b) = r(a) and b >= a``: among tied rewards the
    lowest action index wins (the rule ``sample_best_of_n`` uses). ``n >= 1`` may be traced. Cost
    ``O(n_x K log K)``.
    """
    log_pi0, reward = _check_policy_and_reward(log_pi0, reward)
    _check_count("n", n, static=False)
    return _best_of_n_log_law(log_pi0, reward, n)


def sample_best_of_n(key: jax.Array, log_pi0: jax.Array, reward: jax.Array, n: int) -> jax.Array:
    """Best-of-``n``: draw ``n`` actions per context from ``pi0``, return the highest-reward one
    (lowest index among tied rewards), shape ``[n_x]`` int32. ``n`` is static. Its law is
    ``best_of_n_law``."""
    log_pi0, reward = _check_policy_and_reward(log_pi0, reward)
    _check_count("n", n, static=True)
    actions = _draw(key, log_pi0, n)
    r = jnp.take_along_axis(reward, actions, axis=-1)
    is_best = r == jnp.max(r, axis=-1, keepdims=True)
    return jnp.min(jnp.where(is_best, actions, reward.shape[-1]), axis=-1).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# One-step statistical rejection sampling (RSO)


def exact_acceptance_rate(log_pi0: jax.Array, reward: jax.Array, kl_coef) -> jax.Array:
    """Per-context ``E_{a~pi0} exp((r(x,a) - M(x)) / kl_coef)`` with exact ``M = max_{supp pi0} r``,
    shape ``[n_x]`` (RSO, Liu et al. 2024; docs/theory.md §9.2 invariant 12). Equals
    ``Z(x) exp(-M(x)/kl_coef)``: the fraction of proposals one-step RSO accepts."""
    log_pi0, reward = _check_policy_and_reward(log_pi0, reward)
    _check_kl_coef(kl_coef)
    return jnp.exp(_accepted_law(log_pi0, reward, 1.0 / kl_coef, 1, empirical=False)[1])


def accepted_law(log_pi0: jax.Array, reward: jax.Array, kl_coef, *, max_reward: str = "exact",
                 n_candidates=None) -> AcceptedLaw:
    """Exact law of the samples one-step RSO accepts, pooled: ``E[N_a] / E[N]`` (module docstring).

    ``max_reward="exact"``: the Gibbs policy ``pi0 exp(r/kl_coef) / Z`` and ``exact_acceptance_rate``
    (``n_candidates`` is ignored). ``max_reward="empirical"``: ``pi0(a) c(a) / sum_b pi0(b) c(b)`` with
    ``c(a) = E exp(min(0, r(a) - M')/kl_coef)``, ``M'`` the best reward among ``n_candidates - 1`` other
    draws; the expected acceptance rate is ``sum_a pi0(a) c(a)``. Requires ``n_candidates`` (may be
    traced). Cost ``O(n_x K^2)``.
    """
    log_pi0, reward = _check_policy_and_reward(log_pi0, reward)
    _check_kl_coef(kl_coef)
    empirical = _is_empirical(max_reward)
    if empirical:
        if n_candidates is None:
            v.fail("n_candidates", None, 'an integer >= 1 when max_reward="empirical"')
        _check_count("n_candidates", n_candidates, static=False)
    log_law, log_rate = _accepted_law(log_pi0, reward, 1.0 / kl_coef, n_candidates, empirical)
    return AcceptedLaw(log_law, jnp.exp(log_rate))


def rejection_sample(key: jax.Array, log_pi0: jax.Array, reward: jax.Array, kl_coef, n_candidates: int,
                     max_reward: str = "exact") -> RejectionSample:
    """One-step statistical rejection sampling (RSO; Liu et al. 2024, ICLR 2024; docs/theory.md §6).

    Per context, draw ``n_candidates`` (static) actions from ``pi0`` and accept each independently iff
    ``log u < (r(x,a) - M(x)) / kl_coef`` with ``u ~ U[0,1)``. ``max_reward="exact"`` uses
    ``M = max_{supp pi0} r`` (accepted samples are i.i.d. Gibbs); ``"empirical"`` uses the maximum
    over the drawn candidates (RSO's rule; law given by ``accepted_law``).
    """
    log_pi0, reward = _check_policy_and_reward(log_pi0, reward)
    _check_kl_coef(kl_coef)
    _check_count("n_candidates", n_candidates, static=True)
    empirical = _is_empirical(max_reward)
    actions, accepted, rate, m = _stage(key, log_pi0, reward, 1.0 / kl_coef, n_candidates, empirical)
    total = jnp.asarray(log_pi0.shape[0] * n_candidates, jnp.int32)
    return RejectionSample(actions, accepted, rate, m, total)


# ---------------------------------------------------------------------------------------------
# Multi-step rejection sampling (P1 §2.5)


def _multistep_laws(log_pi0, reward, kl_coefs, counts, empirical):
    """Proposal and exact (log law, log rate) of every stage, as Python lists (N is static)."""
    increments = _inverse_temperature_increments(kl_coefs.astype(reward.dtype))
    proposals, laws, log_rates = [], [], []
    log_q = log_pi0
    for k, n in enumerate(counts):
        log_law, log_rate = _accepted_law(log_q, reward, increments[k], n, empirical)
        proposals.append(log_q)
        laws.append(log_law)
        log_rates.append(log_rate)
        log_q = log_law
    return proposals, laws, log_rates


def multistep_law(log_pi0: jax.Array, reward: jax.Array, kl_coefs, *, max_reward: str = "exact",
                  n_candidates=None) -> AcceptedLaw:
    """Exact per-stage accepted laws ``[N, n_x, K]`` and expected acceptance rates ``[N, n_x]`` of
    P1's multi-step rejection sampling (Xiong et al., ICML 2024, §2.5; docs/theory.md §2.5 item 2).

    Stage ``k`` proposes from stage ``k-1``'s accepted law (``pi0`` for ``k = 1``) and tilts by
    ``exp((r - M)(1/eta_k - 1/eta_{k-1}))``, ``1/eta_0 = 0``. With ``max_reward="exact"`` stage ``k``'s
    law is the Gibbs policy at ``eta_k`` and the rates satisfy ``prod_k alpha_k =
    exact_acceptance_rate(eta_N)``, ``alpha_k >= exact_acceptance_rate(eta_N)`` (docs/theory.md §9.2
    invariant 12). ``"empirical"`` needs ``n_candidates`` (an int, or one static int per stage).
    """
    log_pi0, reward = _check_policy_and_reward(log_pi0, reward)
    kl_coefs = _check_schedule(kl_coefs)
    empirical = _is_empirical(max_reward)
    n_stages = kl_coefs.shape[0]
    if empirical and n_candidates is None:
        v.fail("n_candidates", None, 'an integer >= 1 (or one per stage) when max_reward="empirical"')
    counts = _stage_counts(1 if n_candidates is None else n_candidates, n_stages)
    _, laws, log_rates = _multistep_laws(log_pi0, reward, kl_coefs, counts, empirical)
    return AcceptedLaw(jnp.stack(laws), jnp.exp(jnp.stack(log_rates)))


def multistep_rejection_sample(key: jax.Array, log_pi0: jax.Array, reward: jax.Array, kl_coefs,
                               n_candidates, max_reward: str = "exact") -> MultiStepSample:
    """P1's multi-step rejection sampling (Xiong et al., ICML 2024, §2.5; docs/theory.md §2.5 item 2).

    ``kl_coefs = (eta_1 > ... > eta_N = eta)`` (may be traced; ``N`` is static). Stage ``k`` draws
    ``n_k`` candidates per context from the exact law ``pi_{k-1}`` of stage ``k-1``'s accepted samples
    (``pi0`` for ``k = 1``; the Gibbs policy at ``eta_{k-1}`` when ``M`` is exact) and accepts each iff
    ``log u < (r - M)(1/eta_k - 1/eta_{k-1})``, ``1/eta_0 = 0``, with ``M`` exact or the stage's
    empirical maximum. ``n_candidates`` is one static int for every stage or a tuple with one per
    stage (``split_budget`` for a fixed total). Stage ``k`` uses the key ``fold_in(key, k)``. Returns
    the last stage's samples, per-stage empirical and exact acceptance rates, and the total number
    of proposals.
    """
    log_pi0, reward = _check_policy_and_reward(log_pi0, reward)
    kl_coefs = _check_schedule(kl_coefs)
    empirical = _is_empirical(max_reward)
    counts = _stage_counts(n_candidates, kl_coefs.shape[0])
    increments = _inverse_temperature_increments(kl_coefs.astype(reward.dtype))
    proposals, _, log_rates = _multistep_laws(log_pi0, reward, kl_coefs, counts, empirical)
    rates, maxima = [], []
    for k, (log_q, n) in enumerate(zip(proposals, counts)):
        actions, accepted, rate, m = _stage(jax.random.fold_in(key, k), log_q, reward, increments[k], n,
                                            empirical)
        rates.append(rate)
        maxima.append(m)
    total = jnp.asarray(log_pi0.shape[0] * sum(counts), jnp.int32)
    return MultiStepSample(actions, accepted, jnp.stack(rates), jnp.exp(jnp.stack(log_rates)),
                           jnp.stack(maxima), total)


def split_budget(total_proposals: int, n_stages: int) -> tuple[int, ...]:
    """Split a per-context proposal budget over ``n_stages`` stages: ``total // n_stages`` each, the
    remainder ``total % n_stages`` added to the *last* stage (the one whose samples are the output).

    Every stage needs at least one proposal, so ``total_proposals >= n_stages``.
    """
    v.check_int("n_stages", n_stages, 1)
    v.check_int("total_proposals", total_proposals, 1)
    if total_proposals < n_stages:
        v.fail("total_proposals", total_proposals, f"an integer >= n_stages = {n_stages} (one proposal per stage)")
    base, extra = divmod(int(total_proposals), int(n_stages))
    return (base,) * (n_stages - 1) + (base + extra,)


def equal_budget_comparison(key: jax.Array, log_pi0: jax.Array, reward: jax.Array, kl_coefs,
                            total_proposals: int, max_reward: str = "exact"
                            ) -> tuple[RejectionSample, MultiStepSample]:
    """One-step RSO at ``eta_N = kl_coefs[-1]`` and multi-step RS over ``kl_coefs`` with the same
    number of proposals per context (``total_proposals``, static).

    One-step draws all ``total_proposals`` candidates at once; multi-step splits them with
    ``split_budget`` (equal shares, remainder to the last stage), so both report the same
    ``n_proposals``. The two runs use the independent sub-keys ``split(key)``.
    """
    kl_coefs = _check_schedule(kl_coefs)
    counts = split_budget(total_proposals, kl_coefs.shape[0])
    k_one, k_multi = jax.random.split(key)
    one = rejection_sample(k_one, log_pi0, reward, kl_coefs[-1], total_proposals, max_reward)
    multi = multistep_rejection_sample(k_multi, log_pi0, reward, kl_coefs, counts, max_reward)
    return one, multi
