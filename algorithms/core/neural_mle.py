"""Neural Bradley-Terry reward estimation and its uncertainty (docs/theory.md §8.1(ii); issue 3, neural half).

Model: an MLP reward ``r_psi(x, a) = w2 . tanh(W1 phi(x, a) + b1)`` (the class of the world's
``bandits.MLPReward``, so the neural instance is realizable). Estimator: the regularised BT negative
log-likelihood of P1 §2 / docs/theory.md §1.4 with the linear score replaced by the network,

    L(psi) = (1/n) sum_i mask_i softplus(-s_i (r_psi(x_i, a1_i) - r_psi(x_i, a2_i))) + (lam / 2n) ||psi||^2,

minimised by full-batch Adam (optax) for a fixed number of steps from a warm start (a mean, so the
step size does not depend on n; ``lam`` keeps the sum-form meaning of the linear MLE).

Uncertainty, two standard approximations (no exact confidence set exists for a network):

- neural-linear: treat the last hidden layer ``h(x, a) = tanh(W1 phi + b1)`` as fixed features and use
  the linear machinery on them: ``Sigma_h = lam I + sum_i dh_i dh_i^T`` with ``dh = h(x,a1) - h(x,a2)``,
  ``Gamma(x, a) = ||h(x, a) - nu_h||_{Sigma_h^{-1}}``, ``nu_h = E_{x~d0, a~pi0} h`` (P1 Option II on h);
- bootstrap ensemble: ``E`` networks fit on multinomial resamples of the data (and different
  initialisations); ``Gamma(x, a)`` = the ensemble standard deviation of the centred reward
  ``r(x, a) - E_{a'~pi0} r(x, a')`` (centring removes the per-context shift BT cannot identify).

Pessimistic policies are ``Gibbs(r_hat - beta Gamma)`` in both cases (Option II form).
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from algorithms.core import spd_solve
from algorithms.core.confidence import dual_norm
from bandits import Instance, MLPReward, PreferenceData, reward_table
from bandits import validation as v
from bandits.rewards import mlp_features


class NeuralFit(NamedTuple):
    params: MLPReward
    loss: jax.Array


def init_network(key: jax.Array, dim: int, hidden: int, dtype=None) -> MLPReward:
    """Small random initialisation (Glorot-like scale) of the learned reward network."""
    k1, k2 = jax.random.split(key)
    w1 = jax.random.normal(k1, (hidden, dim), dtype) / jnp.sqrt(dim)
    w2 = jax.random.normal(k2, (hidden,), dtype) / jnp.sqrt(hidden)
    return MLPReward(w1, jnp.zeros((hidden,), w1.dtype), w2)


def bt_network_loss(params: MLPReward, phi: jax.Array, data: PreferenceData, lam, weights=None) -> jax.Array:
    """``L(psi)`` of the module docstring; ``weights`` (default: the mask) are per-comparison counts."""
    w = jnp.where(data.mask, 1.0, 0.0) if weights is None else weights * data.mask
    margin = (reward_table(params, phi[data.x, data.a1]) - reward_table(params, phi[data.x, data.a2]))
    signs = 2.0 * data.y - 1.0
    n = jnp.maximum(jnp.sum(w), 1.0)
    penalty = sum(jnp.sum(p**2) for p in jax.tree.leaves(params))
    return (jnp.sum(w * jax.nn.softplus(-signs * margin)) + 0.5 * lam * penalty) / n


@partial(jax.jit, static_argnames=("steps",))
def _train(params, phi, data, lam, weights, learning_rate, steps):
    opt = optax.adam(learning_rate)

    def step(carry, _):
        p, state = carry
        loss, grad = jax.value_and_grad(bt_network_loss)(p, phi, data, lam, weights)
        updates, state = opt.update(grad, state, p)
        return (optax.apply_updates(p, updates), state), loss

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return NeuralFit(params, bt_network_loss(params, phi, data, lam, weights))


def fit_network(params: MLPReward, phi: jax.Array, data: PreferenceData, lam, steps: int = 300,
                learning_rate=0.02, weights: jax.Array | None = None) -> NeuralFit:
    """Adam on ``L(psi)`` from ``params`` (warm start) for ``steps`` full-batch steps."""
    v.check_int("steps", steps, 1)
    if v.is_concrete(lam):
        v.check_float("lam", lam, low=0.0, low_open=True)
    if v.is_concrete(learning_rate):
        v.check_float("learning_rate", learning_rate, low=0.0, low_open=True)
    if weights is None:
        weights = jnp.ones(data.x.shape, phi.dtype)
    return _train(params, phi, data, jnp.asarray(lam, phi.dtype), weights.astype(phi.dtype),
                  jnp.asarray(learning_rate, phi.dtype), steps)


def neural_linear_uncertainty(instance: Instance, params: MLPReward, data: PreferenceData, lam,
                              log_pi_ref: jax.Array | None = None) -> jax.Array:
    """``Gamma(x, a) = ||h(x,a) - nu_h||_{Sigma_h^{-1}}`` on last-layer features, shape ``[n_x, K]``."""
    h = mlp_features(params, instance.phi)                     # [n_x, K, H]
    dh = jnp.where(data.mask[:, None], h[data.x, data.a1] - h[data.x, data.a2], 0.0)
    gram = dh.T @ dh + lam * jnp.eye(h.shape[-1], dtype=h.dtype)
    log_pi_ref = instance.log_pi0 if log_pi_ref is None else log_pi_ref
    nu = instance.d0 @ jnp.einsum("xa,xah->xh", jnp.exp(log_pi_ref), h)
    return dual_norm(spd_solve.cholesky(gram), h - nu[None, None, :])


def centred_reward(instance: Instance, params: MLPReward) -> jax.Array:
    """``r(x, a) - E_{a'~pi0} r(x, a')``: the part of the reward that BT data identifies."""
    r = reward_table(params, instance.phi)
    return r - jnp.sum(jnp.exp(instance.log_pi0) * r, axis=-1, keepdims=True)


def bootstrap_counts(key: jax.Array, mask: jax.Array) -> jax.Array:
    """Multinomial resample counts: ``sum(mask)`` draws, uniform over the valid rows, shape ``[n]``.

    Inverse-CDF sampling over the cumulative mask (memory ``O(n)``; a Gumbel-max categorical over
    ``n`` rows would need ``O(n^2)``).
    """
    n_valid = jnp.sum(mask)
    rank = jnp.floor(jax.random.uniform(key, mask.shape) * n_valid) + 1.0
    draws = jnp.minimum(jnp.searchsorted(jnp.cumsum(mask), rank, side="left"), mask.shape[0] - 1)
    return jnp.zeros(mask.shape, jnp.int32).at[draws].add((jnp.arange(mask.shape[0]) < n_valid).astype(jnp.int32))


def bootstrap_ensemble(key: jax.Array, instance: Instance, data: PreferenceData, lam, members: int,
                       hidden: int, steps: int = 300, learning_rate=0.02,
                       init: MLPReward | None = None) -> tuple[MLPReward, jax.Array, jax.Array]:
    """``members`` networks on multinomial resamples of the valid rows; returns (stacked params,
    ensemble-mean centred reward ``[n_x, K]``, ensemble std ``Gamma [n_x, K]``)."""
    v.check_int("members", members, 2)
    keys = jax.random.split(key, members)

    def one(k):
        k_init, k_boot = jax.random.split(k)
        counts = bootstrap_counts(k_boot, data.mask).astype(instance.phi.dtype)
        start = init_network(k_init, instance.dim, hidden, instance.phi.dtype) if init is None else init
        fit = fit_network(start, instance.phi, data, lam, steps, learning_rate, weights=counts)
        return fit.params

    stacked = jax.vmap(one)(keys)
    rewards = jax.vmap(lambda p: centred_reward(instance, p))(stacked)
    return stacked, rewards.mean(0), rewards.std(0, ddof=1)
