"""The instance generator's regime knobs (issue 16): feature_anisotropy and good_actions, and (issue 17)
feature_alignment. Defaults give the instances of before bit for bit; the anisotropic covariance has the stated spectrum; exactly G good actions per
context, each beating every other action by at least B; bad values are refused in one line."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bandits as b
from bandits.instance import aligned_features, feature_spectrum, few_good_actions
from bandits.preferences import random_skew_matrix
from bandits.reference import orthogonal_unit_vector, reference_policy
from bandits.rewards import init_linear_reward, init_mlp_reward, random_unit_vector, reward_table


def previous_instance(key, config):
    """``make_instance`` as it was before the two knobs existed, written out from its parts."""
    k_phi, k_reward, k_ref, k_skew = jax.random.split(key, 4)
    g = jax.random.normal(k_phi, (config.n_contexts, config.n_actions, config.dim))
    phi = g / jnp.linalg.norm(g, axis=-1, keepdims=True)
    if config.reward == "linear":
        params = init_linear_reward(k_reward, config.dim, config.reward_norm)
        direction = params.theta
    else:
        params = init_mlp_reward(k_reward, phi, config.hidden, config.reward_norm)
        direction = random_unit_vector(k_reward, config.dim)
    reward = reward_table(params, phi)
    xi = phi @ orthogonal_unit_vector(k_ref, direction)
    log_pi0 = reference_policy(reward / config.reward_norm, xi, config.coverage, config.temperature)
    skew = random_skew_matrix(k_skew, config.dim, config.skew_strength)
    d0 = jnp.full((config.n_contexts,), 1.0 / config.n_contexts)
    return b.Instance(phi, log_pi0, d0, reward, skew, jnp.asarray(config.kl_coef), params)


@pytest.mark.parametrize("reward", ["linear", "neural"])
def test_defaults_reproduce_the_previous_instances_bit_for_bit(reward):
    config = b.InstanceConfig(n_contexts=5, n_actions=7, dim=3, kl_coef=0.3, coverage=-0.6, temperature=4.0,
                              reward=reward, hidden=6, skew_strength=0.7)
    assert (config.feature_anisotropy, config.good_actions, config.feature_alignment) == (1.0, 0, 0.0)
    for seed in (0, 3):
        got = b.make_instance(jax.random.key(seed), config)
        want = previous_instance(jax.random.key(seed), config)
        for leaf_got, leaf_want in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(leaf_got, leaf_want)


def test_feature_spectrum_is_geometric_with_the_stated_condition_number():
    lam = feature_spectrum(5, 16.0)
    np.testing.assert_allclose(lam, [1.0, 0.5, 0.25, 0.125, 0.0625], rtol=1e-15)
    np.testing.assert_array_equal(feature_spectrum(1, 16.0), [1.0])
    np.testing.assert_array_equal(feature_spectrum(4, 1.0), np.ones(4))


def test_anisotropic_features_have_the_stated_covariance():
    """``phi = Lambda^(1/2) u`` with ``u`` the isotropic unit feature of the same key (exact), so
    ``E[phi phi^T] = Lambda / d``: on 16384 draws the normalised covariance ``d Lambda^(-1/2) C Lambda^(-1/2)``
    is the identity within 0.05 (the standard error of each entry is below 0.008 at d = 4)."""
    d, kappa = 4, 50.0
    iso = b.InstanceConfig(n_contexts=64, n_actions=256, dim=d)
    aniso = b.InstanceConfig(n_contexts=64, n_actions=256, dim=d, feature_anisotropy=kappa)
    key = jax.random.key(5)
    phi_iso = np.asarray(b.make_instance(key, iso).phi)
    inst = b.make_instance(key, aniso)
    phi = np.asarray(inst.phi)
    scale = np.sqrt(feature_spectrum(d, kappa))
    np.testing.assert_allclose(phi / scale, phi_iso, rtol=1e-14, atol=1e-15)
    assert np.linalg.norm(phi, axis=-1).max() <= 1.0 + 1e-12
    np.testing.assert_allclose(inst.reward, phi @ np.asarray(inst.theta_star), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(inst.theta_star, b.make_instance(key, iso).theta_star)
    flat = phi.reshape(-1, d)
    cov = flat.T @ flat / len(flat)
    np.testing.assert_allclose(d * cov / np.outer(scale, scale), np.eye(d), atol=0.05)
    eig = np.linalg.eigvalsh(cov)
    np.testing.assert_allclose(eig[-1] / eig[0], kappa, rtol=0.1)


@settings(max_examples=5)
@given(seed=st.integers(0, 2**16), n_actions=st.integers(2, 12), frac=st.floats(0.0, 1.0),
       anisotropy=st.sampled_from([1.0, 30.0]))
def test_good_actions_beat_every_other_action_by_at_least_B(seed, n_actions, frac, anisotropy):
    good = 1 + int(frac * (n_actions - 2))
    base = b.InstanceConfig(n_contexts=6, n_actions=n_actions, dim=3, reward_norm=1.5,
                            feature_anisotropy=anisotropy)
    config = b.InstanceConfig(n_contexts=6, n_actions=n_actions, dim=3, reward_norm=1.5,
                              feature_anisotropy=anisotropy, good_actions=good)
    key = jax.random.key(seed)
    before, inst = b.make_instance(key, base), b.make_instance(key, config)
    np.testing.assert_array_equal(inst.theta_star, before.theta_star)
    assert np.linalg.norm(inst.phi, axis=-1).max() <= 1.0 + 1e-12
    r, r0 = np.asarray(inst.reward), np.asarray(before.reward)
    top = np.argsort(-r0, axis=-1)[:, :good]
    is_good = np.zeros_like(r, bool)
    np.put_along_axis(is_good, top, True, axis=-1)
    np.testing.assert_allclose(r, (r0 + np.where(is_good, 1.5, -1.5)) / 2, rtol=1e-12, atol=1e-12)
    ordered = -np.sort(-r, axis=-1)
    assert np.all(ordered[:, good - 1] - ordered[:, good] >= 1.5 - 1e-12)
    assert np.all((r >= 0) == is_good) and np.all(np.abs(r) <= 1.5 + 1e-12)
    # the reference policy is built on the new features: c = 1 puts most mass on the good actions
    sharp = b.make_instance(key, b.InstanceConfig(n_contexts=6, n_actions=n_actions, dim=3, reward_norm=1.5,
                                                  feature_anisotropy=anisotropy, good_actions=good,
                                                  coverage=1.0, temperature=20.0))
    assert np.all((np.exp(sharp.log_pi0) * is_good).sum(-1) > 0.99)


def test_few_good_actions_formula():
    phi = jnp.array([[[1.0, 0.0], [0.0, 1.0], [0.6, -0.8]]])
    theta = jnp.array([2.0, 0.0])
    out = few_good_actions(phi, theta, 1)
    np.testing.assert_allclose(out, [[[1.0, 0.0], [-0.5, 0.5], [-0.2, -0.4]]], rtol=1e-15)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16), rho=st.floats(0.05, 0.95), reward_norm=st.floats(0.5, 4.0))
def test_aligned_features_keep_the_order_and_put_cross_sign_margins_above_2_rho_B(seed, rho, reward_norm):
    """``r' = (1 - rho) r + rho sign(r) B``; ``||phi'|| <= 1``; every pair across the sign of the reward has margin
    ``>= 2 rho B``; theta* and pi0's inputs otherwise unchanged (no extra random draw)."""
    base = b.InstanceConfig(n_contexts=5, n_actions=9, dim=4, reward_norm=reward_norm)
    key = jax.random.key(seed)
    before = b.make_instance(key, base)
    inst = b.make_instance(key, b.InstanceConfig(n_contexts=5, n_actions=9, dim=4, reward_norm=reward_norm,
                                                 feature_alignment=rho))
    np.testing.assert_array_equal(inst.theta_star, before.theta_star)
    r0, r = np.asarray(before.reward, float), np.asarray(inst.reward, float)
    s = np.where(r0 >= 0, 1.0, -1.0)
    np.testing.assert_allclose(r, (1 - rho) * r0 + rho * s * reward_norm, rtol=1e-12, atol=1e-12)
    assert np.all(np.argsort(r, axis=-1, kind="stable") == np.argsort(r0, axis=-1, kind="stable"))
    assert np.linalg.norm(inst.phi, axis=-1).max() <= 1.0 + 1e-12
    cross = s[:, :, None] != s[:, None, :]
    margins = np.abs(r[:, :, None] - r[:, None, :])[cross]
    assert np.all(margins >= 2 * rho * reward_norm - 1e-12)


