"""Deployment pair-selection rules (docs/theory.md §4.5, §6) against NumPy brute force, and regret monotonicity."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithms.onepass import deployment as dueling

K, D = 6, 3


def _world(seed):
    rng = np.random.default_rng(seed)
    phi = rng.standard_normal((K, D))
    phi /= np.linalg.norm(phi, axis=-1, keepdims=True)
    theta = rng.standard_normal(D)
    a = rng.standard_normal((D, D))
    inv = np.linalg.inv(a @ a.T + 0.5 * np.eye(D))
    log_pi0 = np.log(rng.dirichlet(np.ones(K)))
    return phi, theta, inv, log_pi0


def _w(phi, inv):
    return np.array([[np.sqrt((phi[a] - phi[b]) @ inv @ (phi[a] - phi[b])) for b in range(K)] for a in range(K)])


_SELECT = jax.jit(dueling.select_pair, static_argnames=("rule", "quantile"))


def _select(rule, phi, theta, inv, beta, log_pi0, key=0, **kw):
    if rule not in dueling.RULES:
        dueling.select_pair(rule, jax.random.key(key), phi, theta, inv, beta, log_pi0)
    a, b = _SELECT(rule, jax.random.key(key), jnp.asarray(phi), jnp.asarray(theta), jnp.asarray(inv),
                               beta, jnp.asarray(log_pi0), **kw)
    return int(a), int(b)


@settings(max_examples=10)
@given(st.integers(0, 10**6), st.floats(0.0, 3.0))
def test_deterministic_rules_match_brute_force(seed, beta):
    phi, theta, inv, log_pi0 = _world(seed)
    r = phi @ theta
    w = _w(phi, inv)
    first = int(np.argmax(r))
    assert _select("p3", phi, theta, inv, beta, log_pi0) == (first, int(np.argmax(r + beta * w[:, first])))
    pair = max(((r[a] + r[b] + beta * w[a, b], a, b) for a in range(K) for b in range(K)))
    a, b = _select("maxpairucb", phi, theta, inv, beta, log_pi0)
    np.testing.assert_allclose(r[a] + r[b] + beta * w[a, b], pair[0], rtol=1e-10)
    cand = [a for a in range(K) if all(r[a] - r[b] + beta * w[a, b] >= 0 for b in range(K))]
    assert first in cand
    a, b = _select("maxinp", phi, theta, inv, beta, log_pi0)
    assert a in cand and b in cand
    np.testing.assert_allclose(w[a, b], max(w[i, j] for i in cand for j in cand), rtol=1e-10)
    order = np.argsort(-r, kind="stable")
    assert _select("best_worst", phi, theta, inv, beta, log_pi0) == (order[0], order[-1])
    assert _select("best_second", phi, theta, inv, beta, log_pi0) == (order[0], order[1])
    assert _select("best_quartile", phi, theta, inv, beta, log_pi0) == (order[0], order[round(0.25 * (K - 1))])


def test_maxinp_with_zero_radius_is_greedy_and_large_radius_explores():
    phi, theta, inv, log_pi0 = _world(3)
    first = int(np.argmax(phi @ theta))
    assert _select("maxinp", phi, theta, inv, 0.0, log_pi0) == (first, first)
    w = _w(phi, inv)
    a, b = _select("maxinp", phi, theta, inv, 1e6, log_pi0)
    np.testing.assert_allclose(w[a, b], w.max(), rtol=1e-12)


def test_colstim_second_arm_and_perturbation():
    phi, theta, inv, log_pi0 = _world(5)
    r = phi @ theta
    w = _w(phi, inv)
    a, b = _select("colstim", phi, theta, inv, 0.7, log_pi0, key=1, colstim_c=0.0)
    assert a == int(np.argmax(r)) and b == int(np.argmax(r + 0.7 * w[:, a]))
    eps = np.asarray(jax.random.logistic(jax.random.key(1), (K,), dtype=jnp.float64))
    u = np.sqrt(np.einsum("ai,ij,aj->a", phi, inv, phi))
    a, b = _select("colstim", phi, theta, inv, 0.7, log_pi0, key=1, colstim_c=5.0)
    assert a == int(np.argmax(r + 5.0 * eps * u)) and b == int(np.argmax(r + 0.7 * w[:, a]))


def test_random_and_greedy_sample_their_laws():
    """Chi-square-free check: empirical frequencies over 4000 keys within 4 standard errors."""
    phi, theta, inv, log_pi0 = _world(7)
    keys = jax.random.split(jax.random.key(0), 4000)
    for rule, logits in (("random", log_pi0), ("greedy", log_pi0 + phi @ theta / 0.5)):
        draw = jax.vmap(lambda k: dueling.select_pair(rule, k, jnp.asarray(phi), jnp.asarray(theta),
                                                      jnp.asarray(inv), 1.0, jnp.asarray(log_pi0), kl_coef=0.5))
        a, b = (np.asarray(x) for x in draw(keys))
        p = np.exp(logits - logits.max())
        p /= p.sum()
        for sample in (a, b):
            freq = np.bincount(sample, minlength=K) / len(sample)
            assert np.all(np.abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / len(sample)) + 1e-3)
        assert np.mean(a != b) > 0


@settings(max_examples=10)
@given(st.integers(0, 10**6))
def test_cumulative_regrets_are_non_decreasing_and_ordered(seed):
    rng = np.random.default_rng(seed)
    rewards = rng.standard_normal((50, K))
    a, b = rng.integers(0, K, 50), rng.integers(0, K, 50)
    avg, weak = jax.vmap(dueling.pair_regret)(jnp.asarray(rewards), jnp.asarray(a), jnp.asarray(b))
    avg, weak = np.asarray(avg), np.asarray(weak)
    np.testing.assert_allclose(avg, rewards.max(1) - 0.5 * (rewards[np.arange(50), a] + rewards[np.arange(50), b]))
    assert np.all(np.diff(np.cumsum(avg)) >= 0) and np.all(np.diff(np.cumsum(weak)) >= 0)
    assert np.all(weak <= avg + 1e-12) and np.all(weak >= 0)


def test_bad_rule_is_refused():
    phi, theta, inv, log_pi0 = _world(0)
    with pytest.raises(ValueError, match="rule='ucb'"):
        _select("ucb", phi, theta, inv, 1.0, log_pi0)
