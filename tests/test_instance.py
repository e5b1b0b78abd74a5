"""Instance construction: validation errors, the generator's families, vmap == loop, jit == eager."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bandits as b

SMALL = b.InstanceConfig(n_contexts=4, n_actions=6, dim=3, reward_norm=2.0, kl_coef=0.5,
                         coverage=0.5, temperature=3.0, skew_strength=1.0)


@pytest.mark.parametrize("field,value,message", [
    ("kl_coef", 0.0, r"kl_coef=0.0 is not allowed: kl_coef must be a finite number in \(0, inf\]"),
    ("kl_coef", -1.0, "kl_coef=-1.0 is not allowed"),
    ("kl_coef", float("nan"), "kl_coef=nan is not allowed"),
    ("n_actions", 1, "n_actions=1 is not allowed: n_actions must be an integer >= 2"),
    ("dim", 0, "dim=0 is not allowed: dim must be an integer >= 1"),
    ("n_contexts", 0, "n_contexts=0 is not allowed"),
    ("n_actions", 2.5, "n_actions=2.5 is not allowed"),
    ("coverage", 1.5, r"coverage=1.5 is not allowed: coverage must be a finite number in \[-1, 1\]"),
    ("coverage", -1.01, "coverage=-1.01 is not allowed"),
    ("temperature", -0.1, "temperature=-0.1 is not allowed"),
    ("reward_norm", 0.0, "reward_norm=0.0 is not allowed"),
    ("reward", "quadratic", "reward='quadratic' is not allowed: reward must be one of 'linear', 'neural'"),
    ("skew_strength", -1.0, "skew_strength=-1.0 is not allowed"),
])
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        b.InstanceConfig(**{field: value})


def test_from_arrays_validation():
    phi = np.ones((2, 3, 2)) / np.sqrt(2)
    good_pi0 = np.log(np.full((2, 3), 1 / 3))
    r = np.zeros((2, 3))
    b.instance_from_arrays(phi, good_pi0, r, 1.0)
    zero_mass = np.array([[np.log(0.5), np.log(0.5), -np.inf], [np.log(1 / 3)] * 3])
    with pytest.raises(ValueError, match=r"log_pi0\[0, 2\]=.* reference policy needs positive mass"):
        b.instance_from_arrays(phi, zero_mass, r, 1.0)
    with pytest.raises(ValueError, match=r"log_pi0 has shape \(3, 3\).*must have shape \(2, 3\)"):
        b.instance_from_arrays(phi, np.zeros((3, 3)), r, 1.0)
    with pytest.raises(ValueError, match=r"reward has shape \(2, 4\)"):
        b.instance_from_arrays(phi, good_pi0, np.zeros((2, 4)), 1.0)
    with pytest.raises(ValueError, match="phi has shape"):
        b.instance_from_arrays(phi[0], good_pi0, r, 1.0)
    with pytest.raises(ValueError, match=r"log_pi0\[0\] sums to"):
        b.instance_from_arrays(phi, np.zeros((2, 3)), r, 1.0)
    with pytest.raises(ValueError, match="kl_coef=0 is not allowed"):
        b.instance_from_arrays(phi, good_pi0, r, 0)
    with pytest.raises(ValueError, match="d0 .* must be a probability vector"):
        b.instance_from_arrays(phi, good_pi0, r, 1.0, d0=np.array([0.7, 0.7]))
    with pytest.raises(ValueError, match="skew is not skew-symmetric"):
        b.instance_from_arrays(phi, good_pi0, r, 1.0, skew=np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"n_actions \(phi.shape\[1\]\)=1 is not allowed"):
        b.instance_from_arrays(phi[:, :1], good_pi0[:, :1], r[:, :1], 1.0)


def test_generator_families():
    inst = b.make_instance(jax.random.key(0), SMALL)
    np.testing.assert_allclose(jnp.linalg.norm(inst.phi, axis=-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(jnp.linalg.norm(inst.theta_star), 2.0, rtol=1e-12)
    np.testing.assert_allclose(inst.reward, inst.phi @ inst.theta_star, rtol=1e-12)
    np.testing.assert_allclose(inst.skew, -inst.skew.T, atol=1e-15)
    np.testing.assert_allclose(jnp.linalg.norm(inst.skew, ord=2), 1.0, rtol=1e-10)
    np.testing.assert_allclose(jnp.exp(inst.log_pi0).sum(-1), 1.0, rtol=1e-12)
    assert float(inst.kl_coef) == 0.5
    uniform = b.make_instance(jax.random.key(0), b.InstanceConfig(n_contexts=4, n_actions=6, dim=3))
    np.testing.assert_allclose(uniform.log_pi0, -np.log(6.0), rtol=1e-12)
    np.testing.assert_array_equal(uniform.skew, 0.0)
    neural = b.make_instance(jax.random.key(0), b.InstanceConfig(reward="neural", reward_norm=2.0, dim=8))
    assert isinstance(neural.params, b.MLPReward)
    np.testing.assert_allclose(jnp.std(neural.reward), 2.0 / np.sqrt(8), rtol=1e-10)
    np.testing.assert_allclose(neural.reward, b.reward_table(neural.params, neural.phi), rtol=1e-12)
    with pytest.raises(ValueError, match="theta_star is defined only"):
        neural.theta_star
    # a neural reward is not linear in the features: the best linear fit leaves a clear residual
    phi = np.asarray(neural.phi).reshape(-1, 8)
    r = np.asarray(neural.reward).reshape(-1)
    coef, *_ = np.linalg.lstsq(phi, r, rcond=None)
    assert np.var(r - phi @ coef) > 0.1 * np.var(r)


def test_coverage_knob_moves_reference_mass():
    """c = 0.8 puts pi0 mass on high-reward actions, c = -0.8 on low ones (same features and theta*)."""
    means = []
    for c in (-0.8, 0.0, 0.8):
        cfg = b.InstanceConfig(coverage=c, temperature=10.0, kl_coef=0.1)
        inst = b.make_instance(jax.random.key(7), cfg)
        means.append(float(b.expected_reward(inst, inst.log_pi0)))
        kl = float(b.expected_kl(inst, b.optimal_policy(inst), inst.log_pi0))
        if c == -0.8:
            kl_bad = kl
        if c == 0.8:
            kl_good = kl
    assert means[0] < means[1] < means[2]
    assert kl_good < kl_bad


def test_vmap_equals_loop_and_jit_equals_eager():
    keys = jax.random.split(jax.random.key(1), 3)

    def summary(key):
        inst = b.make_instance(key, SMALL)
        pi = b.optimal_policy(inst)
        return (inst, b.optimal_value(inst), b.suboptimality_kl(inst, inst.log_pi0),
                b.win_rate(inst, pi, inst.log_pi0), b.duality_gap(inst, pi))

    batched = jax.vmap(summary)(keys)
    jitted = jax.jit(summary)
    for i, key in enumerate(keys):
        eager = summary(key)
        for leaf_b, leaf_e, leaf_j in zip(jax.tree.leaves(batched), jax.tree.leaves(eager),
                                          jax.tree.leaves(jitted(key))):
            np.testing.assert_allclose(leaf_b[i], leaf_e, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(leaf_j, leaf_e, rtol=1e-12, atol=1e-14)


def test_kl_coef_is_traced_not_static():
    """A sweep over kl_coef is a vmap over one compiled function."""
    inst = b.make_instance(jax.random.key(2), SMALL)
    traces = []

    @jax.jit
    def opt_value(inst):
        traces.append(1)
        return b.optimal_value(inst)

    etas = jnp.array([0.1, 0.3, 1.0])
    swept = jax.vmap(lambda e: opt_value(inst._replace(kl_coef=e)))(etas)
    for e, val in zip(etas, swept):
        opt_value(inst._replace(kl_coef=e))
        np.testing.assert_allclose(val, b.optimal_value(inst._replace(kl_coef=e)), rtol=1e-12)
    assert len(traces) == 1  # one trace serves the vmapped sweep and every scalar value


def test_rank_promotion_raises_in_tests():
    with pytest.raises(ValueError, match="rank"):
        jnp.ones((3,)) + jnp.ones((2, 3))


def test_traced_overrides_equal_config_values():
    base = b.InstanceConfig(n_contexts=4, n_actions=6, dim=3)
    fn = jax.jit(lambda k, c, s, e: b.make_instance(k, base, coverage=c, temperature=s, kl_coef=e))
    got = fn(jax.random.key(3), 0.8, 10.0, 0.1)
    ref = b.make_instance(jax.random.key(3), b.InstanceConfig(n_contexts=4, n_actions=6, dim=3, coverage=0.8,
                                                              temperature=10.0, kl_coef=0.1))
    for leaf_g, leaf_r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(leaf_g, leaf_r, rtol=1e-12)
    with pytest.raises(ValueError, match="coverage=2.0 is not allowed"):
        b.make_instance(jax.random.key(3), base, coverage=2.0)
