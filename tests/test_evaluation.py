"""Exact evaluators against brute-force NumPy loops."""
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import bandits as b
from tests.helpers import (kl_coefs, np_gibbs, np_kl, np_value, np_win_rate, random_instance,
                           random_log_policy, seeds, shapes)


@given(seeds, shapes, kl_coefs)
def test_value_reward_kl_match_bruteforce(seed, shape, eta):
    inst = random_instance(seed, shape, eta)
    rng = np.random.default_rng(seed)
    lp = random_log_policy(rng, shape[0], shape[1])
    p = np.exp(lp)
    d0, r, pi0 = np.asarray(inst.d0), np.asarray(inst.reward), np.exp(np.asarray(inst.log_pi0))
    np.testing.assert_allclose(b.value(inst, jnp.asarray(lp)), np_value(inst, p), rtol=1e-10, atol=1e-12)
    er = sum(d0[x] * p[x, a] * r[x, a] for x in range(shape[0]) for a in range(shape[1]))
    np.testing.assert_allclose(b.expected_reward(inst, jnp.asarray(lp)), er, rtol=1e-10, atol=1e-12)
    kl = sum(d0[x] * np_kl(p[x], pi0[x]) for x in range(shape[0]))
    np.testing.assert_allclose(b.kl_to_reference(inst, jnp.asarray(lp)), kl, rtol=1e-9, atol=1e-12)


@given(seeds, shapes, kl_coefs)
def test_optimal_value_and_suboptimality_match_bruteforce(seed, shape, eta):
    inst = random_instance(seed, shape, eta)
    pi0, r, d0 = np.exp(np.asarray(inst.log_pi0)), np.asarray(inst.reward), np.asarray(inst.d0)
    star = np.stack([np_gibbs(pi0[x], r[x], eta) for x in range(shape[0])])
    j_star = np_value(inst, star)
    np.testing.assert_allclose(b.optimal_value(inst), j_star, rtol=1e-9, atol=1e-10)
    lp = random_log_policy(np.random.default_rng(seed), shape[0], shape[1])
    p = np.exp(lp)
    sub = j_star - np_value(inst, p)
    np.testing.assert_allclose(b.suboptimality(inst, jnp.asarray(lp)), sub, rtol=1e-8, atol=1e-10)
    sub_kl = sub + eta * sum(d0[x] * np_kl(star[x], p[x]) for x in range(shape[0]))
    np.testing.assert_allclose(b.suboptimality_kl(inst, jnp.asarray(lp)), sub_kl, rtol=1e-8, atol=1e-10)


@given(seeds, shapes, st.floats(0.0, 3.0))
def test_win_rate_matches_bruteforce_and_is_antisymmetric(seed, shape, skew):
    inst = random_instance(seed, shape, 1.0, skew_strength=skew)
    rng = np.random.default_rng(seed)
    l1, l2 = (random_log_policy(rng, shape[0], shape[1]) for _ in range(2))
    w12 = b.win_rate(inst, jnp.asarray(l1), jnp.asarray(l2))
    np.testing.assert_allclose(w12, np_win_rate(inst, np.exp(l1), np.exp(l2)), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(w12 + b.win_rate(inst, jnp.asarray(l2), jnp.asarray(l1)), 1.0, atol=1e-12)
    np.testing.assert_allclose(b.win_rate(inst, jnp.asarray(l1), jnp.asarray(l1)), 0.5, atol=1e-12)


def test_intransitive_oracle_has_a_cycle():
    """A strong skew block makes a rock-paper-scissors triple, which no reward can produce."""
    s = np.zeros((3, 3))
    s[0, 1], s[1, 2], s[2, 0] = 3.0, 3.0, 3.0
    s = s - s.T
    phi = np.eye(3)[None]
    inst = b.instance_from_arrays(phi, np.log(np.full((1, 3), 1 / 3)), np.zeros((1, 3)), 1.0, skew=s)
    p = np.asarray(b.preference_matrices(inst))[0]
    assert p[0, 1] > 0.5 and p[1, 2] > 0.5 and p[2, 0] > 0.5
