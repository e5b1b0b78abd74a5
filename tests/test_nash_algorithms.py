"""Nash dynamics (exact and sampled), P2's offline pessimistic policy and online agent (docs/theory.md §3, §6;
§9.2 invariants 13, 14, 17). The game itself (J(pi,pi) = 1/2, equilibrium fixed point, best response
vs scipy, logit+BT = Gibbs, jit/vmap of the symmetric solver) is tested in tests/test_nash.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bandits as b
from algorithms.core import confidence as conf
from algorithms.nash import preference_model as gp
from algorithms.nash import dynamics as nd
from algorithms.nash import methods
from algorithms.nash import offline as no
from algorithms.nash import online as non
from tests.helpers import random_instance, random_log_policy, seeds

payoffs = st.sampled_from(b.PAYOFFS)
small_shapes = st.sampled_from([(2, 4, 2), (3, 5, 3)])
etas = st.floats(0.2, 2.0)


def _setup(seed, shape, eta, skew=2.0):
    inst = random_instance(seed, shape, eta, skew_strength=skew)
    rng = np.random.default_rng(seed)
    return inst, rng, jnp.asarray(random_log_policy(rng, shape[0], shape[1], scale=2.0))


# ---- exact dynamics ----

@settings(max_examples=10)
@given(seeds, small_shapes, etas, payoffs, st.floats(0.05, 2.0))
def test_zero_regularization_reduces_to_multiplicative_weights(seed, shape, eta, payoff, step):
    """Invariant 17: Nash-MD and INPO with tau = 0 are SPPO, i.e. pi ∝ pi exp(step G(., pi))."""
    inst, rng, pi = _setup(seed, shape, eta)
    g = b.payoff_matrices(inst, payoff)
    mwu = np.log(np.exp(pi) * np.exp(step * np.einsum("xab,xb->xa", g, np.exp(pi))))
    mwu -= np.log(np.exp(mwu).sum(-1, keepdims=True))
    np.testing.assert_allclose(nd.sppo_step(g, pi, step), mwu, atol=1e-12)
    np.testing.assert_allclose(nd.nash_md_step(g, pi, inst.log_pi0, step, 0.0), mwu, atol=1e-12)
    np.testing.assert_allclose(nd.inpo_step(g, pi, inst.log_pi0, step, 0.0), mwu, atol=1e-12)
    for m in nd.METHODS[:3]:   # rows stay normalised
        out = nd.exact_step(m, g, pi, inst.log_pi0, step, 0.0)
        np.testing.assert_allclose(jnp.exp(out).sum(-1), 1.0, atol=1e-12)


@settings(max_examples=10)
@given(seeds, small_shapes, etas, payoffs)
def test_equilibrium_is_fixed_point_of_inpo_and_ipo_best_response(seed, shape, eta, payoff):
    """Invariant 17: the tau-regularized NE is an exact fixed point of INPO (any step) and of the IPO
    best response; a random policy is not."""
    inst, _, pi = _setup(seed, shape, eta)
    g = b.payoff_matrices(inst, payoff)
    star = b.nash_equilibrium(inst, payoff, tol=1e-14).log_pi
    for step in (0.1, 0.5 / eta):
        np.testing.assert_allclose(np.exp(nd.inpo_step(g, star, inst.log_pi0, step, eta)), np.exp(star),
                                   atol=2e-6)
    np.testing.assert_allclose(np.exp(nd.ipo_best_response(g, star, inst.log_pi0, eta)), np.exp(star), atol=2e-6)
    moved = nd.inpo_step(g, pi, inst.log_pi0, 0.5 / eta, eta)
    assert np.max(np.abs(np.exp(moved) - np.exp(pi))) > 1e-4


@settings(max_examples=8)
@given(seeds, small_shapes, etas)
def test_ipo_best_response_is_the_game_best_response(seed, shape, eta):
    """Under the identity payoff G(a, mu) = 1 - G(mu, a): IPO's maximiser of G(pi, mu) - tau KL equals
    the min-player's best response of bandits.nash (tested against scipy in test_nash.py)."""
    inst, _, mu = _setup(seed, shape, eta)
    g = b.payoff_matrices(inst, "identity")
    np.testing.assert_allclose(nd.ipo_best_response(g, mu, inst.log_pi0, eta), b.best_response(inst, mu),
                               atol=1e-12)


