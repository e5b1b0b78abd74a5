"""P2's KL-regularized game: docs/theory.md §9.2 invariants 13 and 14, against brute-force references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

import bandits as b
from tests.helpers import kl_coefs, np_kl, np_pref, random_instance, random_log_policy, seeds, shapes

payoffs = st.sampled_from(b.PAYOFFS)
skews = st.floats(0.0, 3.0)


def np_game_value(inst, p1, p2, payoff):
    d0, eta, pi0 = np.asarray(inst.d0), float(inst.kl_coef), np.exp(np.asarray(inst.log_pi0))
    total = 0.0
    for x in range(p1.shape[0]):
        for a in range(p1.shape[1]):
            for c in range(p1.shape[1]):
                p = np_pref(inst, x, a, c)
                g = p if payoff == "identity" else np.log(p / (1 - p))
                total += d0[x] * p1[x, a] * p2[x, c] * g
        total += d0[x] * eta * (np_kl(p2[x], pi0[x]) - np_kl(p1[x], pi0[x]))
    return total


@given(seeds, shapes, kl_coefs, skews, payoffs)
def test_game_value_matches_bruteforce(seed, shape, eta, skew, payoff):
    inst = random_instance(seed, shape, eta, skew_strength=skew)
    rng = np.random.default_rng(seed)
    l1, l2 = (random_log_policy(rng, shape[0], shape[1]) for _ in range(2))
    got = b.game_value(inst, jnp.asarray(l1), jnp.asarray(l2), payoff)
    np.testing.assert_allclose(got, np_game_value(inst, np.exp(l1), np.exp(l2), payoff), rtol=1e-9, atol=1e-11)


@given(seeds, shapes, kl_coefs, skews, payoffs)
def test_invariant13_symmetry_and_gap_nonnegative(seed, shape, eta, skew, payoff):
    """P(a,b) + P(b,a) = 1, J(pi, pi) = c/2 and Gap(pi) >= 0 for random pi."""
    inst = random_instance(seed, shape, eta, skew_strength=skew)
    p = b.preference_matrices(inst)
    np.testing.assert_allclose(p + jnp.swapaxes(p, -1, -2), 1.0, atol=1e-14)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        pi = jnp.asarray(random_log_policy(rng, shape[0], shape[1], scale=3.0))
        np.testing.assert_allclose(b.game_value(inst, pi, pi, payoff), b.nash_value(payoff), atol=1e-12)
        assert b.duality_gap(inst, pi, payoff) >= -1e-12


@settings(max_examples=15)
@given(seeds, shapes, st.floats(0.1, 3.0), skews, payoffs)
def test_invariant13_equilibrium(seed, shape, eta, skew, payoff):
    """The solver's output has gap ~ 0, satisfies the fixed point, and random policies have gap > 0."""
    inst = random_instance(seed, shape, eta, skew_strength=skew)
    sol = b.nash_equilibrium(inst, payoff, tol=1e-13)
    assert sol.gap <= 1e-13
    g = b.payoff_matrices(inst, payoff)
    fixed = jax.nn.log_softmax(inst.log_pi0 + jnp.einsum("xab,xb->xa", g, jnp.exp(sol.log_pi)) / eta, -1)
    # the gap is quadratic in the distance to the equilibrium: gap 1e-13 -> distance ~ 1e-6
    np.testing.assert_allclose(np.exp(sol.log_pi), np.exp(fixed), atol=5e-6)
    np.testing.assert_allclose(b.game_value(inst, sol.log_pi, sol.log_pi, payoff), b.nash_value(payoff),
                               atol=1e-12)
    rng = np.random.default_rng(seed)
    pi = jnp.asarray(random_log_policy(rng, shape[0], shape[1], scale=3.0))
    assert b.duality_gap(inst, pi, payoff) > 1e-8


@settings(max_examples=10)
@given(seeds, shapes, st.floats(0.1, 3.0))
def test_invariant13_logit_payoff_bt_equals_gibbs(seed, shape, eta):
    """With the logit payoff and Bradley-Terry preferences the equilibrium is Gibbs(r*)."""
    inst = random_instance(seed, shape, eta, skew_strength=0.0)
    sol = b.nash_equilibrium(inst, "logit", tol=1e-13)
    assert sol.gap <= 1e-13
    np.testing.assert_allclose(np.exp(sol.log_pi), np.exp(b.optimal_policy(inst)), atol=5e-6)
    assert b.duality_gap(inst, b.optimal_policy(inst), "logit") <= 1e-10


@settings(max_examples=10)
@given(seeds, shapes, kl_coefs, skews, payoffs)
def test_invariant14_best_response_closed_form(seed, shape, eta, skew, payoff):
    """pi2 ∝ pi0 exp(-G(x, pi, .)/eta) attains min_{pi2} J(pi, pi2): compare with a scipy search."""
    inst = random_instance(seed, shape, eta, skew_strength=skew)
    rng = np.random.default_rng(seed)
    pi = jnp.asarray(random_log_policy(rng, shape[0], shape[1]))
    br = b.best_response(inst, pi, payoff)
    closed = float(b.game_value(inst, pi, br, payoff))
    np.testing.assert_allclose(closed, b.max_min_value(inst, pi, payoff), rtol=1e-10, atol=1e-12)
    n_x, k, _ = shape
    p1 = np.exp(np.asarray(pi))

    def objective(logits):
        q = np.exp(logits.reshape(n_x, k) - logits.reshape(n_x, k).max(-1, keepdims=True))
        q /= q.sum(-1, keepdims=True)
        return np_game_value(inst, p1, q, payoff)

    search = min(minimize(objective, rng.standard_normal(n_x * k), method="BFGS",
                          options={"gtol": 1e-10}).fun for _ in range(2))
    assert closed <= search + 1e-9
    np.testing.assert_allclose(closed, search, atol=1e-6)
    for _ in range(3):
        other = jnp.asarray(random_log_policy(rng, n_x, k, scale=3.0))
        assert b.game_value(inst, pi, other, payoff) >= closed - 1e-12


def test_payoff_name_checked():
    inst = random_instance(0, (1, 2, 1), 1.0)
    with pytest.raises(ValueError, match="payoff='log' is not allowed"):
        b.duality_gap(inst, inst.log_pi0, "log")


def test_solver_jit_and_vmap_agree():
    cfg = b.InstanceConfig(n_contexts=3, n_actions=4, dim=3, kl_coef=0.3, skew_strength=2.0)
    keys = jax.random.split(jax.random.key(5), 3)
    insts = jax.vmap(lambda k: b.make_instance(k, cfg))(keys)
    batched = jax.jit(jax.vmap(b.nash_equilibrium))(insts)
    for i, key in enumerate(keys):
        single = b.nash_equilibrium(b.make_instance(key, cfg))
        np.testing.assert_allclose(batched.log_pi[i], single.log_pi, atol=1e-9)
        assert batched.gap[i] <= 1e-9
