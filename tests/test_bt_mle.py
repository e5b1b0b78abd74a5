"""BT-MLE against scipy.optimize; warm starts; constraint; shift invariance (docs/theory.md §9.2 inv. 3)."""
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

import bandits as b
from algorithms.core.bt_mle import bt_negative_log_likelihood, fit_bt_mle

CFG = b.InstanceConfig(n_contexts=16, n_actions=6, dim=4, reward_norm=2.0)


def _data(seed, n=200, deterministic=False):
    inst = b.make_instance(jax.random.key(seed), CFG)
    data = b.sample_preference_data(jax.random.key(seed + 1), inst, inst.log_pi0, inst.log_pi0, n,
                                    deterministic=deterministic)
    return inst, data, b.feature_differences(inst, data)


def _np_objective(z, y, lam):
    z, y = np.asarray(z), np.asarray(y, float)
    s = 2 * y - 1

    def f(t):
        u = s * (z @ t)
        return np.sum(np.logaddexp(0.0, -u)) + 0.5 * lam * t @ t

    def g(t):
        u = s * (z @ t)
        return -(z.T @ (s / (1 + np.exp(u)))) + lam * t
    return f, g


@settings(max_examples=10)
@given(st.integers(0, 10**6), st.floats(0.01, 10.0), st.booleans())
def test_mle_matches_scipy(seed, lam, deterministic):
    """Also on separable (noise-free) data, where lam > 0 keeps the optimum finite."""
    inst, data, z = _data(seed, deterministic=deterministic)
    fit = fit_bt_mle(z, data.y, data.mask, lam)
    f, g = _np_objective(z, data.y, lam)
    ref = minimize(f, np.zeros(4), jac=g, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15})
    np.testing.assert_allclose(fit.theta, ref.x, atol=1e-5 * max(1.0, np.abs(ref.x).max()))
    assert f(np.asarray(fit.theta)) <= ref.fun + 1e-9
    assert fit.grad_norm < 1e-8


def test_mask_and_warm_start():
    inst, data, z = _data(3, n=300)
    small = b.with_size(data, 120)
    fit_masked = fit_bt_mle(b.feature_differences(inst, small), small.y, small.mask, 1.0)
    fit_prefix = fit_bt_mle(z[:120], data.y[:120], data.mask[:120], 1.0)
    np.testing.assert_allclose(fit_masked.theta, fit_prefix.theta, atol=1e-10)
    cold = fit_bt_mle(z, data.y, data.mask, 1.0)
    warm = fit_bt_mle(z, data.y, data.mask, 1.0, theta0=fit_masked.theta)
    np.testing.assert_allclose(warm.theta, cold.theta, atol=1e-10)
    assert warm.iterations <= cold.iterations


@settings(max_examples=6)
@given(st.integers(0, 10**6), st.floats(0.2, 1.5))
def test_constrained_mle_matches_scipy(seed, radius):
    inst, data, z = _data(seed, n=400)
    fit = fit_bt_mle(z, data.y, data.mask, 0.1, radius=radius)
    f, g = _np_objective(z, data.y, 0.1)
    cons = {"type": "ineq", "fun": lambda t: radius**2 - t @ t, "jac": lambda t: -2 * t}
    ref = minimize(f, np.zeros(4), jac=g, constraints=[cons], method="SLSQP",
                   options={"ftol": 1e-14, "maxiter": 500})
    assert np.linalg.norm(fit.theta) <= radius * (1 + 1e-8)
    np.testing.assert_allclose(f(np.asarray(fit.theta)), ref.fun, rtol=1e-9)
    np.testing.assert_allclose(fit.theta, ref.x, atol=1e-4)
    free = fit_bt_mle(z, data.y, data.mask, 0.1, radius=100.0)
    np.testing.assert_allclose(free.theta, fit_bt_mle(z, data.y, data.mask, 0.1).theta, atol=1e-12)


@given(st.integers(0, 10**6), st.floats(-5.0, 5.0))
def test_invariant3_likelihood_invariant_along_unidentified_directions(seed, scale):
    """theta -> theta + w leaves the BT likelihood unchanged when all differences are orthogonal to w."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((30, 4))
    z[:, 3] = 0.0  # every feature difference lies in the first three coordinates
    y = rng.integers(0, 2, 30)
    theta = rng.standard_normal(4)
    w = np.array([0.0, 0.0, 0.0, scale])
    mask = np.ones(30, bool)
    np.testing.assert_allclose(bt_negative_log_likelihood(jnp.asarray(theta + w), jnp.asarray(z), y, mask),
                               bt_negative_log_likelihood(jnp.asarray(theta), jnp.asarray(z), y, mask),
                               rtol=1e-13)


def test_vmap_equals_loop_and_jit():
    keys = jax.random.split(jax.random.key(9), 3)

    def per_seed(key):
        inst = b.make_instance(key, CFG)
        data = b.sample_preference_data(key, inst, inst.log_pi0, inst.log_pi0, 100)
        return fit_bt_mle(b.feature_differences(inst, data), data.y, data.mask, 1.0).theta

    batched = jax.jit(jax.vmap(per_seed))(keys)
    for i, k in enumerate(keys):
        np.testing.assert_allclose(batched[i], per_seed(k), atol=1e-10)


def test_bad_lambda():
    import pytest
    _, data, z = _data(0, n=10)
    with pytest.raises(ValueError, match="lam=0.0 is not allowed"):
        fit_bt_mle(z, data.y, data.mask, 0.0)
