"""Exact laws of the rejection-sampling pairings used in practice (P1 §2.5 / RLHFlow; docs/theory.md §2.4(c)).

Practice draws ``k`` responses from the current policy ``pi``, ranks them by the current reward
estimate and labels a pair of them: best against worst (``max_min``, RLHFlow's default with
``k = 4``), best against a uniformly random other one (``max_random``), best against the second best
(``best_second``) or against the lower-quartile draw, rank ``1 + k // 4`` from the bottom
(``best_quartile``; rank 2 of 4). On a finite instance the
law of the chosen pair is computable exactly from the order statistics of ``k`` i.i.d. draws.

Sort the actions of context ``x`` by score (ties broken by action index) and let ``C(i)`` be the
probability of the ``i + 1`` lowest. For order statistics ``X_(r) <= X_(s)`` (``r < s``, ranks
from 1 = lowest) of ``k`` draws and sorted positions ``a <= b``::

    H(a, b) = P(X_(r) <= a, X_(s) <= b)
            = sum_{u >= r} sum_{w >= max(s, u)} k! / (u! (w-u)! (k-w)!) C(a)^u (C(b) - C(a))^(w-u) (1 - C(b))^(k-w)

(multinomial counts of draws in ``[0, a]``, ``(a, b]`` and above ``b``), ``H(a, b) = H(b, b)`` for
``a > b``, and the joint mass is the double difference of ``H``. The pair is ``(a1, a2) =
(X_(s), X_(r))``: the better-ranked response first. ``max_random`` is the uniform mixture over
``r = 1 .. k-1`` with ``s = k`` (the random other draw has a uniform rank among the others).
Equal draws give the pair ``(a, a)``, an uninformative comparison, as in practice when a model
repeats itself.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bandits import validation as v

PAIRINGS = ("max_min", "max_random", "best_second", "best_quartile")


def _order_statistic_cdf(cdf: jax.Array, k: int, r: int, s: int) -> jax.Array:
    """``H(a, b)`` above on the grid of sorted positions, ``cdf [..., K] -> [..., K, K]``."""
    ca = cdf[..., :, None]
    cb = cdf[..., None, :]
    mid = jnp.maximum(cb - ca, 0.0)
    top = jnp.maximum(1.0 - cb, 0.0)
    total = jnp.zeros(jnp.broadcast_shapes(ca.shape, cb.shape), cdf.dtype)
    for u in range(r, k + 1):
        for w in range(max(s, u), k + 1):
            coef = math.factorial(k) // (math.factorial(u) * math.factorial(w - u) * math.factorial(k - w))
            total = total + coef * ca**u * mid ** (w - u) * top ** (k - w)
    diag = jnp.diagonal(total, axis1=-2, axis2=-1)
    below = jnp.arange(cdf.shape[-1])[:, None] > jnp.arange(cdf.shape[-1])[None, :]
    return jnp.where(below, diag[..., None, :], total)


def order_statistic_pair_law(log_pi: jax.Array, score: jax.Array, k: int, r: int, s: int) -> jax.Array:
    """``log P(a1 = X_(s), a2 = X_(r))`` for ``k`` draws from ``pi`` ranked by ``score``, ``[n_x, K, K]``."""
    v.check_int("k", k, 2)
    if not (1 <= r < s <= k):
        v.fail("(r, s)", (r, s), f"ranks with 1 <= r < s <= k = {k}")
    order = jnp.argsort(score, axis=-1, stable=True)
    p_sorted = jnp.take_along_axis(jnp.exp(log_pi), order, axis=-1)
    cdf = jnp.cumsum(p_sorted, axis=-1)
    cdf = cdf / cdf[..., -1:]
    h = jnp.pad(_order_statistic_cdf(cdf, k, r, s), [(0, 0)] * (cdf.ndim - 1) + [(1, 0), (1, 0)])
    mass = h[..., 1:, 1:] - h[..., :-1, 1:] - h[..., 1:, :-1] + h[..., :-1, :-1]   # [.., low a, high b]
    mass = jnp.maximum(mass, 0.0)
    pair_sorted = jnp.swapaxes(mass, -1, -2)                                   # [.., a1 = high, a2 = low]
    inverse = jnp.argsort(order, axis=-1)
    pair = jnp.take_along_axis(pair_sorted, inverse[..., :, None], axis=-2)
    pair = jnp.take_along_axis(pair, inverse[..., None, :], axis=-1)
    return jnp.log(pair)


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
