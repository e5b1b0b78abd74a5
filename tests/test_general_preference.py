"""The linear antisymmetric general preference model (P2, docs/theory.md §3.1-3.2): psi, MLE, confidence set."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

import bandits as b
from algorithms.nash import preference_model as gp
from tests.helpers import kl_coefs, random_instance, random_log_policy, seeds

# d >= 2 so that the skew block is non-empty
gp_shapes = st.sampled_from([(3, 4, 2), (2, 5, 3)])


def np_psi(phi_a, phi_b):
    d = len(phi_a)
    skew = [phi_a[i] * phi_b[j] - phi_a[j] * phi_b[i] for i in range(d) for j in range(i + 1, d)]
    return np.concatenate([phi_a - phi_b, np.array(skew)])


def np_nll(theta, psi, y, lam):
    u = psi @ theta
    return float(np.sum(np.logaddexp(0.0, -(2 * y - 1) * u)) + 0.5 * lam * theta @ theta)


@settings(max_examples=10)
@given(seeds, gp_shapes, kl_coefs)
def test_psi_antisymmetric_and_model_is_a_preference(seed, shape, eta):
    """psi(x,a,b) = -psi(x,b,a); P_theta(a,b) + P_theta(b,a) = 1; J(pi, pi) = 1/2 in the model game."""
    inst = random_instance(seed, shape, eta)
    rng = np.random.default_rng(seed)
    theta = jnp.asarray(3.0 * rng.standard_normal(gp.psi_dim(shape[2])))
    for x in range(shape[0]):
        psi = gp.context_pair_features(inst.phi[x])
        np.testing.assert_allclose(psi, -jnp.swapaxes(psi, 0, 1), atol=1e-15)
        np.testing.assert_allclose(psi[1, 0], np_psi(np.asarray(inst.phi[x, 1]), np.asarray(inst.phi[x, 0])),
                                   atol=1e-14)
    model = gp.model_instance(inst, theta)
    p = b.payoff_matrices(model, "identity")
    np.testing.assert_allclose(p + jnp.swapaxes(p, -1, -2), 1.0, atol=1e-14)
    np.testing.assert_allclose(b.payoff_matrices(model, "logit"), gp.model_margins(inst, theta), atol=1e-12)
    pi = jnp.asarray(random_log_policy(rng, shape[0], shape[1], scale=2.0))
    np.testing.assert_allclose(b.game_value(model, pi, pi, "identity"), 0.5, atol=1e-12)


@settings(max_examples=10)
@given(seeds, gp_shapes)
def test_margin_is_inner_product_with_psi(seed, shape):
    """<theta, psi(x,a,b)> by brute force equals the model margins r_a - r_b + phi_a^T S phi_b."""
    inst = random_instance(seed, shape, 1.0)
    d = shape[2]
    theta = np.random.default_rng(seed).standard_normal(gp.psi_dim(d))
    got = np.asarray(gp.model_margins(inst, jnp.asarray(theta)))
    phi = np.asarray(inst.phi)
    for x in range(shape[0]):
        for a in range(shape[1]):
            for c in range(shape[1]):
                assert abs(got[x, a, c] - theta @ np_psi(phi[x, a], phi[x, c])) < 1e-12
    theta_r, skew = gp.split_parameter(jnp.asarray(theta), d)
    np.testing.assert_allclose(skew, -skew.T, atol=0)
    np.testing.assert_allclose(gp.join_parameter(theta_r, skew), theta, atol=0)


def test_realizable_for_linear_instances():
    """theta* = [theta_star; upper(S*)] reproduces the instance's oracle exactly."""
    cfg = b.InstanceConfig(n_contexts=3, n_actions=5, dim=3, skew_strength=2.0)
    inst = b.make_instance(jax.random.key(1), cfg)
    theta = gp.true_parameter(inst)
    np.testing.assert_allclose(gp.model_margins(inst, theta), b.payoff_matrices(inst, "logit"), atol=1e-12)
    model = gp.model_instance(inst, theta)
    np.testing.assert_allclose(model.reward - model.reward[:, :1], inst.reward - inst.reward[:, :1], atol=1e-12)
    np.testing.assert_allclose(model.skew, inst.skew, atol=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mle_matches_scipy(seed):
    cfg = b.InstanceConfig(n_contexts=4, n_actions=5, dim=3, skew_strength=3.0)
    inst = b.make_instance(jax.random.key(seed), cfg)
    data = b.sample_preference_data(jax.random.key(10 + seed), inst, inst.log_pi0,
                                    b.uniform_policy(4, 5), 60)
    data = b.with_size(data, 50)   # masked rows must not count
    lam = 0.5
    fit = gp.fit_general_preference(inst, data, lam)
    psi = np.asarray(gp.comparison_features(inst, data))[:50]
    y = np.asarray(data.y)[:50]
    assert np.all(np.asarray(gp.comparison_features(inst, data))[50:] == 0)
    ref = minimize(np_nll, np.zeros(psi.shape[1]), args=(psi, y, lam), method="BFGS",
                   jac=lambda t, *a: psi.T @ (1 / (1 + np.exp(-psi @ t)) - y) + lam * t,
                   options={"gtol": 1e-11})
    np.testing.assert_allclose(fit.theta, ref.x, atol=1e-6)
    assert np_nll(np.asarray(fit.theta), psi, y, lam) <= ref.fun + 1e-10
    np.testing.assert_allclose(gp.negative_log_likelihood(fit.theta, jnp.asarray(psi), jnp.asarray(y),
                                                          jnp.ones(50, bool), lam),
                               np_nll(np.asarray(fit.theta), psi, y, lam), rtol=1e-12)


def test_uncertainties_against_explicit_inverse():
    cfg = b.InstanceConfig(n_contexts=3, n_actions=4, dim=3, skew_strength=1.0)
    inst = b.make_instance(jax.random.key(4), cfg)
    data = b.sample_preference_data(jax.random.key(5), inst, inst.log_pi0, inst.log_pi0, 30)
    cs = gp.confidence_set(inst, data, jnp.zeros(gp.psi_dim(3)), 1.0, 2.0)
    psi = np.asarray(gp.comparison_features(inst, data))
    sigma = np.eye(psi.shape[1]) + psi.T @ psi
    np.testing.assert_allclose(cs.gram, sigma, atol=1e-12)
    inv = np.linalg.inv(sigma)
    gamma = np.asarray(gp.pair_uncertainty(inst, cs.chol))
    phi = np.asarray(inst.phi)
    rng = np.random.default_rng(0)
    lp, lq = (random_log_policy(rng, 3, 4) for _ in range(2))
    pair = np.asarray(gp.policy_pair_uncertainty(inst, cs.chol, jnp.asarray(lp), jnp.asarray(lq)))
    for x in range(3):
        mean = np.zeros(psi.shape[1])
        for a in range(4):
            for c in range(4):
                v = np_psi(phi[x, a], phi[x, c])
                assert abs(gamma[x, a, c] - np.sqrt(v @ inv @ v)) < 1e-10
                mean += np.exp(lp[x, a] + lq[x, c]) * v
        assert abs(pair[x] - np.sqrt(mean @ inv @ mean)) < 1e-10
    # Gamma is convex in the pair's law: ||E psi|| <= E ||psi||
    expected = np.einsum("xa,xab,xb->x", np.exp(lp), gamma, np.exp(lq))
    assert np.all(pair <= expected + 1e-12)


def test_bad_cholesky_shape_is_refused():
    inst = random_instance(0, (1, 3, 2), 1.0)
    with pytest.raises(ValueError, match=r"chol has shape \(2, 2\).*D = 3"):
        gp.pair_uncertainty(inst, jnp.eye(2))
    with pytest.raises(ValueError, match="theta has shape"):
        gp.check_parameter("theta", jnp.zeros(2), 2)
