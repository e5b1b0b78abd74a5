"""Exact and candidate-set bandit instances of a language model (docs/llm_bridge.md §0 item 1, §1.1(A), §2(b)).

**Exact view.** When every response of a tiny ``ResponseSpace`` is enumerated, an LM *is* a bandit with
``K = |A|`` actions: ``exact_instance`` wraps the sequence log-probabilities ``log pi0(y|x) [n_x, A]`` (rows in
``enumerate_responses`` order) and a reward or features into an ordinary ``bandits.Instance``, so the
existing evaluators (``bandits.value``, ``optimal_policy``, ...), the Gibbs oracle and the rejection
samplers of ``algorithms.offline.rejection_sampling`` run on it unchanged and exactly (docs/theory.md §1.3).

**Candidate view** (what a real LLM allows). Draw ``a_1..a_K ~ pi0(.|x)`` i.i.d. The candidate instance's
reference is the *empirical* measure: mass ``1/K`` per draw, so a response drawn ``c`` times carries
``c/K`` (duplicates merged by count). The Gibbs policy over the candidates is then the self-normalised
importance-sampling approximation of ``pi* ∝ pi0 exp(r/eta)``:

    pi_K(y|x) = (c(y)/K) exp(r(x,y)/eta) / sum_j (1/K) exp(r(x,a_j)/eta),

which converges to ``pi*`` as ``K`` grows. Renormalising ``pi0(a)`` over the distinct candidates would
count ``pi0`` twice (docs/llm_bridge.md §1.1). Each draw keeps its own action slot (``K`` slots, all of mass
``1/K``, so the instance has full support and a fixed shape); ``lift_candidate_policy`` merges the
slots of equal responses by summing their probabilities, which turns a slot policy into a policy on
the full space. For every slot policy that splits a response's mass over its duplicate slots in
proportion to their reference mass (every Gibbs policy of the instance does) the slot instance's
values and KLs equal those of the merged one.

**Best-of-n with ties split by pi0 mass.** ``best_of_n_law_split_ties`` is the law of "draw ``n``
responses from ``pi0``, return the first draw of maximal reward" (the usual LLM rule; by exchangeability
the same as a uniformly random maximal draw):

    P(y) = pi0(y) / pi0(R = r_y) * [F(r_y)^n - F_<(r_y)^n],   F(r) = pi0(r(a) <= r),  F_<(r) = pi0(r(a) < r).

``algorithms.offline.rejection_sampling.best_of_n_law`` breaks ties by the lowest action index instead; both
agree when rewards have no ties, and their masses agree on every reward level.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bandits import validation as v
from bandits.evaluation import optimal_policy
from bandits.instance import Instance, instance_from_arrays
from bandits.lm.space import ResponseSpace
from bandits.policy import gibbs_policy, kl_divergence
from bandits.rewards import LinearReward


def segment_logsumexp(values: jax.Array, segments: jax.Array, n_segments: int) -> jax.Array:
    """``out[s] = log sum_{i: segments_i = s} exp(values_i)`` (``-inf`` for empty or zero-mass segments), 1-D."""
    top = jax.ops.segment_max(values, segments, num_segments=n_segments)
    safe_top = jnp.where(jnp.isfinite(top), top, 0.0)
    total = jax.ops.segment_sum(jnp.exp(values - safe_top[segments]), segments, num_segments=n_segments)
    return jnp.where(total > 0, safe_top + jnp.log(jnp.where(total > 0, total, 1.0)), -jnp.inf)


def enumerated_log_policy(enumerated_token_logprobs: Callable, cfg, params, prompts: jax.Array,
                          space: ResponseSpace, temperature=1.0) -> jax.Array:
    """Exact sequence log-probabilities ``log pi(y|x) [n_x, A]`` of an LM over ``enumerate_responses(space)``.

    ``enumerated_token_logprobs`` is ``bandits.lm.tiny.enumerated_token_logprobs`` or
    ``bandits.lm.tree.enumerated_token_logprobs`` (with its ``cfg``, ``params``); ``prompts int32 [n_x, P]``.
    """
    prompts = jnp.asarray(prompts)
    if prompts.ndim != 2:
        raise ValueError(f"prompts has shape {tuple(prompts.shape)}, which is not allowed: prompts must be "
                         "int32 [n_x, P].")
    per_prompt = lambda prompt: jnp.sum(enumerated_token_logprobs(cfg, params, prompt, space, temperature), -1)
    return jax.vmap(per_prompt)(prompts)


def _reward_and_features(reward, phi, theta, like) -> tuple[jax.Array, jax.Array, object]:
    """(reward, phi, params) from a reward table and/or features (+ theta)."""
    if theta is not None and reward is not None:
        v.fail("theta", "<array>", "None when reward is given (the reward is phi @ theta otherwise)")
    if reward is None and (phi is None or theta is None):
        v.fail("reward", None, "a table [n_x, K], or give both phi [n_x, K, d] and theta [d]")
    if phi is not None:
        phi = jnp.asarray(phi, like.dtype)
        if phi.ndim != 3:
            raise ValueError(f"phi has shape {tuple(phi.shape)}, which is not allowed: phi must have shape "
                             "[n_x, K, d].")
    if theta is not None:
        theta = jnp.asarray(theta, like.dtype)
        v.check_shape("theta", theta, (phi.shape[-1],))
        return phi @ theta, phi, LinearReward(theta)
    reward = jnp.asarray(reward, like.dtype)
    if phi is None:
        # The reward as a 1-d feature with theta* = 1: feature-based learners see the true reward.
        return reward, reward[..., None], LinearReward(jnp.ones((1,), like.dtype))
    return reward, phi, None


def exact_instance(log_pi0: jax.Array, reward: jax.Array | None = None, *, phi: jax.Array | None = None,
                   theta: jax.Array | None = None, kl_coef, d0: jax.Array | None = None,
                   skew: jax.Array | None = None) -> Instance:
    """The LM as a ``bandits.Instance`` over all its responses (exact view).

    ``log_pi0 [n_x, A]``: the reference LM's sequence log-probabilities (``enumerated_log_policy``), every
    row normalised with full support. The reward is given as a table ``reward [n_x, A]`` or as features
    ``phi [n_x, A, d]`` with ``theta [d]`` (``reward = phi @ theta``, ``params = LinearReward(theta)``). With a
    table and no ``phi``, the features are the reward itself (``d = 1``, ``theta* = 1``); with a table and
    ``phi`` the reward parameters are unknown (``params=None``). ``d0`` defaults to uniform, ``skew`` to 0.
    Validated by ``bandits.instance_from_arrays``.
    """
    log_pi0 = jnp.asarray(log_pi0)
    if log_pi0.ndim != 2:
        raise ValueError(f"log_pi0 has shape {tuple(log_pi0.shape)}, which is not allowed: log_pi0 must have "
                         "shape [n_x, A] (sequence log-probabilities of every enumerated response).")
    reward, phi, params = _reward_and_features(reward, phi, theta, log_pi0)
    return instance_from_arrays(phi, log_pi0, reward, kl_coef, d0=d0, skew=skew, params=params)


def best_of_n_law_split_ties(log_pi0: jax.Array, reward: jax.Array, n) -> jax.Array:
    """Exact log-law ``[n_x, A]`` of best-of-``n`` from ``pi0``, ties split by ``pi0`` mass (module docstring).

    Ties are exact equalities of ``reward``. ``n >= 1`` may be traced. Zero-mass actions get ``-inf``.
    """
    log_pi0, reward = jnp.asarray(log_pi0), jnp.asarray(reward)
    if log_pi0.ndim != 2:
        raise ValueError(f"log_pi0 has shape {tuple(log_pi0.shape)}, which is not allowed: log_pi0 must have "
                         "shape [n_x, A].")
    v.check_shape("reward", reward, log_pi0.shape)
    if v.is_concrete(n) and not isinstance(n, jax.Array):
        v.check_int("n", n, 1)
    a = log_pi0.shape[-1]

    def one_row(lp, r):
        order = jnp.argsort(r)
        r_sorted, lp_sorted = r[order], lp[order]
        level = jnp.cumsum(jnp.concatenate([jnp.zeros((1,), jnp.int32),
                                            (r_sorted[1:] != r_sorted[:-1]).astype(jnp.int32)]))
        log_mass = segment_logsumexp(lp_sorted, level, a)                       # pi0(R = level)
        log_f = jax.lax.cumlogsumexp(log_mass)                                 # F over levels
        log_f_prev = jnp.concatenate([jnp.full((1,), -jnp.inf, lp.dtype), log_f[:-1]])
        reached = log_mass > -jnp.inf
        safe_f = jnp.where(reached, log_f, 0.0)
        ratio = jnp.where(reached, n * (log_f_prev - safe_f), -1.0)            # <= 0; F_<^n / F^n in log
        log_level_law = jnp.where(reached, n * safe_f + jnp.log(-jnp.expm1(ratio)), -jnp.inf)
        safe_mass = jnp.where(reached, log_mass, 0.0)
        law = jnp.where(lp_sorted > -jnp.inf, lp_sorted - safe_mass[level] + log_level_law[level], -jnp.inf)
        return law[jnp.argsort(order)]

    return jax.vmap(one_row)(log_pi0, reward)


def candidate_instance(kl_coef, reward: jax.Array | None = None, *, phi: jax.Array | None = None,
                       theta: jax.Array | None = None, d0: jax.Array | None = None,
                       skew: jax.Array | None = None) -> Instance:
    """Instance over ``K`` i.i.d. draws per prompt with the empirical reference ``pi0(slot) = 1/K``.

    ``reward [n_x, K]`` (or ``phi [n_x, K, d]`` + ``theta``) are the draws' rewards/features, slot ``j`` being
    the ``j``-th draw; repeated responses keep one slot per draw, so a response drawn ``c`` times has
    reference mass ``c/K`` (module docstring). ``K >= 2``.
    """
    shape_source = reward if reward is not None else phi
    if shape_source is None or jnp.ndim(shape_source) < 2:
        v.fail("reward", None if shape_source is None else "<array>",
               "a table [n_x, K], or give phi [n_x, K, d] and theta [d]")
    n_x, k = jnp.shape(shape_source)[:2]
    dtype = jnp.result_type(shape_source)
    dtype = dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)
    log_pi0 = jnp.full((n_x, k), -np.log(k), dtype)
    reward, phi, params = _reward_and_features(reward, phi, theta, log_pi0)
    return instance_from_arrays(phi, log_pi0, reward, kl_coef, d0=d0, skew=skew, params=params)


def _check_indices(indices, n_x: int, n_responses: int) -> jax.Array:
    indices = jnp.asarray(indices)
    if indices.ndim != 2 or indices.shape[0] != n_x or not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"indices has shape {tuple(indices.shape)} and dtype {indices.dtype}, which is not "
                         f"allowed: indices must be integer [n_x, K] with n_x = {n_x} (response rows of the "
                         "enumeration, e.g. from bandits.lm.space.response_index).")
    if v.is_concrete(indices) and indices.size and (int(indices.min()) < 0 or int(indices.max()) >= n_responses):
        v.fail("indices", f"<values in [{int(indices.min())}, {int(indices.max())}]>",
               f"response rows in [0, {n_responses}) (-1 from response_index marks a response outside the space)")
    return indices


def candidates_from_exact(instance: Instance, indices: jax.Array) -> Instance:
    """The candidate instance of draws ``indices [n_x, K]`` (rows of the exact ``instance``'s responses).

    Rewards, features, ``kl_coef``, ``d0``, ``skew`` and the reward parameters come from ``instance``; the
    reference is the empirical measure (``candidate_instance``).
    """
    indices = _check_indices(indices, instance.n_contexts, instance.n_actions)
    reward = jnp.take_along_axis(instance.reward, indices, axis=-1)
    phi = jnp.take_along_axis(instance.phi, indices[..., None], axis=-2)
    cand = candidate_instance(instance.kl_coef, reward, phi=phi, d0=instance.d0, skew=instance.skew)
    return cand._replace(params=instance.params)


def lift_candidate_policy(log_pi: jax.Array, indices: jax.Array, n_responses: int) -> jax.Array:
    """A slot policy ``log_pi [n_x, K]`` as a policy on the full space ``[n_x, A]``: the probabilities of
    slots holding the same response are summed (log-space); responses never drawn get ``-inf``."""
    log_pi = jnp.asarray(log_pi)
    indices = _check_indices(indices, log_pi.shape[0], n_responses)
    v.check_shape("log_pi", log_pi, indices.shape)
    return jax.vmap(lambda lp, idx: segment_logsumexp(lp, idx, n_responses))(log_pi, indices)


def candidate_gibbs_policy(instance: Instance, indices: jax.Array) -> jax.Array:
    """The Gibbs policy of the candidate instance (SNIS approximation of ``pi*``), lifted to ``[n_x, A]``."""
    cand = candidates_from_exact(instance, indices)
    return lift_candidate_policy(gibbs_policy(cand.log_pi0, cand.reward, cand.kl_coef), indices,
                                 instance.n_actions)


def candidate_gibbs_kl(instance: Instance, indices: jax.Array) -> jax.Array:
    """``KL(pi_K(.|x) || pi*(.|x))`` per prompt, ``[n_x]``: how far the Gibbs policy over the ``K`` candidates
    (lifted to the full space) is from the exact Gibbs policy. By docs/theory.md §1.3(ii) the value gap
    ``J(pi*) - J(pi_K)`` is ``kl_coef`` times its ``d0``-mean."""
    return kl_divergence(candidate_gibbs_policy(instance, indices), optimal_policy(instance))