def test_aligned_features_formula():
    phi = jnp.array([[[1.0, 0.0], [0.0, 1.0], [-0.6, 0.8]]])
    theta = jnp.array([2.0, 0.0])
    np.testing.assert_allclose(aligned_features(phi, theta, 0.5), [[[1.0, 0.0], [0.5, 0.5], [-0.8, 0.4]]],
                               rtol=1e-15)


def test_regime_knobs_jit_and_vmap_equal_eager():
    config = b.InstanceConfig(n_contexts=3, n_actions=9, dim=4, coverage=-0.9, temperature=10.0,
                              feature_anisotropy=20.0, good_actions=2, feature_alignment=0.5)
    keys = jax.random.split(jax.random.key(8), 2)
    batched = jax.vmap(lambda k: b.make_instance(k, config))(keys)
    jitted = jax.jit(lambda k, c: b.make_instance(k, config, coverage=c))
    for i, key in enumerate(keys):
        eager = b.make_instance(key, config)
        for lb, le, lj in zip(jax.tree.leaves(batched), jax.tree.leaves(eager),
                              jax.tree.leaves(jitted(key, -0.9)), strict=True):
            np.testing.assert_allclose(lb[i], le, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(lj, le, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fields,message", [
    (dict(feature_anisotropy=0.5),
     r"feature_anisotropy=0.5 is not allowed: feature_anisotropy must be a finite number in \[1, inf\]"),
    (dict(feature_anisotropy=float("inf")), "feature_anisotropy=inf is not allowed"),
    (dict(feature_anisotropy="big"), "feature_anisotropy='big' is not allowed"),
    (dict(good_actions=-1), "good_actions=-1 is not allowed: good_actions must be an integer >= 0"),
    (dict(n_actions=8, good_actions=8),
     r"good_actions=8 is not allowed: good_actions must be an integer in \[0, 7\]"),
    (dict(good_actions=2.0), "good_actions=2.0 is not allowed: good_actions must be an integer"),
    (dict(good_actions=True), "good_actions=True is not allowed"),
    (dict(reward="neural", good_actions=2),
     "good_actions=2 is not allowed: good_actions must be 0 when reward='neural'"),
    (dict(feature_alignment=1.0), r"feature_alignment=1.0 is not allowed: feature_alignment must be a number in \[0, 1\)"),
    (dict(feature_alignment=-0.1), r"feature_alignment=-0.1 is not allowed: feature_alignment must be a finite number"),
    (dict(reward="neural", feature_alignment=0.5),
     "feature_alignment=0.5 is not allowed: feature_alignment must be 0 when reward='neural'"),
])
def test_regime_knob_validation(fields, message):
    with pytest.raises(ValueError, match=message) as err:
        b.InstanceConfig(**fields)
    assert "\n" not in str(err.value)


def test_bonus_compare_regimes_use_the_knobs_and_every_field_is_documented():
    """regime_explore plants few good actions among K >= 256 with anisotropic features; regime_plain does not;
    ``show bonus-compare`` has a documentation line for every field."""
    from experiments.catalogue import bonus_compare
    from experiments.engine.config import describe_fields

    explore = bonus_compare.presets["regime_explore"].instance
    plain = bonus_compare.presets["regime_plain"].instance
    assert explore.n_actions >= 256 and 0 < explore.good_actions <= explore.n_actions // 32
    assert explore.feature_anisotropy > 1.0 and explore.kl_coef < plain.kl_coef
    assert (plain.good_actions, plain.feature_anisotropy) == (0, 1.0)
    assert [row["path"] for row in describe_fields(bonus_compare.presets) if not row["doc"]] == []