def test_iterated_dynamics_reach_the_equilibrium():
    """INPO converges to the NE; Nash-MD to an O(step tau)-neighbourhood that shrinks with the step;
    SPPO (no KL to pi_ref) does not reach the regularized NE."""
    inst = random_instance(3, (3, 5, 3), 0.5, skew_strength=3.0)
    star = np.exp(b.nash_equilibrium(inst, tol=1e-14).log_pi)
    inpo = nd.exact_trajectory(inst, "inpo", 1.0, 400)[-1]
    assert b.duality_gap(inst, inpo) <= 1e-13   # the solver's own stopping level
    np.testing.assert_allclose(np.exp(inpo), star, atol=1e-6)
    errors = []
    for step in (0.4, 0.1):
        md = nd.exact_trajectory(inst, "nash_md", step, int(60 / (step * 0.5)))[-1]
        errors.append(np.max(np.abs(np.exp(md) - star)))
    assert errors[1] < errors[0] / 2 and errors[1] < 5e-3, errors
    sppo = nd.exact_trajectory(inst, "sppo", 0.5, 200)[-1]
    assert b.duality_gap(inst, sppo) > 1e-3


# ---- sampled, loss-based dynamics ----

def test_pairwise_regression_matches_least_squares():
    rng = np.random.default_rng(0)
    n_x, k, n = 2, 4, 40
    x, a, c = rng.integers(0, n_x, n), rng.integers(0, k, n), rng.integers(0, k, n)
    t = rng.standard_normal(n)
    mask = rng.random(n) < 0.8
    stats = nd.sample_statistics(jnp.asarray(x), jnp.asarray(a), jnp.asarray(c), jnp.asarray(t),
                                 jnp.asarray(mask), n_x, k)
    ridge = 0.3
    f = np.asarray(nd.pairwise_regression(stats, ridge))
    h = np.asarray(nd.pointwise_regression(stats, ridge))
    for ctx in range(n_x):
        rows = np.flatnonzero(mask & (x == ctx))
        design = np.zeros((len(rows), k))
        design[np.arange(len(rows)), a[rows]] += 1
        design[np.arange(len(rows)), c[rows]] -= 1
        lhs = np.vstack([design, np.sqrt(ridge) * np.eye(k)])
        ref = np.linalg.lstsq(lhs, np.concatenate([t[rows], np.zeros(k)]), rcond=None)[0]
        np.testing.assert_allclose(f[ctx], ref, atol=1e-10)
        point = np.zeros((2 * len(rows), k))
        point[np.arange(len(rows)), a[rows]] = 1
        point[len(rows) + np.arange(len(rows)), c[rows]] = 1
        lhs = np.vstack([point, np.sqrt(ridge) * np.eye(k)])
        rhs = np.concatenate([t[rows], -t[rows], np.zeros(k)])
        np.testing.assert_allclose(h[ctx], np.linalg.lstsq(lhs, rhs, rcond=None)[0], atol=1e-10)


@settings(max_examples=8)
@given(seeds, small_shapes, etas, st.sampled_from(nd.METHODS))
def test_population_loss_minimiser_is_the_exact_update(seed, shape, eta, method):
    """With the expected statistics of i.i.d. pairs from the sampler, each method's loss minimiser
    (ridge -> 0) reproduces its exact update."""
    inst, _, pi = _setup(seed, shape, eta)
    step = 0.5 / eta
    p = b.payoff_matrices(inst, "identity")
    _, sampler, scale = nd.update_parts(method, pi, inst.log_pi0, step, eta)
    stats = nd.population_statistics(p, sampler, inst.d0, scale, 1000.0)
    got = nd.update_from_statistics(method, stats, pi, inst.log_pi0, step, eta, 1e-9)
    want = nd.exact_step(method, p, pi, inst.log_pi0, step, eta)
    np.testing.assert_allclose(np.exp(got), np.exp(want), atol=1e-8)


