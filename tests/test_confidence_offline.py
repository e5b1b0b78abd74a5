"""Confidence sets and P1's offline policies: docs/theory.md §9.2 invariants 5, 7, 8, 20; Option I vs brute force."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

import bandits as b
from algorithms.core import confidence as c
from algorithms.offline import gshf as o
from algorithms.core.bt_mle import fit_bt_mle
from tests.helpers import random_log_policy

CFG = b.InstanceConfig(n_contexts=6, n_actions=5, dim=3, reward_norm=2.0, kl_coef=0.3,
                       coverage=0.5, temperature=3.0)
seeds = st.integers(0, 10**6)


def _setup(seed, n=60, lam=1.0, beta=1.5, kl_coef=0.3, nu_mode="pi0"):
    inst = b.make_instance(jax.random.key(seed), CFG)._replace(kl_coef=jnp.asarray(kl_coef))
    data = b.sample_preference_data(jax.random.key(seed + 1), inst, inst.log_pi0, inst.log_pi0, n)
    z = b.feature_differences(inst, data)
    theta = fit_bt_mle(z, data.y, data.mask, lam).theta
    cs = c.confidence_set(theta, c.gram_matrix(z, data.mask, lam), beta)
    return inst, data, z, cs, c.reference_vector(inst, nu_mode)


def test_gram_norms_and_radius_against_numpy():
    inst, data, z, cs, nu = _setup(0)
    zz = np.asarray(z)
    sigma = np.eye(3) + zz.T @ zz
    np.testing.assert_allclose(cs.gram, sigma, rtol=1e-12)
    np.testing.assert_allclose(c.gram_matrix(z, data.mask, 1.0, "mean"), np.eye(3) + zz.T @ zz / 60, rtol=1e-12)
    vecs = np.random.default_rng(0).standard_normal((4, 3))
    ref = np.sqrt(np.einsum("id,de,ie->i", vecs, np.linalg.inv(sigma), vecs))
    np.testing.assert_allclose(c.dual_norm(cs.chol, jnp.asarray(vecs)), ref, rtol=1e-10)
    gamma = 1 / (2 + np.exp(4.0) + np.exp(-4.0))
    np.testing.assert_allclose(c.confidence_radius("theory", 8, 100, 1.0, 2.0, delta=0.05, c_beta=0.5),
                               0.5 * np.sqrt((8 + np.log(20)) / gamma**2 + 4.0), rtol=1e-12)
    np.testing.assert_allclose(c.confidence_radius("theory", 8, 100, 1.0, 2.0, normalization="mean"),
                               np.sqrt((8 + np.log(20)) / gamma**2 / 100 + 4.0), rtol=1e-12)
    np.testing.assert_allclose(c.confidence_radius("sqrt_d", 8, 100, 1.0, 2.0, c_beta=2.0), 2 * np.sqrt(8))
    np.testing.assert_allclose(c.confidence_radius("sqrt_d", 8, 100, 1.0, 2.0, normalization="mean"),
                               np.sqrt(8 / 100))
    np.testing.assert_allclose(c.confidence_radius("const", 8, 100, 1.0, 2.0, c_beta=3.0), 3.0)
    pi0_mean = np.einsum("x,xa,xad->d", np.asarray(inst.d0), np.exp(np.asarray(inst.log_pi0)),
                         np.asarray(inst.phi))
    np.testing.assert_allclose(nu[2], pi0_mean, rtol=1e-12)
    with pytest.raises(ValueError, match="beta_mode='exact' is not allowed"):
        c.confidence_radius("exact", 8, 100, 1.0, 2.0)
    with pytest.raises(ValueError, match="reference_vector='mean' is not allowed"):
        c.reference_vector(inst, "mean")


def test_curvature_and_laplace_radius_against_numpy():
    """Both covering radii (module docstring of confidence.py) against SciPy/NumPy: chi-square quantiles from
    scipy.stats, the Satterthwaite weights from the generalised eigenvalues of (H, Sigma), the bias term from
    the exact operator norm (the JAX value bounds it above by at most a factor d^(1/64))."""
    from scipy.stats import chi2

    inst, data, z, cs, _ = _setup(0)
    gamma = 1 / (2 + np.exp(4.0) + np.exp(-4.0))
    np.testing.assert_allclose(c.confidence_radius("curvature", 8, 100, 0.5, 2.0, delta=0.1, c_beta=1.5),
                               1.5 * (np.sqrt(chi2.ppf(0.9, 8)) + np.sqrt(0.5) * 2.0) / np.sqrt(gamma), rtol=1e-10)
    for k, p in ((1.0, 0.95), (2.7, 0.9), (7.3, 0.99)):
        np.testing.assert_allclose(c.chi2_quantile(k, p), chi2.ppf(p, k), rtol=1e-10)
    zz, th, lam = np.asarray(z), np.asarray(cs.center), 0.7
    slope = 1 / (2 + np.exp(zz @ th) + np.exp(-zz @ th))
    hess = lam * np.eye(3) + (zz * slope[:, None]).T @ zz
    sigma = lam * np.eye(3) + zz.T @ zz
    root = np.linalg.cholesky(sigma)
    w = 1 / np.linalg.eigvalsh(np.linalg.solve(root, np.linalg.solve(root, hess).T))   # eig of Sigma^1/2 H^-1 Sigma^1/2
    a, k = np.sum(w**2) / np.sum(w), np.sum(w)**2 / np.sum(w**2)
    bias = lam * 2.0 * np.linalg.norm(root.T @ np.linalg.inv(hess), 2)
    got = float(c.laplace_radius(z, data.mask, cs.center, c.gram_matrix(z, data.mask, lam), lam, 2.0, 0.05, 1.2))
    low = 1.2 * (np.sqrt(a * chi2.ppf(0.95, k)) + bias)
    assert low - 1e-10 <= got <= low + 1.2 * bias * (3 ** (1 / 64) - 1) + 1e-10
    # mle_confidence_set uses it; a data-free call names the field
    cfg = c.ConfidenceConfig(lam=lam, beta_mode="laplace", c_beta=1.2)
    laplace_set = c.mle_confidence_set(z, data.y, data.mask, 60, 2.0, cfg)
    np.testing.assert_allclose(laplace_set.beta, c.laplace_radius(z, data.mask, laplace_set.center, laplace_set.gram,
                                                                  lam, 2.0, 0.05, 1.2), rtol=1e-12)
    with pytest.raises(ValueError, match="beta_mode='laplace' is not allowed"):
        cfg.radius(3, 60, 2.0)
    with pytest.raises(ValueError, match="beta_mode='laplace' is not allowed"):
        c.confidence_radius("laplace", 3, 60, 1.0, 2.0)
    with pytest.raises(ValueError, match="delta=1.0 is not allowed"):
        c.ConfidenceConfig(beta_mode="curvature", delta=1.0)


@settings(max_examples=8)
@given(seeds)
def test_lambda_max_upper_bound(seed):
    """``tr(A^32)^(1/32)`` is between ``lambda_max(A)`` and ``d^(1/32) lambda_max(A)`` (NumPy eigvalsh)."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((4, 4)) * rng.uniform(0.01, 100.0)
    a = g @ g.T
    top = np.linalg.eigvalsh(a)[-1]
    got = float(c._lambda_max_upper(jnp.asarray(a)))
    assert top * (1 - 1e-10) <= got <= top * 4 ** (1 / 32) * (1 + 1e-10)


