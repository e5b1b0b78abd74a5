"""Preference data: fixed-shape arrays sampled from a pair of policies (THEORY.md §1.4; DESIGN.md §2-3).

Comparison ``i`` is drawn as ``x ~ d0``, ``a1 ~ pi1(.|x)``, ``a2 ~ pi2(.|x)``, ``y ~ Bernoulli(P(x,a1,a2))``,
from its own key ``fold_in(key, i)`` split into named sub-keys (context, first action, second
action, label). Hence:

- nested prefixes: the first ``n`` comparisons of a stream of length ``N >= n`` are exactly the data
  set of size ``n`` drawn with the same key, so growing sample sizes come from one stream;
- common random numbers: two policy pairs compared on one key see the same contexts and the same
  label uniforms (and the same actions wherever their policies agree).

``mask`` marks valid rows so that buffers keep a fixed shape (``with_size`` masks a prefix).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

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


def comparison_keys(key: jax.Array, index: jax.Array) -> tuple[jax.Array, ...]:
    """The four named sub-keys of comparison ``index``: (context, action 1, action 2, label)."""
    return tuple(jax.random.split(jax.random.fold_in(key, index), 4))


def preference_probability(instance: Instance, x, a1, a2) -> jax.Array:
    """True ``P(x, a1, a2)`` for index arrays of equal shape (gathers only the two actions' features)."""
    bilinear = jnp.einsum("...i,ij,...j->...", instance.phi[x, a1], instance.skew, instance.phi[x, a2])
    return jax.nn.sigmoid(instance.reward[x, a1] - instance.reward[x, a2] + bilinear)


def sample_labels(keys: jax.Array, instance: Instance, x, a1, a2, deterministic: bool = False) -> jax.Array:
    """One label per comparison from per-comparison label keys ``keys [n]``."""
    uniforms = jax.vmap(jax.random.uniform)(keys)
    prob = preference_probability(instance, x, a1, a2)
    return labels_from_probability(prob, uniforms.astype(prob.dtype), deterministic)


def sample_preference_data(key: jax.Array, instance: Instance, log_pi1: jax.Array, log_pi2: jax.Array,
                           n: int, deterministic: bool = False, start: int = 0) -> PreferenceData:
    """``n`` comparisons (indices ``start .. start + n - 1`` of the stream of ``key``) from ``(pi1, pi2)``."""
    index = start + jnp.arange(n)
    kx, k1, k2, ky = jax.vmap(comparison_keys, in_axes=(None, 0))(key, index)
    log_d0 = jnp.log(instance.d0)
    x = jax.vmap(lambda k: jax.random.categorical(k, log_d0))(kx).astype(jnp.int32)
    a1 = jax.vmap(jax.random.categorical)(k1, log_pi1[x]).astype(jnp.int32)
    a2 = jax.vmap(jax.random.categorical)(k2, log_pi2[x]).astype(jnp.int32)
    y = sample_labels(ky, instance, x, a1, a2, deterministic)
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