@pytest.mark.parametrize("method", nd.METHODS)
def test_sampled_step_approaches_exact_step(method):
    inst = random_instance(7, (2, 4, 2), 0.5, skew_strength=3.0)
    pi = inst.log_pi0
    want = np.exp(nd.exact_step(method, b.payoff_matrices(inst), pi, inst.log_pi0, 1.0, 0.5))
    errors = [np.max(np.abs(np.exp(nd.sampled_step(jax.random.key(s), inst, method, pi, 1.0, 40000)) - want))
              for s in range(2)]
    assert max(errors) < 0.03, errors
    # and a small batch is visibly noisy (the labels matter)
    small = np.exp(nd.sampled_step(jax.random.key(0), inst, method, pi, 1.0, 16))
    assert np.max(np.abs(small - want)) > 1e-3


def test_run_sampled_trajectory_and_validation():
    inst = random_instance(1, (2, 4, 2), 0.5, skew_strength=2.0)
    traj = nd.run_sampled(jax.random.key(0), inst, "inpo", 1.0, 5, 32)
    assert traj.shape == (5, 2, 4)
    np.testing.assert_allclose(jnp.exp(traj).sum(-1), 1.0, atol=1e-12)
    first = nd.sampled_step(jax.random.fold_in(jax.random.key(0), 0), inst, "inpo", inst.log_pi0, 1.0, 32)
    np.testing.assert_allclose(traj[0], first, atol=1e-13)
    with pytest.raises(ValueError, match="step=3.0 is not allowed.*<= 1 / kl_coef = 2"):
        nd.run_sampled(jax.random.key(0), inst, "nash_md", 3.0, 5, 32)
    with pytest.raises(ValueError, match="method='mwu' is not allowed"):
        nd.exact_trajectory(inst, "mwu", 1.0, 3)
    with pytest.raises(ValueError, match="batch=0 is not allowed"):
        nd.run_sampled(jax.random.key(0), inst, "sppo", 1.0, 5, 0)


# ---- the asymmetric game solver and P2's offline pessimism ----

def np_phi(g, pi0, d0, eta, p, q):
    kl = lambda u, w: np.sum(u * np.log(u / w), -1)
    return float(np.sum(d0 * (np.einsum("xa,xab,xb->x", p, g, q) - eta * kl(p, pi0) + eta * kl(q, pi0))))


