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


@given(st.integers(0, 2**31 - 1), st.sampled_from([1, 3, 64, 65, 130]), st.booleans())
def test_search_rows_matches_numpy_searchsorted_on_both_paths(seed, k, ties):
    """``search_rows`` (compare-all for short rows, bisection for rows longer than COMPARE_ALL_MAX) is
    ``min(searchsorted(row, u, side='right'), K - 1)`` per draw, ties and exact hits included."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k), size=4)
    if ties and k > 1:
        p[:, rng.integers(k, size=max(1, k // 3))] = 0.0
        p /= np.maximum(p.sum(-1, keepdims=True), 1e-300)
        p[p.sum(-1) == 0, 0] = 1.0
    table = np.cumsum(p, -1) / np.cumsum(p, -1)[:, -1:]
    rows = rng.integers(4, size=300)
    u = rng.uniform(size=300)
    u[:20] = table[rows[:20], rng.integers(k, size=20)]    # exact hits of table entries
    u[20] = 0.0
    got = np.asarray(b.search_rows(jnp.asarray(table), jnp.asarray(rows), jnp.asarray(u)))
    want = np.array([min(np.searchsorted(table[r], v, side="right"), k - 1) for r, v in zip(rows, u)])
    np.testing.assert_array_equal(got, want)
    assert (k > b.COMPARE_ALL_MAX) == (k in (65, 130))


def _threefry2x32_numpy(key, x0, x1):
    """Threefry-2x32, 20 rounds (Salmon et al., SC 2011, Random123's constants), written out in NumPy."""
    m = np.uint64(0xFFFFFFFF)
    rot = lambda v, r: ((v << np.uint64(r)) | (v >> np.uint64(32 - r))) & m
    ks = [np.uint64(key[0]), np.uint64(key[1]), np.uint64(key[0]) ^ np.uint64(key[1]) ^ np.uint64(0x1BD11BDA)]
    r = [[13, 15, 26, 6], [17, 29, 16, 24]]
    a = (x0.astype(np.uint64) + ks[0]) & m
    c = (x1.astype(np.uint64) + ks[1]) & m
    for block in range(5):
        for rr in r[block % 2]:
            a = (a + c) & m
            c = rot(c, rr) ^ a
        a = (a + ks[(block + 1) % 3]) & m
        c = (c + ks[(block + 2) % 3] + np.uint64(block + 1)) & m
    return a.astype(np.uint32), c.astype(np.uint32)


def test_comparison_uniforms_are_threefry_of_the_counter():
    """Word pair j of comparison i is Threefry2x32_key(i, j): checked against a NumPy Threefry, float64
    and float32; the uniforms lie in [0, 1) and depend on (key, i) only (any index order, any offset)."""
    key = jax.random.key(11)
    words = np.asarray(jax.random.key_data(key))
    index = np.array([0, 1, 7, 1000, 2**31 + 5])
    for dtype, pairs in ((jnp.float64, 4), (jnp.float32, 2)):
        got = np.asarray(b.comparison_uniforms(key, jnp.asarray(index, jnp.uint32), dtype))
        i = np.repeat(index, pairs)
        j = np.tile(np.arange(pairs), len(index))
        y0, y1 = _threefry2x32_numpy(words, i, j)
        if pairs == 4:
            w = (y0.astype(np.uint64) << np.uint64(32)) | y1.astype(np.uint64)
            want = (w >> np.uint64(12)).astype(np.float64) * 2.0 ** -52
        else:
            w = np.stack([y0, y1], -1).reshape(-1)
            want = (w >> np.uint32(9)).astype(np.float32) * np.float32(2.0 ** -23)
        np.testing.assert_array_equal(got.reshape(-1), want)
    u = np.asarray(b.comparison_uniforms(key, jnp.arange(4000), jnp.float64))
    assert u.min() >= 0.0 and u.max() < 1.0
    np.testing.assert_array_equal(u[[3, 2999]], np.asarray(b.comparison_uniforms(key, jnp.array([3, 2999]),
                                                                                  jnp.float64)))
    for col in range(4):
        assert stats.kstest(u[:, col], "uniform").pvalue > 1e-3
    assert np.abs(np.corrcoef(u.T) - np.eye(4)).max() < 0.08
