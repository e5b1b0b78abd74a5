"""P3's bonus radii in each estimator's own norm, their calibration, and the data's kappa (docs/theory.md §4.2-4.5).

Every estimator's bonus is ``beta_t ||v||_{A_t^{-1}}`` with ``A_t`` its design (``estimators``: ``H_t`` for OMD,
``V_t = lam I + sum z z^T`` for the MLE, OGD and HVP). ``OnePassOptions.radius_mode`` chooses ``beta_t``:

- ``shared`` (the default, the toolkit's earlier choice [D]): ``beta_t = c_beta sqrt(d log(1 + t))`` for every
  design, so OMD and the MLE differ only through their norms.
- ``theory``: the radii of the analyses, each in its own norm. OMD's ``H_t``-norm radius
  ``beta~_t = O(sqrt(d log(t / delta)) poly(B))`` carries no kappa (P3, docs/theory.md §4.2 "Confidence set");
  the MLE's ``V_t``-norm radius ``sqrt((d + log(1/delta)) / gamma^2 + lam B^2)`` carries ``1 / gamma = kappa``
  (Zhu et al. 2023 Lemma 3.1, docs/theory.md §1.4), which is what makes MLE-based dueling bandits
  ``O~(kappa d sqrt T)`` against OMD's ``O~(d sqrt(kappa T))`` (§4.5). With the ``poly(B)`` and ``log(1/delta)``
  factors in the tunable ``c_beta`` (as in ``shared``):
  ``H_t``: ``c_beta sqrt(d log(1 + t))``; ``V_t``: ``c_beta kappa sqrt(d log(1 + t))``,
  ``kappa = 1 / sigma'(2B) = 2 + e^{2B} + e^{-2B}`` (``nominal_kappa``; unit features, ``|<theta, z>| <= 2B``).
- ``calibrated``: ``beta_t = c_e sqrt(d log(1 + t))`` with ``c_e`` the 95% quantile, over calibration seeds,
  of ``max_{t in checkpoints} ||theta_t - theta*||_{A_t} / sqrt(d log(1 + t))`` for estimator ``e``
  (``calibrate_multipliers``): on fresh seeds of the same family each estimator's set then holds ``theta*``
  at every checkpoint with frequency about 0.95, so the radii compare the estimators at equal coverage [D].

``effective_kappa`` reports the kappa the data actually see, ``1 / mean_i sigma'(<theta*, z_i>)`` and
``1 / min_i sigma'(<theta*, z_i>)``, and ``information_kappa`` the trace ratio of design and Fisher information,
beside ``nominal_kappa`` (docs/theory.md §4.1: ``kappa = max 1/sigma'`` over the whole parameter set).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from algorithms.core import spd_solve
from algorithms.onepass import estimators
from algorithms.onepass.estimators import OnePassOptions, bonus_radius
from bandits import validation as v

LEVEL = 0.95   # the calibrated radius's coverage


def nominal_kappa(reward_norm):
    """``kappa = 1 / sigma'(2B) = 2 + e^{2B} + e^{-2B}`` (unit features; may be traced)."""
    u = 2.0 * jnp.asarray(reward_norm, jnp.result_type(float))
    return 2.0 + jnp.exp(u) + jnp.exp(-u)