@settings(max_examples=8)
@given(seeds, small_shapes, st.floats(0.2, 2.0))
def test_solve_game_saddle_point(seed, shape, eta):
    """For an arbitrary payoff tensor: gap ~ 0 at the solution, each player is the other's closed-form
    best response, random deviations do not help, and random pairs have a positive gap."""
    rng = np.random.default_rng(seed)
    n_x, k, _ = shape
    g = jnp.asarray(rng.standard_normal((n_x, k, k)))
    log_pi0 = jnp.asarray(random_log_policy(rng, n_x, k))
    d0 = jnp.asarray(rng.dirichlet(np.ones(n_x)))
    sol = no.solve_game(g, log_pi0, d0, eta, tol=1e-13)
    assert sol.gap <= 1e-13
    p, q, pi0 = np.exp(sol.log_p), np.exp(sol.log_q), np.exp(log_pi0)
    br_p = jax.nn.softmax(log_pi0 + jnp.einsum("xab,xb->xa", g, q) / eta, -1)
    br_q = jax.nn.softmax(log_pi0 - jnp.einsum("xa,xab->xb", p, g) / eta, -1)
    np.testing.assert_allclose(br_p, p, atol=5e-6)
    np.testing.assert_allclose(br_q, q, atol=5e-6)
    value = np_phi(np.asarray(g), pi0, np.asarray(d0), eta, p, q)
    np.testing.assert_allclose(no.max_min_value_of(g, log_pi0, d0, eta, sol.log_p), value, atol=1e-9)
    for _ in range(3):
        other = np.exp(random_log_policy(rng, n_x, k, scale=2.0))
        assert np_phi(np.asarray(g), pi0, np.asarray(d0), eta, other, q) <= value + 1e-9
        assert np_phi(np.asarray(g), pi0, np.asarray(d0), eta, p, other) >= value - 1e-9
    lp, lq = (jnp.asarray(random_log_policy(rng, n_x, k, scale=2.0)) for _ in range(2))
    gap = no.game_duality_gap(g, log_pi0, d0, eta, lp, lq)
    # brute-force lower bound on the gap from the closed-form best responses
    bp = np.asarray(jax.nn.softmax(log_pi0 + jnp.einsum("xab,xb->xa", g, jnp.exp(lq)) / eta, -1))
    bq = np.asarray(jax.nn.softmax(log_pi0 - jnp.einsum("xa,xab->xb", jnp.exp(lp), g) / eta, -1))
    brute = np_phi(np.asarray(g), pi0, np.asarray(d0), eta, bp, np.exp(lq)) - \
        np_phi(np.asarray(g), pi0, np.asarray(d0), eta, np.exp(lp), bq)
    np.testing.assert_allclose(gap, brute, rtol=1e-9, atol=1e-12)
    assert gap > 1e-6


@settings(max_examples=6)
@given(seeds, small_shapes, st.floats(0.2, 2.0), payoffs)
def test_solve_game_on_symmetric_payoff_is_the_nash_equilibrium(seed, shape, eta, payoff):
    inst = random_instance(seed, shape, eta, skew_strength=2.0)
    g = b.payoff_matrices(inst, payoff)
    sol = no.solve_game(g, inst.log_pi0, inst.d0, eta, tol=1e-13)
    star = b.nash_equilibrium(inst, payoff, tol=1e-13).log_pi
    np.testing.assert_allclose(np.exp(sol.log_p), np.exp(star), atol=1e-5)
    np.testing.assert_allclose(np.exp(sol.log_q), np.exp(star), atol=1e-5)
    np.testing.assert_allclose(b.duality_gap(inst, sol.log_p, payoff), 0.0, atol=1e-10)


def test_solve_game_jit_and_vmap_agree():
    rng = np.random.default_rng(0)
    g = jnp.asarray(rng.standard_normal((3, 2, 4, 4)))
    log_pi0 = jnp.asarray(random_log_policy(rng, 2, 4))
    d0 = jnp.full(2, 0.5)
    etas = jnp.asarray([0.3, 1.0, 2.0])
    batched = jax.jit(jax.vmap(lambda gg, e: no.solve_game(gg, log_pi0, d0, e)))(g, etas)
    for i in range(3):
        single = no.solve_game(g[i], log_pi0, d0, float(etas[i]))
        np.testing.assert_allclose(batched.log_p[i], single.log_p, atol=1e-8)
        assert batched.gap[i] <= 1e-10


CFG = b.InstanceConfig(n_contexts=3, n_actions=5, dim=2, reward_norm=1.0, kl_coef=0.5, skew_strength=2.0)


