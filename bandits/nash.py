"""The KL-regularized two-player preference game of P2 (Ye et al., NeurIPS 2024, §3; docs/theory.md §3.1).

    J(pi1, pi2) = E_{x~d0}[ E_{a~pi1, b~pi2} G(x,a,b) - eta KL(pi1 || pi0) + eta KL(pi2 || pi0) ],

with payoff ``G = P`` ('identity', IPO's choice in P2) or ``G = log P/(1-P)`` ('logit', the
Guidebook's form; equal to the margin of the oracle). Because ``G(x,a,b) + G(x,b,a) = c`` (``c = 1``
resp. ``0``), the symmetric Nash equilibrium has value ``c / 2``, and for any ``pi``:

- the min-player's best response is ``pi2 ∝ pi0 exp(-G(x, pi, .) / eta)``, ``G(x,pi,b) = sum_a pi(a) G(x,a,b)``;
- ``min_{pi2} J(pi, pi2) = E_x[ -eta KL(pi || pi0) - eta log E_{b~pi0} exp(-G(x,pi,b) / eta) ]``;
- the duality gap ``Gap(pi) = c/2 - min_{pi2} J(pi, pi2) >= 0``, zero iff ``pi`` is the equilibrium.

The equilibrium itself is computed by symmetric KL-regularized extragradient in log space
(Cen, Wei & Chi 2021; docs/theory.md §3.3, §9.1 item 11), stopped on the exact gap.

P2's instance family (``GameConfig``, ``make_game_instance``): two knobs on top of
``bandits.InstanceConfig`` (docs/theory.md §8.1) for the regime where P2's mechanisms (pessimism, the
enhancer) can matter: features close to one-hot, so the pair features ``psi(x, a, b)`` of the general
preference model are close to one-hot over action pairs and the model barely generalises from compared to
uncompared pairs, and a reference policy ``pi0`` that avoids the equilibrium's actions (poor unilateral
coverage of data drawn from ``pi0``). Their defaults give ``make_instance``'s instance exactly.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bandits import validation as v
from bandits.evaluation import context_mean, kl_to_reference, win_rate
from bandits.instance import Instance, InstanceConfig, make_instance
from bandits.policy import kl_divergence, uniform_policy
from bandits.preferences import margin_matrix
from bandits.reference import orthogonal_unit_vector, reference_policy
from bandits.rewards import reward_table

PAYOFFS = ("identity", "logit")


def payoff_matrices(instance: Instance, payoff: str = "identity") -> jax.Array:
    """``G[x, a, b]`` for all contexts, shape ``[n_x, K, K]``."""
    v.check_choice("payoff", payoff, PAYOFFS)
    margins = jax.vmap(margin_matrix, in_axes=(0, 0, None))(instance.reward, instance.phi, instance.skew)
    return jax.nn.sigmoid(margins) if payoff == "identity" else margins


def nash_value(payoff: str = "identity") -> float:
    """Value of the symmetric equilibrium: 1/2 (identity) or 0 (logit)."""
    return 0.5 if v.check_choice("payoff", payoff, PAYOFFS) == "identity" else 0.0


def game_value(instance: Instance, log_pi1: jax.Array, log_pi2: jax.Array,
               payoff: str = "identity") -> jax.Array:
    """``J(pi1, pi2)`` exactly."""
    g = payoff_matrices(instance, payoff)
    bilinear = jnp.einsum("xa,xab,xb->x", jnp.exp(log_pi1), g, jnp.exp(log_pi2))
    kl1 = kl_divergence(log_pi1, instance.log_pi0)
    kl2 = kl_divergence(log_pi2, instance.log_pi0)
    return context_mean(instance, bilinear - instance.kl_coef * (kl1 - kl2))


def _opponent_payoff(g: jax.Array, log_pi: jax.Array) -> jax.Array:
    """``G(x, pi, b) = sum_a pi(a|x) G(x, a, b)``, shape ``[n_x, K]``."""
    return jnp.einsum("xa,xab->xb", jnp.exp(log_pi), g)


def best_response(instance: Instance, log_pi: jax.Array, payoff: str = "identity") -> jax.Array:
    """The min-player's best response ``log pi2 = log_softmax(log pi0 - G(x, pi, .) / eta)``."""
    g = payoff_matrices(instance, payoff)
    return jax.nn.log_softmax(instance.log_pi0 - _opponent_payoff(g, log_pi) / instance.kl_coef, axis=-1)