@given(seeds, st.integers(1, 40), st.floats(0.1, 5.0))
def test_invariant8_bonus_monotonicity(seed, extra, lam):
    """Adding data (or raising lam) can only shrink ||v||_{Sigma^{-1}}."""
    rng = np.random.default_rng(seed)
    z = jnp.asarray(rng.standard_normal((60, 3)))
    mask = np.arange(60) < 20
    more = np.arange(60) < 20 + extra
    v = jnp.asarray(rng.standard_normal((10, 3)))
    base = c.dual_norm(jnp.linalg.cholesky(c.gram_matrix(z, mask, lam)), v)
    added = c.dual_norm(jnp.linalg.cholesky(c.gram_matrix(z, more, lam)), v)
    bigger_lam = c.dual_norm(jnp.linalg.cholesky(c.gram_matrix(z, mask, lam * 1.5)), v)
    assert np.all(np.asarray(added) <= np.asarray(base) + 1e-12)
    assert np.all(np.asarray(bigger_lam) <= np.asarray(base) + 1e-12)


@given(seeds, st.floats(0.1, 3.0), st.sampled_from(c.REFERENCE_VECTORS))
def test_invariant5_pessimism_ordering(seed, beta, nu_mode):
    inst, _, _, cs, nu = _setup(seed, beta=beta, nu_mode=nu_mode)
    cs = cs._replace(beta=jnp.asarray(beta))
    r_mle = inst.phi @ cs.center
    r_pess = o.option_ii_reward(inst, cs, nu)
    assert np.all(np.asarray(r_pess) <= np.asarray(r_mle) + 1e-12)
    j = lambda r: b.optimal_value(inst._replace(reward=r))
    assert j(r_pess) <= j(r_mle) + 1e-12
    # Option I's value (relative to nu) <= the MLE value (relative to nu)
    nu_bar = inst.d0 @ nu
    pi_i = o.option_i_policy(inst, cs, nu)
    val_i = (jnp.dot(cs.center, c.expected_feature(inst, pi_i) - nu_bar)
             - beta * c.dual_norm(cs.chol, c.expected_feature(inst, pi_i) - nu_bar)
             - inst.kl_coef * b.kl_to_reference(inst, pi_i))
    val_mle = j(r_mle) - jnp.dot(cs.center, nu_bar)
    assert val_i <= val_mle + 1e-10
    # on the event theta* in C: pessimistic values are below the true ones for every policy
    rng = np.random.default_rng(seed)
    for _ in range(3):
        u = rng.standard_normal(3)
        theta_star = cs.center + jnp.asarray(u) / c.primal_norm(cs.gram, jnp.asarray(u)) * beta * rng.uniform()
        pi = jnp.asarray(random_log_policy(rng, 6, 5))
        true_rel = (jnp.sum(jnp.exp(pi) * ((inst.phi - nu[:, None, :]) @ theta_star), -1))
        pess_rel = jnp.sum(jnp.exp(pi) * (r_pess - nu @ cs.center[:, None]), -1)
        assert b.context_mean(inst, pess_rel) <= b.context_mean(inst, true_rel) + 1e-10