def _offline(key, n=80, payoff="identity", beta_mode="sqrt_d", c_beta=3.0):
    k1, k2 = jax.random.split(key)
    inst = b.make_instance(k1, CFG)
    data = b.sample_preference_data(k2, inst, inst.log_pi0, b.uniform_policy(3, 5), n)
    theta = gp.fit_general_preference(inst, data, 1.0).theta
    beta = conf.confidence_radius(beta_mode, gp.psi_dim(2), n, 1.0, 2.0, c_beta=c_beta)
    cs = gp.confidence_set(inst, data, theta, 1.0, beta)
    sol = no.pessimistic_policy(inst, cs, payoff, tol=1e-12)
    star = b.nash_equilibrium(inst, payoff, tol=1e-12).log_pi
    return {"gap": b.duality_gap(inst, sol.log_pi, payoff),
            "bound": no.pessimistic_bound(inst, sol.gamma, cs.beta, star, payoff),
            "inside": conf.contains(cs, gp.true_parameter(inst)),
            "below": jnp.all(no.pessimistic_payoff(inst, theta, sol.gamma, cs.beta, payoff)
                             <= b.payoff_matrices(inst, payoff) + 1e-12),
            "solver_gap": sol.solver_gap,
            "pess0": no.pessimistic_policy(inst, cs._replace(beta=jnp.zeros_like(cs.beta)), payoff, tol=1e-13).log_pi,
            "pess": sol.log_pi, "plug": no.plug_in_nash(inst, theta, payoff, tol=1e-13).log_pi}


def test_pessimistic_bound_holds_inside_the_confidence_set():
    """On theta* in C: G_pess <= G* everywhere and Gap(pi_hat) <= 2 L_g beta E_x max_b E_{pi*} Gamma
    (identity payoff, L_g = 1/4). Also: beta = 0 gives the plug-in equilibrium, beta > 0 changes it."""
    out = jax.jit(jax.vmap(_offline))(jax.random.split(jax.random.key(0), 12))
    inside = np.asarray(out["inside"])
    assert inside.sum() >= 6   # the event happens, so the implication is exercised
    assert np.all(np.asarray(out["below"])[inside])
    assert np.all(np.asarray(out["gap"])[inside] <= np.asarray(out["bound"])[inside] + 1e-9)
    assert np.all(np.asarray(out["solver_gap"]) <= 1e-12)
    assert np.all(np.asarray(out["gap"]) >= -1e-12)
    np.testing.assert_allclose(np.exp(out["pess0"]), np.exp(out["plug"]), atol=1e-5)
    assert np.all(np.max(np.abs(np.exp(out["pess"]) - np.exp(out["plug"])), axis=(1, 2)) > 1e-3)


@settings(max_examples=8)
@given(seeds, small_shapes, etas, payoffs)
def test_plug_in_gap_identity_and_second_order(seed, shape, eta, payoff):
    """[D] For the symmetric equilibrium pi_hat of any antisymmetric estimate G_hat = G* + E:
    Gap(pi_hat) = eta E_x log E_{pi_hat} exp(-E(., pi_hat)/eta) (vs the closed-form gap of
    bandits.nash) and KL(pi_hat||pi*) + KL(pi*||pi_hat) = -(1/eta) E_x pi*^T E pi_hat; halving a
    small error divides the gap by ~4 (second order), not by 2."""
    inst = random_instance(seed, shape, eta, skew_strength=2.0)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((shape[0], shape[1], shape[1]))
    delta = jnp.asarray(a - np.swapaxes(a, 1, 2))            # antisymmetric margin error
    margins = jax.vmap(b.margin_matrix, in_axes=(0, 0, None))(inst.reward, inst.phi, inst.skew)
    star = b.nash_equilibrium(inst, payoff, tol=1e-14).log_pi

    def plug_in(scale):
        g_hat = no.transform(margins + scale * delta, payoff)
        pi_hat = no.solve_game(g_hat, inst.log_pi0, inst.d0, eta, tol=1e-15).log_p
        return g_hat, pi_hat

    g_hat, pi_hat = plug_in(1.0)
    gap = b.duality_gap(inst, pi_hat, payoff)
    np.testing.assert_allclose(no.plug_in_gap(inst, g_hat, pi_hat, payoff), gap, rtol=1e-6, atol=1e-9)
    assert gap > 1e-6
    err = g_hat - b.payoff_matrices(inst, payoff)
    sym_kl = b.expected_kl(inst, pi_hat, star) + b.expected_kl(inst, star, pi_hat)
    cross = jnp.sum(inst.d0 * jnp.einsum("xa,xab,xb->x", jnp.exp(star), err, jnp.exp(pi_hat)))
    np.testing.assert_allclose(sym_kl, -cross / eta, rtol=1e-5, atol=1e-9)
    small = 0.02 * eta
    gaps = [b.duality_gap(inst, plug_in(s)[1], payoff) for s in (small, small / 2)]
    assert 0.2 < gaps[1] / gaps[0] < 0.3, gaps


