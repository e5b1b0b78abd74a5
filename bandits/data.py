"""Preference data: fixed-shape arrays sampled from a pair of policies (docs/theory.md §1.4; docs/design.md §2-3).

Comparison ``i`` is drawn as ``x ~ d0``, ``a1 ~ pi1(.|x)``, ``a2 ~ pi2(.|x)``, ``y ~ Bernoulli(P(x,a1,a2))``,
from four uniforms ``(u_x, u_1, u_2, u_y)`` that are a function of the key and of ``i`` alone
(``comparison_uniforms``: counter-based, Threefry-2x32 of the counter ``(i, j)``, Salmon et al., SC 2011);
each draw is the inverse CDF of its law at its uniform (``x = min{j : F_d0(j) > u_x}``, likewise the
actions, ``y = 1[u_y < P]``; ``search_rows``). Four uniforms per comparison, instead of one Gumbel per
context and per action of a Gumbel-max categorical, is what keeps sampling cheap beside the estimators;
drawing them in bulk by counter, instead of from a key derived per comparison, and bisecting the long
CDFs (128 contexts), instead of comparing ``u`` with every entry, is what keeps it cheap at 16384
comparisons (benchmarks/RESULTS.md, the profile of the offline sweep).
Hence:

- nested prefixes: the first ``n`` comparisons of a stream of length ``N >= n`` are exactly the data
  set of size ``n`` drawn with the same key, so growing sample sizes come from one stream;
- common random numbers: two policy pairs compared on one key see the same contexts and the same
  label uniforms, and their actions are coupled monotonically (equal wherever the two CDFs put the
  uniform in the same action, so close policies draw mostly the same actions).

``mask`` marks valid rows so that buffers keep a fixed shape (``with_size`` masks a prefix).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.extend.random import threefry_2x32
from jax.scipy.special import logsumexp

from bandits.instance import Instance
from bandits.preferences import labels_from_probability

# Rows up to this length are searched by comparing every entry, longer ones by bisection (search_rows).
COMPARE_ALL_MAX = 64


class PreferenceData(NamedTuple):
    x: jax.Array      # [n] int32 context indices
    a1: jax.Array     # [n] int32 first action
    a2: jax.Array     # [n] int32 second action
    y: jax.Array      # [n] int32, 1 if a1 preferred to a2
    mask: jax.Array   # [n] bool, valid rows

    @property
    def capacity(self) -> int:
        return self.x.shape[-1]


def comparison_uniforms(key: jax.Array, index: jax.Array, dtype=jnp.float32) -> jax.Array:
    """The uniforms ``(u_x, u_1, u_2, u_y)`` of comparison ``index`` (shape ``index.shape + (4,)``), in ``[0, 1)``.

    Counter-based: word pair ``j`` of comparison ``i`` is ``Threefry2x32_k(i, j)`` (``k`` the key's two
    32-bit words), so the uniforms of comparison ``i`` depend on ``(key, i)`` only and any set of indices
    is drawn in one bulk hash, in any order, with no key derived per comparison. A float64 uniform takes
    the top 52 bits of a 64-bit word made of one pair, ``u = (w >> 12) 2^-52``; a float32 one the top 23
    bits of a 32-bit word, ``u = (w >> 9) 2^-23`` (the mantissa construction of ``jax.random.uniform``).
    Keys of another PRNG implementation than Threefry fall back to ``fold_in(key, i)`` per comparison.
    """
    shape = jnp.shape(index)
    flat = jnp.ravel(index).astype(jnp.uint32)
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    if data.shape != (2,):
        draw = lambda i: jax.random.uniform(jax.random.fold_in(key, i), (4,), dtype)
        return jax.vmap(draw)(flat).reshape(shape + (4,))
    wide = jnp.dtype(dtype).itemsize == 8
    pairs = 4 if wide else 2
    counter = jnp.arange(pairs, dtype=jnp.uint32)
    x0 = jnp.repeat(flat, pairs)
    x1 = jnp.tile(counter, flat.shape[0])
    out = threefry_2x32(data.astype(jnp.uint32), jnp.concatenate([x0, x1]))
    y0, y1 = out[:x0.shape[0]], out[x0.shape[0]:]
    if wide:
        word = (y0.astype(jnp.uint64) << 32) | y1.astype(jnp.uint64)
        u = (word >> 12).astype(jnp.float64) * 2.0 ** -52
    else:
        words = jnp.stack([y0, y1], axis=-1).reshape(-1)
        u = (words >> 9).astype(jnp.float32) * jnp.float32(2.0 ** -23)
    return u.astype(dtype).reshape(shape + (4,))


def inverse_cdf(probs: jax.Array, u: jax.Array) -> jax.Array:
    """``min{j : sum_{k<=j} p_k > u}`` per row of ``probs [..., K]`` at ``u [...]``, as int32.

    Rows are renormalised first, and the result is clipped to ``K - 1`` in case rounding leaves the
    last cumulative sum below ``u``. An action of probability zero is never drawn (its cumulative sum
    equals its predecessor's, which already exceeds ``u`` if the search reached it).
    """
    return search_cdf(normalized_cdf(probs), u)


def normalized_cdf(probs: jax.Array) -> jax.Array:
    """``cumsum(p) / sum(p)`` along the last axis."""
    cdf = jnp.cumsum(probs, axis=-1)
    return cdf / cdf[..., -1:]


def search_cdf(cdf: jax.Array, u: jax.Array) -> jax.Array:
    """``inverse_cdf`` from precomputed rows ``cdf [..., K]`` (``normalized_cdf``), broadcast against ``u``.

    Each draw searches its own row by index (``search_rows``): rows shared by many draws are not copied."""
    lead = cdf.shape[:-1]
    rows = jnp.broadcast_to(jnp.arange(math.prod(lead), dtype=jnp.int32).reshape(lead), jnp.shape(u))
    return search_rows(cdf.reshape(-1, cdf.shape[-1]), jnp.ravel(rows), jnp.ravel(u)).reshape(jnp.shape(u))


def search_rows(table: jax.Array, rows: jax.Array, u: jax.Array) -> jax.Array:
    """``min(#{k : table[rows_i, k] <= u_i}, K - 1)`` for non-decreasing rows of ``table [R, K]``, as int32.

    A row of at most ``COMPARE_ALL_MAX`` entries is gathered and compared entry by entry (vectorised, the
    faster on CPU for short rows); a longer one is bisected on the invariant
    ``table[r, lo - 1] <= u < table[r, hi]`` (``lo = 0``, ``hi = K`` at the start), ``ceil(log2(K + 1))``
    halvings of one gather each, ``O(log K)`` work per draw instead of ``O(K)``. Both give the same
    index. The samplers call it with one CDF per context (``rows = x``), or one row (``rows = 0``).
    """
    k = table.shape[-1]
    if k <= COMPARE_ALL_MAX:
        count = jnp.sum(table[rows] <= u[..., None], axis=-1)
        return jnp.minimum(count, k - 1).astype(jnp.int32)
    rows = jnp.asarray(rows, jnp.int32)   # a 2-D gather: a flat index rows * K + k overflows int32 for big tables
    lo = jnp.zeros(jnp.shape(u), jnp.int32)
    hi = jnp.full(jnp.shape(u), k, jnp.int32)
    for _ in range(k.bit_length()):
        mid = (lo + hi) // 2
        right = table[rows, jnp.minimum(mid, k - 1)] <= u
        active = lo < hi
        lo = jnp.where(active & right, mid + 1, lo)
        hi = jnp.where(active & ~right, mid, hi)
    return jnp.minimum(lo, k - 1).astype(jnp.int32)


def preference_probability(instance: Instance, x, a1, a2) -> jax.Array:
    """True ``P(x, a1, a2)`` for index arrays of equal shape (gathers only the two actions' features)."""
    bilinear = jnp.einsum("...i,ij,...j->...", instance.phi[x, a1], instance.skew, instance.phi[x, a2])
    return jax.nn.sigmoid(instance.reward[x, a1] - instance.reward[x, a2] + bilinear)


def sample_labels(uniforms: jax.Array, instance: Instance, x, a1, a2, deterministic: bool = False) -> jax.Array:
    """Labels ``1[u < P(x, a1, a2)]`` (or the majority if ``deterministic``) from label uniforms ``u``."""
    prob = preference_probability(instance, x, a1, a2)
    return labels_from_probability(prob, uniforms.astype(prob.dtype), deterministic)


def sample_preference_data(key: jax.Array, instance: Instance, log_pi1: jax.Array, log_pi2: jax.Array,
                           n: int, deterministic: bool = False, start: int = 0) -> PreferenceData:
    """``n`` comparisons (indices ``start .. start + n - 1`` of the stream of ``key``) from ``(pi1, pi2)``.

    ``log_pi1``, ``log_pi2``: ``[n_x, K]`` log-probabilities (rows need not be exactly normalised).
    """
    u = comparison_uniforms(key, start + jnp.arange(n), instance.phi.dtype)
    x = search_rows(normalized_cdf(instance.d0)[None], jnp.zeros((n,), jnp.int32), u[:, 0])
    a1 = search_rows(normalized_cdf(jnp.exp(log_pi1)), x, u[:, 1])
    a2 = search_rows(normalized_cdf(jnp.exp(log_pi2)), x, u[:, 2])
    y = sample_labels(u[:, 3], instance, x, a1, a2, deterministic)
    return PreferenceData(x, a1, a2, y, jnp.ones((n,), bool))


def sample_joint_preference_data(key: jax.Array, instance: Instance, log_joint: jax.Array, n: int,
                                 deterministic: bool = False, start: int = 0) -> PreferenceData:
    """``n`` comparisons whose action pair ``(a1, a2)`` follows a joint law ``log_joint [n_x, K, K]``.

    ``a1`` is drawn from the first marginal and ``a2`` from the conditional row ``P(a2 | x, a1)``,
    both by inverse CDF with the same uniforms as ``sample_preference_data`` (so a product law
    ``log_pi1[:, :, None] + log_pi2[:, None, :]`` reproduces its draws up to rounding, and common
    random numbers hold across the two samplers).
    """
    u = comparison_uniforms(key, start + jnp.arange(n), instance.phi.dtype)
    x = search_rows(normalized_cdf(instance.d0)[None], jnp.zeros((n,), jnp.int32), u[:, 0])
    joint = jnp.exp(log_joint - logsumexp(log_joint, axis=(1, 2), keepdims=True))
    n_x, k = joint.shape[0], joint.shape[-1]
    a1 = search_rows(normalized_cdf(jnp.sum(joint, axis=2)), x, u[:, 1])
    a2 = search_rows(normalized_cdf(joint).reshape(n_x * k, k), x * k + a1, u[:, 2])
    y = sample_labels(u[:, 3], instance, x, a1, a2, deterministic)
    return PreferenceData(x, a1, a2, y, jnp.ones((n,), bool))


def with_size(data: PreferenceData, n) -> PreferenceData:
    """Mask all but the first ``n`` rows (``n`` may be traced: same shape, no recompilation)."""
    return data._replace(mask=data.mask & (jnp.arange(data.capacity) < n))


def feature_differences(instance: Instance, data: PreferenceData) -> jax.Array:
    """``z_i = phi(x_i, a1_i) - phi(x_i, a2_i)``, zero on masked rows, shape ``[n, d]``."""
    z = instance.phi[data.x, data.a1] - instance.phi[data.x, data.a2]
    return jnp.where(data.mask[:, None], z, 0.0)


def concatenate(first: PreferenceData, second: PreferenceData) -> PreferenceData:
    """Stack two data sets along the comparison axis (masks kept)."""
    return PreferenceData(*(jnp.concatenate([a, b], axis=-1) for a, b in zip(first, second)))