@settings(max_examples=15)
@given(seeds, st.floats(0.2, 3.0), st.floats(0.05, 2.0), st.sampled_from(c.REFERENCE_VECTORS))
def test_invariant7_bound_implication(seed, beta, kl_coef, nu_mode):
    """Whenever theta* in C the three bounds hold, for pi* and random comparators."""
    inst, _, _, cs, nu = _setup(seed, beta=beta, kl_coef=kl_coef, nu_mode=nu_mode)
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(3)
    theta_star = cs.center + jnp.asarray(u) / c.primal_norm(cs.gram, jnp.asarray(u)) * beta * rng.uniform(0, 1)
    world = inst._replace(reward=inst.phi @ theta_star, params=b.LinearReward(theta_star))
    assert c.contains(cs, theta_star)
    pi_ii, pi_i, pi_mle = (o.option_ii_policy(world, cs, nu), o.option_i_policy(world, cs, nu),
                           o.linear_gibbs(world, cs.center))
    comparators = [b.optimal_policy(world)] + [jnp.asarray(random_log_policy(rng, 6, 5)) for _ in range(3)]
    for pi in comparators:
        gap_ii = b.value(world, pi) - b.value(world, pi_ii) + kl_coef * b.expected_kl(world, pi, pi_ii)
        assert gap_ii <= o.option_ii_bound(world, cs, nu, pi) + 1e-9
        assert b.value(world, pi) - b.value(world, pi_i) <= o.option_i_bound(world, cs, nu, pi) + 1e-8
        gap_mle = b.value(world, pi) - b.value(world, pi_mle) + kl_coef * b.expected_kl(world, pi, pi_mle)
        assert gap_mle <= o.plug_in_bound(world, cs, pi, pi_mle) + 1e-9


@settings(max_examples=4)
@given(seeds, st.floats(0.3, 3.0))
def test_option_i_against_bruteforce_policy_search(seed, beta):
    """Option I's dual solution equals a direct scipy search over all policies (logits) of the primal."""
    small = b.InstanceConfig(n_contexts=2, n_actions=3, dim=2, kl_coef=0.5, coverage=0.3, temperature=2.0)
    inst = b.make_instance(jax.random.key(seed), small)
    data = b.sample_preference_data(jax.random.key(seed + 1), inst, inst.log_pi0, inst.log_pi0, 30)
    z = b.feature_differences(inst, data)
    theta = fit_bt_mle(z, data.y, data.mask, 1.0).theta
    cs = c.confidence_set(theta, c.gram_matrix(z, data.mask, 1.0), beta)
    nu = c.reference_vector(inst)
    nu_bar = np.asarray(inst.d0 @ nu)
    phi, d0, lp0 = np.asarray(inst.phi), np.asarray(inst.d0), np.asarray(inst.log_pi0)
    sigma_inv = np.linalg.inv(np.asarray(cs.gram))

    def primal(logits):
        lp = logits.reshape(2, 3)
        lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
        p = np.exp(lp)
        feat = np.einsum("x,xa,xad->d", d0, p, phi) - nu_bar
        kl = np.sum(d0 * np.sum(p * (lp - lp0), -1))
        return -(feat @ np.asarray(theta) - beta * np.sqrt(feat @ sigma_inv @ feat) - 0.5 * kl)

    rng = np.random.default_rng(seed)
    best = min((minimize(primal, rng.standard_normal(6), method="Nelder-Mead",
                         options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 20000})
                for _ in range(3)), key=lambda r: r.fun)
    pi_i = np.asarray(o.option_i_policy(inst, cs, nu))
    np.testing.assert_allclose(primal(pi_i.reshape(-1)), best.fun, atol=1e-7)
    assert primal(pi_i.reshape(-1)) <= best.fun + 1e-9