def test_coverage_diagnostics_brute_force():
    rng = np.random.default_rng(0)
    inst = random_instance(0, (3, 4, 2), 1.0)
    gamma = jnp.asarray(rng.random((3, 4, 4)))
    lp = jnp.asarray(random_log_policy(rng, 3, 4))
    p, gm, d0 = np.exp(np.asarray(lp)), np.asarray(gamma), np.asarray(inst.d0)
    uni = sum(d0[x] * max(sum(p[x, a] * gm[x, a, c] for a in range(4)) for c in range(4)) for x in range(3))
    diag = sum(d0[x] * p[x, a] * p[x, c] * gm[x, a, c] for x in range(3) for a in range(4) for c in range(4))
    np.testing.assert_allclose(no.unilateral_coverage(inst, gamma, lp), uni, rtol=1e-12)
    np.testing.assert_allclose(no.diagonal_coverage(inst, gamma, lp), diag, rtol=1e-12)
    assert uni >= diag
    np.testing.assert_allclose(no.pessimistic_bound(inst, gamma, 2.0, lp, "identity"), uni, rtol=1e-12)
    np.testing.assert_allclose(no.pessimistic_bound(inst, gamma, 2.0, lp, "logit"), 4 * uni, rtol=1e-12)


# ---- online: main agent + enhancer ----

def test_online_agent_consistency():
    """Round t's MLE equals a refit on the data it saw, the main agent is the estimated game's NE,
    and P2's enhancer is, at beta = 0, the estimated game's best response (run vmapped over keys and beta);
    its brute-force optimality is tested in tests/test_nash_enhancer.py."""
    inst = b.make_instance(jax.random.key(2), CFG)
    key = jax.random.key(9)
    keys = jax.random.split(key, 2)
    run_enhancer = (lambda k, beta: non.run_online(k, inst, "enhancer", 3, 16, lam=1.0, beta=beta,
                                                          tol=1e-12))
    batched = jax.jit(jax.vmap(run_enhancer))(keys, jnp.asarray([0.0, 0.5]))
    enh = jax.tree.map(lambda a: a[0], batched)
    assert enh.log_pi.shape == (3, 3, 5) and enh.theta.shape == (3, gp.psi_dim(2))
    rounds = [b.sample_preference_data(jax.random.fold_in(keys[0], 0), inst, inst.log_pi0, inst.log_pi0, 16),
              b.sample_preference_data(jax.random.fold_in(keys[0], 1), inst, enh.log_pi[0], enh.log_pair[0], 16)]
    refit = gp.fit_general_preference(inst, b.concatenate(*rounds), 1.0).theta
    np.testing.assert_allclose(enh.theta[1], refit, atol=1e-8)
    for t in range(3):
        assert b.duality_gap(gp.model_instance(inst, enh.theta[t]), enh.log_pi[t]) <= 1e-11
    for t in range(3):   # beta = 0: the enhancer is the estimated game's best response to the main agent,
        model = gp.model_instance(inst, enh.theta[t])   # which for a symmetric game is the agent itself
        np.testing.assert_allclose(enh.log_pair[t], b.best_response(model, enh.log_pi[t]), atol=1e-12)
    np.testing.assert_allclose(np.exp(enh.log_pair), np.exp(enh.log_pi), atol=1e-5)
    assert np.max(np.abs(np.exp(batched.log_pair[1]) - np.exp(batched.log_pi[1]))) > 1e-3  # beta > 0: exploration
    np.testing.assert_allclose(enh.pair_kl, 0.0, atol=1e-9)   # beta = 0: the pair is the main agent
    uniform = non._pairing("uniform", inst, enh.theta[0], None, 0.0, enh.log_pi[0], "identity")
    np.testing.assert_allclose(uniform, jnp.full((3, 5), -jnp.log(5.0)), atol=1e-15)
    with pytest.raises(ValueError, match="method='greedy' is not allowed"):
        non.run_online(key, inst, "greedy", 3, 16)


