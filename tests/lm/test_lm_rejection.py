"""lm-rejection (docs/llm_bridge.md §5.4 test 4): the experiment's exact laws against NumPy brute force.

On a small TreeLM world (V = 4, L = 3, 64 responses, 3 prompts): exact-M RS accepts exactly Gibbs with rate
``E_{pi0} exp((r - M)/eta)``; RSO with the per-batch maximum is ``pi0`` at ``n = 1``, biased towards low
reward (bias <= 0) and approaches Gibbs as ``n`` grows; best-of-2 equals the brute-force law over all ordered
pairs of draws, and ``KL(BoN || pi0) <= log n - (n - 1)/n``; the Gibbs frontier's E r and KL equal NumPy.
"""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from experiments.catalogue import lm_rejection as exp

CONFIG = exp.Config(vocab_size=4, length=3, n_prompts=3, n_grid=(1, 2, 8, 64), kl_grid=(0.2, 0.5, 2.0))


@functools.lru_cache(maxsize=None)
def outputs():
    key = jax.random.key(7)
    n_grid, kl_grid = jnp.asarray(CONFIG.n_grid, float), jnp.asarray(CONFIG.kl_grid, float)
    out = jax.jit(functools.partial(exp.one_seed, config=CONFIG))(key, n_grid, kl_grid)
    world = jax.jit(functools.partial(exp.lm_world, config=CONFIG))(key)
    return jax.tree.map(np.asarray, out), tuple(np.asarray(a) for a in world)


def _gibbs(lp0, r, eta):
    w = lp0 + r / eta
    return w - np.log(np.exp(w).sum(1, keepdims=True))


def test_exact_rs_is_gibbs_with_the_exact_rate():
    out, (lp0, r) = outputs()
    eta = CONFIG.kl_coef
    rs_r, rs_kl, rs_tv, bias, rate, proposals = out["rs_exact"]
    g = np.exp(_gibbs(lp0, r, eta))
    want_rate = np.mean((np.exp(lp0) * np.exp((r - r.max(1, keepdims=True)) / eta)).sum(1))
    print(f"exact-M RS: rate {rate:.5f} (NumPy {want_rate:.5f}), proposals/sample {proposals:.3f}, TV {rs_tv:.2e}")
    assert rs_tv < 1e-12 and abs(bias) < 1e-12
    np.testing.assert_allclose(rate, want_rate, rtol=1e-12)
    np.testing.assert_allclose(rs_r, np.mean((g * r).sum(1)), rtol=1e-12)


def test_rso_per_batch_max_is_biased_and_converges():
    out, (lp0, r) = outputs()
    rso_r, rso_kl, tv, bias, rate, proposals, per_batch = out["rso"]
    tv_pi0 = 0.5 * np.mean(np.abs(np.exp(lp0) - np.exp(_gibbs(lp0, r, CONFIG.kl_coef))).sum(1))
    print(f"RSO TV to Gibbs over n={CONFIG.n_grid}: {tv}, reward bias {bias}, accepted/batch {per_batch}")
    np.testing.assert_allclose(tv[0], tv_pi0, rtol=1e-10)                  # n = 1 accepts every draw: pi0
    np.testing.assert_allclose(rate[0], 1.0, rtol=1e-12)
    assert np.all(bias <= 1e-12) and bias[1] < -1e-4                          # biased towards low reward
    assert tv[-1] < 0.2 * tv[0] and tv[-1] > 0                               # approaches, but is not, Gibbs
    np.testing.assert_allclose(per_batch, np.asarray(CONFIG.n_grid) * rate, rtol=1e-12)


def test_best_of_n_against_brute_force_and_bound():
    out, (lp0, r) = outputs()
    bon_r, bon_kl, bon_tv, bound = out["best_of_n"]
    p = np.exp(lp0)
    want = []
    for x in range(p.shape[0]):            # best of 2 by brute force over ordered pairs (rewards have no ties)
        law = np.zeros(p.shape[1])
        for i, j in itertools.product(range(p.shape[1]), repeat=2):
            law[i if r[x, i] >= r[x, j] else j] += p[x, i] * p[x, j]
        want.append((law * r[x]).sum())
    np.testing.assert_allclose(bon_r[1], np.mean(want), rtol=1e-12)
    assert abs(bon_kl[0]) < 1e-12 and np.all(bon_kl <= bound + 1e-12)
    print(f"best-of-n over n={CONFIG.n_grid}: E r {bon_r}, KL {bon_kl}, bound {bound}")


def test_gibbs_frontier_matches_numpy():
    out, (lp0, r) = outputs()
    g_r, g_kl = out["gibbs"]
    for i, eta in enumerate(CONFIG.kl_grid):
        lg = _gibbs(lp0, r, eta)
        np.testing.assert_allclose(g_r[i], np.mean((np.exp(lg) * r).sum(1)), rtol=1e-12)
        np.testing.assert_allclose(g_kl[i], np.mean((np.exp(lg) * (lg - lp0)).sum(1)), rtol=1e-10)
    assert np.all(np.diff(g_r) < 0) and np.all(np.diff(g_kl) < 0)           # smaller eta: more reward, more KL
