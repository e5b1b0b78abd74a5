"""The KL-regularized preference bandit instance: a pytree of arrays (docs/design.md §2, docs/theory.md §1, §8.1).

An ``Instance`` holds everything exact evaluation needs on a finite world:

- ``phi [n_x, K, d]`` features (default: Gaussian, normalised to unit norm; ``InstanceConfig`` can make
  them anisotropic and leave few good actions per context, see ``random_features`` and ``few_good_actions``);
- ``log_pi0 [n_x, K]`` the reference policy;
- ``d0 [n_x]`` context weights (uniform by default);
- ``reward [n_x, K]`` the true reward table ``r*(x, a)``;
- ``skew [d, d]`` the skew-symmetric block of the general preference oracle (zero for Bradley-Terry);
- ``kl_coef`` (0-d array, so a sweep over it is a ``vmap``, not a recompile);
- ``params`` the true reward's parameters (``LinearReward`` or ``MLPReward``).

``make_instance(key, config)`` builds one instance for one key and is ``vmap``-able over keys;
``InstanceConfig`` validates every field at construction. ``instance_from_arrays`` wraps user arrays
(e.g. from the LLM bridge) with the same validation.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bandits import validation as v
from bandits.preferences import random_skew_matrix
from bandits.reference import orthogonal_unit_vector, reference_policy
from bandits.rewards import (LinearReward, MLPReward, init_linear_reward, init_mlp_reward,
                             random_unit_vector, reward_table)

REWARD_KINDS = ("linear", "neural")


class Instance(NamedTuple):
    phi: jax.Array
    log_pi0: jax.Array
    d0: jax.Array
    reward: jax.Array
    skew: jax.Array
    kl_coef: jax.Array
    params: Any

    @property
    def n_contexts(self) -> int:
        return self.phi.shape[-3]

    @property
    def n_actions(self) -> int:
        return self.phi.shape[-2]

    @property
    def dim(self) -> int:
        return self.phi.shape[-1]

    @property
    def theta_star(self) -> jax.Array:
        """The true linear parameter (linear rewards only)."""
        if not isinstance(self.params, LinearReward):
            raise ValueError("theta_star is defined only for reward='linear' instances")
        return self.params.theta


@dataclasses.dataclass(frozen=True)
class InstanceConfig:
    """Static description of a random instance family (docs/theory.md §8.1). Validated on creation.

    n_contexts: number of contexts ``n_x`` (>= 1); n_actions: ``K`` (>= 2); dim: ``d`` (>= 1);
    reward_norm: ``B = ||theta*||`` (> 0; for neural rewards, the reward spread ``std = B / sqrt(d)``);
    kl_coef: ``eta > 0``; coverage: ``c in [-1, 1]``; temperature: ``s >= 0`` (0: uniform pi0);
    reward: 'linear' | 'neural'; hidden: MLP width; skew_strength: spectral norm of ``S`` (0: BT);
    feature_anisotropy: the condition number ``kappa_phi >= 1`` of the feature covariance, whose eigenvalues
    decay geometrically, ``E[phi phi^T] = diag(lambda) / d`` with ``lambda_i = kappa_phi^(-(i-1)/(d-1))``
    (1: isotropic unit features, ``random_features``); good_actions: ``G`` in ``[0, K-1]``, the number of
    good actions per context (0: off), which beat every other action of their context by at least ``B``
    (linear rewards only, ``few_good_actions``); feature_alignment: ``rho in [0, 1)``, the weight of
    ``theta*``'s direction in the features (0: off; linear rewards only, ``aligned_features``), which puts the
    margins of comparisons across the sign of the reward near ``+-2 rho B``: high effective kappa (issue 17).

    The regime knobs are those of issue 16 (where P1's argument for the enhancer should bite: few
    good actions, directions of the feature space that random queries rarely excite) and feature_alignment
    (where P3's kappa argument should bite); their defaults give the instances of before bit for bit.
    """

    n_contexts: int = 128
    n_actions: int = 32
    dim: int = 8
    reward_norm: float = 2.0
    kl_coef: float = 1.0
    coverage: float = 0.0
    temperature: float = 0.0
    reward: str = "linear"
    hidden: int = 32
    skew_strength: float = 0.0
    feature_anisotropy: float = 1.0
    good_actions: int = 0
    feature_alignment: float = 0.0

    def __post_init__(self):
        v.check_int("n_contexts", self.n_contexts, 1)
        v.check_int("n_actions", self.n_actions, 2)
        v.check_int("dim", self.dim, 1)
        v.check_float("reward_norm", self.reward_norm, low=0.0, low_open=True)
        v.check_float("kl_coef", self.kl_coef, low=0.0, low_open=True)
        v.check_float("coverage", self.coverage, low=-1.0, high=1.0)
        v.check_float("temperature", self.temperature, low=0.0)
        v.check_choice("reward", self.reward, REWARD_KINDS)
        v.check_int("hidden", self.hidden, 1)
        v.check_float("skew_strength", self.skew_strength, low=0.0)
        v.check_float("feature_anisotropy", self.feature_anisotropy, low=1.0)
        v.check_int("good_actions", self.good_actions, 0, self.n_actions - 1)
        if self.good_actions and self.reward != "linear":
            v.fail("good_actions", self.good_actions, "0 when reward='neural' (good actions are placed along "
                   "theta*, which a neural reward does not have)")
        v.check_float("feature_alignment", self.feature_alignment, low=0.0, high=1.0)
        if self.feature_alignment == 1.0:
            v.fail("feature_alignment", self.feature_alignment, "a number in [0, 1) (at 1 every action of a side "
                   "has the same features)")
        if self.feature_alignment and self.reward != "linear":
            v.fail("feature_alignment", self.feature_alignment, "0 when reward='neural' (the features are aligned "
                   "with theta*, which a neural reward does not have)")


def feature_spectrum(d: int, anisotropy: float = 1.0) -> np.ndarray:
    """``lambda_i = anisotropy^(-(i-1)/(d-1))``, ``i = 1..d`` (all 1 when ``d = 1``): from 1 down to
    ``1 / anisotropy`` in geometric steps, so ``anisotropy`` is the condition number ``lambda_1 / lambda_d``."""
    if d == 1:
        return np.ones(1)
    return float(anisotropy) ** (-np.arange(d) / (d - 1))


def random_features(key: jax.Array, n_x: int, n_actions: int, d: int, dtype=None,
                    anisotropy: float = 1.0) -> jax.Array:
    """Features ``phi = Lambda^(1/2) g / ||g||``, shape ``[n_x, K, d]``, with ``g`` standard Gaussian and
    ``Lambda = diag(feature_spectrum(d, anisotropy))``.

    ``g / ||g||`` is uniform on the unit sphere, so ``E[phi phi^T] = Lambda / d`` exactly (mean zero), with
    condition number ``anisotropy``; ``lambda_i <= 1`` keeps ``||phi|| <= 1`` (so ``|r*| <= B`` for a
    linear reward, docs/theory.md §8.1), with equality for ``anisotropy = 1``, the default unit features.
    The eigenvectors are the coordinate axes: ``theta*``, ``u_perp`` and the ridge are rotation invariant,
    so that costs no generality.
    """
    g = jax.random.normal(key, (n_x, n_actions, d), dtype=dtype)
    phi = g / jnp.linalg.norm(g, axis=-1, keepdims=True)
    if anisotropy == 1.0:   # the isotropic features exactly as before the knob existed
        return phi
    return phi * jnp.asarray(np.sqrt(feature_spectrum(d, anisotropy)).reshape(1, 1, d), phi.dtype)


def few_good_actions(phi: jax.Array, theta: jax.Array, good: int) -> jax.Array:
    """Features with exactly ``good`` good actions per context: ``phi' = (phi + s u) / 2``, ``u = theta /
    ||theta||``, ``s = +1`` on the ``good`` actions of largest ``<theta, phi>`` in each context and ``-1``
    on the others.

    Then ``r' = <theta, phi'> = (r + s B)/2`` with ``B = ||theta||``: the good actions' rewards lie in
    ``[0, B]``, the others' in ``[-B, 0]``, the order of the rewards is kept and every good action beats every
    other action of its context by at least ``B`` (``B`` plus half the original gap). ``||phi'|| <=
    (||phi|| + 1)/2 <= 1``, so ``|r'| <= B`` still holds; ``theta`` is not changed. With a small ``kl_coef``
    ``pi*`` sits on the good actions, which uniform queries find with probability ``good / K`` each: the
    regime where P1's exploration argument should matter (issue 16).
    """
    reward = phi @ theta
    rank = jnp.argsort(jnp.argsort(-reward, axis=-1), axis=-1)   # 0 for the best action of a context
    sign = jnp.where(rank < good, 1.0, -1.0).astype(phi.dtype)
    u = (theta / jnp.linalg.norm(theta)).reshape((1,) * (phi.ndim - 1) + theta.shape)
    return 0.5 * (phi + sign[..., None] * u)


def aligned_features(phi: jax.Array, theta: jax.Array, rho: float) -> jax.Array:
    """``phi' = (1 - rho) phi + rho s u``, ``u = theta / ||theta||``, ``s = sign(<theta, phi>)`` (``+1`` at 0).

    Then ``r' = <theta, phi'> = (1 - rho) r + rho s B`` (``B = ||theta||``): the order of the rewards is kept, and
    a comparison of two actions on opposite sides (``s_1 != s_2``) has margin ``|r'_1 - r'_2| = (1 - rho)|r_1 - r_2|
    + 2 rho B >= 2 rho B``, so ``sigma'`` of it is at most ``sigma'(2 rho B)``: the information-weighted kappa of such
    data grows toward the nominal ``1 / sigma'(2B)`` as ``rho -> 1`` (docs/theory.md §4.1, §8.1; 525 of 2983 at
    ``rho = 0.9``, ``B = 4`` in paper_repro.md), which random unit features never reach. ``||phi'|| <=
    (1 - rho) ||phi|| + rho <= 1``, so ``|r'| <= B`` still holds. No random draw is used: the same seed gives the
    same ``phi`` and ``theta`` as without the knob.
    """
    sign = jnp.where(phi @ theta >= 0, 1.0, -1.0).astype(phi.dtype)
    u = (theta / jnp.linalg.norm(theta)).reshape((1,) * (phi.ndim - 1) + theta.shape)
    return (1.0 - rho) * phi + rho * sign[..., None] * u


def make_instance(key: jax.Array, config: InstanceConfig, dtype=None, *, coverage=None,
                  temperature=None, kl_coef=None) -> Instance:
    """One random instance of ``config`` (pure in ``key``; ``vmap`` over keys for many seeds).

    Sub-keys: features, reward, reference direction, skew block -- so, e.g., changing ``coverage``
    keeps the same features and ``theta*``, and ``feature_anisotropy``, ``good_actions`` and ``feature_alignment``
    (static) transform the same draws. ``coverage``, ``temperature`` and ``kl_coef`` may be
    given as (possibly traced) arrays overriding the config's values, so that a sweep over them
    compiles once; concrete overrides are validated like the config fields.
    """
    dtype = dtype or jnp.result_type(float)
    coverage = _override("coverage", coverage, config.coverage, low=-1.0, high=1.0)
    temperature = _override("temperature", temperature, config.temperature, low=0.0)
    kl_coef = _override("kl_coef", kl_coef, config.kl_coef, low=0.0, low_open=True)
    k_phi, k_reward, k_ref, k_skew = jax.random.split(key, 4)
    phi = random_features(k_phi, config.n_contexts, config.n_actions, config.dim, dtype,
                          anisotropy=config.feature_anisotropy)
    if config.reward == "linear":
        params = init_linear_reward(k_reward, config.dim, config.reward_norm, dtype)
        direction = params.theta
        if config.good_actions:
            phi = few_good_actions(phi, params.theta, config.good_actions)
        if config.feature_alignment:
            phi = aligned_features(phi, params.theta, config.feature_alignment)
    else:
        params = init_mlp_reward(k_reward, phi, config.hidden, config.reward_norm)
        direction = random_unit_vector(k_reward, config.dim, dtype)
    reward = reward_table(params, phi)
    xi = phi @ orthogonal_unit_vector(k_ref, direction)
    log_pi0 = reference_policy(reward / config.reward_norm, xi, coverage, temperature)
    skew = random_skew_matrix(k_skew, config.dim, config.skew_strength, dtype)
    d0 = jnp.full((config.n_contexts,), 1.0 / config.n_contexts, dtype)
    return Instance(phi, log_pi0, d0, reward, skew, jnp.asarray(kl_coef, dtype), params)


def public_view(instance: Instance) -> Instance:
    """The instance without its true reward, skew and reward parameters (zeroed): what a learner may
    look at (features, pi0, d0, kl_coef)."""
    return instance._replace(reward=jnp.zeros_like(instance.reward), skew=jnp.zeros_like(instance.skew),
                             params=jax.tree.map(jnp.zeros_like, instance.params))


def _override(field, value, default, **bounds):
    if value is None:
        return default
    if v.is_concrete(value) and jnp.ndim(value) == 0:
        v.check_float(field, value, **bounds)
    return value


def instance_from_arrays(phi, log_pi0, reward, kl_coef, d0=None, skew=None, params=None) -> Instance:
    """Wrap user-provided arrays as an ``Instance``, validating shapes and values.

    ``log_pi0`` must be a normalised log-policy with full support (every action has positive
    reference mass: the KL-regularized problem needs it for finite KLs and a well-defined Gibbs
    policy); ``d0`` a probability vector (uniform if omitted); ``skew`` skew-symmetric (zero if
    omitted); ``params`` the reward parameters if known (default: a ``LinearReward`` is *not*
    inferred, ``None`` is stored).
    """
    phi = jnp.asarray(phi)
    if phi.ndim != 3:
        raise ValueError(f"phi has shape {tuple(phi.shape)}, which is not allowed: phi must have shape "
                         "[n_x, K, d] (3 axes).")
    n_x, k, d = phi.shape
    v.check_int("n_actions (phi.shape[1])", k, 2)
    v.check_int("dim (phi.shape[2])", d, 1)
    v.check_shape("log_pi0", log_pi0, (n_x, k))
    v.check_shape("reward", reward, (n_x, k))
    log_pi0 = jnp.asarray(log_pi0, phi.dtype)
    reward = jnp.asarray(reward, phi.dtype)
    d0 = jnp.full((n_x,), 1.0 / n_x, phi.dtype) if d0 is None else jnp.asarray(d0, phi.dtype)
    v.check_shape("d0", d0, (n_x,))
    skew = jnp.zeros((d, d), phi.dtype) if skew is None else jnp.asarray(skew, phi.dtype)
    v.check_shape("skew", skew, (d, d))
    if v.is_concrete(kl_coef):
        v.check_float("kl_coef", kl_coef, low=0.0, low_open=True)
    if all(v.is_concrete(a) for a in (phi, log_pi0, reward, d0, skew)):
        _check_values(np.asarray(phi), np.asarray(log_pi0), np.asarray(reward), np.asarray(d0),
                      np.asarray(skew))
    return Instance(phi, log_pi0, d0, reward, skew, jnp.asarray(kl_coef, phi.dtype), params)


def _check_values(phi, log_pi0, reward, d0, skew) -> None:
    if not np.all(np.isfinite(phi)):
        raise ValueError("phi contains non-finite values, which is not allowed: features must be finite.")
    if not np.all(np.isfinite(reward)):
        raise ValueError("reward contains non-finite values, which is not allowed: rewards must be finite.")
    if not np.all(np.isfinite(log_pi0)):
        bad = np.argwhere(~np.isfinite(log_pi0))[0]
        raise ValueError(
            f"log_pi0[{bad[0]}, {bad[1]}]={log_pi0[tuple(bad)]!r} is not allowed: the reference policy "
            "needs positive mass on every action (finite log-probabilities), or KLs are infinite.")
    v.check_normalized_rows("log_pi0", log_pi0)
    if np.any(d0 < 0) or not np.isclose(d0.sum(), 1.0, atol=1e-6):
        raise ValueError(f"d0 (sum {d0.sum()!r}, min {d0.min()!r}) is not allowed: d0 must be a "
                         "probability vector (non-negative, summing to 1).")
    if not np.allclose(skew, -skew.T, atol=1e-10):
        raise ValueError("skew is not skew-symmetric, which is not allowed: skew must satisfy S = -S^T "
                         "so that P(x,a,b) + P(x,b,a) = 1.")
