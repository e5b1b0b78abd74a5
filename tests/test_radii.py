"""P3's radii in each estimator's own norm (algorithms.onepass.radii, docs/theory.md §4.2): every radius formula
against a hand-computed NumPy value, the data's effective kappa against NumPy, the calibration's order
statistic and its coverage of theta* on fresh seeds."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import expit

import bandits as b
from algorithms.onepass import estimators, evaluation, radii
from algorithms.onepass.estimators import OnePassOptions

CFG = b.InstanceConfig(n_contexts=8, n_actions=6, dim=3)
T, CHECKPOINTS, NAMES = 64, (16, 32, 64), ("omd", "mle")


def test_radius_formulas_against_numpy():
    t = np.array([1.0, 15.0, 200.0])
    shape = np.sqrt(3 * np.log(1 + t))
    kappa = 1 / (expit(4.0) * expit(-4.0))                      # 1 / sigma'(2B) at B = 2
    np.testing.assert_allclose(radii.nominal_kappa(2.0), kappa, rtol=1e-12)
    np.testing.assert_allclose(radii.nominal_kappa(2.0), evaluation.kappa(2.0), rtol=1e-12)
    shared = OnePassOptions(c_beta=0.7)
    for name in ("omd", "mle", "ogd", "hvp"):
        np.testing.assert_allclose(radii.estimator_radius(shared, name, 3, t), 0.7 * shape, rtol=1e-12)
    theory = OnePassOptions(c_beta=0.7, radius_mode="theory")
    np.testing.assert_allclose(radii.estimator_radius(theory, "omd", 3, t, 2.0), 0.7 * shape, rtol=1e-12)
    for name in ("mle", "ogd", "hvp"):                          # the V_t designs carry kappa
        np.testing.assert_allclose(radii.estimator_radius(theory, name, 3, t, 2.0), 0.7 * kappa * shape, rtol=1e-12)
    calibrated = OnePassOptions(radius_mode="calibrated")
    np.testing.assert_allclose(radii.estimator_radius(calibrated, "mle", 3, t, multiplier=1.3), 1.3 * shape,
                               rtol=1e-12)
    with pytest.raises(ValueError, match="reward_norm=None is not allowed"):
        radii.estimator_radius(theory, "mle", 3, t)
    with pytest.raises(ValueError, match="multiplier=None is not allowed"):
        radii.estimator_radius(calibrated, "omd", 3, t)
    with pytest.raises(ValueError, match="radius_mode='own' is not allowed"):
        OnePassOptions(radius_mode="own")
    with pytest.raises(ValueError, match="calibration_seeds=5 is not allowed"):
        OnePassOptions(calibration_seeds=5)
    assert "radius_mode" not in estimators.unread_options(("omd",))


def test_effective_and_information_kappa_and_local_error_against_numpy():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((40, 3))
    theta = rng.standard_normal(3) * 2.0
    mask = np.arange(40) < 25
    slope = expit(z @ theta) * expit(-(z @ theta))
    mean_k, worst_k = jax.jit(radii.effective_kappa)(jnp.asarray(theta), jnp.asarray(z), jnp.asarray(mask))
    np.testing.assert_allclose(mean_k, 1 / slope[:25].mean(), rtol=1e-12)
    np.testing.assert_allclose(worst_k, 1 / slope[:25].min(), rtol=1e-12)
    np.testing.assert_allclose(jax.jit(radii.effective_kappa)(jnp.asarray(theta), jnp.asarray(z))[0],
                               1 / slope.mean(), rtol=1e-12)
    w = (z ** 2).sum(-1)
    np.testing.assert_allclose(jax.jit(radii.information_kappa)(jnp.asarray(theta), jnp.asarray(z), jnp.asarray(mask)),
                               w[:25].sum() / (w[:25] * slope[:25]).sum(), rtol=1e-12)
    # identical pairs (z = 0) do not count; with equal norms it is effective_kappa's mean
    padded = np.concatenate([z, np.zeros((10, 3))])
    np.testing.assert_allclose(radii.information_kappa(jnp.asarray(theta), jnp.asarray(padded)),
                               w.sum() / (w * slope).sum(), rtol=1e-12)
    unit = z / np.linalg.norm(z, axis=-1, keepdims=True)
    np.testing.assert_allclose(radii.information_kappa(jnp.asarray(theta), jnp.asarray(unit)),
                               radii.effective_kappa(jnp.asarray(theta), jnp.asarray(unit))[0], rtol=1e-12)
    a = z.T @ z + np.eye(3)
    err = rng.standard_normal(3)
    np.testing.assert_allclose(jax.jit(radii.local_error)(jnp.asarray(theta + err), jnp.asarray(np.linalg.inv(a)),
                                                          jnp.asarray(theta)), np.sqrt(err @ a @ err), rtol=1e-10)


@jax.jit
@jax.vmap
def _streams(key):
    """One passive stream ``(z [T, d], y [T], theta*)`` of the family ``theta* = B u`` at ``B = 2`` per key."""
    k_inst, k_data = jax.random.split(key)
    inst = evaluation.scaled_instance(k_inst, CFG, 2.0)
    data = b.sample_preference_data(k_data, inst, inst.log_pi0, inst.log_pi0, T)
    z = b.feature_differences(inst, data)
    return z, data.y.astype(z.dtype), inst.theta_star


@jax.jit
def _worst(z, y, theta_star):
    return jax.vmap(lambda zz, yy, th: radii.normalised_errors(NAMES, 3, OnePassOptions(), zz, yy, th, CHECKPOINTS,
                                                               2.0))(z, y, theta_star)


@pytest.fixture(scope="module")
def calibration():
    """256 calibration streams and their normalised errors (one compiled program, shared by the tests below)."""
    streams = _streams(jax.random.split(jax.random.key(1), 256))
    return streams, np.asarray(_worst(*streams))


def test_normalised_errors_against_a_loop_over_rounds(calibration):
    """The scan's ``max_t ||theta_t - theta*||_{A_t} / sqrt(d log(1 + t))`` against the estimators stepped by hand
    (NumPy norms with ``A_t`` inverted by NumPy), on the first calibration stream."""
    (z, y, theta_star), got = calibration
    for i, name in enumerate(NAMES):
        est = estimators.make_estimator(name, 3, OnePassOptions(), radius=2.0, capacity=T)
        update = jax.jit(est.update)
        state, worst = est.init(), 0.0
        for t in range(1, T + 1):
            state = update(state, z[0, t - 1], y[0, t - 1])
            if t in CHECKPOINTS:
                err = np.asarray(est.theta(state)) - np.asarray(theta_star[0])
                a = np.linalg.inv(np.asarray(est.inverse_design(state)))
                worst = max(worst, np.sqrt(err @ a @ err) / np.sqrt(3 * np.log(1 + t)))
        np.testing.assert_allclose(got[0, i], worst, rtol=1e-8)


def test_calibrated_radius_covers_fresh_seeds(calibration):
    """Multipliers from 256 calibration seeds (the ceil(0.95 S)-th order statistic) cover theta* at every
    checkpoint on >= 95% of those seeds and on >= 95% - 0.03 of 256 fresh seeds, for OMD and the MLE."""
    calib = calibration[1]
    fresh = np.asarray(_worst(*_streams(jax.random.split(jax.random.key(2), 256))))
    mult = np.asarray(radii.quantile_multiplier(calib))
    np.testing.assert_array_equal(mult, np.sort(calib, axis=0)[math.ceil(0.95 * 256) - 1])
    assert np.all(np.mean(calib <= mult, axis=0) >= 0.95)
    coverage = np.mean(fresh <= mult, axis=0)
    assert np.all(coverage >= 0.95 - 0.03), coverage
    assert np.all(mult > 0)
