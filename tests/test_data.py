"""Sampling: frequencies against the policies and the oracle, nested prefixes, common random numbers."""
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, strategies as st
from scipy import stats

import bandits as b
from tests.helpers import random_instance, random_log_policy

N = 20000


def _instance_and_policies(seed=0, shape=(3, 4, 2)):
    inst = random_instance(seed, shape, 1.0, skew_strength=1.0)
    rng = np.random.default_rng(seed + 100)
    return inst, jnp.asarray(random_log_policy(rng, shape[0], shape[1])), jnp.asarray(
        random_log_policy(rng, shape[0], shape[1]))


def test_context_and_action_frequencies_match():
    inst, l1, l2 = _instance_and_policies()
    data = b.sample_preference_data(jax.random.key(0), inst, l1, l2, N)
    x, a1, a2 = (np.asarray(v) for v in (data.x, data.a1, data.a2))
    counts = np.bincount(x, minlength=3)
    assert stats.chisquare(counts, N * np.asarray(inst.d0)).pvalue > 1e-3
    for xi in range(3):
        for actions, lp in ((a1, l1), (a2, l2)):
            c = np.bincount(actions[x == xi], minlength=4)
            assert stats.chisquare(c, c.sum() * np.exp(np.asarray(lp[xi]))).pvalue > 1e-3


def test_wrong_policy_is_detected():
    """The frequency test has power: data from pi1 is rejected against pi2."""
    inst, l1, l2 = _instance_and_policies()
    data = b.sample_preference_data(jax.random.key(0), inst, l1, l1, N)
    x, a1 = np.asarray(data.x), np.asarray(data.a1)
    c = np.bincount(a1[x == 0], minlength=4)
    assert stats.chisquare(c, c.sum() * np.exp(np.asarray(l2[0]))).pvalue < 1e-6


def test_label_frequencies_match_oracle():
    inst, l1, l2 = _instance_and_policies()
    data = b.sample_preference_data(jax.random.key(1), inst, l1, l2, N)
    x, a1, a2, y = (np.asarray(v) for v in data[:4])
    p = np.asarray(b.preference_matrices(inst))
    pvalues = []
    for xi in range(3):
        for i in range(4):
            for j in range(4):
                sel = (x == xi) & (a1 == i) & (a2 == j)
                if sel.sum() >= 30:
                    pvalues.append(stats.binomtest(int(y[sel].sum()), int(sel.sum()), p[xi, i, j]).pvalue)
    # Bonferroni over the cells tested
    assert min(pvalues) > 1e-3 / len(pvalues)
    assert len(pvalues) > 20


def test_deterministic_labels_follow_the_majority():
    inst, l1, l2 = _instance_and_policies()
    data = b.sample_preference_data(jax.random.key(2), inst, l1, l2, 2000, deterministic=True)
    p = np.asarray(b.preference_probability(inst, data.x, data.a1, data.a2))
    y = np.asarray(data.y)
    decided = p != 0.5
    np.testing.assert_array_equal(y[decided], (p[decided] > 0.5).astype(int))


def test_nested_prefixes_and_offsets():
    inst, l1, l2 = _instance_and_policies()
    key = jax.random.key(3)
    big = b.sample_preference_data(key, inst, l1, l2, 50)
    small = b.sample_preference_data(key, inst, l1, l2, 20)
    tail = b.sample_preference_data(key, inst, l1, l2, 30, start=20)
    for f_big, f_small, f_tail in zip(big, small, tail):
        np.testing.assert_array_equal(f_big[:20], f_small)
        np.testing.assert_array_equal(f_big[20:], f_tail)
    masked = b.with_size(big, 20)
    assert int(masked.mask.sum()) == 20 and bool(masked.mask[19]) and not bool(masked.mask[20])
    z = b.feature_differences(inst, masked)
    np.testing.assert_array_equal(z[20:], 0.0)
    np.testing.assert_allclose(z[:20], inst.phi[big.x[:20], big.a1[:20]] - inst.phi[big.x[:20], big.a2[:20]])
    both = b.concatenate(small, tail)
    for f_big, f_both in zip(big, both):
        np.testing.assert_array_equal(f_big, f_both)


def test_common_random_numbers():
    """Different policy pairs on one key see the same contexts and, where actions agree, labels."""
    inst, l1, l2 = _instance_and_policies()
    key = jax.random.key(4)
    d1 = b.sample_preference_data(key, inst, l1, l2, 500)
    d2 = b.sample_preference_data(key, inst, l1, inst.log_pi0, 500)
    np.testing.assert_array_equal(d1.x, d2.x)
    np.testing.assert_array_equal(d1.a1, d2.a1)
    same = np.asarray(d1.a2 == d2.a2)
    assert same.sum() > 50
    np.testing.assert_array_equal(np.asarray(d1.y)[same], np.asarray(d2.y)[same])


def test_sampling_vmap_equals_loop_and_jit_equals_eager():
    inst, l1, l2 = _instance_and_policies()
    keys = jax.random.split(jax.random.key(5), 4)
    fn = lambda k: b.sample_preference_data(k, inst, l1, l2, 64)
    batched = jax.vmap(fn)(keys)
    jitted = jax.jit(fn)
    for i, k in enumerate(keys):
        for f_b, f_l, f_j in zip(batched, fn(k), jitted(k)):
            np.testing.assert_array_equal(f_b[i], f_l)
            np.testing.assert_array_equal(f_j, f_l)


@given(st.integers(0, 2**31 - 1), st.integers(1, 6), st.booleans())
def test_inverse_cdf_matches_numpy_searchsorted(seed, k, with_zero):
    """``inverse_cdf`` is ``searchsorted(cumsum(p), u, side='right')``; zero-probability actions never drawn."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k), size=5)
    if with_zero and k > 1:
        p[:, rng.integers(k)] = 0.0
        p /= p.sum(-1, keepdims=True)
    u = np.concatenate([rng.uniform(size=(5, 200)), np.zeros((5, 1))], axis=1)
    got = np.asarray(b.inverse_cdf(jnp.asarray(p)[:, None, :].repeat(201, 1), jnp.asarray(u)))
    cdf = np.cumsum(p, -1) / np.cumsum(p, -1)[:, -1:]
    want = np.stack([np.minimum(np.searchsorted(c, uu, side="right"), k - 1) for c, uu in zip(cdf, u)])
    np.testing.assert_array_equal(got, want)
    assert np.all(np.take_along_axis(p, got, axis=1) > 0)


def test_inverse_cdf_coupling_keeps_actions_of_equal_policies():
    """Monotone coupling: with one uniform, a policy and a slightly perturbed one mostly agree."""
    inst, l1, _ = _instance_and_policies()
    l1b = jax.nn.log_softmax(l1 + 0.05 * jnp.arange(4.0)[None, :])
    d1 = b.sample_preference_data(jax.random.key(6), inst, l1, l1, 2000)
    d2 = b.sample_preference_data(jax.random.key(6), inst, l1b, l1b, 2000)
    tv = 0.5 * np.abs(np.exp(np.asarray(l1)) - np.exp(np.asarray(l1b))).sum(-1).max()
    # under the monotone coupling P(a != a') <= (K - 1) * max TV; independent draws would differ ~70%
    assert np.mean(np.asarray(d1.a1 != d2.a1)) <= 3 * tv + 0.02
