"""Exact laws of the rejection-sampling pairings used in practice (P1 §2.5 / RLHFlow; docs/theory.md §2.4(c)).

Practice draws ``k`` responses from the current policy ``pi``, ranks them by the current reward
estimate and labels a pair of them: best against worst (``max_min``, RLHFlow's default with
``k = 4``), best against a uniformly random other one (``max_random``), best against the second best
(``best_second``) or against the lower-quartile draw, rank ``1 + k // 4`` from the bottom
(``best_quartile``; rank 2 of 4). On a finite instance the
law of the chosen pair is computable exactly from the order statistics of ``k`` i.i.d. draws.

Sort the actions of context ``x`` by score (ties broken by action index). For order statistics
``X_(r) <= X_(s)`` (``r < s``, ranks from 1 = lowest) of ``k`` draws and sorted positions ``a <= b``, count
the draws in five bins: below ``a`` (``n1``), at ``a`` (``n2``), strictly between (``n3``), at ``b``
(``n4``) and above ``b`` (``n5``). Then ``X_(r) = a`` and ``X_(s) = b`` (``a < b``) iff
``n1 < r <= n1 + n2`` and ``n1 + n2 + n3 < s <= n1 + n2 + n3 + n4``, so::

    P(X_(r) = a, X_(s) = b) = sum_{valid n} k! / (n1! ... n5!) P_below^n1 p_a^n2 P_between^n3 p_b^n4 P_above^n5

and for ``a = b`` (three bins: below, at ``a``, above) the condition is ``n1 < r`` and ``n1 + n2 >= s``.
Every term is positive, so the sum is taken in log space (``logsumexp`` over the compositions of ``k``;
the bin masses from cumulative ``logsumexp`` of the sorted probabilities): a pair of tiny but positive
mass keeps it (no cancellation to 0, so the marginals' ``KL(pi* || .)`` of the loop's query regret stay
finite). The pair is ``(a1, a2) = (X_(s), X_(r))``: the better-ranked response first. ``max_random`` is
the uniform mixture over ``r = 1 .. k-1`` with ``s = k`` (the random other draw has a uniform rank among
the others). Equal draws give the pair ``(a, a)``, an uninformative comparison, as in practice when a
model repeats itself.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bandits import validation as v

PAIRINGS = ("max_min", "max_random", "best_second", "best_quartile")


def _compositions(k: int, parts: int):
    """Every tuple of ``parts`` non-negative integers summing to ``k``."""
    if parts == 1:
        yield (k,)
        return
    for first in range(k + 1):
        for rest in _compositions(k - first, parts - 1):
            yield (first,) + rest


def _multinomial_log_sum(k: int, bins, valid) -> jax.Array:
    """``log sum_{n valid} k! / prod n_i! prod_i exp(n_i bins_i)`` over the compositions ``n`` of ``k`` into
    ``len(bins)`` parts (``bins``: log masses, broadcastable; a bin with ``n_i = 0`` contributes 1)."""
    terms = []
    for n in _compositions(k, len(bins)):
        if not valid(n):
            continue
        log_coef = math.lgamma(k + 1) - sum(math.lgamma(c + 1) for c in n)
        term = log_coef
        for count, log_mass in zip(n, bins):
            if count:
                term = term + count * log_mass
        terms.append(jnp.broadcast_to(term, jnp.broadcast_shapes(*(jnp.shape(m) for m in bins))))
    return jax.scipy.special.logsumexp(jnp.stack(terms), axis=0)


def _log_difference(big: jax.Array, small: jax.Array) -> jax.Array:
    """``log(e^big - e^small)`` for ``small <= big`` (``-inf`` when equal or both ``-inf``)."""
    gap = jnp.minimum(small - jnp.where(jnp.isfinite(big), big, 0.0), 0.0)
    return jnp.where(jnp.isfinite(big) & (gap < 0), big + jnp.log(-jnp.expm1(gap)), -jnp.inf)


def order_statistic_pair_law(log_pi: jax.Array, score: jax.Array, k: int, r: int, s: int) -> jax.Array:
    """``log P(a1 = X_(s), a2 = X_(r))`` for ``k`` draws from ``pi`` ranked by ``score``, ``[n_x, K, K]``."""
    v.check_int("k", k, 2)
    if not (1 <= r < s <= k):
        v.fail("(r, s)", (r, s), f"ranks with 1 <= r < s <= k = {k}")
    order = jnp.argsort(score, axis=-1, stable=True)
    lp = jnp.take_along_axis(log_pi, order, axis=-1)
    lp = lp - jax.scipy.special.logsumexp(lp, axis=-1, keepdims=True)
    n_actions = lp.shape[-1]
    at_or_below = jax.lax.cumlogsumexp(lp, axis=lp.ndim - 1)
    at_or_above = jax.lax.cumlogsumexp(lp, axis=lp.ndim - 1, reverse=True)
    pad = jnp.full(lp.shape[:-1] + (1,), -jnp.inf, lp.dtype)
    below = jnp.concatenate([pad, at_or_below[..., :-1]], axis=-1)     # log P(draw < i)
    above = jnp.concatenate([at_or_above[..., 1:], pad], axis=-1)      # log P(draw > i)
    # [.., low a, high b]; sum_{a < c < b} p_c = P(draw < b) - P(draw <= a)
    between = _log_difference(below[..., None, :], at_or_below[..., :, None])
    off = _multinomial_log_sum(
        k, (below[..., :, None], lp[..., :, None], between, lp[..., None, :], above[..., None, :]),
        lambda n: n[0] < r <= n[0] + n[1] and sum(n[:3]) < s <= sum(n[:4]))
    diag = _multinomial_log_sum(k, (below, lp, above), lambda n: n[0] < r and n[0] + n[1] >= s)
    rows = jnp.arange(n_actions)
    mass = jnp.where(rows[:, None] < rows[None, :], off, -jnp.inf)
    mass = jnp.where(rows[:, None] == rows[None, :], diag[..., :, None], mass)   # [.., low a, high b]
    pair_sorted = jnp.swapaxes(mass, -1, -2)                                   # [.., a1 = high, a2 = low]
    inverse = jnp.argsort(order, axis=-1)
    pair = jnp.take_along_axis(pair_sorted, inverse[..., :, None], axis=-2)
    return jnp.take_along_axis(pair, inverse[..., None, :], axis=-1)


def pairing_law(name: str, log_pi: jax.Array, score: jax.Array, k: int = 4) -> jax.Array:
    """The joint law ``[n_x, K, K]`` (log) of the named pairing (module docstring)."""
    v.check_choice("pairing", name, PAIRINGS)
    v.check_int("k", k, 2)
    if name == "max_min":
        return order_statistic_pair_law(log_pi, score, k, 1, k)
    if name == "best_second":
        return order_statistic_pair_law(log_pi, score, k, k - 1, k)
    if name == "best_quartile":
        return order_statistic_pair_law(log_pi, score, k, 1 + k // 4, k)
    laws = jnp.stack([order_statistic_pair_law(log_pi, score, k, r, k) for r in range(1, k)])
    return jax.scipy.special.logsumexp(laws, axis=0) - math.log(k - 1)