def max_min_value(instance: Instance, log_pi: jax.Array, payoff: str = "identity") -> jax.Array:
    """``min_{pi2} J(pi, pi2)`` in closed form."""
    g = payoff_matrices(instance, payoff)
    eta = instance.kl_coef
    soft_min = -eta * jax.nn.logsumexp(instance.log_pi0 - _opponent_payoff(g, log_pi) / eta, axis=-1)
    return context_mean(instance, soft_min - eta * kl_divergence(log_pi, instance.log_pi0))


def duality_gap(instance: Instance, log_pi: jax.Array, payoff: str = "identity") -> jax.Array:
    """``Gap(pi) = J(pi*, pi*) - min_{pi2} J(pi, pi2) >= 0`` (docs/theory.md §3.1)."""
    return nash_value(payoff) - max_min_value(instance, log_pi, payoff)


class NashSolution(NamedTuple):
    log_pi: jax.Array
    gap: jax.Array
    iterations: jax.Array


def nash_equilibrium(instance: Instance, payoff: str = "identity", tol: float | None = None,
                     max_iter: int = 20000) -> NashSolution:
    """The symmetric equilibrium ``pi* ∝ pi0 exp(G(x, ., pi*) / eta)`` by symmetric extragradient.

    One step with ``alpha = 1 / (eta + 2 max|G|)`` (docs/theory.md §9.1 item 11):

        log p_half ∝ (1 - alpha eta) log p + alpha eta log pi0 + alpha G p
        log p_next ∝ (1 - alpha eta) log p + alpha eta log pi0 + alpha G p_half

    The min-player's iterates mirror the max-player's exactly because ``G^T p = c - G p``, so one
    sequence suffices. Converges linearly at rate about ``(1 - alpha eta)``; stops when the exact
    gap is below ``tol`` (default 1e-10 in float64, 1e-5 in float32) or after ``max_iter`` steps
    (check ``gap`` in the result).
    """
    v.check_choice("payoff", payoff, PAYOFFS)
    if tol is None:
        tol = 1e-10 if instance.log_pi0.dtype == jnp.float64 else 1e-5
    return _solve(instance, payoff, jnp.asarray(tol, instance.log_pi0.dtype), max_iter)


@partial(jax.jit, static_argnums=(1, 3))
def _solve(instance: Instance, payoff: str, tol, max_iter: int) -> NashSolution:
    g = payoff_matrices(instance, payoff)
    eta = instance.kl_coef
    alpha = 1.0 / (eta + 2.0 * jnp.max(jnp.abs(g)))
    anchor = alpha * eta * instance.log_pi0

    def step(log_p, log_q):
        return jax.nn.log_softmax((1.0 - alpha * eta) * log_p + anchor
                                  + alpha * jnp.einsum("xab,xb->xa", g, jnp.exp(log_q)), axis=-1)

    def gap_of(log_p):
        return duality_gap(instance, log_p, payoff)

    def cond(state):
        _, gap, it = state
        return (gap > tol) & (it < max_iter)

    def body(state):
        log_p, _, it = state
        log_p = step(log_p, step(log_p, log_p))
        return log_p, gap_of(log_p), it + 1

    start = instance.log_pi0
    log_p, gap, it = jax.lax.while_loop(cond, body, (start, gap_of(start), jnp.asarray(0)))
    return NashSolution(log_p, gap, it)


def policy_metrics(instance: Instance, log_pi: jax.Array, log_star: jax.Array, payoff: str = "identity") -> dict:
    """The exact metrics of ``pi`` in P2's game (docs/theory.md §3.1), in this order: ``nash_gap`` (the
    duality gap), ``win_rate_vs_ref`` and ``win_rate_vs_nash`` (``E_x E_{a~pi, b~pi'} P*(x, a, b)`` against
    ``pi0`` and the equilibrium ``pi*`` given as ``log_star``) and ``kl_to_ref`` (``E_x KL(pi || pi0)``)."""
    return {"nash_gap": duality_gap(instance, log_pi, payoff),
            "win_rate_vs_ref": win_rate(instance, log_pi, instance.log_pi0),
            "win_rate_vs_nash": win_rate(instance, log_pi, log_star),
            "kl_to_ref": kl_to_reference(instance, log_pi)}


