"""TMPS-PF (algorithms.offline.tmps): two-stage reference, stage-2 sampling law, vmap == loop, validation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import bandits as b
from algorithms.core.bt_mle import fit_bt_mle
from algorithms.offline.gshf import linear_gibbs
from algorithms.offline.tmps import tmps

# Peaked reference policy with poor coverage and a small kl_coef: pi_hat0 is far from pi0.
CFG = b.InstanceConfig(n_contexts=3, n_actions=5, dim=3, reward_norm=2.0, kl_coef=0.2,
                       coverage=-0.6, temperature=3.0)


def _instance(seed=0, config=CFG):
    return b.make_instance(jax.random.key(seed), config)


def _reference(key, inst, m, n, lam):
    """The two stages composed by hand from the public functions, with the same keys."""
    s1 = b.sample_preference_data(key, inst, inst.log_pi0, inst.log_pi0, m)
    theta0 = fit_bt_mle(b.feature_differences(inst, s1), s1.y, s1.mask, lam).theta
    pi_hat0 = linear_gibbs(inst, theta0)
    s2 = b.sample_preference_data(key, inst, pi_hat0, pi_hat0, n, start=m)
    both = b.concatenate(s1, s2)
    theta = fit_bt_mle(b.feature_differences(inst, both), both.y, both.mask, lam, theta0=theta0).theta
    return s1, s2, theta0, pi_hat0, theta, linear_gibbs(inst, theta)


def test_equals_hand_composed_two_stage_reference():
    inst, key, m, n, lam = _instance(), jax.random.key(7), 40, 60, 0.5
    s1, s2, theta0, pi_hat0, theta, log_pi = _reference(key, inst, m, n, lam)
    out = tmps(key, inst, m, n, lam)
    for got, want in zip(out.data, b.concatenate(s1, s2)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_allclose(out.theta0, theta0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.log_pi_hat0, pi_hat0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.theta, theta, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.log_pi, log_pi, rtol=1e-10, atol=1e-10)
    # The reference is sensitive to the stage order: stage 2 drawn from pi0 (the "mixed-up" version)
    # gives other actions and another estimate, so the equalities above can fail.
    wrong = b.sample_preference_data(key, inst, inst.log_pi0, inst.log_pi0, n, start=m)
    assert np.any(np.asarray(wrong.a1) != np.asarray(s2.a1))
    stage1_only = b.sample_preference_data(key, inst, inst.log_pi0, inst.log_pi0, m + n)
    z = b.feature_differences(inst, stage1_only)
    single = fit_bt_mle(z, stage1_only.y, stage1_only.mask, lam).theta
    assert np.max(np.abs(np.asarray(single) - np.asarray(out.theta))) > 1e-6
    # The stage-1 estimate is fitted on stage 1 only (not on both stages).
    assert np.max(np.abs(np.asarray(out.theta0) - np.asarray(out.theta))) > 1e-6


def test_no_stage_two_is_single_stage_gibbs_of_mle():
    inst, key = _instance(1), jax.random.key(3)
    out = tmps(key, inst, 50, 0, 1.0)
    data = b.sample_preference_data(key, inst, inst.log_pi0, inst.log_pi0, 50)
    theta = fit_bt_mle(b.feature_differences(inst, data), data.y, data.mask, 1.0).theta
    np.testing.assert_allclose(out.theta, theta, rtol=1e-10, atol=1e-10)
    assert out.data.capacity == 50


def test_stage_two_actions_follow_pi_hat0():
    """Chi-square goodness of fit (fixed seed) of stage-2 actions to pi_hat0; pi0 is rejected."""
    config = b.InstanceConfig(n_contexts=1, n_actions=4, dim=2, reward_norm=2.0, kl_coef=0.2,
                              coverage=-0.8, temperature=3.0)
    inst = _instance(2, config)
    m, n = 30, 4000
    out = tmps(jax.random.key(11), inst, m, n, 1.0)
    actions = np.concatenate([np.asarray(out.data.a1[m:]), np.asarray(out.data.a2[m:])])
    counts = np.bincount(actions, minlength=4)
    p_hat0 = np.exp(np.asarray(out.log_pi_hat0[0]))
    p0 = np.exp(np.asarray(inst.log_pi0[0]))
    assert np.max(np.abs(p_hat0 - p0)) > 0.03           # the two laws differ by more than sampling noise
    assert stats.chisquare(counts, p_hat0 * counts.sum()).pvalue > 1e-3
    assert stats.chisquare(counts, p0 * counts.sum()).pvalue < 1e-6
    first = np.concatenate([np.asarray(out.data.a1[:m]), np.asarray(out.data.a2[:m])])
    assert first.size == 2 * m


def test_vmap_equals_loop():
    inst = _instance(4)
    keys = jax.random.split(jax.random.key(5), 3)
    batched = jax.jit(jax.vmap(lambda k: tmps(k, inst, 20, 30, 1.0)))(keys)
    for i in range(3):
        one = tmps(keys[i], inst, 20, 30, 1.0)
        np.testing.assert_array_equal(np.asarray(batched.data.a1[i]), np.asarray(one.data.a1))
        np.testing.assert_allclose(batched.theta[i], one.theta, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(batched.log_pi[i], one.log_pi, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("m, n, lam, field, allowed", [
    (0, 10, 1.0, "m=0", "integer >= 1"),
    (2.5, 10, 1.0, "m=2.5", "integer >= 1"),
    (10, -1, 1.0, "n=-1", "integer >= 0"),
    (10, 10, 0.0, "lam=0.0", "(0, inf]"),
])
def test_validation_errors(m, n, lam, field, allowed):
    with pytest.raises(ValueError) as err:
        tmps(jax.random.key(0), _instance(), m, n, lam)
    assert field in str(err.value) and allowed in str(err.value) and "not allowed" in str(err.value)


def test_output_is_a_normalised_gibbs_policy():
    out = tmps(jax.random.key(9), _instance(6), 25, 25, 1.0)
    np.testing.assert_allclose(jnp.exp(out.log_pi).sum(-1), 1.0, rtol=1e-12)
