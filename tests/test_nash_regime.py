"""P2's instance family (bandits.nash.GameConfig, make_game_instance; issue 17): the defaults give
make_instance's instances bit for bit, the features are close to one-hot as stated, pi0 is tilted away
from the equilibrium by exactly the stated formula (poorer unilateral coverage of pi0's data), and the
p2_regime presets and their paired summaries."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bandits as b
from algorithms.nash import preference_model as gp
from bandits.nash import GameConfig, _with_features, avoid_equilibrium, make_game_instance, one_hot_features
from experiments.engine import registry
from experiments.engine.config import replace
from experiments.engine.runner import Progress

CFG = b.InstanceConfig(n_contexts=3, n_actions=5, dim=5, reward_norm=1.0, kl_coef=0.02, skew_strength=4.0)


def _leaves_equal(x, y):
    for u, w in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(w))


@settings(max_examples=5)
@given(seed=st.integers(0, 2**16), coverage=st.sampled_from([0.0, -0.5]), temperature=st.sampled_from([0.0, 3.0]))
def test_defaults_reproduce_make_instance(seed, coverage, temperature):
    cfg = dataclasses.replace(CFG, coverage=coverage, temperature=temperature)
    key = jax.random.key(seed)
    base = b.make_instance(key, cfg)
    _leaves_equal(make_game_instance(key, cfg), base)
    # the rebuild on the same features uses make_instance's sub-keys: the same instance again
    _leaves_equal(_with_features(key, cfg, base, base.phi), base)


def test_experiment_defaults_are_the_default_game():
    for name in ("nash-offline", "nash-online"):
        presets = registry.get(name).presets
        assert presets["quick"].game == GameConfig() and presets["paper"].game == GameConfig()
        assert presets["p2_regime"].game == GameConfig(one_hot=0.9, avoid_nash=4.0)


@settings(max_examples=5)
@given(seed=st.integers(0, 2**16), rho=st.floats(0.05, 1.0))
def test_one_hot_features_are_unit_and_lean_to_the_basis(seed, rho):
    inst = make_game_instance(jax.random.key(seed), CFG, GameConfig(one_hot=rho))
    base = b.make_instance(jax.random.key(seed), CFG)
    np.testing.assert_allclose(jnp.linalg.norm(inst.phi, axis=-1), 1.0, rtol=1e-12)
    expected = (1 - rho) * base.phi + rho * jnp.eye(5)[None]
    np.testing.assert_allclose(inst.phi, expected / jnp.linalg.norm(expected, axis=-1, keepdims=True), atol=1e-12)
    # same theta*, skew and kl_coef; the reward is recomputed on the new features
    np.testing.assert_array_equal(inst.theta_star, base.theta_star)
    np.testing.assert_array_equal(inst.skew, base.skew)
    np.testing.assert_allclose(inst.reward, inst.phi @ inst.theta_star, atol=1e-14)


def test_one_hot_at_rho_one_gives_one_hot_pair_features():
    inst = make_game_instance(jax.random.key(0), CFG, GameConfig(one_hot=1.0))
    np.testing.assert_allclose(inst.phi, jnp.broadcast_to(jnp.eye(5)[None], inst.phi.shape), atol=1e-15)
    psi = gp.context_pair_features(inst.phi[0])           # [K, K, D]
    skew_block = np.abs(np.asarray(psi[..., 5:]))
    off = ~np.eye(5, dtype=bool)
    # the skew block of psi(a, b), a != b, is one-hot over the K(K-1)/2 unordered pairs (distinct pairs apart)
    assert np.all(skew_block[off].sum(-1) == 1.0) and np.all(skew_block[~off] == 0.0)
    flat = skew_block[np.triu_indices(5, 1)]
    np.testing.assert_array_equal(flat, np.eye(10))
    # d < K: actions a and a + d share a direction
    narrow = one_hot_features(jnp.ones((1, 4, 3)) / np.sqrt(3.0), 1.0)
    np.testing.assert_allclose(narrow[0, 3], narrow[0, 0], atol=1e-15)


def test_avoid_nash_tilts_pi0_by_the_stated_formula():
    key = jax.random.key(1)
    cfg = dataclasses.replace(CFG, coverage=0.3, temperature=2.0)
    base = make_game_instance(key, cfg, GameConfig(one_hot=0.8))
    tau = 3.0
    inst = make_game_instance(key, cfg, GameConfig(one_hot=0.8, avoid_nash=tau))
    uniform = b.uniform_policy(3, 5, base.phi.dtype)
    pi_u = jnp.exp(b.nash_equilibrium(base._replace(log_pi0=uniform)).log_pi)
    tilt = tau * pi_u / pi_u.max(-1, keepdims=True)
    want = jax.nn.log_softmax(base.log_pi0 - tilt, axis=-1)
    np.testing.assert_allclose(inst.log_pi0, want, atol=1e-12)
    # pi0 moves against pi_u: the log-ratio of pi0 after/before falls by exactly the tilt (up to a per-context constant)
    shift = inst.log_pi0 - base.log_pi0 + tilt
    np.testing.assert_allclose(shift - shift[:, :1], 0.0, atol=1e-12)
    assert float(jnp.max(tilt)) == tau
    _leaves_equal(inst._replace(log_pi0=base.log_pi0), base)     # only pi0 moves
    _leaves_equal(avoid_equilibrium(base, tau), inst)


def _reference_unilateral_coverage(inst, n=1000.0, lam=1.0):
    """``E_x max_b ||E_{a~pi*} psi(x, a, b)||_{Sigma^-1}`` with the population Gram matrix of ``n`` pi0 x pi0 pairs."""
    star = jnp.exp(b.nash_equilibrium(inst).log_pi)
    pi0 = jnp.exp(inst.log_pi0)
    psi = jax.vmap(gp.context_pair_features)(inst.phi)                       # [n_x, K, K, D]
    w = inst.d0[:, None, None] * pi0[:, :, None] * pi0[:, None, :]
    sigma = lam * jnp.eye(psi.shape[-1]) + n * jnp.einsum("xab,xabi,xabj->ij", w, psi, psi)
    mean = jnp.einsum("xa,xabi->xbi", star, psi)
    norms = jnp.sqrt(jnp.einsum("xbi,ij,xbj->xb", mean, jnp.linalg.inv(sigma), mean))
    return float(jnp.mean(jnp.max(norms, -1))), float(jnp.mean(jnp.sum(star * pi0, -1)))


def test_avoid_nash_worsens_unilateral_coverage_of_pi0_data():
    cfg = b.InstanceConfig(n_contexts=4, n_actions=8, dim=8, reward_norm=1.0, kl_coef=0.01, skew_strength=4.0)
    for seed in range(3):
        key = jax.random.key(seed)
        cov0, mass0 = _reference_unilateral_coverage(make_game_instance(key, cfg, GameConfig(one_hot=0.9)))
        tilted = make_game_instance(key, cfg, GameConfig(one_hot=0.9, avoid_nash=4.0))
        cov4, mass4 = _reference_unilateral_coverage(tilted)
        assert cov4 > 1.5 * cov0 and mass4 < 0.6 * mass0, (seed, cov0, cov4, mass0, mass4)


@pytest.mark.parametrize("field, value, message", [
    ("one_hot", 1.5, r"one_hot=1.5 is not allowed: one_hot must be a finite number in \[0, 1\]"),
    ("one_hot", -0.1, "one_hot=-0.1 is not allowed"),
    ("avoid_nash", -1.0, r"avoid_nash=-1.0 is not allowed: avoid_nash must be a finite number in \[0, inf\]"),
])
def test_game_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        GameConfig(**{field: value})


def test_game_knobs_need_a_linear_reward():
    neural = dataclasses.replace(CFG, reward="neural")
    with pytest.raises(ValueError, match="reward='neural' is not allowed: reward must be 'linear' when one_hot"):
        make_game_instance(jax.random.key(0), neural, GameConfig(avoid_nash=1.0))
    make_game_instance(jax.random.key(0), neural)   # the default family keeps neural rewards


def test_game_knobs_settable_by_short_name():
    quick = registry.get("nash-offline").presets["quick"]
    assert replace(quick, one_hot=0.5).game.one_hot == 0.5
    with pytest.raises(ValueError, match="avoid_nash=-2.0 is not allowed"):
        replace(quick, avoid_nash=-2.0)


TINY = {"nash-offline": dict(n_contexts=2, n_actions=4, dim=4, sample_sizes=(16, 64), designs=("reference",)),
        "nash-online": dict(n_contexts=2, n_actions=4, dim=4, iterations=3, batch=8,
                            algorithms=("enhancer", "enhancer_optimistic", "self_play"))}


@pytest.mark.parametrize("name", sorted(TINY))
def test_p2_regime_runs_with_paired_summaries(name):
    exp = registry.get(name)
    config = replace(exp.presets["p2_regime"], **TINY[name])
    res = exp.run(config, 3, Progress())
    t, s = res.table, res.summary
    if name == "nash-offline":
        key = "reference/p2_pessimistic_minus_nash_mle/nash_gap_n_max"
        rows = lambda a: (t["algorithm"] == a) & (t["n"] == 64)   # noqa: E731
        a, base = t["nash_gap"][rows("p2_pessimistic")], t["nash_gap"][rows("nash_mle")]
        assert "reference/p2_pessimistic_minus_p2_pessimistic_pointwise/nash_gap_n_min/diff" in s
    else:
        key = "enhancer_minus_self_play/nash_gap_final"
        last = t["iteration"] == 2
        a = t["nash_gap"][last & (t["algorithm"] == "enhancer")]
        base = t["nash_gap"][last & (t["algorithm"] == "self_play")]
        assert "enhancer_minus_enhancer_optimistic/nash_gap_final/diff" in s
        assert "enhancer_optimistic_minus_enhancer/nash_gap_final/diff" not in s
    np.testing.assert_allclose(s[f"{key}/diff"], np.mean(a - base), rtol=1e-12, atol=1e-15)
    assert s[f"{key}/diff_low"] <= s[f"{key}/diff"] <= s[f"{key}/diff_high"]
    assert s[f"{key}/below_frac"] == np.mean(a < base)