@dataclasses.dataclass(frozen=True)
class GameConfig:
    """P2's instance knobs on top of ``InstanceConfig`` (``make_game_instance``; defaults: none applied).

    one_hot: the weight ``rho in [0, 1]`` of the one-hot part of the features, ``phi_rho(x, a) =
    ((1 - rho) phi(x, a) + rho e_{a mod d}) / ||(1 - rho) phi(x, a) + rho e_{a mod d}||`` (``phi`` the
    Gaussian unit features; ``rho = 1`` with ``d >= K``: exactly one-hot, every context alike);
    avoid_nash: the tilt ``tau >= 0`` of ``pi0`` away from the equilibrium, ``log pi0(x, .) =
    log_softmax(log pi0_c,s(x, .) - tau pi_u(x, .) / max_a pi_u(x, a))`` (``pi0_c,s`` the coverage knob's
    reference, ``pi_u`` the equilibrium of the probability-payoff game with a uniform reference at the
    instance's ``kl_coef``): the equilibrium's most played action loses ``tau`` nats of reference mass
    against any action that ``pi_u`` leaves out.
    Both need a linear reward. Why these two: P2's offline guarantee scales with the unilateral coverage of
    ``pi*`` by the data (Ye et al. 2024, §3.2; docs/theory.md §3.2), which near one-hot pair features leave
    to the compared pairs alone and a ``pi0`` that avoids ``pi*`` makes poor.
    """

    one_hot: float = 0.0
    avoid_nash: float = 0.0

    def __post_init__(self):
        v.check_float("one_hot", self.one_hot, low=0.0, high=1.0)
        v.check_float("avoid_nash", self.avoid_nash, low=0.0)

    @property
    def is_default(self) -> bool:
        return self.one_hot == 0.0 and self.avoid_nash == 0.0


def one_hot_features(phi: jax.Array, rho: float) -> jax.Array:
    """``phi_rho(x, a)`` of ``GameConfig.one_hot``, unit rows, shape of ``phi [n_x, K, d]``."""
    k, d = phi.shape[-2], phi.shape[-1]
    basis = jax.nn.one_hot(jnp.arange(k) % d, d, dtype=phi.dtype).reshape((1,) * (phi.ndim - 2) + (k, d))
    mixed = (1.0 - rho) * phi + rho * basis
    return mixed / jnp.linalg.norm(mixed, axis=-1, keepdims=True)


def avoid_equilibrium(instance: Instance, tau: float) -> Instance:
    """The instance with ``pi0`` tilted by ``tau`` away from ``pi_u`` (``GameConfig.avoid_nash``); the
    oracle is unchanged. ``pi_u`` does not depend on ``pi0``, so the tilt is one solve."""
    uniform = uniform_policy(instance.n_contexts, instance.n_actions, instance.log_pi0.dtype)
    pi_u = jnp.exp(nash_equilibrium(instance._replace(log_pi0=uniform), "identity").log_pi)
    tilt = tau * pi_u / jnp.max(pi_u, axis=-1, keepdims=True)
    return instance._replace(log_pi0=jax.nn.log_softmax(instance.log_pi0 - tilt, axis=-1))


def _with_features(key: jax.Array, config: InstanceConfig, instance: Instance, phi: jax.Array) -> Instance:
    """``instance`` (``make_instance(key, config)``, linear reward) rebuilt on features ``phi``: the same
    ``theta*``, skew block and reference direction (``make_instance``'s sub-keys), hence ``r = phi theta*``
    and ``pi0`` from the coverage knob on the new features."""
    k_ref = jax.random.split(key, 4)[2]
    reward = reward_table(instance.params, phi)
    xi = phi @ orthogonal_unit_vector(k_ref, instance.params.theta)
    log_pi0 = reference_policy(reward / config.reward_norm, xi, config.coverage, config.temperature)
    return instance._replace(phi=phi, reward=reward, log_pi0=log_pi0)


def make_game_instance(key: jax.Array, config: InstanceConfig, game: GameConfig = GameConfig(),
                       dtype=None) -> Instance:
    """One instance of P2's family: ``make_instance(key, config)`` (exactly, with ``game``'s defaults), its
    features made close to one-hot (``one_hot``; reward and ``pi0`` recomputed on them) and then ``pi0``
    tilted away from the equilibrium (``avoid_nash``). Pure in ``key``, ``vmap``-able over keys."""
    instance = make_instance(key, config, dtype)
    if game.is_default:
        return instance
    if config.reward != "linear":
        v.fail("reward", config.reward, "'linear' when one_hot or avoid_nash is set (GameConfig)")
    if game.one_hot > 0.0:
        instance = _with_features(key, config, instance, one_hot_features(instance.phi, game.one_hot))
    if game.avoid_nash > 0.0:
        instance = avoid_equilibrium(instance, game.avoid_nash)
    return instance
