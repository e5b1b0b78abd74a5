"""Preference data: fixed-shape arrays sampled from a pair of policies (docs/theory.md §1.4; docs/design.md §2-3).

Comparison ``i`` is drawn as ``x ~ d0``, ``a1 ~ pi1(.|x)``, ``a2 ~ pi2(.|x)``, ``y ~ Bernoulli(P(x,a1,a2))``,
from its own key ``fold_in(key, i)``, which gives four uniforms ``(u_x, u_1, u_2, u_y)``; each draw is
the inverse CDF of its law at its uniform (``x = min{j : F_d0(j) > u_x}``, likewise the actions,
``y = 1[u_y < P]``). Four uniforms per comparison, instead of one Gumbel per context and per action
of a Gumbel-max categorical, is what keeps sampling cheap beside the estimators. Hence:

- nested prefixes: the first ``n`` comparisons of a stream of length ``N >= n`` are exactly the data
  set of size ``n`` drawn with the same key, so growing sample sizes come from one stream;
- common random numbers: two policy pairs compared on one key see the same contexts and the same
  label uniforms, and their actions are coupled monotonically (equal wherever the two CDFs put the
  uniform in the same action, so close policies draw mostly the same actions).

``mask`` marks valid rows so that buffers keep a fixed shape (``with_size`` masks a prefix).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from bandits.instance import Instance
from bandits.preferences import labels_from_probability


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
    """The uniforms ``(u_x, u_1, u_2, u_y)`` of comparison ``index`` (shape ``index.shape + (4,)``)."""
    draw = lambda i: jax.random.uniform(jax.random.fold_in(key, i), (4,), dtype)
    return jax.vmap(draw)(jnp.ravel(index)).reshape(jnp.shape(index) + (4,))


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

    The samplers compute one CDF per context and gather its rows: the same numbers as ``inverse_cdf``
    on the gathered probabilities, without a cumulative sum per comparison.
    """
    cdf = jnp.broadcast_to(cdf, jnp.shape(u) + cdf.shape[-1:])
    index = jnp.sum(cdf <= u[..., None], axis=-1)
    return jnp.minimum(index, cdf.shape[-1] - 1).astype(jnp.int32)


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
    x = search_cdf(normalized_cdf(instance.d0), u[:, 0])
    a1 = search_cdf(normalized_cdf(jnp.exp(log_pi1))[x], u[:, 1])
    a2 = search_cdf(normalized_cdf(jnp.exp(log_pi2))[x], u[:, 2])
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
    x = search_cdf(normalized_cdf(instance.d0), u[:, 0])
    joint = jnp.exp(log_joint - logsumexp(log_joint, axis=(1, 2), keepdims=True))
    a1 = search_cdf(normalized_cdf(jnp.sum(joint, axis=2))[x], u[:, 1])
    a2 = search_cdf(normalized_cdf(joint)[x, a1], u[:, 2])
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