# ---- the method registry (algorithms.nash.methods) and the shared pipelines ----


def test_mle_confidence_set_is_the_fit_and_the_set():
    """One pipeline: the psi-space MLE and its set, bit for bit the separate fit, Gram and radius."""
    inst = b.make_instance(jax.random.key(3), CFG)
    data = b.sample_preference_data(jax.random.key(4), inst, inst.log_pi0, b.uniform_policy(3, 5), 40)
    ccfg = conf.ConfidenceConfig(lam=0.7, beta_mode="theory", c_beta=0.3)
    cs = gp.mle_confidence_set(inst, data, 40, 2.0, ccfg)
    theta = gp.fit_general_preference(inst, data, 0.7).theta
    beta = conf.confidence_radius("theory", gp.psi_dim(2), 40, 0.7, 2.0, c_beta=0.3)
    ref = gp.confidence_set(inst, data, theta, 0.7, beta)
    for got, want in zip(cs, ref):
        np.testing.assert_array_equal(got, want)


def test_offline_ipo_is_the_sampled_step_on_the_same_comparisons():
    inst = b.make_instance(jax.random.key(5), CFG)
    key = jax.random.key(6)
    data = b.sample_preference_data(key, inst, inst.log_pi0, inst.log_pi0, 64)
    np.testing.assert_array_equal(nd.update_from_data("ipo", inst, data, inst.log_pi0, 1.0, 1e-3),
                                  nd.sampled_step(key, inst, "ipo", inst.log_pi0, 1.0, 64, 1e-3))


def test_policy_metrics_in_the_world_layer():
    inst = b.make_instance(jax.random.key(7), CFG)
    star = b.nash_equilibrium(inst).log_pi
    m = b.nash.policy_metrics(inst, inst.log_pi0, star, "identity")
    assert tuple(m) == ("nash_gap", "win_rate_vs_ref", "win_rate_vs_nash", "kl_to_ref")
    np.testing.assert_allclose(m["win_rate_vs_ref"], 0.5, atol=1e-12)
    np.testing.assert_allclose(m["kl_to_ref"], 0.0, atol=1e-12)
    np.testing.assert_allclose(m["nash_gap"], b.duality_gap(inst, inst.log_pi0), rtol=0, atol=0)
    np.testing.assert_allclose(b.nash.policy_metrics(inst, star, star)["win_rate_vs_nash"], 0.5, atol=1e-12)


def test_registry_kinds_metadata_and_queries():
    o = methods.NashOptions(iterations=3, batch=7)
    assert set(methods.names(("offline",))) >= {"bt_gibbs", "dpo", "nash_mle", "p2_pessimistic", "ipo"}
    assert set(methods.names(("online",))) >= {"enhancer", "p2_online", "self_play", "uniform"}
    assert methods.names(("exact",))[0] == "nash"
    assert methods.queries("dpo", o, 50) == 50 and methods.queries("inpo", o, 50) == 21
    assert methods.queries("nash", o, 50) == 0 and methods.queries("sppo_exact", o, 50) == 0
    assert methods.label("nash_mle") == "Nash of estimated game" and methods.label("gone") == "gone"
    assert methods.color("bt_gibbs") == "C3" and methods.color("gone") is None
    assert {"iterations", "batch", "step", "beta"} <= set(methods.unread_options(("offline",)))
    assert methods.unread_options(methods.KINDS) == ()
    assert methods.needs_fit(("bt_gibbs", "p2_pessimistic")) and not methods.needs_fit(("dpo", "nash"))
    assert methods.check_algorithms("algorithms", ("nash_mle", "dpo"), ("offline",), "logit") == ("nash_mle", "dpo")
    with pytest.raises(ValueError, match="algorithms=.* is not allowed.*free of sppo when payoff='logit'"):
        methods.check_algorithms("algorithms", ("nash", "sppo"), methods.KINDS, "logit")