def effective_kappa(theta_star: jax.Array, z: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """``(1 / mean_i sigma'(<theta*, z_i>), 1 / min_i sigma'(<theta*, z_i>))`` over the valid rows of ``z [n, d]``."""
    u = z @ theta_star
    slope = jax.nn.sigmoid(u) * jax.nn.sigmoid(-u)
    mask = jnp.ones(u.shape, bool) if mask is None else mask
    count = jnp.maximum(jnp.sum(mask), 1)
    mean = jnp.sum(jnp.where(mask, slope, 0.0)) / count
    return 1.0 / mean, 1.0 / jnp.min(jnp.where(mask, slope, jnp.inf))


def information_kappa(theta_star: jax.Array, z: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """``sum_i ||z_i||^2 / sum_i sigma'(<theta*, z_i>) ||z_i||^2 = tr(V) / tr(H)`` over the valid rows of ``z``.

    The ratio of the traces of the design ``V = sum z z^T`` and the Fisher information ``H = sum sigma' z z^T``
    at ``theta*``: ``effective_kappa``'s mean weighted by ``||z_i||^2``, so that a comparison that carries no
    information (``z = 0``, an action against itself) does not count as a well-conditioned one. It equals
    ``effective_kappa``'s first value when every ``||z_i||`` is the same."""
    u = z @ theta_star
    slope = jax.nn.sigmoid(u) * jax.nn.sigmoid(-u)
    weight = jnp.sum(z * z, axis=-1)
    weight = weight if mask is None else jnp.where(mask, weight, 0.0)
    return jnp.sum(weight) / jnp.maximum(jnp.sum(weight * slope), jnp.finfo(slope.dtype).tiny)


def estimator_radius(options: OnePassOptions, name: str, dim: int, t, reward_norm=None, multiplier=None) -> jax.Array:
    """``beta_t`` of estimator ``name`` after ``t`` comparisons under ``options.radius_mode`` (module docstring).

    ``reward_norm``: ``B`` of the ``theory`` mode's kappa; ``multiplier``: the ``calibrated`` mode's ``c_e``
    (``calibrate_multipliers``). Both may be traced.
    """
    mode = options.radius_mode
    if mode == "shared":
        return options.beta(dim, t)
    if mode == "theory":
        if reward_norm is None:
            v.fail("reward_norm", None, "the bound B on ||theta*|| with radius_mode='theory' (kappa = 1/sigma'(2B))")
        scale = nominal_kappa(reward_norm) if estimators.get(name).design == "V_t" else 1.0
        return scale * bonus_radius(options.c_beta, dim, t)
    if multiplier is None:
        v.fail("multiplier", None,
               "the calibrated multiplier c_e (calibrate_multipliers) with radius_mode='calibrated'")
    return bonus_radius(multiplier, dim, t)


def local_error(theta: jax.Array, inverse: jax.Array, theta_star: jax.Array) -> jax.Array:
    """``||theta - theta*||_{A}`` from ``A^{-1}`` (``inverse``): ``sqrt(e^T (A^{-1})^{-1} e)``."""
    err = theta - theta_star
    return jnp.sqrt(jnp.maximum(err @ spd_solve.spd_solve(inverse, err), 0.0))


def normalised_errors(names, dim: int, options: OnePassOptions, z: jax.Array, y: jax.Array, theta_star: jax.Array,
                      checkpoints, reward_norm=None) -> jax.Array:
    """``max_{t in checkpoints} ||theta_t - theta*||_{A_t} / sqrt(d log(1 + t))`` of each estimator on one stream
    ``z [T, d]``, ``y [T]`` (``[n_names]``); ``reward_norm`` is the estimators' ``B`` (projections)."""
    ck = jnp.asarray(checkpoints)
    horizon = int(max(checkpoints))
    ests = estimators.make_estimators(tuple(names), dim, options, radius=reward_norm, capacity=horizon)

    def body(carry, row):
        states, worst, t = carry
        states = tuple(e.update(s, row[0], row[1]) for e, s in zip(ests, states))
        hit = jnp.any(ck == t + 1)
        scale = jnp.sqrt(dim * jnp.log1p((t + 1).astype(z.dtype)))
        ratio = jnp.stack([local_error(e.theta(s), e.inverse_design(s), theta_star) for e, s in zip(ests, states)])
        worst = jnp.where(hit, jnp.maximum(worst, ratio / scale), worst)
        return (states, worst, t + 1), None

    init = (tuple(e.init() for e in ests), jnp.zeros(len(ests), z.dtype), jnp.asarray(0))
    (_, worst, _), _ = jax.lax.scan(body, init, (z[:horizon], y[:horizon]))
    return worst


def quantile_multiplier(worst, level: float = LEVEL):
    """The ``level`` quantile over axis 0 (seeds) of ``worst [S, ...]``: its ``ceil(level S)``-th smallest
    value, so that at least ``level`` of the calibration seeds are covered."""
    v.check_float("level", level, low=0.0, high=1.0, low_open=True)
    rank = max(math.ceil(level * worst.shape[0]), 1) - 1
    return jnp.sort(jnp.asarray(worst), axis=0)[rank]


def calibrate_multipliers(names, dim: int, options: OnePassOptions, z: jax.Array, y: jax.Array,
                          theta_star: jax.Array, checkpoints, reward_norm=None, level: float = LEVEL) -> jax.Array:
    """The ``calibrated`` multipliers ``c_e`` (module docstring), ``[n_names]``: ``quantile_multiplier`` of
    ``normalised_errors`` over the ``S`` calibration streams ``z [S, T, d]``, ``y [S, T]``, ``theta_star [S, d]``."""
    worst = jax.vmap(lambda zz, yy, th: normalised_errors(names, dim, options, zz, yy, th, checkpoints,
                                                          reward_norm))(z, y, theta_star)
    return quantile_multiplier(worst, level)
