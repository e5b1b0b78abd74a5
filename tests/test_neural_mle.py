"""Neural BT reward estimation and its uncertainty, against NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bandits as b
from algorithms.core import neural_mle as nm

CFG = b.InstanceConfig(n_contexts=8, n_actions=5, dim=3, reward="neural", hidden=6, reward_norm=2.0)


def _setup(n=400, seed=0):
    inst = b.make_instance(jax.random.key(seed), CFG)
    data = b.with_size(b.sample_preference_data(jax.random.key(seed + 1), inst, inst.log_pi0, inst.log_pi0, n),
                       n - 7)
    return inst, data


def _np_reward(params, phi):
    w1, b1, w2 = (np.asarray(p) for p in params)
    return np.tanh(phi @ w1.T + b1) @ w2


def test_loss_matches_numpy():
    inst, data = _setup()
    params = nm.init_network(jax.random.key(5), 3, 6)
    phi = np.asarray(inst.phi)
    x, a1, a2, y, m = (np.asarray(f) for f in data)
    margin = _np_reward(params, phi[x, a1]) - _np_reward(params, phi[x, a2])
    nll = np.logaddexp(0.0, -(2 * y - 1) * margin)
    sq = sum(float(np.sum(np.asarray(p) ** 2)) for p in params)
    ref = (nll[m].sum() + 0.5 * 0.7 * sq) / m.sum()
    np.testing.assert_allclose(nm.bt_network_loss(params, inst.phi, data, 0.7), ref, rtol=1e-12)


def test_fit_lowers_loss_and_learns_the_reward():
    """On realizable data the fitted network's reward differences track the true ones."""
    inst, data = _setup(n=3000)
    start = nm.init_network(jax.random.key(5), 3, 6)
    fit = nm.fit_network(start, inst.phi, data, 1.0, steps=800, learning_rate=0.03)
    assert fit.loss < nm.bt_network_loss(start, inst.phi, data, 1.0) - 0.05
    true = np.asarray(nm.centred_reward(inst, inst.params)).ravel()
    learned = np.asarray(nm.centred_reward(inst, fit.params)).ravel()
    assert np.corrcoef(true, learned)[0, 1] > 0.9
    # and the Gibbs policy of the learned reward beats pi0
    pi = b.gibbs_policy(inst.log_pi0, b.reward_table(fit.params, inst.phi), inst.kl_coef)
    assert b.suboptimality(inst, pi) < 0.5 * b.suboptimality(inst, inst.log_pi0)


def test_neural_linear_uncertainty_matches_numpy():
    inst, data = _setup()
    params = nm.init_network(jax.random.key(6), 3, 6)
    got = np.asarray(nm.neural_linear_uncertainty(inst, params, data, 2.0))
    w1, b1, _ = (np.asarray(p) for p in params)
    h = np.tanh(np.asarray(inst.phi) @ w1.T + b1)
    x, a1, a2, _, m = (np.asarray(f) for f in data)
    dh = (h[x, a1] - h[x, a2])[m]
    sigma_inv = np.linalg.inv(2.0 * np.eye(6) + dh.T @ dh)
    nu = np.einsum("x,xa,xah->h", np.asarray(inst.d0), np.exp(np.asarray(inst.log_pi0)), h)
    ref = np.sqrt(np.einsum("xah,hk,xak->xa", h - nu, sigma_inv, h - nu))
    np.testing.assert_allclose(got, ref, rtol=1e-10)


def test_bootstrap_ensemble_shapes_and_spread():
    inst, data = _setup(n=200)
    stacked, mean, spread = nm.bootstrap_ensemble(jax.random.key(2), inst, data, 1.0, 3, 6, steps=50)
    assert stacked.w1.shape == (3, 6, 3)
    assert mean.shape == spread.shape == (8, 5)
    assert np.all(np.asarray(spread) >= 0) and float(spread.max()) > 0
    members = np.stack([np.asarray(nm.centred_reward(inst, jax.tree.map(lambda p: p[i], stacked)))
                        for i in range(3)])
    np.testing.assert_allclose(mean, members.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(spread, members.std(0, ddof=1), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="members=1 is not allowed"):
        nm.bootstrap_ensemble(jax.random.key(2), inst, data, 1.0, 1, 6)


def test_fit_vmap_equals_loop():
    inst, data = _setup(n=100)
    starts = jax.vmap(lambda k: nm.init_network(k, 3, 6))(jax.random.split(jax.random.key(1), 2))
    batched = jax.vmap(lambda p: nm.fit_network(p, inst.phi, data, 1.0, steps=20).params)(starts)
    for i in range(2):
        single = nm.fit_network(jax.tree.map(lambda p: p[i], starts), inst.phi, data, 1.0, steps=20).params
        for lb, ls in zip(batched, single):
            np.testing.assert_allclose(lb[i], ls, rtol=1e-9, atol=1e-12)


def test_bootstrap_counts_resample_only_valid_rows():
    """Counts sum to the number of valid rows, never touch masked ones, and are uniform on average."""
    mask = jnp.asarray(np.arange(40) % 5 != 3)
    counts = np.stack([np.asarray(nm.bootstrap_counts(jax.random.key(i), mask)) for i in range(300)])
    assert np.all(counts.sum(-1) == int(mask.sum()))
    assert np.all(counts[:, ~np.asarray(mask)] == 0)
    # each valid row is drawn Binomial(32, 1/32) times: mean 1 per row over 300 resamples
    per_row = counts[:, np.asarray(mask)].mean(0)
    assert np.all(np.abs(per_row - 1.0) < 0.35)