@given(seeds)
def test_invariant20_option_i_objective_convex_and_gradient(seed):
    inst, _, _, cs, nu = _setup(seed)
    theta = jnp.asarray(np.random.default_rng(seed).standard_normal(3))
    hess = jax.hessian(lambda t: o.option_i_objective(inst, t, nu))(theta)
    assert np.linalg.eigvalsh(np.asarray(hess)).min() >= -1e-12
    lse = lambda t: o.option_i_objective(inst, t, nu) + jnp.dot(t, inst.d0 @ nu)
    eps = 1e-6
    fd = np.array([(lse(theta + eps * e) - lse(theta - eps * e)) / (2 * eps) for e in jnp.eye(3)])
    np.testing.assert_allclose(fd, c.expected_feature(inst, o.linear_gibbs(inst, theta)), atol=1e-8)


COVERAGE_SETTINGS = ((100, 1.0), (300, 2.0), (200, 3.0))   # (n, B = ||theta*||)


@jax.jit
def _errors_and_radii(keys, n, reward_norm):
    """``||theta_hat - theta*||_Sigma`` and every radius (delta = 0.05) per seed, one compiled program for all
    settings: the first ``n`` of 300 comparisons (mask) on the CFG family rescaled to ``||theta*|| = B``."""
    def one(key):
        k_inst, k_data = jax.random.split(key)
        inst = b.make_instance(k_inst, CFG)
        theta_star = inst.theta_star * (reward_norm / CFG.reward_norm)   # pi0 reads reward / B: unchanged
        inst = inst._replace(params=b.LinearReward(theta_star), reward=inst.phi @ theta_star)
        data = b.sample_preference_data(k_data, inst, inst.log_pi0, inst.log_pi0, 300)
        mask = jnp.arange(300) < n
        z = b.feature_differences(inst, data)
        theta = fit_bt_mle(z, data.y, mask, 1.0).theta
        gram = c.gram_matrix(z, mask, 1.0)
        radii = {m: c.confidence_radius(m, 3, n, 1.0, reward_norm) for m in ("theory", "sqrt_d", "curvature")}
        radii["laplace"] = c.laplace_radius(z, mask, theta, gram, 1.0, reward_norm)
        return c.primal_norm(gram, theta - theta_star), radii

    return jax.vmap(one)(keys)


def test_invariant6_radii_cover_theta_star():
    """Invariant 6 (statistical), 1024 seeds per (n, B): ``||theta_hat - theta*||_Sigma <= beta`` with frequency
    ``>= 1 - delta - 0.02`` for the ``curvature`` and ``laplace`` radii (issue 16 item 5) and ``>= 1 - delta``
    (one-sided binomial test at level 1e-3) for ``theory``; ``sqrt_d`` covers rarely (below one half)."""
    from scipy import stats as sstats

    keys = jax.random.split(jax.random.key(0), 1024)
    for n, reward_norm in COVERAGE_SETTINGS:
        err, radii = _errors_and_radii(keys, n, reward_norm)
        covered = {m: np.asarray(err <= r) for m, r in radii.items()}
        assert sstats.binomtest(int(covered["theory"].sum()), 1024, 0.95, alternative="less").pvalue > 1e-3
        for mode in ("curvature", "laplace"):
            assert covered[mode].mean() >= 0.95 - 0.02, (n, reward_norm, mode, covered[mode].mean())
        assert covered["sqrt_d"].mean() < 0.5
        # laplace is the calibrated one: it covers without the curvature radius's worst-case slope
        assert np.median(np.asarray(radii["laplace"])) < float(radii["curvature"][0])