@pytest.mark.parametrize("name, entry, message", [
    ("bad name", methods.METHODS["nash"], "Nash method name='bad name' is not allowed"),
    ("nash", methods.METHODS["nash"], "Nash method name='nash' is not allowed.*overwrite=True"),
    ("x", lambda view: view, "Nash method 'x'=.* is not allowed: .*NashMethod"),
    ("x", methods.NashMethod(lambda view: view, "batch"), "Nash method 'x' kind='batch' is not allowed"),
    ("x", methods.NashMethod(lambda view: view, "exact", payoffs=("linear",)), "payoffs='linear' is not allowed"),
    ("x", methods.NashMethod(lambda view: view, "exact", reads=("lr",)), "reads='lr' is not allowed"),
])
def test_register_refuses_bad_entries(name, entry, message):
    with pytest.raises(ValueError, match=message):
        methods.register(name, entry)
    assert "x" not in methods.METHODS and "bad name" not in methods.METHODS


def test_stream_keys_fixed_order_and_stable_hash():
    key = jax.random.key(0)
    order = ("a", "b")
    same = lambda k1, k2: np.array_equal(jax.random.key_data(k1), jax.random.key_data(k2))
    assert same(methods.stream_key(key, "b", order), jax.random.fold_in(key, 1))
    new = methods.stream_key(key, "mine", order)
    assert same(new, methods.stream_key(key, "mine", ("a", "b", "c")[:2]))
    assert not any(same(new, jax.random.fold_in(key, i)) for i in range(8))


def test_run_methods_views_by_kind():
    """Offline methods see the data and an instance without reward and skew; the others the true
    instance and their own key; exact dynamics entries are dynamics.exact_trajectory."""
    inst = b.make_instance(jax.random.key(1), CFG)
    data = b.sample_preference_data(jax.random.key(2), inst, inst.log_pi0, inst.log_pi0, 16)
    seen = {}

    def spy(kind):
        def policy(view):
            seen[kind] = view
            return view.instance.log_pi0 if kind in ("offline", "exact") else view.instance.log_pi0[None]
        return methods.NashMethod(policy, kind)

    for kind in methods.KINDS:
        methods.register(f"spy_{kind}", spy(kind))
    try:
        o = methods.NashOptions(iterations=2, step=0.5)
        keys = {f"spy_{k}": jax.random.key(i) for i, k in enumerate(methods.KINDS)}
        out = methods.run_methods(tuple(keys) + ("inpo_exact",), inst, payoff="identity", options=o, lam=1.0,
                                  key_of=keys.get, data=data)
    finally:
        for kind in methods.KINDS:
            methods.METHODS.pop(f"spy_{kind}")
    assert seen["offline"].data is data and seen["offline"].confidence is None
    assert np.all(np.asarray(seen["offline"].instance.reward) == 0) and np.all(np.asarray(seen["offline"].instance.skew) == 0)
    for kind in ("exact", "dynamics", "online"):
        assert seen[kind].instance is inst and seen[kind].data is None and seen[kind].key is keys[f"spy_{kind}"]
    np.testing.assert_array_equal(out["inpo_exact"], nd.exact_trajectory(inst, "inpo", 0.5, 2))
    assert methods.final_policy("inpo_exact", out["inpo_exact"]).shape == (3, 5)
    assert methods.final_policy("dpo", inst.log_pi0) is inst.log_pi0
    with pytest.raises(ValueError, match="algorithms='nash_mle' is not allowed"):   # needs the confidence set
        methods.run_methods(("nash_mle",), inst, payoff="identity", options=o, lam=1.0, key_of=keys.get, data=data)
